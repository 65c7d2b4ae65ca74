"""The controller: the one place that decides and acts on leases.

Responsibilities: authenticate every call and scope it to the caller's tenant; validate input;
admit pending leases through the policy seam; reserve admitted leases as placement groups;
notice readiness, expiry and release; meter; and reconcile the store with Ray after crashes.

Invariants:
* the store is the source of truth; Ray is made to match it (never the other way round);
* a state change is committed before Ray is touched, so a crash at any point leaves either an
  orphan group (removed by reconcile) or a lease whose group is missing (re-created by
  reconcile), never a lease that is half-written or a group nobody accounts for;
* lease requests are idempotent on (tenant, request id): a retry returns the same lease;
* another tenant's objects answer NotFound.

The clock, store, backend and policy are injected, so tests can step :meth:`Controller.tick`.
All public methods take the caller's token first; :mod:`fastgpu.controller.actor` wraps this
class in a detached Ray actor.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from fastgpu.auth import ADMIN, Principal, hash_token, new_token
from fastgpu.config import PlatformConfig, TenantSpec
from fastgpu.controller.backend import Backend, NodeInfo, group_name
from fastgpu.domain.lease import HOLDING_STATES, Lease, LeaseRequest, LeaseState, PendingReason
from fastgpu.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from fastgpu.scheduler import (
    FairSharePolicy,
    FairShareSettings,
    LeaseView,
    NodeView,
    Policy,
    QuotaCapacityPolicy,
    Snapshot,
    TenantView,
)
from fastgpu.store import Store
from fastgpu.timeutil import Clock, iso, parse_iso, wall_clock
from fastgpu.validation import NAME_PATTERN, NAME_RULE, invalid_from, parse_duration

log = logging.getLogger(__name__)

_NODE_CACHE_S = 1.0
MAX_LIVE_LEASES_PER_TENANT = 1000


#: Preemptions of a workload older than this do not lengthen its minimum runtime.
RESTART_WINDOW_S = 24 * 3600.0


def _new_lease_id() -> str:
    return uuid.uuid4().hex[:16]


def make_policy(config: PlatformConfig) -> Policy:
    """The policy the config names, with its settings."""
    s = config.scheduler
    if s.policy == "quota":
        return QuotaCapacityPolicy()
    return FairSharePolicy(
        FairShareSettings(
            usage_half_life_s=s.usage_half_life_s,
            min_runtime_s=s.min_runtime_s,
            min_runtime_backoff=s.min_runtime_backoff,
            grace_s=s.grace_s,
            backfill=s.backfill,
            borrowing=s.borrowing,
            preemption=s.preemption,
            elastic=s.elastic,
            borrow_non_preemptible=s.borrow_non_preemptible,
            # The controller ends leases at expires_at itself (state EXPIRED).
            enforce_time_limits=False,
            reject_over_budget=s.reject_over_budget,
            explain=True,
        )
    )


class Controller:
    def __init__(
        self,
        config: PlatformConfig,
        store: Store,
        backend: Backend,
        clock: Clock = wall_clock,
        policy: Policy | None = None,
        dashboard_url: str | None = None,
    ) -> None:
        from fastgpu.controller.jobs import JobGateway

        self.config = config
        self.jobs = JobGateway(dashboard_url, [config.resolved_state_dir()])
        self.store = store
        self.backend = backend
        self.clock = clock
        self.policy: Policy = policy or make_policy(config)
        self._mu = threading.RLock()
        self._changed = threading.Condition(self._mu)
        self._nodes: list[NodeInfo] = []
        self._nodes_at = -1e18
        self._last_reconcile = -1e18
        # Read-through caches of rows only this controller writes (cleared on every write).
        self._principals: dict[str, Principal] = {}
        self._tenant_cache: dict[str, TenantSpec] | None = None
        # tenant -> (decayed GPU-seconds, period GPU-hours, period money), refreshed now and then.
        self._usage_stats: dict[str, tuple[float, float, float]] = {}
        self._usage_stats_at = -1e18

    def _invalidate(self) -> None:
        self._principals.clear()
        self._tenant_cache = None

    def _tenants(self) -> dict[str, TenantSpec]:
        if self._tenant_cache is None:
            self._tenant_cache = {r.name: r.spec for r in self.store.list_tenants()}
        return self._tenant_cache

    # ==== authentication and scoping ===========================================================
    def authenticate(self, token: str | None) -> Principal:
        if not token or not isinstance(token, str):
            raise AuthenticationError("no token given; pass a bearer token (FASTGPU_TOKEN)")
        digest = hash_token(token)
        cached = self._principals.get(digest)
        if cached is not None:
            return cached
        found = self.store.lookup_token(digest)
        if found is None:
            raise AuthenticationError("the token is not valid; check FASTGPU_TOKEN")
        principal = Principal(*found)
        self._principals[digest] = principal
        return principal

    def _admin(self, token: str | None) -> Principal:
        p = self.authenticate(token)
        if not p.is_admin:
            raise PermissionDenied("this operation needs the admin token")
        return p

    def _visible_lease(self, principal: Principal, lease_id: str) -> Lease:
        if not isinstance(lease_id, str) or not lease_id or len(lease_id) > 64:
            raise NotFound(f"lease {lease_id!r} not found")
        lease = self.store.get_lease(lease_id)
        if lease is None or (not principal.is_admin and lease.tenant != principal.name):
            raise NotFound(f"lease {lease_id!r} not found")
        return lease

    def _scope_tenant(self, principal: Principal, tenant: str | None) -> str | None:
        """The tenant a read is about: a tenant only ever sees itself."""
        if principal.is_admin:
            if tenant is not None and self.store.get_tenant(tenant) is None:
                raise NotFound(f"tenant {tenant!r} not found")
            return tenant
        if tenant is not None and tenant != principal.name:
            raise NotFound(f"tenant {tenant!r} not found")
        return principal.name

    def bootstrap_admin(self, token: str) -> None:
        """Register the admin token (``fastgpu up``); a no-op when it is already known."""
        self.register_admin_hash(hash_token(token))

    def register_admin_hash(self, h: str) -> None:
        if self.store.lookup_token(h) is None:
            self.store.add_token(h, ADMIN, True, self.clock())
            self._invalidate()

    def whoami(self, token: str | None) -> dict[str, Any]:
        p = self.authenticate(token)
        out: dict[str, Any] = {"principal": p.name, "is_admin": p.is_admin, "tenant": p.tenant}
        if p.tenant:
            root = self.config.resolved_storage_root()
            out["storage_root"] = str(root)
            out["runs_dir"] = str(root / p.tenant / "runs")
        return out

    # ==== tenants ==============================================================================
    def _check_tenant_spec(self, spec: Any) -> TenantSpec:
        if isinstance(spec, TenantSpec):
            parsed = spec
        else:
            try:
                parsed = TenantSpec.model_validate(spec or {})
            except ValidationError as exc:
                raise invalid_from(exc) from None
        for gpu_type in parsed.quotas:
            if gpu_type not in self.config.gpu_types:
                raise InvalidRequest(
                    f"quotas.{gpu_type}: unknown GPU type; expected one of "
                    f"{', '.join(sorted(self.config.gpu_types))}"
                )
        return parsed

    @staticmethod
    def _check_name(name: Any) -> str:
        import re

        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise InvalidRequest(f"name: got {name!r}; expected {NAME_RULE}")
        if name == ADMIN:
            raise InvalidRequest("name: 'admin' is reserved; choose another tenant name")
        return name

    def create_tenant(
        self, token: str | None, name: str, spec: Any = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Create a tenant; the response carries its token, shown this once."""
        p = self._admin(token)
        name = self._check_name(name)
        parsed = self._check_tenant_spec(spec)
        with self._mu:
            if request_id:
                seen = self.store.recall_request(p.name, request_id)
                if seen and seen == ("create_tenant", name):
                    rec = self.store.get_tenant(name)
                    if rec is not None:
                        out = self._tenant_dict(rec.name, rec.spec)
                        out["token"] = None
                        out["note"] = "already created by this request id; rotate to get a token"
                        return out
            tenant_token = new_token()
            self.store.create_tenant(name, parsed, hash_token(tenant_token), self.clock())
            self._invalidate()
            if request_id:
                self.store.remember_request(p.name, request_id, "create_tenant", name, self.clock())
            self._changed.notify_all()
        out = self._tenant_dict(name, parsed)
        out["token"] = tenant_token
        return out

    def _tenant_dict(self, name: str, spec: TenantSpec) -> dict[str, Any]:
        d = spec.model_dump(mode="json")
        d["name"] = name
        return d

    def list_tenants(self, token: str | None) -> list[dict[str, Any]]:
        p = self.authenticate(token)
        recs = self.store.list_tenants()
        return [self._tenant_dict(r.name, r.spec) for r in recs if p.is_admin or r.name == p.name]

    def get_tenant(self, token: str | None, name: str) -> dict[str, Any]:
        p = self.authenticate(token)
        rec = self.store.get_tenant(name) if isinstance(name, str) else None
        if rec is None or (not p.is_admin and rec.name != p.name):
            raise NotFound(f"tenant {name!r} not found")
        return self._tenant_dict(rec.name, rec.spec)

    def update_tenant(
        self, token: str | None, name: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply partial changes (quotas are replaced per GPU type, other fields as given)."""
        self._admin(token)
        if not isinstance(changes, dict):
            raise InvalidRequest("changes: expected a mapping of tenant fields")
        with self._mu:
            rec = self.store.get_tenant(name) if isinstance(name, str) else None
            if rec is None:
                raise NotFound(f"tenant {name!r} not found")
            merged = rec.spec.model_dump(mode="json")
            for key, value in changes.items():
                if key == "quotas" and isinstance(value, dict):
                    quotas = dict(merged.get("quotas") or {})
                    for gpu_type, q in value.items():
                        if q is None:
                            quotas.pop(gpu_type, None)
                        elif isinstance(q, dict) and gpu_type in quotas:
                            quotas[gpu_type] = {**quotas[gpu_type], **q}
                        else:
                            quotas[gpu_type] = q
                    merged["quotas"] = quotas
                else:
                    merged[key] = value
            spec = self._check_tenant_spec(merged)
            rec = self.store.update_tenant(name, spec, self.clock())
            self._invalidate()
            self._schedule_locked()
        return self._tenant_dict(rec.name, rec.spec)

    def delete_tenant(self, token: str | None, name: str) -> dict[str, Any]:
        self._admin(token)
        with self._mu:
            self.store.delete_tenant(name)
            self._invalidate()
        return {"name": name, "deleted": True}

    def rotate_token(self, token: str | None, name: str) -> dict[str, Any]:
        self._admin(token)
        with self._mu:
            if not isinstance(name, str) or self.store.get_tenant(name) is None:
                raise NotFound(f"tenant {name!r} not found")
            new = new_token()
            self.store.replace_tokens(name, hash_token(new), self.clock())
            self._invalidate()
        return {"name": name, "token": new}

    # ==== leases ===============================================================================
    def _parse_request(self, payload: Any, owner: str) -> LeaseRequest:
        if not isinstance(payload, dict):
            raise InvalidRequest("lease request: expected a mapping of fields")
        data = dict(payload)
        if "duration" in data:
            if "duration_s" in data:
                raise InvalidRequest("give either duration or duration_s, not both")
            data["duration_s"] = parse_duration(data.pop("duration"))
        elif "duration_s" not in data or data["duration_s"] is None:
            data.pop("duration_s", None)
            data["duration_s"] = self.config.controller.default_duration_s
        if data.get("gpu_type") is None:
            # Unambiguous defaults only: the cluster's one type, or the tenant's one quota.
            spec = self._tenants().get(owner)
            mine = [g for g, q in (spec.quotas.items() if spec else []) if q.nominal > 0]
            if len(self.config.gpu_types) == 1:
                data["gpu_type"] = next(iter(self.config.gpu_types))
            elif len(mine) == 1:
                data["gpu_type"] = mine[0]
            else:
                raise InvalidRequest(
                    f"gpu_type: missing; expected one of {', '.join(sorted(self.config.gpu_types))}"
                )
        try:
            req = LeaseRequest.model_validate(data)
        except ValidationError as exc:
            raise invalid_from(exc) from None
        if req.gpu_type not in self.config.gpu_types:
            raise InvalidRequest(
                f"gpu_type: got {req.gpu_type!r}; expected one of "
                f"{', '.join(sorted(self.config.gpu_types))}"
            )
        limit = self.config.controller.max_gpus_per_lease
        if req.gpus > limit:
            raise InvalidRequest(f"gpus: got {req.gpus}; expected at most {limit} per lease")
        return req

    def request_lease(
        self,
        token: str | None,
        request: dict[str, Any],
        tenant: str | None = None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        """Ask for a lease; with ``wait_s`` > 0, return once it holds its GPUs or ends, or
        when ``wait_s`` passes (it stays pending then)."""
        p = self.authenticate(token)
        if p.is_admin:
            if tenant is None:
                raise InvalidRequest("tenant: the admin must name the tenant the lease is for")
            if tenant not in self._tenants():
                raise NotFound(f"tenant {tenant!r} not found")
            owner = tenant
        else:
            if tenant is not None and tenant != p.name:
                raise NotFound(f"tenant {tenant!r} not found")
            owner = p.name
        req = self._parse_request(request, owner)
        wait_s = _check_wait(wait_s)
        with self._mu:
            now = self.clock()
            live = self.store.count_leases(owner, _LIVE)
            if live >= MAX_LIVE_LEASES_PER_TENANT and (
                req.request_id is None
                or self.store.find_lease_by_request(owner, req.request_id) is None
            ):
                raise Conflict(
                    f"tenant {owner} has {live} live leases, the most allowed; release some"
                )
            lease = Lease(
                id=_new_lease_id(),
                tenant=owner,
                state=LeaseState.PENDING,
                gpus=req.gpus,
                min_gpus=req.min_gpus or req.gpus,
                gpu_type=req.gpu_type,
                strategy=req.strategy,
                duration_s=req.duration_s,
                preemptible=req.preemptible,
                priority=req.priority,
                price_per_hour=self.config.gpu_types[req.gpu_type].price_per_hour,
                created_at=now,
                request_id=req.request_id,
            )
            lease, created = self.store.insert_lease(lease)
            if created:
                self._schedule_locked()
        if wait_s > 0:
            return self._wait_for(lease.id, wait_s).to_dict()
        got = self.store.get_lease(lease.id)
        assert got is not None
        return got.to_dict()

    def get_lease(self, token: str | None, lease_id: str) -> dict[str, Any]:
        p = self.authenticate(token)
        return self._visible_lease(p, lease_id).to_dict()

    def wait_lease(self, token: str | None, lease_id: str, wait_s: float) -> dict[str, Any]:
        p = self.authenticate(token)
        lease = self._visible_lease(p, lease_id)
        return self._wait_for(lease.id, _check_wait(wait_s)).to_dict()

    def list_leases(
        self, token: str | None, tenant: str | None = None, include_ended: bool = True
    ) -> list[dict[str, Any]]:
        p = self.authenticate(token)
        scope = self._scope_tenant(p, tenant)
        states = None if include_ended else _LIVE
        return [lease.to_dict() for lease in self.store.list_leases(tenant=scope, states=states)]

    def release_lease(self, token: str | None, lease_id: str) -> dict[str, Any]:
        """Release a lease (idempotent: releasing an ended lease returns it unchanged)."""
        p = self.authenticate(token)
        self._visible_lease(p, lease_id)
        with self._mu:
            lease = self.store.get_lease(lease_id)
            assert lease is not None
            if not lease.state.is_terminal:
                if lease.state == LeaseState.PENDING:
                    self._end(lease, LeaseState.CANCELLED, "released while pending")
                else:
                    self._end(lease, LeaseState.RELEASED, "released by tenant")
                self._schedule_locked()
            return lease.to_dict()

    def bind_lease(self, token: str | None, lease_id: str, workload: str) -> dict[str, Any]:
        """Hand a reserved lease's GPUs over to a library workload (Train, Tune, Serve).

        The placement group is removed so the workload can create its own on the same nodes;
        the GPUs stay assigned to the lease in the ledger, so nothing else is admitted into them.
        """
        p = self.authenticate(token)
        if not isinstance(workload, str) or not 1 <= len(workload) <= 256:
            raise InvalidRequest("workload: expected a label of 1 to 256 characters")
        self._visible_lease(p, lease_id)
        with self._mu:
            lease = self.store.get_lease(lease_id)
            assert lease is not None
            if lease.state == LeaseState.BOUND:
                return lease.to_dict()
            if lease.state != LeaseState.RESERVED:
                raise Conflict(
                    f"lease {lease_id} is {lease.state.value}; only a RESERVED lease can be bound"
                )
            now = self.clock()
            lease.workload = workload
            # A workload preempted before (it resumes from a checkpoint on this lease) gets a
            # longer minimum runtime, doubled per recent preemption (the policy's backoff).
            lease.restarts = self.store.count_preempted(
                lease.tenant, workload, now - RESTART_WINDOW_S
            )
            self.store.transition(lease, LeaseState.BOUND, now, f"bound to {workload}")
            if lease.placement_group:
                self.backend.remove_group(lease.placement_group, lease.placement_group_id)
            self._changed.notify_all()
            return lease.to_dict()

    def report_checkpoint(self, token: str | None, lease_id: str) -> dict[str, Any]:
        """The workload saved a checkpoint now: preemption prefers leases that lose least."""
        p = self.authenticate(token)
        self._visible_lease(p, lease_id)
        with self._mu:
            lease = self.store.get_lease(lease_id)
            assert lease is not None
            if lease.state not in HOLDING_STATES:
                raise Conflict(f"lease {lease_id} is {lease.state.value}; it holds no GPUs")
            lease.last_checkpoint_at = self.clock()
            self.store.save_lease(lease, lease.state)
            return lease.to_dict()

    # ==== jobs =================================================================================
    def submit_job(
        self, token: str | None, spec: dict[str, Any], lease: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Submit a Ray job for the calling tenant. ``lease`` (gpus, min_gpus, gpu_type,
        duration) is checked now and handed to the job, which requests it with the job's
        request id; the job's status then shows that lease's state and reason."""
        p = self.authenticate(token)
        if p.is_admin or token is None:
            raise PermissionDenied("jobs are submitted with a tenant's token, not the admin's")
        checked = self.jobs.check_spec(spec)
        env = {
            "FASTGPU_TOKEN": token,
            "FASTGPU_ADDRESS": f"http://{self.config.api.host}:{self.config.api.port}",
        }
        if lease:
            req = self._parse_request({**lease, "request_id": "job-check"}, p.name)
            env["FASTGPU_GPUS"] = (
                f"{req.min_gpus}:{req.gpus}"
                if req.min_gpus and req.min_gpus != req.gpus
                else str(req.gpus)
            )
            env["FASTGPU_GPU_TYPE"] = req.gpu_type
            env["FASTGPU_DURATION"] = str(int(req.duration_s))
        submission_id = self.jobs.submit(p.name, checked, env)
        return self.job_status(token, submission_id)

    def list_jobs(self, token: str | None, tenant: str | None = None) -> list[dict[str, Any]]:
        p = self.authenticate(token)
        return self.jobs.list(self._scope_tenant(p, tenant))

    def job_status(self, token: str | None, job_id: str) -> dict[str, Any]:
        """Ray's view of the job plus the lease it asked for (state and pending reason)."""
        from fastgpu.controller.jobs import lease_request_id

        p = self.authenticate(token)
        row = self.jobs.get(p.tenant, job_id)
        lease = self.store.find_lease_by_request(row["tenant"], lease_request_id(job_id))
        row["lease"] = lease.to_dict() if lease else None
        return row

    def job_logs(self, token: str | None, job_id: str) -> dict[str, Any]:
        p = self.authenticate(token)
        self.jobs.get(p.tenant, job_id)
        return {"id": job_id, "logs": self.jobs.logs(job_id)}

    def stop_job(self, token: str | None, job_id: str) -> dict[str, Any]:
        p = self.authenticate(token)
        self.jobs.get(p.tenant, job_id)
        self.jobs.stop(job_id)
        return self.job_status(token, job_id)

    # ==== reads ================================================================================
    def usage(
        self, token: str | None, tenant: str | None = None, since: str | float | None = None
    ) -> list[dict[str, Any]]:
        p = self.authenticate(token)
        scope = self._scope_tenant(p, tenant)
        since_ts = parse_iso(since) if isinstance(since, str) else since
        rows = self.store.usage(self.clock(), tenant=scope, since=since_ts)
        return [r.to_dict() for r in rows]

    def status(self, token: str | None) -> dict[str, Any]:
        p = self.authenticate(token)
        with self._mu:
            nodes = self._cluster_nodes(force=True)
            live = self.store.live_leases()
            tenants = self.store.list_tenants()
        types: dict[str, dict[str, Any]] = {}
        for name, spec in self.config.gpu_types.items():
            types[name] = {
                "gpu_type": name,
                "price_per_hour": spec.price_per_hour,
                "total": 0,
                "allocated": 0,
                "pending": 0,
                "nodes": 0,
            }
        for n in nodes:
            if n.alive and n.gpu_type in types:
                types[n.gpu_type]["total"] += n.total_gpus
                types[n.gpu_type]["nodes"] += 1
        per_tenant: dict[tuple[str, str], dict[str, Any]] = {}
        for rec in tenants:
            if not p.is_admin and rec.name != p.name:
                continue
            for gpu_type in self.config.gpu_types:
                q = rec.spec.quota(gpu_type)
                per_tenant[(rec.name, gpu_type)] = {
                    "tenant": rec.name,
                    "gpu_type": gpu_type,
                    "nominal": q.nominal,
                    "borrowing_limit": q.borrowing_limit,
                    "lending_limit": q.lending_limit,
                    "allocated": 0,
                    "pending": 0,
                    "leases": 0,
                }
        for lease in live:
            t = types.get(lease.gpu_type)
            if t is None:
                continue
            held = lease.state in HOLDING_STATES
            count = lease.held_gpus if held else lease.min_gpus
            t["allocated" if held else "pending"] += count
            row = per_tenant.get((lease.tenant, lease.gpu_type))
            if row is not None:
                row["allocated" if held else "pending"] += count
                row["leases"] += 1
        for t in types.values():
            t["free"] = max(0, t["total"] - t["allocated"])
        return {
            "time": iso(self.clock()),
            "gpu_types": list(types.values()),
            "tenants": [
                r
                for r in per_tenant.values()
                if r["nominal"] or r["allocated"] or r["pending"] or not p.is_admin
            ],
        }

    # ==== the loop =============================================================================
    def tick(self) -> None:
        """One pass: readiness, expiry, reconcile (when due), scheduling."""
        with self._mu:
            now = self.clock()
            self._poll_ready(timeout_s=0.0)
            self._expire(now)
            self._finish_preemptions(now)
            if now - self._last_reconcile >= self.config.controller.reconcile_interval_s:
                self.reconcile()
            self._schedule_locked()
            self._changed.notify_all()

    def _poll_ready(self, timeout_s: float) -> None:
        admitted = self.store.list_leases(states=[LeaseState.ADMITTED])
        names = [lease.placement_group for lease in admitted if lease.placement_group]
        if not names:
            return
        ready = self.backend.ready(names, timeout_s)
        for lease in admitted:
            if lease.placement_group in ready:
                self._mark_reserved(lease)

    def _mark_reserved(self, lease: Lease) -> None:
        now = self.clock()
        lease.reserved_at = now
        lease.expires_at = now + lease.duration_s
        lease.reason = None
        lease.reason_detail = None
        self.store.transition(lease, LeaseState.RESERVED, now, "placement group ready")

    def _expire(self, now: float) -> None:
        for lease in self.store.list_leases(states=HOLDING_STATES):
            if lease.expires_at is not None and lease.expires_at <= now:
                self._end(lease, LeaseState.EXPIRED, f"duration of {lease.duration_s:g} s is over")

    def _finish_preemptions(self, now: float) -> None:
        for lease in self.store.list_leases(states=HOLDING_STATES):
            if lease.preempt_at is not None and lease.preempt_at <= now:
                self._end(lease, LeaseState.PREEMPTED, lease.reason_detail or "preempted")

    def _end(self, lease: Lease, state: LeaseState, why: str) -> None:
        """Move a lease to a terminal state; commit first, then free its group."""
        now = self.clock()
        lease.ended_at = now
        if state not in (LeaseState.REJECTED, LeaseState.FAILED, LeaseState.PREEMPTED):
            lease.reason = None
            lease.reason_detail = None
        held_group = lease.state in (LeaseState.ADMITTED, LeaseState.RESERVED)
        self.store.transition(lease, state, now, why)
        if lease.placement_group and held_group:
            self.backend.remove_group(lease.placement_group, lease.placement_group_id)
        self._changed.notify_all()

    def _wait_for(self, lease_id: str, wait_s: float) -> Lease:
        """The lease once it holds its GPUs or ended, or as it is when ``wait_s`` ran out."""
        deadline = time.monotonic() + wait_s
        while True:
            lease = self.store.get_lease(lease_id)
            assert lease is not None
            if lease.state.is_terminal or lease.state in (LeaseState.RESERVED, LeaseState.BOUND):
                return lease
            left = deadline - time.monotonic()
            if left <= 0:
                return lease
            if lease.state == LeaseState.ADMITTED and lease.placement_group:
                # Wait on Ray directly (outside the lock) rather than for the next tick.
                ready = self.backend.ready([lease.placement_group], min(left, 0.5))
                if ready:
                    with self._mu:
                        fresh = self.store.get_lease(lease_id)
                        if fresh is not None and fresh.state == LeaseState.ADMITTED:
                            self._mark_reserved(fresh)
                            self._changed.notify_all()
                            return fresh
                continue
            with self._changed:
                self._changed.wait(timeout=min(left, 0.5))

    # ==== scheduling ===========================================================================
    def _cluster_nodes(self, force: bool = False) -> list[NodeInfo]:
        now = time.monotonic()
        if force or now - self._nodes_at > _NODE_CACHE_S:
            self._nodes = self.backend.nodes()
            self._nodes_at = now
        return self._nodes

    def snapshot(self) -> Snapshot:
        with self._mu:
            return self._snapshot_of(self.store.live_leases())

    def _snapshot_of(self, live: list[Lease]) -> Snapshot:
        """The policy's picture of the cluster, given the live leases (caller holds the lock)."""
        nodes = self._cluster_nodes()
        held: dict[str, int] = {}
        running: list[LeaseView] = []
        pending: list[LeaseView] = []
        tenants = self._tenants()
        for lease in live:
            if lease.state in HOLDING_STATES:
                placement: dict[str, int] = {}
                for n in lease.nodes:
                    placement[n] = placement.get(n, 0) + 1
                    held[n] = held.get(n, 0) + 1
                view = _view(lease, placement)
                if lease.state != LeaseState.BOUND:
                    # Only a bound (elastic workload) lease can change size.
                    view = replace(view, gpus=lease.held_gpus, min_gpus=lease.held_gpus)
                if lease.preempt_at is not None:
                    # Already announced: its GPUs are leaving; not a victim twice.
                    view = replace(view, preempt_at=lease.preempt_at)
                running.append(view)
            elif lease.state == LeaseState.PENDING:
                pending.append(_view(lease, {}))
        node_views = tuple(
            NodeView(
                node_id=n.node_id,
                gpu_type=n.gpu_type or "",
                total_gpus=n.total_gpus,
                free_gpus=max(0, n.total_gpus - held.get(n.node_id, 0)),
                alive=n.alive,
            )
            for n in nodes
            if n.gpu_type and n.total_gpus > 0
        )
        stats = self._tenant_usage_stats()
        tenant_views = {
            name: TenantView(
                name=name,
                quotas=dict(spec.quotas),
                weight=spec.weight,
                priority=spec.priority,
                queueing=spec.queueing,
                budget=spec.budget,
                decayed_usage_gpu_s=stats.get(name, (0.0, 0.0, 0.0))[0],
                period_gpu_hours=stats.get(name, (0.0, 0.0, 0.0))[1],
                period_money=stats.get(name, (0.0, 0.0, 0.0))[2],
            )
            for name, spec in tenants.items()
        }
        return Snapshot(
            now=self.clock(),
            gpu_types=dict(self.config.gpu_types),
            nodes=node_views,
            tenants=tenant_views,
            running=tuple(running),
            pending=tuple(pending),
        )

    def _tenant_usage_stats(self) -> dict[str, tuple[float, float, float]]:
        """Decayed usage (fair share) and this budget period's spend, per tenant; recomputed
        from the usage records every ``scheduler.usage_refresh_s``."""
        now = self.clock()
        if now - self._usage_stats_at < self.config.scheduler.usage_refresh_s:
            return self._usage_stats
        half_life = self.config.scheduler.usage_half_life_s
        out: dict[str, tuple[float, float, float]] = {}
        for name, spec in self._tenants().items():
            decayed = self.store.decayed_usage(name, now, half_life)
            gpu_h, money = 0.0, 0.0
            if spec.budget is not None:
                start = period_start(now, spec.budget.period)
                for row in self.store.usage(now, tenant=name, since=start):
                    gpu_h += row.gpu_seconds / 3600
                    money += row.cost
            out[name] = (decayed, gpu_h, money)
        self._usage_stats, self._usage_stats_at = out, now
        return out

    def _schedule_locked(self) -> None:
        live = self.store.live_leases()
        snap = self._snapshot_of(live)
        if not snap.pending and not any(v.held_gpus < v.gpus for v in snap.running):
            return  # nothing waits and nothing can grow: no decision to make
        decisions = self.policy.schedule(snap)
        now = self.clock()
        # One read of the live leases serves every decision (the lock is held: they are current).
        by_id = {lease.id: lease for lease in live}
        for rej in decisions.reject:
            lease = by_id.get(rej.lease_id)
            if lease is None or lease.state != LeaseState.PENDING:
                continue
            lease.reason, lease.reason_detail = rej.reason, rej.detail
            self._end(lease, LeaseState.REJECTED, rej.detail)
        for q in decisions.queue:
            lease = by_id.get(q.lease_id)
            if lease is None or lease.state != LeaseState.PENDING:
                continue
            if (lease.reason, lease.reason_detail) != (q.reason, q.detail):
                lease.reason, lease.reason_detail = q.reason, q.detail
                self.store.save_lease(lease, LeaseState.PENDING)
        for adm in decisions.admit:
            lease = by_id.get(adm.lease_id)
            if lease is None or lease.state != LeaseState.PENDING:
                continue
            nodes = [n for n, count in sorted(adm.placement.items()) for _ in range(count)]
            lease.nodes = nodes
            lease.placement_group = group_name(lease.id)
            lease.admitted_at = now
            lease.reason = PendingReason.RESERVING.value
            lease.reason_detail = "placement group created; waiting for Ray to reserve it"
            self.store.transition(lease, LeaseState.ADMITTED, now, "admitted")
            self._create_group(lease, may_exist=False)
        for pre in decisions.preempt:
            self._announce_preemption(
                by_id.get(pre.lease_id), pre.reason, pre.detail, pre.grace_s, now
            )
        for rsz in decisions.resize:
            self._resize(by_id.get(rsz.lease_id), rsz.placement, rsz.reason, now)
        if decisions.admit or decisions.reject or decisions.preempt or decisions.resize:
            self._changed.notify_all()

    def _announce_preemption(
        self, lease: Lease | None, why: str, detail: str, grace_s: float, now: float
    ) -> None:
        """Tell the workload (``preempt_at`` on the lease) and take the GPUs at that time."""
        if lease is None or lease.state not in HOLDING_STATES or lease.preempt_at is not None:
            return
        lease.preempt_at = now + grace_s
        lease.reason = "preempting"
        lease.reason_detail = f"{why}: {detail}" if detail else why
        self.store.save_lease(lease, lease.state)
        log.info("lease %s preempted (%s); GPUs taken in %.0f s", lease.id, why, grace_s)
        if grace_s <= 0:
            self._end(lease, LeaseState.PREEMPTED, lease.reason_detail)

    def _resize(self, lease: Lease | None, placement: Any, why: str, now: float) -> None:
        """Grow or shrink a BOUND lease: its workload owns the GPUs and follows the lease.

        Reserved (not bound) leases are presented to the policy as fixed-size, so they never
        get here: a placement group cannot change size under running tasks.
        """
        if lease is None or lease.state != LeaseState.BOUND:
            return
        nodes = [n for n, count in sorted(placement.items()) for _ in range(count)]
        if not lease.min_gpus <= len(nodes) <= lease.gpus:
            log.error("policy resized lease %s to %d GPUs, outside its range", lease.id, len(nodes))
            return
        before = lease.held_gpus
        lease.nodes = nodes
        lease.reason_detail = f"{why}: {before} -> {len(nodes)} GPUs"
        self.store.resize_usage(lease, now)
        log.info("lease %s resized %d -> %d GPUs (%s)", lease.id, before, len(nodes), why)

    def _create_group(self, lease: Lease, may_exist: bool = True) -> None:
        assert lease.placement_group is not None
        spec = self.config.gpu_types[lease.gpu_type]
        bundle: dict[str, float] = {"GPU": 1.0}
        if spec.cpus_per_gpu:
            bundle["CPU"] = spec.cpus_per_gpu
        if spec.memory_per_gpu_gb:
            bundle["memory"] = spec.memory_per_gpu_gb * 1024**3
        group_id = self.backend.create_group(
            lease.placement_group, bundle, list(lease.nodes), lease.strategy, may_exist
        )
        if lease.placement_group_id != group_id:
            lease.placement_group_id = group_id
            self.store.save_lease(lease, lease.state)

    # ==== reconcile ============================================================================
    def reconcile(self) -> dict[str, int]:
        """Make Ray match the store: drop orphan groups, re-create missing ones, fail leases
        whose nodes died. Returns counts of what it did."""
        with self._mu:
            self._last_reconcile = self.clock()
            groups = self.backend.groups()
            alive = {n.node_id for n in self._cluster_nodes(force=True) if n.alive}
            wanted: set[str] = set()
            done = {
                "orphans_removed": 0,
                "groups_recreated": 0,
                "leases_failed": 0,
                "leases_shrunk": 0,
            }
            for lease in self.store.live_leases():
                if lease.state not in HOLDING_STATES:
                    continue
                lost = sorted({n for n in lease.nodes if n not in alive})
                group = groups.get(lease.placement_group or "")
                survivors = [n for n in lease.nodes if n in alive]
                if lost and lease.state == LeaseState.BOUND and len(survivors) >= lease.min_gpus:
                    # An elastic workload survives on the rest: shrink instead of failing.
                    before = lease.held_gpus
                    lease.nodes = survivors
                    lease.reason_detail = (
                        f"node_lost: shrunk {before} -> {len(survivors)} GPUs "
                        f"(lost {', '.join(lost)})"
                    )
                    self.store.resize_usage(lease, self.clock())
                    done["leases_shrunk"] += 1
                    continue
                if lost or (group is not None and group.state == "RESCHEDULING"):
                    lease.reason = "node_lost"
                    lease.reason_detail = f"node(s) {', '.join(lost) or '?'} died"
                    self._end(lease, LeaseState.FAILED, lease.reason_detail)
                    done["leases_failed"] += 1
                    continue
                if lease.state == LeaseState.BOUND:
                    continue
                assert lease.placement_group is not None
                wanted.add(lease.placement_group)
                if group is None:
                    if lease.state == LeaseState.RESERVED:
                        lease.reason = PendingReason.RESERVING.value
                        lease.reason_detail = "placement group was missing; re-created"
                        self.store.transition(
                            lease, LeaseState.ADMITTED, self.clock(), "group missing; re-creating"
                        )
                    self._create_group(lease)
                    done["groups_recreated"] += 1
            for name in groups:
                if name not in wanted:
                    self.backend.remove_group(name)
                    done["orphans_removed"] += 1
            if any(done.values()):
                log.warning("reconcile: %s", done)
            return done


_LIVE = [s for s in LeaseState if not s.is_terminal]


def period_start(now: float, period: str) -> float:
    """Start (UTC) of the calendar day, ISO week or month holding ``now``."""
    from datetime import datetime, timedelta, timezone

    dt = datetime.fromtimestamp(now, tz=timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if period == "week":
        dt -= timedelta(days=dt.weekday())
    elif period == "month":
        dt = dt.replace(day=1)
    return dt.timestamp()


def _view(lease: Lease, placement: dict[str, int]) -> LeaseView:
    return LeaseView(
        id=lease.id,
        tenant=lease.tenant,
        gpu_type=lease.gpu_type,
        gpus=lease.gpus,
        min_gpus=lease.min_gpus,
        strategy=lease.strategy,
        preemptible=lease.preemptible,
        priority=lease.priority,
        submitted_at=lease.created_at,
        duration_s=lease.duration_s,
        started_at=lease.reserved_at or lease.admitted_at,
        placement=placement,
        last_checkpoint_at=lease.last_checkpoint_at,
        restarts=lease.restarts,
    )


def _check_wait(wait_s: Any) -> float:
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not 0 <= wait_s <= 3600:
        raise InvalidRequest(f"wait: got {wait_s!r}; expected seconds between 0 and 3600")
    return float(wait_s)
