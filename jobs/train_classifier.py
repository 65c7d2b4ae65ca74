"""Train the digits classifier on Ray Train: elastic, mixed precision, checkpointed.

A Ray job entrypoint (``ray job submit -- python jobs/train_classifier.py ...``) and a plain
script. The model is an MLP on scikit-learn's bundled 8x8 digits (no downloads); the final
checkpoint holds weights, model config, label names and input normalization for deployment.

Two ways to get workers:

- With a platform lease (``FASTGPU_TOKEN`` set and no ``--no-lease``): :func:`acquire_lease` asks
  the platform for ``--gpus MIN:MAX`` GPUs of ``--gpu-type`` for ``--duration``, binds the lease to
  this run and trains on the lease's nodes only; the tenant and storage root come from the token.
- Without one (``FASTGPU_TOKEN`` unset, or ``--no-lease``): trains on whatever the Ray cluster
  offers, as tenant ``--tenant`` under ``--storage-root``. ``--cpu-only --num-workers 0`` runs in
  this process without a cluster.

Prints one JSON line at the end: run directory, final checkpoint, metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LeaseBinding:
    """What training needs from a bound lease; produced by :func:`acquire_lease`."""

    tenant: str
    storage_root: str
    node_ids: list[str]
    gpus: int
    expires_at: float | None = None
    """Unix time the lease ends; training checkpoints and stops before it."""
    release: Callable[[], Any] = field(default=lambda: None)


def _unix_time(value: Any) -> float | None:
    """A lease's ``expires_at`` (unix seconds or ISO 8601) as unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime, timezone

    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_gpus(text: str) -> int | tuple[int, int]:
    """``"4"`` -> 4; ``"2:4"`` -> (2, 4)."""
    try:
        if ":" in text:
            low, high = (int(part) for part in text.split(":", 1))
            if not 1 <= low <= high:
                raise ValueError
            return (low, high)
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected N or MIN:MAX with 1 <= MIN <= MAX"
        ) from None


def acquire_lease(
    gpus: int | tuple[int, int],
    gpu_type: str | None,
    duration: str,
    run_name: str,
    default_storage_root: str,
) -> LeaseBinding:
    """Request and bind a lease through the FastGPU SDK; the job's only contact with the platform.

    The lease is bound (``workload="train:<run>"``) before training starts, so the controller
    hands its GPUs over to the run. The tenant comes from the token; the storage root from the
    platform when it reports one (``whoami()["storage_root"]``), else ``--storage-root``.
    """
    from fastgpu import Client

    low, high = gpus if isinstance(gpus, tuple) else (gpus, gpus)
    client = Client()  # reads FASTGPU_TOKEN / FASTGPU_ADDRESS
    me = client.whoami()
    lease = client.request_lease(
        gpus=high,
        min_gpus=low if low != high else None,
        gpu_type=gpu_type,
        duration=duration,
        wait=True,
    )
    try:
        lease = client.bind_lease(lease.id, workload=f"train:{run_name}")
    except BaseException:
        lease.release()
        raise
    return LeaseBinding(
        tenant=str(me["tenant"]),
        storage_root=str(me.get("storage_root") or default_storage_root),
        node_ids=list(lease.nodes),
        gpus=int(lease.gpus),
        expires_at=_unix_time(lease.expires_at),
        release=lease.release,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=parse_gpus, default=1, help="N or MIN:MAX (elastic)")
    p.add_argument("--gpu-type", default=None, help="GPU type of the lease, e.g. A100")
    p.add_argument("--duration", default="1h", help="lease duration, e.g. 30m, 2h")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-name", default=None, help="same name again = resume (default: new)")
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--max-failures", type=int, default=3)
    p.add_argument(
        "--storage-root",
        default=os.environ.get("FASTGPU_STORAGE_ROOT", os.path.join(".fastgpu", "storage")),
        help="without a lease: shared directory for runs",
    )
    p.add_argument("--tenant", default="local", help="without a lease: tenant name for paths")
    p.add_argument("--no-lease", action="store_true", help="ignore FASTGPU_TOKEN")
    p.add_argument("--cpu-only", action="store_true", help="workers request no GPUs")
    p.add_argument("--num-workers", type=int, default=None, help="with --cpu-only; 0: in-process")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import fastgpu.train as ft

    run_name = args.run_name or time.strftime("digits-%Y%m%d-%H%M%S")
    use_lease = bool(os.environ.get("FASTGPU_TOKEN")) and not args.no_lease
    workers: int | tuple[int, int] = args.gpus
    if args.cpu_only:
        workers = args.num_workers if args.num_workers is not None else 2
    spec: dict[str, Any] = {
        "run_name": run_name,
        "workers": workers,
        "use_gpu": not args.cpu_only,
        "precision": args.precision,
        "checkpoint_every": args.checkpoint_every,
        "keep": args.keep,
        "max_failures": args.max_failures,
        "tenant": args.tenant,
        "storage_root": os.path.abspath(args.storage_root),
    }
    lease: LeaseBinding | None = None
    if use_lease:
        lease = acquire_lease(
            args.gpus, args.gpu_type, args.duration, run_name, spec["storage_root"]
        )
        spec.update(
            tenant=lease.tenant,
            storage_root=lease.storage_root,
            node_ids=lease.node_ids,
            max_gpus=lease.gpus,
            stop_at=lease.expires_at,
        )
    if workers != 0:
        import ray

        if not ray.is_initialized():
            ray.init(address=args.address, log_to_driver=True)
    config = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    try:
        outcome = ft.run("digits-classifier", config=config, **spec)
    finally:
        if lease is not None:
            lease.release()
    print(
        json.dumps(
            {
                "run_dir": str(outcome.run_dir),
                "checkpoint": str(outcome.checkpoint) if outcome.checkpoint else None,
                "metrics": outcome.metrics,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
