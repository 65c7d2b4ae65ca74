"""A bound elastic lease on the pool follows its resizes: raylets added, raylets stopped.

Growing starts a raylet for the new devices at once (once any drain holding them has ended);
the workload sees the lease's new size and brings workers up there. Shrinking commits the new
size at once (the policy may give the devices to someone else), but the raylets that hold the
devices the lease gives back keep running until the grace ends, the workload reports a
checkpoint, or Ray has stopped them, whichever comes first: a start that was given those
devices waits for that (the drain, :mod:`fastgpu.controller.pool_ledger`). A drain begins by
marking its raylets draining in Ray (the keeper's ``drain``): nothing new is placed there
during the grace, Serve moves what it still runs there, and Ray stops a drained raylet once
nothing runs on it. A drain stops raylets by their key (lease, host, part), so a raylet for a
device a drain of the lease holds starts only after that drain.

Which raylets to keep, stop or split is :func:`~fastgpu.controller.pool_resize.plan_resize`'s
decision; when a shrink has a choice (a host keeps some of two parts or more), the tenant's
keeper is asked first which raylets hold live actors of the workload (a Serve replica, a Train
worker), so that those are kept and idle ones stop. Actors the workload is stopping already
(Serve's replicas in STOPPING or PENDING_MIGRATION, told by :attr:`ElasticRaylets.stopping`)
do not count. When the keeper cannot answer in :data:`BUSY_TIMEOUT_S` the shrink goes on
without it (the order alone picks), and a drain without marking its raylets.

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
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from fastgpu.config import PlatformConfig
from fastgpu.controller.backend import GROUP_PREFIX, gpu_bundle
from fastgpu.controller.clusters import TenantClusters
from fastgpu.controller.pool_ledger import DeviceLedger, Drain, Reservation
from fastgpu.controller.pool_resize import Devices, ResizePlan, busy_parts, plan_resize
from fastgpu.pool.hosts import Host

if TYPE_CHECKING:
    from fastgpu.pool.tenant_cluster import TenantCluster

log = logging.getLogger(__name__)

#: How long a start waits for a drain past its deadline before it gives up.
DRAIN_SLACK_S = 60.0
#: How often a drain looks whether Ray has stopped its raylets already.
DRAIN_POLL_S = 1.0
#: How long a shrink waits for the keeper to say which raylets hold the workload (the caller
#: holds the controller's lock; a keeper busy with a long call answers late).
BUSY_TIMEOUT_S = 2.0

#: Per tenant, the ids of actors its workload is stopping already (tenant id -> actor ids).
StoppingActors = Callable[[str], Collection[str]]

Parts = dict[tuple[str, int], tuple[int, ...]]


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


def has_choice(parts: Parts, want: Mapping[str, int]) -> bool:
    """Whether a resize keeps some, not all, of a host's live GPUs held by two parts or more:
    only then does it matter which parts are busy."""
    for host in {h for h, _ in parts}:
        mine = [ids for (h, _), ids in parts.items() if h == host]
        if len(mine) > 1 and 0 < want.get(host, 0) < sum(len(ids) for ids in mine):
            return True
    return False


def _now(plan: ResizePlan) -> Devices:
    """Devices of ``plan.restart`` started at once: on hosts with nothing to drain (their
    raylet died); a split part's kept devices start after its drain."""
    drained = {h for h, _ in plan.drain}
    return {h: ids for h, ids in plan.restart.items() if h not in drained}


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
        #: Asked on a shrink: actors being stopped, which leave their raylet idle (the Serve
        #: gateway adds Serve's replicas in STOPPING).
        self.stopping: list[StoppingActors] = []
        self.busy_timeout_s = BUSY_TIMEOUT_S
        # Its own threads: a keeper call that hangs never holds a start's worker.
        self._asks = cf.ThreadPoolExecutor(2, thread_name_prefix="fastgpu-busy")
        #: Per lease, the raylets a resize is starting (host, part) -> devices: parts of the
        #: lease for the next resize (never started twice; a shrink may stop one, as idle).
        self._starting: dict[str, Parts] = {}

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
            parts = {**self._starting.get(lease_id, {}), **parts}
        want = Counter(nodes)
        asked = time.monotonic()
        busy = self.busy(res, parts) if has_choice(parts, want) else None
        asked = time.monotonic() - asked
        with self.ledger.lock:
            if self.ledger.reservations.get(lease_id) is not res:
                return
            plan = plan_resize(res.devices, parts, want, busy or ())
            # A device whose raylet is still starting is not dead: never start it twice.
            plan.restart = {
                h: left
                for h, ids in plan.restart.items()
                if (left := tuple(d for d in ids if (h, d) not in res.starting))
            }
            if not plan.changes:
                res.devices = dict(plan.keep)  # devices whose raylet died are dropped
                return
            grown, waits = self.ledger.pick(plan.grow)
            # A device whose raylet died while a drain of the lease holds it (a drained raylet
            # Ray stopped early: nothing ran there) starts again once that drain has ended:
            # the drain stops the raylet under its key, which must not be the new one.
            waits += [d for d in self.ledger.draining(_now(plan)) if d not in waits]
            kept = {(h, d) for h, ids in plan.keep.items() for d in ids}
            # Every drained part's devices (one dict entry per part, not per host, left all
            # but a host's last part out of the drain: free at once while their raylet ran on,
            # and a grow given one "started" it by finding that raylet under its key).
            leaving: Devices = {}
            for h, p in plan.drain:
                gone = {d for d in parts[(h, p)] if (h, d) not in kept}
                leaving[h] = tuple(sorted(set(leaving.get(h, ())) | gone))
            drain = self.ledger.drain(lease_id, res.tenant_id, leaving, self.grace_s, metered=True)
            res.devices = _merge(plan.keep, grown)
            res.starting |= {(h, d) for h, ids in _merge(grown, plan.restart).items() for d in ids}
            starting = self._starting.setdefault(lease_id, {})
            for h, ids in _merge(grown, _now(plan)).items():  # as _grow starts them: one a host
                starting[(h, min(ids))] = ids
        if busy is not None:
            log.info("lease %s: busy raylets %s (asked in %.2f s)", lease_id, busy, asked)
        log.info("lease %s resized to %d GPUs: %s", lease_id, res.gpus, plan)
        self._pool.submit(self._grow, res, grown, plan, waits)
        threading.Thread(
            target=self._drain, args=(res, plan, drain), name="fastgpu-drain", daemon=True
        ).start()

    def busy(self, res: Reservation, parts: Parts) -> set[tuple[str, int]]:
        """The lease's parts holding live actors of its workload, as its keeper says (empty
        when it cannot say in ``busy_timeout_s``: the order alone picks then)."""
        cluster = self.clusters.get(res.tenant_id)
        asked = self._asks.submit(cluster.call, "actors", lease=res.lease_id)
        try:
            nodes = asked.result(timeout=self.busy_timeout_s)
            stopping = {a for source in self.stopping for a in source(res.tenant_id)}
            log.debug(
                "lease %s: actors per raylet %s; on their way out %s",
                res.lease_id,
                {(n.get("host"), n.get("part")): n.get("actors") for n in nodes},
                sorted(stopping),
            )
            return busy_parts(nodes, parts, stopping)
        except Exception as exc:  # a shrink never fails for want of this
            log.info("lease %s: which raylets hold its workload is unknown: %r", res.lease_id, exc)
            return set()

    def add(self, res: Reservation, devices: Mapping[str, tuple[int, ...]]) -> None:
        """Start a raylet of the lease for each host's ``devices``; one that fails is logged
        (and reported missing)."""
        cluster = self.clusters.get(res.tenant_id)
        bundle = self.bundle(res)
        for host, ids in sorted(devices.items()):
            try:
                with self.ledger.lock:  # a shrink meanwhile may have given some back
                    ids = tuple(d for d in ids if d in res.devices.get(host, ()))
                if ids and not res.cancelled:
                    cpus = raylet_cpus(bundle, len(ids))
                    cluster.add_raylet(res.lease_id, self.hosts[host], ids, cpus=cpus)
            except Exception:
                log.exception("starting lease %s's raylet on %s failed", res.lease_id, host)
            finally:
                self._started(res, {host: devices[host]})

    def _started(self, res: Reservation, devices: Mapping[str, tuple[int, ...]]) -> None:
        """These devices' raylets are started, or never will be: no longer starting."""
        with self.ledger.lock:
            res.starting -= {(h, d) for h, ids in devices.items() for d in ids}
            starting = self._starting.get(res.lease_id, {})
            for (h, part), ids in list(starting.items()):
                if set(ids) & set(devices.get(h, ())):
                    del starting[(h, part)]
            if not starting:
                self._starting.pop(res.lease_id, None)

    def _grow(self, res: Reservation, grown: Devices, plan: ResizePlan, waits: list[Drain]) -> None:
        try:
            await_drains(res, waits)
        except TimeoutError:
            log.exception("lease %s cannot grow", res.lease_id)
            self._started(res, grown)
            grown = {}
        self.add(res, _merge(grown, _now(plan)))

    def _drain(self, res: Reservation, plan: ResizePlan, drain: Drain) -> None:
        """After the grace (or a checkpoint): stop the parts the lease gives back, then start
        the devices it keeps of a split part."""
        try:
            if not plan.drain:
                return
            cluster = self.clusters.get(res.tenant_id)
            marked = self._unschedulable(cluster, res, plan.drain, drain)
            if marked:
                self._wait_drained(cluster, res, plan.drain, drain)
            else:
                drain.wait_due()
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

    def _unschedulable(
        self, cluster: TenantCluster, res: Reservation, parts: list[tuple[str, int]], drain: Drain
    ) -> bool:
        """Tell Ray that these raylets of the lease are draining until the drain's deadline
        (the keeper's ``drain``): nothing new is placed there, and Serve moves what it runs
        there elsewhere before they stop. A raylet left schedulable during the grace may get
        a replica that Serve then routes requests to, and it dies with the raylet. When the
        keeper does not answer in ``busy_timeout_s`` (busy with a long call), the drain goes
        on as before, to its deadline or a checkpoint, and the keeper drops the late request
        (``until``: a new raylet with the same labels may run by then). Whether every raylet
        was marked in time."""
        left = max(0.0, drain.deadline - time.monotonic())
        until = time.time() + self.busy_timeout_s
        marked = True
        for host, part in parts:
            asked = self._asks.submit(
                cluster.call,
                "drain",
                lease=res.lease_id,
                host=host,
                part=part,
                deadline_s=left,
                until=until,
            )
            try:
                asked.result(timeout=max(0.0, until - time.time()))
            except Exception as exc:  # a shrink never fails for want of this
                marked = False
                log.info(
                    "lease %s: raylet %s/%s stays schedulable while it drains: %r",
                    res.lease_id,
                    host,
                    part,
                    exc,
                )
        return marked

    def _wait_drained(
        self, cluster: TenantCluster, res: Reservation, parts: list[tuple[str, int]], drain: Drain
    ) -> None:
        """Until the grace ends, the workload checkpoints, or every raylet in ``parts`` has
        stopped by itself (Ray stops a raylet marked draining once nothing runs there): the
        devices are given back as soon as nothing holds them."""
        keys = {(res.lease_id, host, part) for host, part in parts}
        while not drain.early.wait(min(DRAIN_POLL_S, max(0.0, drain.deadline - time.monotonic()))):
            if time.monotonic() >= drain.deadline or not keys & cluster.raylets().keys():
                return

    def close(self) -> None:
        self._asks.shutdown(wait=False, cancel_futures=True)

    def checkpointed(self, name: str) -> None:
        """The lease's workload saved its state: GPUs it is giving back may go now."""
        if self.ledger.hurry(name.removeprefix(GROUP_PREFIX)):
            log.info("%s checkpointed: the raylets it gives back stop now", name)
