"""``fastgpu plan``: table, JSON, files under --out, trace demand, and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastgpu.cli_plan import plan_app, run_plan

SPEC = """
gpu_types:
  A100:
    perf: 312
    gpus_per_node: 8
    reserved: {price_per_hour: 1.8, term_hours: 24}
    on_demand: {price_per_hour: 3.0}
    spot: {price_per_hour: 1.0, interruption_rate: 0.1, max_nodes: 2}
max_spot_share: 0.3
"""
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(SPEC)
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(plan_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_table(spec_file: Path) -> None:
    code, out, _ = invoke("--spec", str(spec_file), "--demand", "linear:a=1,b=10,T=47")
    assert code == 0, out
    assert "| A100 | reserved |" in out
    assert "| A100 | on demand |" in out
    assert "peak provisioning" in out
    assert "reserve the median, the rest on demand" in out


def test_json(spec_file: Path) -> None:
    code, out, _ = invoke(
        "--spec", str(spec_file), "--demand", "linear:a=1,b=10,T=47", "--output", "json"
    )
    assert code == 0, out
    data = json.loads(out)
    assert data["status"] == "optimal"
    assert data["steps"] == 48
    assert {line["offer"] for line in data["lines"]} == {"reserved", "on_demand", "spot"}
    assert "nodes" not in data["lines"][0]  # per-step series only in plan.json
    assert [b["name"] for b in data["baselines"]] == ["peak", "on_demand", "median_rule"]
    assert data["total_cost"] <= min(b["cost"] for b in data["baselines"])


def test_out_writes_json_markdown_and_a_png(spec_file: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, _ = invoke(
        "--spec", str(spec_file), "--demand", "linear:a=1,b=10,T=47", "--out", str(out_dir)
    )
    assert code == 0, out
    saved = json.loads((out_dir / "plan.json").read_text())
    assert len(saved["lines"][0]["nodes"]) == 48
    assert len(saved["demand"]["A100"]) == 48
    assert "# Capacity plan" in (out_dir / "plan.md").read_text()
    png = (out_dir / "plan.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out_dir / "plan.png").shape[0] > 100


def test_csv_demand_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "demand.csv").write_text("hour,A100\n0,3\n1,12\n2,5\n")
    (tmp_path / "plan.yaml").write_text(SPEC + "demand: csv:demand.csv\n")
    rep = run_plan(spec=tmp_path / "plan.yaml")
    assert rep.plan.steps == 3
    assert rep.plan.demand["A100"] == [3.0, 12.0, 5.0]


def test_trace_demand(tmp_path: Path, spec_file: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-01 00:00:00,7200,8,57600,a\n"
        "2017-10-01 01:00:00,3600,16,57600,b\n"
        "2017-10-01 03:00:00,60,1,60,a\n"
    )
    code, out, _ = invoke("--spec", str(spec_file), "--trace", str(trace), "--output", "json")
    assert code == 0, out
    data = json.loads(out)
    assert data["steps"] == 4  # the submission window: 3 h 1 s
    assert "3 jobs" in data["source"]
    rep = run_plan(spec=spec_file, trace=str(trace))
    assert rep.plan.demand["A100"][:3] == [8.0, 24.0, 0.0]


def test_config_quotas_and_types(tmp_path: Path) -> None:
    config = tmp_path / "fastgpu.yaml"
    config.write_text(
        "gpu_types:\n  A100: {price_per_hour: 3.0, perf: 312}\n"
        "tenants:\n  acme: {quotas: {A100: {nominal: 64}}}\n"
    )
    code, out, _ = invoke(
        "--config", str(config), "--demand", "linear:a=0,b=4,T=9", "--term-hours", "5"
    )
    assert code == 0, out
    assert "quota: A100: tenants are guaranteed 64 GPUs (acme 64)" in out
    rep = run_plan(config=config, demand="linear:a=0,b=4,T=9", term_hours=5, spot_discount=0.6)
    assert {line.offer for line in rep.plan.lines} == {"reserved", "on_demand", "spot"}


def test_seed_example_spec() -> None:
    spec = EXAMPLES / "plan-seed.yaml"
    code, _, err = invoke("--spec", str(spec))
    assert code == 2
    assert "510 perf units at step 49" in err
    assert "gpu_types.gpu.max_nodes" in err
    code, out, _ = invoke("--spec", str(spec), "--unmet-penalty", "1000", "--output", "json")
    assert code == 0
    assert json.loads(out)["unmet_total"] == pytest.approx(13_780.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--demand", "linear:a=-10,b=20,T=100"], "demand must be >= 0"),
        (["--demand", "linear:a=1,b=1,T=5", "--max-spot-share", "2"], "max_spot_share: got 2.0"),
        (["--demand", "nonsense"], "expected linear:a=A,b=B,T=STEPS, csv:PATH or trace"),
        (["--demand", "csv:/nonexistent/d.csv"], "cannot read demand CSV"),
        ([], "no demand"),
        (["--trace", "/nonexistent.csv"], "does not exist"),
        (["--demand", "linear:a=1,b=1,T=5", "--trace", "t.csv"], "give one"),
    ],
)
def test_bad_input_exits_2_with_a_message(spec_file: Path, args: list[str], message: str) -> None:
    code, _, err = invoke("--spec", str(spec_file), *args)
    assert code == 2
    assert message in err


def test_bad_spec_and_no_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpu_types:\n  A100:\n    on_demand: {price_per_hour: -2}\n")
    code, _, err = invoke("--spec", str(bad), "--demand", "linear:a=0,b=1,T=1")
    assert code == 2
    assert "gpu_types.A100.on_demand.price_per_hour: got -2" in err
    code, _, err = invoke("--demand", "linear:a=0,b=1,T=1")
    assert code == 2
    assert "give --spec FILE or --config FILE" in err


def test_mounted_on_the_main_cli() -> None:
    from fastgpu.cli.main import app

    result = CliRunner().invoke(app, ["plan", "--help"])
    assert result.exit_code == 0
    assert "--demand" in result.stdout


def test_the_example_spec(tmp_path: Path) -> None:
    demand = tmp_path / "demand.csv"
    demand.write_text("hour,A10G,A100,H100\n0,20,100,30\n1,60,140,45\n2,30,90,20\n")
    code, out, _ = invoke(
        "--spec", str(EXAMPLES / "plan.yaml"), "--demand", f"csv:{demand}", "--output", "json"
    )
    assert code == 0, out
    data = json.loads(out)
    assert data["unmet_total"] == 0.0
    assert len(data["lines"]) == 9


def test_a_csv_on_the_command_line_is_relative_to_here(
    tmp_path: Path, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "d.csv").write_text("A100\n4\n")
    monkeypatch.chdir(elsewhere)
    assert run_plan(spec=spec_file, demand="csv:d.csv").plan.demand == {"A100": [4.0]}
