"""Elastic grow 2 -> 4 GPUs on tenant clusters against raw Ray Train, side by side (issue 9).

Measured: the time from the decision to grow to the first training step on 4 workers; and,
from the same runs, the start-up: submission to the first step on 2 workers (raw: the Train
run started in a cluster that has the GPUs; fastgpu: ``submit_job`` of the training job, whose
driver starts in the tenant's cluster, takes a lease, whose raylets join, and starts the run).

- **raw**: a plain local Ray cluster with 4 logical GPUs already there; a 2-worker Ray Train
  run (the same train function and TrainLoop) is told to stop at the decision (its STOP file),
  checkpoints, and a 4-worker run resumes from that checkpoint. This is Ray Train's own cost of
  a resize: stopping workers and starting more.
- **fastgpu**: a server with a pool of 2 hosts x 2 GPUs and tenant clusters; tenant ``holder``
  holds 2 GPUs; tenant ``grower``'s job trains on an elastic 2..4 lease
  (``tests/integration/job_scripts/elastic_job.py``, ``run_on_lease``). ``holder`` releases;
  the decision is when the lease is seen at 4 GPUs; the platform then starts a raylet for the
  new GPUs in the grower's cluster while the run checkpoints and restarts on 4 workers.

Runs alternate raw and platform, so drift in the machine's load hits both. Needs root for
tenants' own users (else single-user).

    python bench/bench_elastic.py [--runs 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="fge")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
os.environ["STEPS"] = "100000"  # the job runs until stopped
Path(_TMP).chmod(0o711)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
JOB = HERE.parent / "tests" / "integration" / "job_scripts"

from _server import BenchServer  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

POOL = {
    "hosts": [
        {"name": "host-0", "gpu_type": "A100", "devices": [0, 1]},
        {"name": "host-1", "gpu_type": "A100", "devices": [2, 3]},
    ]
}


def _starts(log: Path) -> list[dict[str, Any]]:
    text = log.read_text() if log.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def _job_module() -> Any:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("elastic_job", JOB / "elastic_job.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["elastic_job"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # workers cannot import it
    return module


def raw_grow(root: Path) -> tuple[float, float]:
    import ray

    from fastgpu.train import run
    from fastgpu.train.checkpoints import run_dir
    from fastgpu.train.loop import STOP_FILE

    job = _job_module()
    log = root / "raw.jsonl"
    storage = root / "raw-storage"
    ray.init(num_gpus=4, num_cpus=4, include_dashboard=False)
    try:
        folder = run_dir(str(storage), "bench", "grow")
        common: dict[str, Any] = {
            "config": {"log": str(log)},
            "run_name": "grow",
            "tenant": "bench",
            "storage_root": str(storage),
        }

        def stop_when(world: int, record: list[float]) -> None:
            _wait(lambda: any(s["world"] == world for s in _starts(log)), 400, f"{world} workers")
            time.sleep(3)  # a few steps in, as the platform's run is
            record.append(time.time())
            (folder / STOP_FILE).write_text("stop")

        decided: list[float] = []
        submitted = time.time()
        for workers, record in ((2, decided), (4, [])):
            stopper = threading.Thread(target=stop_when, args=(workers, record), daemon=True)
            stopper.start()
            run(job.train, workers=workers, **common, **job.SPEC)
            stopper.join()
            (folder / STOP_FILE).unlink(missing_ok=True)
        grown = next(s for s in _starts(log) if s["world"] == 4)
        return float(_starts(log)[0]["t"]) - submitted, float(grown["t"]) - decided[0]
    finally:
        ray.shutdown()


def platform_grow(root: Path) -> tuple[float, float]:
    server = BenchServer(
        root / "state",
        pool=POOL,
        storage_root=str(root / "storage"),
        controller={"tick_interval_s": 0.25, "min_duration_s": 1.0},
    )
    clusters = TenantClusters(server.config)
    try:
        from fastgpu.sdk import Client

        admin = Client(token=server.admin, address=server.url)
        holder = server.tenant_client("holder", 2)
        quota = {"A100": {"nominal": 2, "borrowing_limit": 2}}
        grower_token = admin.create_tenant("grower", quota)["token"]
        grower = Client(token=grower_token, address=server.url)
        held = holder.request_lease(2, "A100", "30m", wait=True, timeout=300)
        me = grower.whoami()
        log = Path(me["storage_root"]) / me["storage_key"] / "elastic.jsonl"
        submitted = time.time()
        job = grower.submit_job(
            "python elastic_job.py",
            gpus=4,
            min_gpus=2,
            gpu_type="A100",
            duration="30m",
            working_dir=JOB,
            env={"STEPS": "100000", "STEP_S": "0.25"},
        )
        _wait(lambda: _starts(log), 400, "the job's first step")
        time.sleep(3)
        (lease,) = [x for x in grower.list_leases(live=True) if x.state == "BOUND"]
        held.release()
        _wait(lambda: grower.get_lease(lease.id).held_gpus == 4, 60, "the grow decision")
        decided = time.time()
        grown = _wait(
            lambda: next((s for s in _starts(log) if s["world"] == 4), None), 400, "4 workers"
        )
        grower.stop_job(job["id"])
        return float(_starts(log)[0]["t"]) - submitted, float(grown["t"]) - decided
    finally:
        server.stop()
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    raw, ours = [], []
    try:
        for i in range(args.runs):
            raw.append(raw_grow(Path(_TMP) / f"raw{i}"))
            ours.append(platform_grow(Path(_TMP) / f"fg{i}"))
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)
    med = statistics.median
    print(f"\ntraining on tenant clusters vs raw Ray Train ({args.runs} run(s) each)")
    print(f"{'measure':<48}{'raw p50 s':>11}{'fastgpu p50 s':>15}{'ratio':>8}")
    for i, name in enumerate(
        ("start-up: submission -> first step on 2 workers", "grow: decision -> first step on 4")
    ):
        r, o = med(x[i] for x in raw), med(x[i] for x in ours)
        print(f"{name:<48}{r:>11.2f}{o:>15.2f}{o / r:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
