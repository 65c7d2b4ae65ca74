# FastGPU developer entry points. Every target sets itself up (virtual env, installs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Keep Ray's files out of ~ and /tmp/ray: everything it writes goes under .fastgpu/ in the repo.
export FASTGPU_HOME ?= $(CURDIR)/.fastgpu/home
export RAY_AUTH_MODE ?= token

.PHONY: venv demo test test-fast check lint types bench browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fastgpu.demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" -q --durations=40

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not slow and not ray" -q

lint: $(STAMP)
	$(BIN)/ruff check platform tests bench jobs serve_apps
	$(BIN)/ruff format --check platform tests bench jobs serve_apps

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# The console's browser tests and bench drive Debian's chromium headless; Playwright comes with
# the dev extra (never `playwright install`). Needs root or sudo.
browser: $(STAMP)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) .fastgpu .pytest_cache .mypy_cache .ruff_cache
