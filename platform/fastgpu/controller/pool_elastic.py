"""A bound elastic lease on the pool follows its resizes: raylets added, raylets stopped.

Growing starts a raylet for the new devices at once (once any drain holding them has ended);
the workload sees the lease's new size and brings workers up there. Shrinking commits the new
size at once (the policy may give the devices to someone else), but the raylets that hold the
devices the lease gives back keep running until the grace ends or the workload reports a
checkpoint, whichever comes first: a start that was given those devices waits for that (the
drain, :mod:`fastgpu.controller.pool_ledger`). Which raylets to keep, stop or split is
:func:`~fastgpu.controller.pool_resize.plan_resize`'s decision.

A raylet that fails to start is not retried: :meth:`PoolBackend.groups` reports its devices
missing and reconcile shrinks the lease to what runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping

from fastgpu.config import PlatformConfig
from fastgpu.controller.backend import GROUP_PREFIX, gpu_bundle
from fastgpu.controller.clusters import TenantClusters
from fastgpu.controller.pool_ledger import DeviceLedger, Drain, Reservation
from fastgpu.controller.pool_resize import Devices, ResizePlan, plan_resize
from fastgpu.pool.hosts import Host

log = logging.getLogger(__name__)

#: How long a start waits for a drain past its deadline before it gives up.
DRAIN_SLACK_S = 60.0


def raylet_cpus(bundle: Mapping[str, float], gpus: int) -> int:
    """CPUs of a raylet holding ``gpus`` GPUs: the raylet is the tenant's whole node, so at
    least a CPU per GPU (a Train worker takes 1 CPU + 1 GPU by default)."""
    return max(1, math.ceil(bundle.get("CPU", 0))) * gpus


def await_drains(res: Reservation, drains: list[Drain]) -> None:
    """Devices another lease is giving back: wait until their raylets have stopped."""
    for drain in drains:
        left = max(0.0, drain.deadline - time.monotonic()) + DRAIN_SLACK_S
        if not drain.finished.wait(left) and not res.cancelled:
            raise TimeoutError(
                f"devices {drain.devices} of lease {drain.lease_id} were not given back"
            )


def _merge(a: Mapping[str, tuple[int, ...]], b: Mapping[str, tuple[int, ...]]) -> Devices:
    return {h: tuple(sorted(a.get(h, ()) + b.get(h, ()))) for h in set(a) | set(b)}


class ElasticRaylets:
    def __init__(
        self,
        config: PlatformConfig,
        hosts: Mapping[str, Host],
        ledger: DeviceLedger,
        clusters: TenantClusters,
        pool: cf.ThreadPoolExecutor,
    ) -> None:
        self.config = config
        self.hosts = hosts
        self.ledger = ledger
        self.clusters = clusters
        self._pool = pool
        #: Seconds a shrunk lease keeps the GPUs it gives back, for its workload's checkpoint.
        self.grace_s = config.scheduler.grace_s

    def bundle(self, res: Reservation) -> dict[str, float]:
        return gpu_bundle(self.config.gpu_types.get(res.gpu_type))

    def resize(self, name: str, nodes: list[str]) -> None:
        """A bound lease's new placement (GPUs per host): start raylets for new devices now;
        stop those it gives back after the grace, or at its workload's next checkpoint."""
        lease_id = name.removeprefix(GROUP_PREFIX)
        res = self.ledger.reservations.get(lease_id)
        if res is None or res.state == "failed":
            return
        cluster = self.clusters.get(res.tenant_id)
        parts = {
            (h, p): ids for (lease, h, p), ids in cluster.raylets().items() if lease == lease_id
        }
        with self.ledger.lock:
            if self.ledger.reservations.get(lease_id) is not res:
                return
            plan = plan_resize(res.devices, parts, Counter(nodes))
            if not plan.changes:
                res.devices = dict(plan.keep)  # devices whose raylet died are dropped
                return
            grown, waits = self.ledger.pick(plan.grow)
            kept = {d for ids in plan.keep.values() for d in ids}
            leaving = {h: tuple(d for d in parts[(h, p)] if d not in kept) for h, p in plan.drain}
            drain = self.ledger.drain(lease_id, res.tenant_id, leaving, self.grace_s, metered=True)
            res.devices = _merge(plan.keep, grown)
            res.starting |= {(h, d) for h, ids in _merge(grown, plan.restart).items() for d in ids}
        log.info("lease %s resized to %d GPUs: %s", lease_id, res.gpus, plan)
        self._pool.submit(self._grow, res, grown, plan, waits)
        threading.Thread(
            target=self._drain, args=(res, plan, drain), name="fastgpu-drain", daemon=True
        ).start()

    def add(self, res: Reservation, devices: Mapping[str, tuple[int, ...]]) -> None:
        """Start a raylet of the lease for each host's ``devices``; one that fails is logged
        (and reported missing)."""
        cluster = self.clusters.get(res.tenant_id)
        bundle = self.bundle(res)
        for host, ids in sorted(devices.items()):
            try:
                if not res.cancelled:
                    cpus = raylet_cpus(bundle, len(ids))
                    cluster.add_raylet(res.lease_id, self.hosts[host], ids, cpus=cpus)
            except Exception:
                log.exception("starting lease %s's raylet on %s failed", res.lease_id, host)
            finally:
                with self.ledger.lock:
                    res.starting -= {(host, d) for d in ids}

    def _grow(self, res: Reservation, grown: Devices, plan: ResizePlan, waits: list[Drain]) -> None:
        drained = {h for h, _ in plan.drain}
        now = {h: ids for h, ids in plan.restart.items() if h not in drained}
        try:
            await_drains(res, waits)
        except TimeoutError:
            log.exception("lease %s cannot grow", res.lease_id)
            with self.ledger.lock:
                res.starting -= {(h, d) for h, ids in grown.items() for d in ids}
            grown = {}
        self.add(res, _merge(grown, now))

    def _drain(self, res: Reservation, plan: ResizePlan, drain: Drain) -> None:
        """After the grace (or a checkpoint): stop the parts the lease gives back, then start
        the devices it keeps of a split part."""
        try:
            if not plan.drain:
                return
            drain.wait_due()
            cluster = self.clusters.get(res.tenant_id)
            for host, part in plan.drain:
                try:
                    cluster.remove_raylet((res.lease_id, host, part))
                except Exception:
                    log.exception(
                        "stopping lease %s's raylet %s/%s failed", res.lease_id, host, part
                    )
            drained = {h for h, _ in plan.drain}
            self.add(res, {h: ids for h, ids in plan.restart.items() if h in drained})
        finally:
            self.ledger.drained(drain)

    def checkpointed(self, name: str) -> None:
        """The lease's workload saved its state: GPUs it is giving back may go now."""
        if self.ledger.hurry(name.removeprefix(GROUP_PREFIX)):
            log.info("%s checkpointed: the raylets it gives back stop now", name)
