"""Benchmark fastgpu.train against raw Ray Train, printed as tables.

1. Start-up overhead: seconds from submit to the first optimizer step, alternated ``--repeats``
   times, the same work each time (digits MLP, 2 workers, gloo on logical GPUs); the ratio is
   against raw:

   - **raw TorchTrainer**: a plain local Ray cluster with 2 logical GPUs in this process;
     submit is just before ``fit()``.
   - **fastgpu.train.run**: the library on that same plain cluster.
   - **fastgpu run_on_lease**: the platform path on tenant clusters. A server with a pool of
     one host x 2 GPUs runs each tenant's leases as raylets of the tenant's own Ray cluster,
     which a driver outside it does not join; so the driver runs there, as the tenant's job
     (``submit_job``; the tenant's head is started first, as for a tenant already in).
     Submit is just before the job's ``run_on_lease`` call: lease request over HTTP, its
     raylet joining, bind, pinned run (on the shared cluster the driver called it directly,
     and no raylet had to start). The row **fastgpu submit_job** times the same runs from
     ``submit_job``: the job's driver start (Python, Ray, torch) added.

2. Recovery: one worker ``os._exit``s at step ``--kill-step``; seconds from the kill to the next
   step of the restarted group, and steps lost (kill step minus the checkpoint resumed from).
   ``fastgpu.train.run`` on the plain cluster: Ray Train's restart, the same on any cluster.
3. bf16 vs fp32 throughput of the example MLP and of a transformer block, only when
   ``torch.cuda.is_available()`` (prints the GPU model); otherwise it says it was skipped.

Usage: ``python bench/bench_train.py [--repeats 2] [--kill-step 17] [--checkpoint-every 5]``.
Ray runs with token auth and its files under a temporary directory that is removed at the end.
Needs root for tenants' own users (else single-user).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="fgb")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["TMPDIR"] = _TMP
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
tempfile.tempdir = None
Path(_TMP).chmod(0o711)  # tenants pass through it to their own dirs
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import BenchServer  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

POOL = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1]}]}

#: The platform path's driver, a job in the tenant's cluster: logs when it calls
#: ``run_on_lease`` and each of rank 0's steps (as ``_step_logger``) to its storage folder.
JOB_SCRIPT = """
import json, os, time
from pathlib import Path

import ray

import fastgpu as fgpu
from fastgpu.train import run_on_lease


def step_logger(log):
    def hook(step, loop):
        if loop.rank == 0:
            with open(log, "a") as f:
                f.write(json.dumps({"t": time.time(), "step": step}) + "\\n")

    return hook


ray.init()
client = fgpu.Client()
me = client.whoami()
log = Path(me["storage_root"]) / me["storage_key"] / (os.environ["RUN"] + ".jsonl")
called = time.time()
log.with_suffix(".called").write_text(json.dumps(called))
run_on_lease(
    "digits-classifier",
    gpus=int(os.environ["FASTGPU_GPUS"]),
    gpu_type=os.environ["FASTGPU_GPU_TYPE"],
    duration=float(os.environ["FASTGPU_DURATION"]),
    run_name=os.environ["RUN"],
    client=client,
    request_id=os.environ["FASTGPU_LEASE_REQUEST_ID"],
    checkpoint_every=10,
    config={"epochs": 1, "on_step": step_logger(str(log))},
)
"""


def _step_logger(log: Path, kill_rank: int | None = None, kill_step: int | None = None):
    def hook(step: int, loop: Any) -> None:
        now = time.time()
        marker = log.with_suffix(".killed")
        if loop.rank == kill_rank and step == kill_step and not marker.exists():
            marker.write_text(json.dumps({"t": now, "step": step}))
            os._exit(1)
        if loop.rank == 0:
            with log.open("a") as f:
                f.write(json.dumps({"t": now, "step": step, "from": loop.last_checkpoint_step}))
                f.write("\n")

    return hook


def raw_train_fn(config: dict[str, Any]) -> None:
    """The same work as the built-in classifier, written against Ray Train directly."""
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from fastgpu.train.classifier import DigitsMLP, load_digits_split

    ctx = ray.train.get_context()
    data = load_digits_split()
    model = ray.train.torch.prepare_model(DigitsMLP(), move_to_device=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    dataset = TensorDataset(data.x_train, data.y_train)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=ctx.get_world_size(), rank=ctx.get_world_rank()
    )
    loader = DataLoader(dataset, batch_size=64, sampler=sampler)
    log = Path(config["log"])
    step = 0
    for epoch in range(config["epochs"]):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if ctx.get_world_rank() == 0:
                with log.open("a") as f:
                    f.write(json.dumps({"t": time.time(), "step": step}) + "\n")
            if step % 10 == 0:
                ray.train.report({"loss": float(loss), "step": step})


def _first_step_s(log: Path, submitted: float) -> float:
    first = json.loads(log.read_text().splitlines()[0])
    return float(first["t"]) - submitted


def start_platform(root: Path) -> BenchServer:
    """A server with tenant clusters on :data:`POOL`."""
    return BenchServer(
        root / "platform",
        pool=POOL,
        storage_root=str(root / "platform-storage"),
        controller={"tick_interval_s": 0.25, "min_duration_s": 1.0},
    )


def stop_platform(server: BenchServer) -> None:
    """Stop the server, every tenant cluster it started and the tenants' users."""
    server.stop()
    clusters = TenantClusters(server.config)
    for marker, procs in processes.marked(f"{clusters.platform}/").items():
        processes.stop_tree(procs[0].pid, 2.0, marker=marker)
    remove_platform_users(clusters.platform)


def job_on_lease(root: Path, client: Any, run: str) -> tuple[float, float]:
    """The platform path once: (submit_job -> first step, run_on_lease -> first step)."""
    folder = root / "job"
    folder.mkdir(exist_ok=True)
    (folder / "train_job.py").write_text(JOB_SCRIPT)
    me = client.whoami()
    log = Path(me["storage_root"]) / me["storage_key"] / f"{run}.jsonl"
    submitted = time.time()
    job = client.submit_job(
        "python train_job.py",
        gpus=2,
        gpu_type="A100",
        duration="30m",
        working_dir=folder,
        env={"RUN": run},
    )
    while (status := client.job_status(job["id"]))["status"] not in (
        "SUCCEEDED",
        "FAILED",
        "STOPPED",
    ):
        time.sleep(0.5)
    if status["status"] != "SUCCEEDED":
        raise SystemExit(f"the job {status['status']}:\n{client.job_logs(job['id'])[-3000:]}")
    called = float(json.loads(log.with_suffix(".called").read_text()))
    return _first_step_s(log, submitted), _first_step_s(log, called)


def bench_startup(root: Path, repeats: int, client: Any) -> list[tuple[str, float]]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    import fastgpu.train as ft

    rows = []
    for i in range(repeats):
        log = root / f"raw-{i}.jsonl"
        submitted = time.time()
        TorchTrainer(
            raw_train_fn,
            train_loop_config={"epochs": 1, "log": str(log)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, use_gpu=True),
            run_config=RunConfig(name=f"raw-{i}", storage_path=str(root / "raw")),
        ).fit()
        rows.append(("raw TorchTrainer", _first_step_s(log, submitted)))

        log = root / f"fastgpu-{i}.jsonl"
        submitted = time.time()
        ft.run(
            "digits-classifier",
            tenant="bench",
            run_name=f"startup-{i}",
            storage_root=str(root / "storage"),
            workers=2,
            checkpoint_every=10,
            config={"epochs": 1, "on_step": _step_logger(log)},
        )
        rows.append(("fastgpu.train.run", _first_step_s(log, submitted)))

        # The whole platform path: a job in the tenant's cluster; lease request over HTTP, its
        # raylet joining, bind, pinned run, release.
        from_submit, from_call = job_on_lease(root, client, f"lease-{i}")
        rows.append(("fastgpu run_on_lease", from_call))
        rows.append(("fastgpu submit_job", from_submit))
    return rows


def bench_recovery(root: Path, kill_step: int, checkpoint_every: int) -> dict[str, float]:
    import fastgpu.train as ft

    log = root / "recovery.jsonl"
    ft.run(
        "digits-classifier",
        tenant="bench",
        run_name="recovery",
        storage_root=str(root / "storage"),
        workers=2,
        checkpoint_every=checkpoint_every,
        report_every=1,
        max_failures=1,
        config={"epochs": 2, "on_step": _step_logger(log, kill_rank=1, kill_step=kill_step)},
    )
    kill = json.loads(log.with_suffix(".killed").read_text())
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # The restarted group repeats steps from its checkpoint: its first step is below the kill
    # step. (Rank 0 of the dying group may still log the kill step itself just after the kill.)
    after = [r for r in records if r["t"] > kill["t"] and r["step"] < kill["step"]]
    after = after or [r for r in records if r["t"] > kill["t"]]
    resumed_from = after[0]["from"] or 0
    return {
        "kill_step": kill["step"],
        "resumed_from_step": resumed_from,
        "steps_lost": kill["step"] - resumed_from,
        "recovery_s": after[0]["t"] - kill["t"],
    }


def bench_gpu_precision(steps: int = 200) -> list[tuple[str, str, float]] | None:
    import torch

    from fastgpu.train.classifier import DigitsMLP
    from fastgpu.train.precision import mixed_precision

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda", 0)
    models = {
        "digits MLP (batch 4096)": (
            lambda: DigitsMLP(hidden=[1024, 1024]),
            lambda: torch.randn(4096, 64, device=device),
        ),
        "transformer block (d=1024, 8x512 tokens)": (
            lambda: torch.nn.TransformerEncoderLayer(1024, 16, 4096, batch_first=True),
            lambda: torch.randn(8, 512, 1024, device=device),
        ),
    }
    rows = []
    for name, (make, batch) in models.items():
        for precision in ("fp32", "bf16"):
            policy = mixed_precision(precision, device)
            model = make().to(device)
            opt = torch.optim.AdamW(model.parameters())
            x = batch()
            for i in range(steps + 10):
                if i == 10:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                with policy.autocast():
                    loss = model(x).float().pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
            torch.cuda.synchronize()
            rows.append((name, precision, steps / (time.perf_counter() - start)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="fastgpu.train benchmarks")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kill-step", type=int, default=17)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    args = parser.parse_args()

    short = Path(_TMP)
    import ray

    server: BenchServer | None = None
    try:
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        server = start_platform(short)
        client = server.tenant_client("bench", 2)
        client.cluster()  # the head is up, as for a tenant already in
        startup = bench_startup(short, args.repeats, client)
        recovery = bench_recovery(short, args.kill_step, args.checkpoint_every)
    finally:
        ray.shutdown()
        if server is not None:
            stop_platform(server)
        shutil.rmtree(short, ignore_errors=True)

    paths = ("raw TorchTrainer", "fastgpu.train.run", "fastgpu run_on_lease", "fastgpu submit_job")
    values = {p: [s for name, s in startup if name == p] for p in paths}
    raw = statistics.median(values["raw TorchTrainer"])
    print(
        "\nStart-up: submit -> first optimizer step (2 workers, logical GPUs, gloo; "
        "run_on_lease and submit_job on a tenant cluster)"
    )
    print(f"{'path':<24}{'median s':>10}{'x raw':>8}{'runs':>24}")
    for label in paths:
        runs = ", ".join(f"{v:.2f}" for v in values[label])
        med = statistics.median(values[label])
        print(f"{label:<24}{med:>10.2f}{med / raw:>8.2f}{runs:>24}")

    print("\nRecovery: worker os._exit -> next step of the restarted group")
    for key, value in recovery.items():
        print(f"{key:<22}{value:>10.2f}" if isinstance(value, float) else f"{key:<22}{value:>10}")

    print("\nbf16 vs fp32 throughput (GPU)")
    gpu = bench_gpu_precision()
    if gpu is None:
        print("skipped: torch.cuda.is_available() is False on this machine")
    else:
        import torch

        print(f"GPU: {torch.cuda.get_device_name(0)}")
        print(f"{'model':<44}{'fp32 it/s':>12}{'bf16 it/s':>12}{'ratio':>8}")
        for name in dict.fromkeys(n for n, _, _ in gpu):
            fp32 = next(r for n, p, r in gpu if n == name and p == "fp32")
            bf16 = next(r for n, p, r in gpu if n == name and p == "bf16")
            print(f"{name:<44}{fp32:>12.1f}{bf16:>12.1f}{bf16 / fp32:>8.2f}")


if __name__ == "__main__":
    main()
