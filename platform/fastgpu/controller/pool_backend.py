"""The controller's backend over the pool: a lease's "placement group" is its raylets in the
tenant's own cluster plus the group the keeper makes on them.

It implements :class:`~fastgpu.controller.backend.Backend` (nodes, create_group,
remove_group, groups, ready), so the controller's rules stay in one place; reserving takes
seconds (a head, raylets), so it runs on worker threads and :meth:`ready` reports it done.
Node ids are host names.

A reservation's life: ``starting`` (head, raylets, group being made) -> ``ready`` (the group
is ready in the tenant's cluster) or ``failed`` (reported by :meth:`groups` as state FAILED,
with the error, for reconcile to end the lease). Removal cancels a start in progress, then
stops the lease's raylets (everything running on them stops with them). A bound elastic lease
follows :meth:`resize`: growing adds raylets at once, shrinking stops some after the grace
(or the workload's next checkpoint), those where none of the workload's actors runs first, as
:mod:`~fastgpu.controller.pool_resize` plans; devices
leaving a lease are *drained* (:mod:`~fastgpu.controller.pool_ledger`) so that no start uses
them before their raylet has stopped. After a restart, the
raylets found running are ``adopted``: their group is left alone (a bound lease's workload owns
its GPUs), unless the controller asks whether the lease is ready (it is still ADMITTED), which
finishes the start.

Invariants: no device is in two reservations (checked by :func:`pick_devices`); after a server
restart the reservations are rebuilt from the raylets that run (their marker and devices), so
the store and the processes are reconciled, never assumed.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections import Counter

from fastgpu.config import PlatformConfig
from fastgpu.controller.backend import GROUP_PREFIX, GroupInfo, NodeInfo
from fastgpu.controller.clusters import TenantClusters
from fastgpu.controller.pool_elastic import ElasticRaylets, await_drains, raylet_cpus
from fastgpu.controller.pool_ledger import DeviceLedger, Drain, Reservation
from fastgpu.pool.hosts import Host
from fastgpu.pool.seam import LocalPool, Pool

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


class PoolBackend:
    def __init__(
        self,
        config: PlatformConfig,
        hosts: list[Host],
        workers: int = 8,
        clusters: TenantClusters | None = None,
        pool: Pool | None = None,
    ) -> None:
        """``clusters`` replaces the tenants' clusters (unit tests pass a stand-in);
        ``pool`` says who runs raylets on which host (default: this machine, ``hosts``)."""
        self.config = config
        self.pool: Pool = pool or LocalPool(hosts)
        #: The pool's live inventory (it marks hosts lost, drained, joined in place).
        self.hosts = self.pool.hosts
        self.clusters = clusters or TenantClusters(config, pool=self.pool)
        self.clusters.prepare()
        self.ledger = DeviceLedger(self.hosts)
        self._mu = self.ledger.lock
        self._res = self.ledger.reservations
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="fastgpu-pool")
        self._adopted = False
        self._housekeeping = threading.Lock()
        #: Tenants whose idle cluster is being stopped; starts wait for it (``_stopped``).
        self._stopping: set[str] = set()
        self._stopped = threading.Condition(self._mu)
        self.elastic = ElasticRaylets(config, self.hosts, self.ledger, self.clusters, self._pool)

    # -- the policy's view -----------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        """Every host; one taking no new placements (draining) counts only the GPUs its
        leases hold, so the policy sees none free there."""
        with self._mu:
            used = Counter(
                h for r in self._res.values() for h, ids in r.devices.items() for _ in ids
            )
        return [
            NodeInfo(h.name, h.gpu_type, h.total_gpus if h.schedulable else used[h.name], h.alive)
            for h in list(self.hosts.values())
        ]

    # -- reserve ---------------------------------------------------------------------------
    def create_group(
        self,
        name: str,
        bundle: dict[str, float],
        node_ids: list[str],
        strategy: str,
        may_exist: bool = True,
        tenant: str = "",
    ) -> str:
        """Start reserving (returns at once; :meth:`ready` says when it is done)."""
        lease_id = name.removeprefix(GROUP_PREFIX)
        self._adopt_once()
        with self._mu:
            known = self._res.get(lease_id)
            if known is not None and known.state != "failed":
                return known.group_id
            devices, waits = self.ledger.pick(Counter(node_ids), exclude=lease_id)
            gpu_type = self.hosts[node_ids[0]].gpu_type if node_ids else ""
            res = Reservation(lease_id, tenant, devices, gpu_type, waits=waits)
            self._res[lease_id] = res
        self._pool.submit(self._start, res, dict(bundle))
        return ""

    def _start(self, res: Reservation, bundle: dict[str, float]) -> None:
        try:
            self._wait_not_stopping(res.tenant_id)
            await_drains(res, res.waits)
            cluster = self.clusters.ensure(res.tenant_id)
            for host, ids in sorted(res.devices.items()):
                if res.cancelled:
                    break
                cpus = raylet_cpus(bundle, len(ids))
                cluster.add_raylet(res.lease_id, self.hosts[host], ids, cpus=cpus)
            if res.cancelled:  # released meanwhile: what this start added goes too
                self._stop(res)
                return
            res.group_id = cluster.call(
                "create_group", name=res.name, gpus=res.gpus, lease=res.lease_id, bundle=bundle
            )
            if not cluster.call("ready", name=res.name, timeout_s=READY_TIMEOUT_S):
                raise TimeoutError(f"group not ready after {READY_TIMEOUT_S:.0f} s")
            res.state = "ready"
            if not res.done.done():
                res.done.set_result(True)
            log.info("lease %s reserved on %s", res.lease_id, res.devices)
        except Exception as exc:  # the lease fails through reconcile, with this reason
            log.exception("reserving lease %s failed", res.lease_id)
            res.state, res.error = "failed", str(exc) or type(exc).__name__
            if not res.done.done():
                res.done.set_result(False)

    # -- release ---------------------------------------------------------------------------
    def remove_group(self, name: str, group_id: str | None = None) -> None:
        """Stop the lease's raylets (in the background; a start in progress is cancelled),
        whether or not a workload took the lease over: what runs there stops with them."""
        lease_id = name.removeprefix(GROUP_PREFIX)
        with self._mu:
            res = self._res.pop(lease_id, None)
        if res is None:
            res = self._orphans().get(lease_id)  # raylets nobody accounts for
            if res is None:
                return
        res.cancelled = True
        with self._mu:
            drain = self.ledger.drain(lease_id, res.tenant_id, res.devices, 0.0)
        self.ledger.hurry(lease_id)  # a shrink's grace ends: everything stops now
        self._pool.submit(self._stop, res, drain)

    def _stop(self, res: Reservation, drain: Drain | None = None) -> None:
        """Stop every raylet of the lease; then its devices are free (``drain`` ends)."""
        try:
            cluster = self.clusters.get(res.tenant_id)
            # Twice: a start still running may add a raylet while the first round stops.
            for _ in range(2):
                for key in [k for k in cluster.raylets() if k[0] == res.lease_id]:
                    try:
                        cluster.remove_raylet(key)
                    except Exception:
                        log.exception("stopping lease %s's raylet %s failed", res.lease_id, key)
        finally:
            if drain is not None:
                self.ledger.drained(drain)
            if not res.done.done():
                res.done.set_result(False)

    # -- resize ----------------------------------------------------------------------------
    def resize(self, name: str, nodes: list[str]) -> None:
        self.elastic.resize(name, nodes)

    def checkpointed(self, name: str) -> None:
        self.elastic.checkpointed(name)

    def held_after(self) -> list[tuple[str, int, float, float]]:
        """GPUs leases held past a shrink, until their raylets stopped: (lease, GPUs, from,
        to), wall clock, each reported once. The controller meters them."""
        return self.ledger.take_held_after()

    # -- observe ---------------------------------------------------------------------------
    def _running(self) -> dict[str, Reservation]:
        """What runs on this machine, as reservations: lease -> tenant, hosts and devices."""
        out: dict[str, Reservation] = {}
        found = self.clusters.running_raylets()
        for (tenant_id, (lease_id, host, _)), ids in found.items():
            gpu_type = self.hosts[host].gpu_type if host in self.hosts else ""
            res = out.setdefault(
                lease_id, Reservation(lease_id, tenant_id, {}, gpu_type, state="adopted")
            )
            res.devices[host] = tuple(sorted(set(res.devices.get(host, ())) | set(ids)))
        return out

    def _orphans(self, running: dict[str, Reservation] | None = None) -> dict[str, Reservation]:
        with self._mu:
            known = set(self._res)
        running = self._running() if running is None else running
        return {k: v for k, v in running.items() if k not in known}

    def _adopt_once(self) -> None:
        """After a restart: rebuild reservations from the raylets that run on this machine
        (those still being started by the previous server's `ray start` among them: their
        devices are taken; finishing such a start waits for that command)."""
        if self._adopted:
            return
        self._adopted = True
        found = self._running()
        with self._mu:
            for lease_id, res in found.items():
                self._res.setdefault(lease_id, res)

    def groups(self) -> dict[str, GroupInfo]:
        """Every reservation, and raylets no reservation accounts for (reconcile stops those:
        a start cancelled at the wrong moment must not leak a raylet). A reservation whose
        raylet died (crashed, killed, its host lost) is RESCHEDULING, with what is missing:
        reconcile ends the lease (node lost) or, for a bound elastic one, shrinks it to the
        GPUs still there (``bundle_nodes`` then lists those only)."""
        self._adopt_once()
        # What the reservations hold and start is read before what runs: a raylet that ends
        # its start in between is then in ``running``, not taken for one that stopped (read
        # the other way round, it was neither, and reconcile shrank the lease under it).
        with self._mu:
            reservations = list(self._res.values())
            held = {r.lease_id: (dict(r.devices), set(r.starting)) for r in reservations}
        running = self._running()
        reservations += self._orphans(running).values()
        out = {}
        states = {"starting": "PENDING", "ready": "CREATED", "failed": "FAILED"}
        for res in reservations:
            state, detail = states.get(res.state, "CREATED"), res.error
            missing: set[tuple[str, int]] = set()
            devices, starting = held.get(res.lease_id, (res.devices, res.starting))
            if res.state in ("ready", "adopted"):
                live = running.get(res.lease_id)
                there = {(h, d) for h, ids in (live.devices if live else {}).items() for d in ids}
                missing = {
                    (h, d)
                    for h, ids in devices.items()
                    for d in ids
                    if (h, d) not in there and (h, d) not in starting
                }
                if missing:
                    gone = sorted({h for h, _ in missing})
                    state = "RESCHEDULING"
                    detail = (
                        f"its raylet on {', '.join(gone)} stopped "
                        f"({len(missing)} of {res.gpus} GPUs)"
                    )
            nodes = tuple(
                h for h, ids in sorted(devices.items()) for d in ids if (h, d) not in missing
            )
            out[res.name] = GroupInfo(res.name, res.group_id, state, "", nodes, detail)
        return out

    def hand_over(self, name: str, group_id: str | None = None) -> None:
        """A workload (Train, Tune, Serve) takes the lease: remove only the keeper's group, so
        the workload makes its own on the lease's raylets; the raylets stay."""
        res = self._res.get(name.removeprefix(GROUP_PREFIX))
        if res is not None:
            self.clusters.get(res.tenant_id).call("remove_group", name=name)

    def failures(self, names: list[str]) -> dict[str, str]:
        """The errors of reservations among ``names`` that failed."""
        out = {}
        for name in names:
            res = self._res.get(name.removeprefix(GROUP_PREFIX))
            if res is not None and res.state == "failed":
                out[name] = res.error
        return out

    def group_id(self, name: str) -> str | None:
        res = self._res.get(name.removeprefix(GROUP_PREFIX))
        return res.group_id or None if res else None

    def ready(self, names: list[str], timeout_s: float = 0.0) -> set[str]:
        """Which of these (ADMITTED leases') reservations are ready; an adopted one is asked
        about only when its lease never became RESERVED: its start is finished now."""
        with self._mu:
            for n in names:
                res = self._res.get(n.removeprefix(GROUP_PREFIX))
                if res is not None and res.state == "adopted":
                    res.state = "starting"
                    self._pool.submit(self._start, res, self.elastic.bundle(res))
            wanted = [
                self._res[n.removeprefix(GROUP_PREFIX)]
                for n in names
                if n.removeprefix(GROUP_PREFIX) in self._res
            ]
        if timeout_s > 0 and wanted:
            cf.wait([r.done for r in wanted], timeout=timeout_s)
        return {r.name for r in wanted if r.state == "ready"}

    def ready_future(self, name: str) -> cf.Future[bool] | None:
        """A new future per caller, done with the reservation (a waiter that gives up cancels
        its own future, never the reservation's)."""
        res = self._res.get(name.removeprefix(GROUP_PREFIX))
        if res is None:
            return None
        mine: cf.Future[bool] = cf.Future()

        def relay(done: cf.Future[bool]) -> None:
            if mine.set_running_or_notify_cancel():
                mine.set_result(done.result())

        res.done.add_done_callback(relay)
        return mine

    def connect(self, tenant_id: str, tenant_name: str) -> dict[str, str]:
        """The tenant's cluster, started if needed (seconds when cold): its GCS address, its
        dashboard (Jobs API) and its Ray token, valid on that cluster only."""
        self._wait_not_stopping(tenant_id)
        cluster = self.clusters.ensure(tenant_id, tenant_name)
        with self._mu:
            busy = any(r.tenant_id == tenant_id for r in self._res.values())
        if not busy:
            self.clusters.touch(tenant_id)  # idle time counts from now, not from its start
        return {
            "address": cluster.address,
            "dashboard_url": cluster.dashboard_url,
            "ray_token": cluster.token_path.read_text().strip(),
            "isolation": self.clusters.isolation,
        }

    def secret(self, tenant_id: str, name: str, value: str) -> str:
        """Keep ``value`` in a 0600 file of the tenant's user in its cluster home (how a job
        gets its FastGPU token: the path travels, the value never does); return the path."""
        return str(self.clusters.get(tenant_id).write_secret(name, value))

    def housekeeping(self) -> None:
        """Stop tenants' clusters idle for ``idle_timeout_s`` (no lease, no driver), on a
        worker thread: the controller's pass never waits for it."""
        if self._housekeeping.locked():
            return
        with self._mu:
            busy = {r.tenant_id for r in self._res.values()}
        if not self.clusters.known().keys() - busy:
            return
        self._pool.submit(self._stop_idle, busy)

    def _stop_idle(self, busy: set[str]) -> None:
        if not self._housekeeping.acquire(blocking=False):
            return
        try:
            for cluster in self.clusters.idle(busy):
                tenant = cluster.spec.tenant_id
                with self._mu:
                    if any(r.tenant_id == tenant for r in self._res.values()):
                        continue  # a lease arrived meanwhile
                    self._stopping.add(tenant)
                try:
                    log.info("tenant %s's cluster is idle: stopping it", tenant)
                    cluster.stop()
                    self.clusters.stopped(tenant)
                finally:
                    with self._mu:
                        self._stopping.discard(tenant)
                        self._stopped.notify_all()
        finally:
            self._housekeeping.release()

    def _wait_not_stopping(self, tenant_id: str) -> None:
        """A cluster being stopped finishes stopping before anything starts it again."""
        with self._mu:
            self._stopped.wait_for(lambda: tenant_id not in self._stopping, timeout=120)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.elastic.close()
        self.pool.close()
