"""Training on a platform lease: request, hand over (bind), train pinned to its nodes, release.

The hand-over: Ray Train creates its own placement group, which cannot nest inside the lease's.
So the lease is *bound* first: the controller removes the lease's group but keeps its GPUs in
its ledger (nothing else is admitted into them), and the run starts with
``label_selector={"ray.io/node-id": "in(<lease nodes>)"}`` and at most the lease's GPUs as
workers. Between the two steps Ray's resources on those nodes are briefly unreserved; only a
workload that bypasses the platform could take them, and then the run waits for them (it never
lands on GPUs outside the lease). While bound, the lease is metered as usual; releasing it when
the run ends (or fails) closes the record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastgpu.sdk import Client, Lease
from fastgpu.timeutil import parse_iso
from fastgpu.train.trainer import TrainOutcome, run


@dataclass
class LeaseBinding:
    """What a training run needs from a bound lease."""

    lease: Lease
    tenant: str
    storage_root: str
    node_ids: list[str]
    gpus: int
    min_gpus: int
    expires_at: float | None

    def release(self) -> None:
        self.lease.release()

    @property
    def workers(self) -> int | tuple[int, int]:
        return (self.min_gpus, self.gpus) if self.min_gpus < self.gpus else self.gpus


def acquire_lease(
    gpus: int | tuple[int, int],
    gpu_type: str | None,
    duration: str | float | None,
    run_name: str,
    *,
    client: Client | None = None,
    request_id: str | None = None,
    timeout: float | None = None,
) -> LeaseBinding:
    """Request a lease of ``gpus`` (N or (MIN, MAX)), wait for it and bind it to the run."""
    client = client or Client()
    low, high = gpus if isinstance(gpus, tuple) else (gpus, gpus)
    me = client.whoami()
    lease = client.request_lease(
        high,
        gpu_type,
        duration,
        min_gpus=low if low != high else None,
        request_id=request_id,
        wait=True,
        timeout=timeout,
    )
    try:
        lease.bind(f"train:{run_name}")
    except BaseException:
        lease.release()
        raise
    expires = lease.expires_at
    return LeaseBinding(
        lease=lease,
        tenant=str(me["tenant"]),
        storage_root=str(me["storage_root"]),
        node_ids=list(lease.nodes),
        gpus=lease.held_gpus,
        min_gpus=min(low, lease.held_gpus),
        expires_at=parse_iso(expires, "expires_at") if expires else None,
    )


def run_on_lease(
    train_fn: Callable[[dict[str, Any]], Any] | str,
    *,
    gpus: int | tuple[int, int],
    run_name: str,
    gpu_type: str | None = None,
    duration: str | float | None = "1h",
    config: Mapping[str, Any] | None = None,
    client: Client | None = None,
    request_id: str | None = None,
    **spec: Any,
) -> TrainOutcome:
    """Train ``train_fn`` on a new lease of ``gpus`` GPUs, then release the lease.

    ``spec`` takes the other :class:`~fastgpu.train.TrainSpec` fields (precision,
    checkpoint_every, keep, ...); tenant, storage root, workers, nodes and the stop time come
    from the lease. The run checkpoints and stops before the lease expires.
    """
    binding = acquire_lease(
        gpus, gpu_type, duration, run_name, client=client, request_id=request_id
    )
    try:
        return run(
            train_fn,
            config=config,
            run_name=run_name,
            tenant=binding.tenant,
            storage_root=binding.storage_root,
            workers=binding.workers,
            node_ids=binding.node_ids,
            max_gpus=binding.gpus,
            stop_at=binding.expires_at,
            **spec,
        )
    finally:
        binding.release()
