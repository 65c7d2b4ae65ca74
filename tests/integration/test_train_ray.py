"""fastgpu.train on a real two-node local Ray cluster with logical GPUs.

One cluster for the module (head without GPUs, nodes A and B with 2 GPUs each): an elastic (1, 4)
run pinned to a lease's node starts with the 2 GPUs there (and only there), a worker killed
mid-run resumes from the last checkpoint, and a resubmitted run resumes where it ended.
Each ``fit()`` costs ~15 s on a 2-core machine (Ray Train takes the reports every TrainSpec
``report_poll_s``, 0.5 s, instead of its default 2 s, which paced a run reporting every step).

Measured on Ray 2.60: the elastic policy sizes the group from the AutoscalingCoordinator's view of
whole nodes, ignoring ``label_selector`` and GPUs held by other actors; without the lease cap
(``max_gpus``, derived from ``node_ids``) a pinned (1, 4) run asks for 4 workers and retries its
60 s start-up timeout forever.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TENANT = "acme"


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster

    # Token auth, RAY_TMPDIR and TMPDIR come from tests/conftest.py for the whole session: Ray
    # caches the auth token per process, so a module must not switch to a new one.
    short = tempfile.mkdtemp(prefix="fg")
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    node_a = c.add_node(num_cpus=3, num_gpus=2)
    node_b = c.add_node(num_cpus=3, num_gpus=2)
    try:
        ray.init(address=c.address, log_to_driver=False)
        c.wait_for_nodes()
        yield {
            "a": node_a.node_id,
            "b": node_b.node_id,
            "storage": Path(short) / "storage",
        }
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(short, ignore_errors=True)


def _recording_hook(log: Path, kill_rank: int | None = None, kill_step: int | None = None):
    """A per-step hook (pickled by value: it is a closure) that appends one JSON line per step
    and, once, kills ``kill_rank`` at ``kill_step`` with ``os._exit``."""

    def hook(step: int, loop: Any) -> None:
        import ray

        ctx = ray.get_runtime_context()
        record = {
            "step": step,
            "rank": loop.rank,
            "world": loop.world_size,
            "node": ctx.get_node_id(),
            "gpus": ctx.get_accelerator_ids().get("GPU", []),
            "resumed_from": loop.last_checkpoint_step,
            "pid": os.getpid(),
        }
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        marker = log.with_suffix(".killed")
        if loop.rank == kill_rank and step == kill_step and not marker.exists():
            marker.write_text(str(step))
            os._exit(1)

    return hook


def _records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_elastic_start_pinned_to_lease_node(cluster: dict[str, Any]) -> None:
    import fastgpu.train as ft

    log = cluster["storage"] / "pinned.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    outcome = ft.run(
        "digits-classifier",
        tenant=TENANT,
        run_name="pinned",
        storage_root=str(cluster["storage"]),
        workers=(1, 4),  # pinned to B (2 GPUs): capped to (1, 2), starts 2
        node_ids=[cluster["b"]],
        checkpoint_every=10,
        config={"epochs": 1, "on_step": _recording_hook(log)},
    )
    records = _records(log)
    assert {r["world"] for r in records} == {2}
    assert {r["rank"] for r in records} == {0, 1}
    assert {r["node"] for r in records} == {cluster["b"]}
    gpu_ids = sorted({g for r in records for g in r["gpus"]})
    assert len(gpu_ids) == 2  # each worker got its own of B's two GPUs
    assert outcome.checkpoint is not None
    assert (
        outcome.checkpoint.parent == Path(cluster["storage"]).resolve() / TENANT / "runs" / "pinned"
    )


def test_worker_kill_resumes_then_resubmission_resumes(cluster: dict[str, Any]) -> None:
    import fastgpu.train as ft

    log = cluster["storage"] / "killed.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    common = {
        "tenant": TENANT,
        "run_name": "killed",
        "storage_root": str(cluster["storage"]),
        "workers": (1, 4),
        "node_ids": [cluster["b"]],
        "checkpoint_every": 5,
        "report_every": 1,
        "max_failures": 1,
    }
    first = ft.run(
        "digits-classifier",
        config={"epochs": 2, "on_step": _recording_hook(log, kill_rank=1, kill_step=12)},
        **common,
    )
    records = _records(log)
    pids = {r["pid"] for r in records}
    assert len(pids) == 4  # two workers, restarted once
    assert {r["world"] for r in records} == {2}
    assert {r["node"] for r in records} == {cluster["b"]}
    after = [r for r in records if r["resumed_from"] == 10 and r["step"] == 11]
    assert after, "the restarted workers did not resume from the step-10 checkpoint"
    final_step = first.metrics["step"]
    assert final_step == 24  # 2 epochs x 12 steps of 2x64 samples: no step repeated past resume

    log.unlink()
    second = ft.run(
        "digits-classifier", config={"epochs": 3, "on_step": _recording_hook(log)}, **common
    )
    records = _records(log)
    assert min(r["step"] for r in records) == final_step + 1
    assert second.metrics["step"] == 36
    assert second.metrics["test_accuracy"] > 0.85
    kept = ft.CheckpointStore(second.run_dir, keep=3).checkpoints()
    assert 1 <= len(kept) <= 3


def _timed_steps(steps: int, out: Path):
    """A train function (a closure: pickled by value) that makes ``steps`` fast steps,
    reporting each, and writes the seconds from its first step to its last."""

    def train(config: dict[str, Any]) -> None:
        import time

        import torch

        from fastgpu.train import TrainLoop

        loop = TrainLoop.from_config(config)
        model = loop.prepare_model(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        start = time.monotonic()
        for step in range(1, steps + 1):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loop.backward_and_step(loss, opt)
            loop.end_step(step, {"loss": float(loss)}, state=dict, final=step == steps)
        if loop.rank == 0:
            out.write_text(str(time.monotonic() - start))

    return train


def test_reports_do_not_pace_the_steps_at_rays_default(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report waits until Ray Train's controller took the previous one, every health-check
    interval (Ray's default 2 s): 16 steps reporting each took 28 s at that default. The
    run's ``report_poll_s`` (0.5 s by default) reaches the controller, and the driver's
    environment is as it was after."""
    import fastgpu.train as ft
    from fastgpu.train.trainer import REPORT_POLL_ENV

    monkeypatch.setenv(REPORT_POLL_ENV, "2")  # Ray's default, as a plain driver has it
    out = cluster["storage"] / "timed.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    ft.run(
        _timed_steps(16, out),
        tenant=TENANT,
        run_name="timed",
        storage_root=str(cluster["storage"]),
        workers=2,
        report_every=1,
        checkpoint_every=1000,
    )
    assert float(out.read_text()) < 15
    assert os.environ[REPORT_POLL_ENV] == "2"
