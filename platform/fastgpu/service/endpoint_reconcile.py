"""Endpoints follow Serve: the lease grows and shrinks with the replicas Serve wants, a version
rolling in takes over once it runs (or is dropped, saying why), and the tenant's Serve is kept
running the config the store describes.

One pass (:meth:`EndpointReconciler.step`, every ``endpoints.reconcile_interval_s`` of the
config, on its own thread), per tenant
with endpoints:

1. the tenant's cluster is kept alive (an endpoint is a live workload) and Serve's view read;
   missing applications (a restarted cluster) are deployed again;
2. per endpoint, a version rolling in with a replica running becomes the serving one (the
   proxy's route switches, then the old application goes); one that failed to deploy is dropped and
   its error kept in ``message``: the previous version never stopped serving;
3. per endpoint, :func:`fastgpu.endpoints.autoscale.decide` on Serve's target replicas: a lease
   is requested (elastic, one replica's GPUs at least), its maximum follows the demand (the
   scheduler grows it; a shrink gives GPUs back now), or it is released after ``endpoints.idle_s``
   without demand. A lease that became RESERVED is bound to the workload ``endpoint:<name>``
   (its GPU-seconds are metered under that name) and only then does the config name its
   resource: a replica waiting for it would otherwise take the raylet's GPUs before the
   lease's own placement group, which then never becomes ready.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from fastgpu.auth import Principal
from fastgpu.domain.endpoint import EndpointRecord
from fastgpu.domain.lease import LeaseState
from fastgpu.endpoints.autoscale import LEAVING_STATES, Action, Demand, decide
from fastgpu.service.models import LeaseCreate

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller
    from fastgpu.service.endpoints import EndpointService
    from fastgpu.service.leases import LeaseService

log = logging.getLogger(__name__)
#: The longest a lease may hold an endpoint's GPUs before it is renewed (a new lease).
LEASE_DURATION = "7d"


def serve_view(details: dict[str, Any], app: str) -> tuple[str, str, int, int, int]:
    """(status, message, target replicas, running replicas, kept replicas) of one application;
    kept: every replica not on its way out (:data:`LEAVING_STATES`), running or starting."""
    a = details.get("applications", {}).get(app)
    if a is None:
        return "MISSING", "", 0, 0, 0
    dep = a.get("deployments", {}).get("ModelServer", {})
    replicas = dep.get("replicas", [])
    running = sum(1 for r in replicas if r.get("state") == "RUNNING")
    kept = sum(1 for r in replicas if r.get("state") not in LEAVING_STATES)
    # the application says that it failed, its deployment why (a replica's traceback)
    message = " ".join(m for m in (a.get("message"), dep.get("message")) if m)
    target = int(dep.get("target_num_replicas", 0))
    return str(a.get("status")), message, target, running, kept


class EndpointReconciler:
    def __init__(
        self,
        ctl: Controller,
        endpoints: EndpointService,
        leases: LeaseService,
        interval_s: float | None = None,
    ) -> None:
        self._ctl = ctl
        self._eps = endpoints
        self._leases = leases
        settings = ctl.config.endpoints
        self.interval_s = settings.reconcile_interval_s if interval_s is None else interval_s
        self.idle_s = settings.idle_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fastgpu-endpoints", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception:  # the next pass retries
                log.exception("endpoint pass failed")

    # -- one pass -----------------------------------------------------------------------------
    def step(self) -> None:
        by_tenant: dict[str, list[EndpointRecord]] = {}
        for rec in self._ctl.store.endpoints():
            by_tenant.setdefault(rec.tenant_id, []).append(rec)
        for tenant_id, recs in by_tenant.items():
            self._tenant(tenant_id, recs[0].tenant, recs)

    def _tenant(self, tenant_id: str, tenant: str, recs: list[EndpointRecord]) -> None:
        gw = self._eps.gateway
        gw.keep_alive(tenant_id)
        details = gw.details(tenant_id, tenant)
        wanted = {a for r in recs for a in [r.doc["app"], (r.doc.get("next") or {}).get("app")]}
        have = set(details.get("applications", {}))
        changed = not details or not (wanted - {None}) <= have
        for rec in recs:
            with self._eps.mu:
                # read again under the lock: an update (or delete) since the pass began
                # would otherwise be written over with the doc read before it
                fresh = self._ctl.store.endpoint(rec.tenant_id, rec.name)
                if fresh is not None:
                    changed |= self._endpoint(fresh, details)
        if changed:
            self._eps.apply(tenant_id, tenant)

    def _endpoint(self, rec: EndpointRecord, details: dict[str, Any]) -> bool:
        """One endpoint's pass; True when the tenant's Serve config must be applied again."""
        d, changed, now = rec.doc, False, time.time()
        status, message, target, running, kept = serve_view(details, d["app"])
        nxt = d.get("next")
        if nxt:
            n_status, n_message, n_target, n_running, n_kept = serve_view(details, nxt["app"])
            target, running, kept = target + n_target, running + n_running, kept + n_kept
            if n_running >= 1 and n_status in ("RUNNING", "DEPLOYING"):
                # one replica of the new version answers: it takes the traffic now, and the
                # old version's GPUs go back to it (a lease at its maximum could not start
                # as many new replicas as the old version runs beside them)
                d.update(
                    model=nxt["model"],
                    checkpoint=nxt["checkpoint"],
                    content_hash=nxt.get("content_hash"),
                    version=nxt["version"],
                    app=nxt["app"],
                    next=None,
                    state="READY",
                    message=f"serving {nxt['model']} (version {nxt['version']})",
                )
                self._eps.set_route(rec)  # new requests go to the new version from now on
                changed = True
            elif n_status in ("DEPLOY_FAILED", "UNHEALTHY"):
                d.update(
                    next=None,
                    state="READY",
                    message=(
                        f"update to {nxt['model']} failed; still serving {d['model']} "
                        f"(version {d['version']}): {n_message.strip()[-1500:]}"
                    ),
                )
                changed = True
        elif status == "DEPLOY_FAILED" and d["state"] != "FAILED":
            d.update(state="FAILED", message=f"deploy failed: {message.strip()[-1500:]}")
        elif status == "RUNNING" and d["state"] == "DEPLOYING":
            d.update(state="READY", message=f"serving {d['model']} (version {d['version']})")
        d["replicas"] = running
        if target > 0:
            d["idle_since"] = None
        elif d.get("idle_since") is None:
            d["idle_since"] = now
        changed |= self._lease(rec, target, now, kept)
        self._eps.save(rec)
        return changed

    def _lease(self, rec: EndpointRecord, target: int, now: float, kept: int) -> bool:
        d, s = rec.doc, rec.doc["scaling"]
        g = int(s["gpus_per_replica"])
        lease = self._ctl.store.get_lease(d["lease_id"]) if d.get("lease_id") else None
        if lease is not None and lease.state.is_terminal:
            d["lease_id"], d["bound_lease"], lease = None, None, None
            return True
        idle_for = 0.0 if d.get("idle_since") is None else now - d["idle_since"]
        demand = Demand(target, bool(d.get("next")), idle_for, kept)
        plan = decide(
            demand,
            lease.gpus if lease else None,
            g,
            s["min_replicas"],
            s["max_replicas"],
            self.idle_s,
        )
        workload = f"endpoint:{rec.name}"
        if lease is not None and lease.state == LeaseState.RESERVED:
            self._ctl.bind(lease.id, workload)
            d["bound_lease"] = lease.id
            return True
        if (
            lease is not None
            and lease.state == LeaseState.BOUND
            and d.get("bound_lease") != lease.id
        ):
            d["bound_lease"] = lease.id  # bound before a restart of the server
            return True
        if plan.action == Action.REQUEST:
            p = Principal(name=rec.tenant, is_admin=False, tenant_id=rec.tenant_id)
            body = LeaseCreate(
                gpus=plan.gpus,
                min_gpus=g,
                gpu_type=d["gpu_type"],
                duration=LEASE_DURATION,
                preemptible=False,
                request_id=f"ep-{rec.id}-{int(now)}",
            )
            d["lease_id"] = self._leases.submit(p, body).id
            log.info("endpoint %s/%s: lease %s (%s)", rec.tenant, rec.name, d["lease_id"], plan.why)
        elif plan.action == Action.RELEASE and lease is not None:
            self._ctl.release(lease.id)
            d["lease_id"], d["bound_lease"] = None, None
            return True
        elif plan.action == Action.RESIZE and lease is not None:
            self._resize(lease, plan.gpus, plan.why)
        return False

    def _resize(self, lease: Any, gpus: int, why: str) -> None:
        """The lease's maximum becomes ``gpus``; held GPUs above it are given back now (the
        scheduler's grow step adds GPUs up to it when capacity is idle)."""
        with self._ctl.lock:
            current = self._ctl.store.get_lease(lease.id)
            if current is None or current.state != LeaseState.BOUND:
                return
            current.gpus = max(gpus, current.min_gpus)
            nodes = list(current.nodes)[: current.gpus]
            self._ctl.resize(current, nodes, why)
