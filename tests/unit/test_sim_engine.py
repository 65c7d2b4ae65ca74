"""Simulator tests on small hand-made traces whose right answers are known."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fastgpu.cli_sim import run_sim
from fastgpu.config import QuotaSpec
from fastgpu.scheduler import FairSharePolicy, FairShareSettings
from fastgpu.sim import ClusterSpec, Job, JobModel, Simulation, trace_from_jobs
from fastgpu.sim.baselines import FifoPolicy, SrtfOraclePolicy
from fastgpu.sim.cluster import nominal_quotas, offered_load, size_for_load
from fastgpu.sim.metrics import compute, fluid_bound, jain, percentile
from fastgpu.sim.runner import run_side_by_side
from fastgpu.sim.trace import TraceError, load_trace

SIM = FairShareSettings(explain=False, enforce_time_limits=False)


def sim(jobs, policy, nodes=1, per_node=8, nominal=None, model=None):
    trace = trace_from_jobs(jobs)
    quotas = {t: QuotaSpec(nominal=n) for t, n in (nominal or {}).items()}
    s = Simulation(trace, ClusterSpec(nodes, per_node), quotas, policy, model=model or JobModel())
    res = s.run()
    return {j.id: j for j in res.jobs}, res


def test_single_job_runs_at_once() -> None:
    jobs, _ = sim([Job("1", "a", 5.0, 4, 100.0)], FifoPolicy(), nominal={"a": 8})
    assert (jobs["1"].start, jobs["1"].end) == (5.0, 105.0)


def test_fifo_second_whole_cluster_job_waits_for_the_first() -> None:
    jobs, _ = sim(
        [Job("1", "a", 0.0, 8, 100.0), Job("2", "b", 1.0, 8, 50.0), Job("3", "b", 2.0, 1, 5.0)],
        FifoPolicy(),
    )
    assert jobs["2"].start == 100.0
    assert jobs["3"].start == 150.0  # strict FIFO: no overtaking


@pytest.mark.parametrize(
    ("settings", "second_start"),
    [
        (FairShareSettings(explain=False, enforce_time_limits=False, borrowing=False), 100.0),
        (SIM, 0.0),
    ],
    ids=["static partitioning waits", "borrowing starts at once"],
)
def test_borrowing_vs_static(settings: FairShareSettings, second_start: float) -> None:
    jobs, _ = sim(
        [Job("1", "a", 0.0, 4, 100.0), Job("2", "a", 0.0, 4, 100.0)],
        FairSharePolicy(settings),
        nominal={"a": 4, "b": 4},
        model=JobModel(),  # only preemptible leases borrow guaranteed GPUs
    )
    assert jobs["2"].start == second_start


def test_reclaim_preempts_borrower_and_charges_lost_work() -> None:
    # a borrows all 8 GPUs at t=0 for 1000 s; b (nominal 4) arrives at t=700.
    # Checkpoints every 300 s: the last before the preemption (announced 700, effective 730)
    # is at 600, so 130 s x 8 GPUs are lost and 400 s of work remain.
    jobs, res = sim(
        [Job("a1", "a", 0.0, 8, 1000.0), Job("b1", "b", 700.0, 4, 100.0)],
        FairSharePolicy(SIM),
        nominal={"a": 4, "b": 4},
        model=JobModel(checkpoint_s=300.0),
    )
    assert jobs["b1"].start == pytest.approx(730.0)  # one grace period (30 s)
    assert jobs["a1"].preemptions == 1
    assert jobs["a1"].lost_gpu_s == pytest.approx(130.0 * 8)
    # a1 restarts when b1 ends (8 GPUs, STRICT_PACK) and runs its remaining 400 s.
    assert jobs["a1"].end == pytest.approx(830.0 + 400.0)
    assert sum(res.violation_gpu_s.values()) == pytest.approx(4 * 30.0)


def test_elastic_job_runs_faster_on_more_gpus() -> None:
    # 1-GPU job, elastic to 2 GPUs; speed (2/1)**0.8 from the start (admitted at 2).
    jobs, _ = sim(
        [Job("1", "a", 0.0, 1, 1000.0)],
        FairSharePolicy(SIM),
        nodes=1,
        per_node=2,
        nominal={"a": 2},
        model=JobModel(elastic=True),
    )
    assert jobs["1"].end == pytest.approx(1000.0 / 2**0.8)
    assert jobs["1"].resizes == 0


def test_elastic_shrinks_for_a_guaranteed_tenant_and_pays_rescale() -> None:
    jobs, _ = sim(
        [Job("a1", "a", 0.0, 2, 1000.0), Job("b1", "b", 400.0, 2, 100.0)],
        FairSharePolicy(SIM),
        nodes=1,
        per_node=4,
        nominal={"a": 2, "b": 2},
        model=JobModel(elastic=True),
    )
    assert jobs["a1"].preemptions == 0
    assert jobs["a1"].resizes >= 1
    assert jobs["b1"].start == 400.0


def test_srtf_oracle_lets_the_short_job_overtake() -> None:
    jobs, _ = sim(
        [Job("long", "a", 0.0, 8, 1000.0), Job("short", "b", 10.0, 8, 10.0)],
        SrtfOraclePolicy(),
        model=JobModel(lossless_preemption=True),
    )
    assert jobs["short"].start == 10.0
    assert jobs["long"].end == pytest.approx(1010.0)  # no work lost


def test_backfill_never_delays_the_wide_job() -> None:
    # 8 GPUs; 4 busy until 100; an 8-GPU job waits; a stream of 1-GPU jobs keeps coming.
    stream = [Job(f"s{i}", "a", float(i), 1, 200.0) for i in range(1, 40)]
    jobs, _ = sim(
        [Job("r", "a", 0.0, 4, 100.0), Job("wide", "a", 0.5, 8, 50.0), *stream],
        FairSharePolicy(SIM),
        nominal={"a": 16},  # above capacity: the wide job waits for GPUs, not for quota
        model=JobModel(preemptible=False),
    )
    assert jobs["wide"].start == 100.0


def test_metrics_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([], 99) == 0.0
    assert jain([1.0, 1.0]) == 1.0
    assert jain([1.0, 0.0]) == 0.5
    trace = trace_from_jobs([Job("1", "a", 0.0, 2, 10.0)])
    assert fluid_bound(trace, 4, 10.0) == pytest.approx(0.5)


def test_quotas_follow_vc_sizes_and_sum_to_capacity() -> None:
    trace = trace_from_jobs(
        [Job("1", "a", 0.0, 1, 1.0), Job("2", "b", 0.0, 1, 1.0), Job("3", "z", 0.0, 1, 1.0)],
        vc_nodes={"a": 3, "b": 1},
    )
    q = nominal_quotas(trace, 10)
    assert sum(x.nominal for x in q.values()) == 10
    assert q["a"].nominal > q["b"].nominal >= q["z"].nominal


def _write_trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    rows = [
        ("2017-10-01 00:00:00", 100, 1, "a"),
        ("2017-10-01 00:00:30", 300, 2, "b"),
        ("2017-10-02 00:00:00", 50, 8, "a"),
        ("2017-10-03 00:00:00", 10, 1, "b"),
    ]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "duration", "num_gpus", "gpu_time", "cluster"])
        for ts, d, g, c in rows:
            w.writerow([ts, d, g, d * g, c])
    (tmp_path / "philly-vc-nodes.csv").write_text("vc,node_num\na,2\nb,1\n")
    return path


def test_trace_window_and_load(tmp_path: Path) -> None:
    path = _write_trace(tmp_path)
    tr = load_trace(path, start="2017-10-01", end="2017-10-02 12:00")
    assert [j.id for j in tr.jobs] == ["0", "1", "2"]
    assert tr.jobs[1].submit == 30.0
    assert tr.vc_nodes == {"a": 2, "b": 1}
    cluster = size_for_load(tr, 1.0)
    assert cluster.capacity >= 8  # the widest job fits
    assert offered_load(tr, 8) == pytest.approx(tr.offered_gpu_seconds() / (8 * tr.end))
    with pytest.raises(TraceError, match="window"):
        load_trace(path, start="2017-10-05", end="2017-10-01")
    with pytest.raises(TraceError, match="expected a date"):
        load_trace(path, start="soon")


def test_side_by_side_is_deterministic_and_reports(tmp_path: Path) -> None:
    path = _write_trace(tmp_path)
    first = run_sim(trace=str(path), nodes=1, seed=7, out=tmp_path / "out", plots=False)
    second = run_sim(trace=str(path), nodes=1, seed=7)
    assert [m.avg_jct_s for m in first.run.metrics] == [m.avg_jct_s for m in second.run.metrics]
    assert [m.policy for m in first.run.metrics] == [
        "fifo",
        "static",
        "fairshare",
        "elastic",
        "srtf",
    ]
    assert (tmp_path / "out" / "summary.csv").exists()
    assert "| policy |" in (tmp_path / "out" / "report.md").read_text()
    json.dumps(first.as_dict())
    m = compute(first.run.results[0], first.run.trace)
    assert m.completed + m.rejected + m.unfinished == m.jobs == 4


def test_unknown_policy_says_what_to_use() -> None:
    trace = trace_from_jobs([Job("1", "a", 0.0, 1, 1.0)])
    with pytest.raises(ValueError, match="fifo"):
        run_side_by_side(trace, ClusterSpec(1), ["nope"])


def test_cli_json_output(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fastgpu.cli_sim import sim_app

    path = _write_trace(tmp_path)
    out = CliRunner().invoke(
        sim_app,
        ["--trace", str(path), "--nodes", "1", "--policies", "fifo,fairshare", "--output", "json"],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [m["policy"] for m in data["metrics"]] == ["fifo", "fairshare"]


@pytest.mark.parametrize(("backoff", "finishes_while_owner_busy"), [(5, True), (0, False)])
def test_restarted_borrower_is_not_preempted_forever(
    backoff: int, finishes_while_owner_busy: bool
) -> None:
    """b borrows half of g's GPUs for a 3,600 s job (checkpoints every 1,800 s); g asks for one
    GPU every 400 s until t=20,000. Without the backoff, b's job is the cheapest victim every
    time (it just restarted) and loses all its work each time: it only finishes once g stops.
    With it, b's protection doubles per preemption until it outlasts a checkpoint interval."""
    jobs = [Job("b1", "b", 0.0, 4, 3600.0)]
    jobs += [Job(f"g{i}", "g", 100.0 + 400.0 * i, 1, 100.0) for i in range(50)]
    settings = FairShareSettings(
        explain=False, enforce_time_limits=False, min_runtime_backoff=backoff
    )
    out, _ = sim(
        jobs,
        FairSharePolicy(settings),
        nodes=1,
        per_node=4,
        nominal={"b": 2, "g": 2},
        model=JobModel(checkpoint_s=1800.0),
    )
    b1 = out["b1"]
    assert b1.end is not None
    assert (b1.end < 20_000.0) is finishes_while_owner_busy, b1
    if finishes_while_owner_busy:
        assert b1.preemptions <= 6, b1
