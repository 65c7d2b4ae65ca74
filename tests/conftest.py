"""Shared fixtures.

Ray runs with token auth on (``RAY_AUTH_MODE=token``) and a random token in the environment,
so nothing is written to ``~/.ray``; ``RAY_TMPDIR`` points at a short temporary folder (Ray's
socket paths are length-limited) removed at the end, so ``/tmp/ray`` stays untouched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_TMP = tempfile.mkdtemp(prefix="fgt")
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ["RAY_TMPDIR"] = _TMP
os.environ["TMPDIR"] = _TMP
os.environ["FASTGPU_HOME"] = str(Path(_TMP) / "home")
os.environ.setdefault("RAY_JOB_START_TIMEOUT_SECONDS", "30")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
tempfile.tempdir = _TMP


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="t", dir=_TMP))
    yield path
    shutil.rmtree(path, ignore_errors=True)
