"""Train the digits classifier on Ray Train: elastic, mixed precision, checkpointed.

A Ray job entrypoint (``ray job submit -- python jobs/train_classifier.py ...``) and a plain
script. The model is an MLP on scikit-learn's bundled 8x8 digits (no downloads); the final
checkpoint holds weights, model config, label names and input normalization for deployment.

Two ways to get workers:

- With a platform lease (``FASTGPU_TOKEN`` set and no ``--no-lease``):
  ``fastgpu.train.acquire_lease`` asks the platform for ``--gpus MIN:MAX`` GPUs of
  ``--gpu-type`` for ``--duration``, binds the lease to this run and trains on the lease's
  nodes only; the tenant and storage root come from the token. Under ``fastgpu job submit``
  the flags default to the lease given there.
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
from typing import Any


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Defaults come from the lease `fastgpu job submit --gpus ...` describes, if any.
    env = os.environ
    p.add_argument(
        "--gpus",
        type=parse_gpus,
        default=parse_gpus(env["FASTGPU_GPUS"]) if env.get("FASTGPU_GPUS") else 1,
        help="N or MIN:MAX (elastic)",
    )
    p.add_argument(
        "--gpu-type", default=env.get("FASTGPU_GPU_TYPE"), help="GPU type of the lease, e.g. A100"
    )
    p.add_argument(
        "--duration", default=env.get("FASTGPU_DURATION", "1h"), help="lease duration, e.g. 2h"
    )
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
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker reserves")
    p.add_argument("--num-workers", type=int, default=None, help="with --cpu-only; 0: in-process")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import fastgpu.train as ft

    run_name = args.run_name or time.strftime("digits-%Y%m%d-%H%M%S")
    has_token = os.environ.get("FASTGPU_TOKEN") or os.environ.get("FASTGPU_TOKEN_FILE")
    use_lease = bool(has_token) and not args.no_lease
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
        "cpus_per_worker": args.cpus_per_worker,
        "tenant": args.tenant,
        "storage_root": os.path.abspath(args.storage_root),
    }
    lease: ft.LeaseBinding | None = None
    if use_lease:
        # The platform's job id names the lease request, so `fastgpu job status` finds it.
        lease = ft.acquire_lease(
            args.gpus,
            args.gpu_type,
            args.duration,
            run_name,
            request_id=os.environ.get("FASTGPU_LEASE_REQUEST_ID"),
        )
        spec.update(
            tenant=lease.tenant,
            storage_root=lease.storage_root,
            workers=lease.workers,
            stop_at=lease.expires_at,
            **lease.placement(),
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
