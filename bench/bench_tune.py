"""Sweeps on a platform lease against raw Ray Tune, side by side in one run (issue 10).

The same trainable (``jobs/tune_classifier.py``: the digits MLP over lr, width, weight decay and
precision, one report + checkpoint per epoch), the same searcher (Optuna, seed 0), scheduler
(ASHA, grace 1, reduction 2) and trial count on 2 logical GPUs, 1 GPU per trial:

- **raw**: a plain local Ray cluster with 2 GPUs; ``Tuner.fit()`` in this driver.
- **fastgpu**: a server with a pool of one host x 2 GPUs and tenant clusters; ``fastgpu sweep
  submit`` of the job: the sweep runs in the tenant's own cluster on a 2-GPU lease, trials pinned
  to the lease's raylets by the lease resource.

Reported: sweep wall time (raw: ``fit()``; fastgpu: inside Tune, and submission -> job end, which
adds the cluster and lease start), trials completed per leased GPU-hour, the lease's GPU
occupancy (time-weighted share of its GPUs running a trial, from the sweep's own samples), and
ASHA against FIFO (every trial to the end; raw Tune, same trials): GPU-hours and best val_loss.

    python bench/bench_tune.py [--trials 8] [--epochs 6]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="fgt")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
Path(_TMP).chmod(0o711)
HERE = Path(__file__).resolve().parent
JOBS = HERE.parent / "jobs"
sys.path.insert(0, str(HERE))

from _server import BenchServer  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

POOL = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1]}]}
EPOCH_SLEEP_S = "0.5"  # per-epoch work beyond the tiny model's, as a GPU step would add


def _job() -> Any:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("tune_classifier", JOBS / "tune_classifier.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_classifier"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    return module


def occupancy(samples: list[dict[str, float]]) -> float:
    """Time-weighted share of the leased GPUs that ran a trial."""
    used = held = 0.0
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        used += a["used"] * dt
        held += a["held"] * dt
    return used / held if held else 0.0


def raw(root: Path, trials: int, scheduler: str) -> dict[str, float]:
    import ray
    from ray import tune

    from fastgpu.domain.sweep import SweepSpec
    from fastgpu.tune.runner import _tune_config

    job = _job()
    spec = SweepSpec(
        name="raw", trials=trials, cpus_per_trial=0.25, scheduler=scheduler,  # type: ignore[arg-type]
        max_t=int(os.environ["EPOCHS"]), grace_period=1,
    )  # fmt: skip
    ray.init(num_gpus=2, num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(job.trainable, {"cpu": 0.25, "gpu": 1}),
            param_space=job.param_space(),
            tune_config=_tune_config(spec, 2),
            run_config=tune.RunConfig(name=f"raw-{scheduler}", storage_path=str(root), verbose=0),
        )
        t0 = time.monotonic()
        results = tuner.fit()
        wall = time.monotonic() - t0
        trial_s = sum(float(r.metrics.get("time_total_s", 0.0)) for r in results)
        best = results.get_best_result("val_loss", "min", scope="all")
        best_loss = min(float(v) for v in best.metrics_dataframe["val_loss"])
        return {
            "wall": wall,
            "trials": len(results),
            "gpu_h_leased": wall * 2 / 3600,
            "gpu_h_trials": trial_s / 3600,
            "occupancy": trial_s / (wall * 2),
            "best": best_loss,
        }
    finally:
        ray.shutdown()


def platform(root: Path, trials: int) -> dict[str, float]:
    server = BenchServer(
        root / "state",
        pool=POOL,
        storage_root=str(root / "storage"),
        controller={"tick_interval_s": 0.25, "min_duration_s": 1.0},
    )
    clusters = TenantClusters(server.config)
    try:
        client = server.tenant_client("tuner", 2)
        me = client.whoami()
        t0 = time.monotonic()
        job = client.submit_job(
            "python tune_classifier.py",
            gpus=2,
            gpu_type="A100",
            duration="30m",
            working_dir=JOBS,
            env={"EPOCHS": os.environ["EPOCHS"], "EPOCH_SLEEP_S": EPOCH_SLEEP_S},
            sweep={
                "name": "bench", "trials": trials, "cpus_per_trial": 0.25,
                "max_t": int(os.environ["EPOCHS"]), "grace_period": 1,
            },
        )  # fmt: skip
        while (status := client.job_status(job["id"]))["status"] not in (
            "SUCCEEDED",
            "FAILED",
            "STOPPED",
        ):
            time.sleep(1.0)
        end_to_end = time.monotonic() - t0
        logs = client.job_logs(job["id"])
        if status["status"] != "SUCCEEDED":
            raise SystemExit(f"the sweep job {status['status']}:\n{logs[-3000:]}")
        line = next(x for x in reversed(logs.splitlines()) if x.startswith("SWEEP "))
        summary = json.loads(line[len("SWEEP ") :])
        folder = Path(me["storage_root"]) / me["storage_key"] / "sweeps" / "bench"
        samples = [
            json.loads(x) for x in (folder / "fastgpu_occupancy.jsonl").read_text().splitlines()
        ]
        return {
            "wall": float(summary["tune_s"]),
            "end_to_end": end_to_end,
            "trials": float(sum(summary["trials"].values())),
            "gpu_h_leased": float(summary["gpu_s"]) / 3600,
            "occupancy": occupancy(samples),
            "best": float(summary["best"]["metrics"]["val_loss"]),
        }
    finally:
        server.stop()
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    os.environ["EPOCHS"] = str(args.epochs)
    os.environ["EPOCH_SLEEP_S"] = EPOCH_SLEEP_S
    try:
        r = raw(Path(_TMP) / "raw", args.trials, "asha")
        ours = platform(Path(_TMP) / "fg", args.trials)
        fifo = raw(Path(_TMP) / "raw-fifo", args.trials, "fifo")
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)
    per_h = {k: v["trials"] / v["gpu_h_leased"] for k, v in (("raw", r), ("fg", ours))}
    print(f"\nsweep of {args.trials} trials x {args.epochs} epochs, 2 GPUs, Optuna + ASHA")
    print(f"{'measure':<44}{'raw Tune':>12}{'fastgpu':>12}{'ratio':>8}")
    rows = [
        ("sweep wall time, s (inside Tune)", r["wall"], ours["wall"]),
        ("trials completed per leased GPU-hour", per_h["raw"], per_h["fg"]),
        ("GPU occupancy of the lease", r["occupancy"], ours["occupancy"]),
        ("best val_loss", r["best"], ours["best"]),
    ]
    for name, a, b in rows:
        print(f"{name:<44}{a:>12.3f}{b:>12.3f}{b / a:>7.2f}x")
    print(f"{'fastgpu submission -> job end, s':<44}{'':>12}{ours['end_to_end']:>12.1f}")
    print(f"\nASHA vs FIFO (every trial to the end), raw Tune, {args.trials} trials")
    print(f"{'scheduler':<12}{'GPU-h in trials':>18}{'wall s':>10}{'best val_loss':>15}")
    for name, v in (("ASHA", r), ("FIFO", fifo)):
        print(f"{name:<12}{v['gpu_h_trials']:>18.4f}{v['wall']:>10.1f}{v['best']:>15.4f}")
    saved = 1 - r["gpu_h_trials"] / fifo["gpu_h_trials"]
    print(f"ASHA saved {saved:.0%} of the trials' GPU-hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
