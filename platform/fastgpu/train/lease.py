"""Training on a platform lease: request, hand over (bind), train on its raylets, release.

The lease is raylets in the tenant's own Ray cluster labelled ``fastgpu.io/lease=<id>``
(issue 9): the run selects them by that label, with at most the lease's GPUs as workers, and
its files go to the tenant's storage folder (named by tenant id). Binding hands the lease
over: the keeper's group on the raylets goes, so Ray Train makes its own there (a placement
group cannot nest inside another); the raylets stay the lease's, and nothing outside the
tenant's cluster can take their GPUs between the hand-over and the run's start. While bound,
the lease is metered as usual; releasing it when the run ends (or fails) closes the record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastgpu.domain.lease import LEASE_LABEL
from fastgpu.errors import FastGPUError
from fastgpu.sdk import Client, Lease
from fastgpu.timeutil import parse_iso
from fastgpu.train.checkpoints import run_dir
from fastgpu.train.loop import STOP_FILE
from fastgpu.train.trainer import TrainOutcome, run


@dataclass
class LeaseBinding:
    """What a training run needs from a bound lease."""

    lease: Lease
    tenant: str
    storage_root: str
    #: The lease's hosts, one per GPU: a change means the lease moved or changed size.
    node_ids: list[str]
    gpus: int
    min_gpus: int
    expires_at: float | None

    @property
    def label_selector(self) -> dict[str, str]:
        """What selects the lease's raylets in the tenant's cluster."""
        return {LEASE_LABEL: self.lease.id}

    def placement(self) -> dict[str, Any]:
        """How the run's workers find the lease's GPUs (``run``'s keyword arguments)."""
        return {"label_selector": self.label_selector, "max_gpus": self.gpus}

    def release(self) -> None:
        if self.lease.refresh().held or self.lease.state in ("PENDING", "ADMITTED"):
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
    workload: str | None = None,
) -> LeaseBinding:
    """Request a lease of ``gpus`` (N or (MIN, MAX)), wait for it and bind it to the run
    (``workload``, default ``train:<run_name>``)."""
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
        lease.bind(workload or f"train:{run_name}")
    except BaseException:
        lease.release()
        raise
    expires = lease.expires_at
    return LeaseBinding(
        lease=lease,
        tenant=str(me["storage_key"]),
        storage_root=str(me["storage_root"]),
        node_ids=list(lease.nodes),
        gpus=lease.held_gpus,
        min_gpus=min(low, lease.held_gpus),
        expires_at=parse_iso(expires, "expires_at") if expires else None,
    )


@dataclass
class LeaseRun:
    """What :func:`run_on_lease` did: the final outcome, the lease, and one entry per segment
    (the run restarts from its checkpoint whenever the lease changes size or nodes)."""

    outcome: TrainOutcome
    lease: Lease
    segments: list[tuple[int, list[str]]] = field(default_factory=list)
    stopped_by: str | None = None


class _LeaseWatcher(threading.Thread):
    """Follows the lease while a segment trains: when the scheduler resizes it, moves it or
    announces its preemption, drops the STOP file so every worker checkpoints and returns;
    tells the platform about each new checkpoint (preemption then loses least work)."""

    def __init__(self, client: Client, binding: LeaseBinding, folder: Path, poll_s: float) -> None:
        super().__init__(name="fastgpu-lease-watcher", daemon=True)
        self._client = Client(token=client.token, address=client.address)
        self._binding = binding
        self._folder = folder
        self._poll_s = poll_s
        self._done = threading.Event()
        self.reason: str | None = None
        self._last_step = -1

    def run(self) -> None:
        from fastgpu.train.checkpoints import CheckpointStore

        while not self._done.wait(self._poll_s):
            try:
                lease = self._client.get_lease(self._binding.lease.id)
                why = lease_change(self._binding, lease)
                latest = CheckpointStore(self._folder, keep=1_000_000).latest()
                # Not once the lease changed: on the pool a checkpoint reported after a shrink
                # lets the GPUs go, and this one predates the workers' last save.
                if not why and latest is not None and latest.step > self._last_step:
                    self._last_step = latest.step
                    lease.report_checkpoint()
            except FastGPUError:
                continue  # the platform is briefly unreachable: look again next time
            if why:
                self.reason = why
                self._folder.mkdir(parents=True, exist_ok=True)
                (self._folder / STOP_FILE).write_text(why)
                return

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def lease_change(binding: LeaseBinding, lease: Lease) -> str | None:
    """Why the lease no longer matches what the run started on (None: it does)."""
    if not lease.held:
        return f"lease {lease.state.lower()}"
    if lease.preempt_at:
        return f"preemption announced for {lease.preempt_at}"
    if lease.held_gpus != binding.gpus or sorted(lease.nodes) != sorted(binding.node_ids):
        return f"lease resized {binding.gpus} -> {lease.held_gpus} GPUs"
    return None


def await_lease_gpus(lease_id: str, gpus: int, timeout_s: float = 120.0) -> bool:
    """Wait until the live nodes labelled with the lease hold ``gpus`` GPUs in this driver's
    Ray cluster (a tenant cluster); False on timeout (the run then starts with what is there
    and Train's elastic monitor picks up the rest)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        held = sum(
            int((node.get("Resources") or {}).get("GPU", 0))
            for node in ray.nodes()
            if node.get("Alive") and (node.get("Labels") or {}).get(LEASE_LABEL) == lease_id
        )
        if held == gpus:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


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
    poll_s: float = 1.0,
    **spec: Any,
) -> LeaseRun:
    """Train ``train_fn`` on a new lease of ``gpus`` GPUs (N or (MIN, MAX)), then release it.

    ``spec`` takes the other :class:`~fastgpu.train.TrainSpec` fields (precision,
    checkpoint_every, keep, ...); tenant, storage root, workers, nodes and the stop time come
    from the lease. The run follows the lease: when the scheduler grows or shrinks it, the run
    checkpoints, and continues from that checkpoint with the new worker count on the new nodes;
    when the lease's preemption is announced or it is about to expire, the run checkpoints and
    stops cleanly (resubmitting the same ``run_name`` continues it).
    """
    client = client or Client()
    binding = acquire_lease(
        gpus, gpu_type, duration, run_name, client=client, request_id=request_id
    )
    segments: list[tuple[int, list[str]]] = []
    try:
        while True:
            folder = run_dir(binding.storage_root, binding.tenant, run_name)
            (folder / STOP_FILE).unlink(missing_ok=True)
            watcher = _LeaseWatcher(client, binding, folder, poll_s)
            watcher.start()
            segments.append((binding.gpus, list(binding.node_ids)))
            try:
                outcome = run(
                    train_fn,
                    config=config,
                    run_name=run_name,
                    tenant=binding.tenant,
                    storage_root=binding.storage_root,
                    workers=binding.workers,
                    stop_at=binding.expires_at,
                    **binding.placement(),
                    **spec,
                )
            finally:
                watcher.stop()
            stopped = (folder / STOP_FILE).exists()
            (folder / STOP_FILE).unlink(missing_ok=True)
            lease = binding.lease.refresh()
            if not stopped or not lease.held or lease.preempt_at:
                return LeaseRun(outcome, lease, segments, watcher.reason if stopped else None)
            # The GPUs a shrink gives back go once the work is saved (now), and a grow's
            # raylets take seconds to join; start when the cluster matches.
            lease.report_checkpoint()
            await_lease_gpus(lease.id, lease.held_gpus)
            binding = replace(
                binding,
                lease=lease,
                node_ids=list(lease.nodes),
                gpus=lease.held_gpus,
                min_gpus=min(binding.min_gpus, lease.held_gpus),
            )
    finally:
        binding.release()
