"""Read-only views: usage (metering) and cluster status, scoped to the caller.

A tenant sees only its own rows; the admin sees every tenant, or one by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.domain.lease import HOLDING_STATES
from fastgpu.errors import NotFound
from fastgpu.service.models import (
    GpuTypeStatus,
    Page,
    StatusOut,
    TenantStatus,
    UsageOut,
    paginate,
)
from fastgpu.timeutil import iso, parse_iso

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


class ReadService:
    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl

    def _scope(self, p: Principal, tenant: str | None) -> str | None:
        """The tenant id a read is about (None: all, admin only)."""
        if p.is_admin:
            if tenant is None:
                return None
            rec = self._ctl.tenant(tenant)
            if rec is None:
                raise NotFound(f"tenant {tenant!r} not found")
            return rec.id
        if tenant is not None and tenant != p.name:
            raise NotFound(f"tenant {tenant!r} not found")
        return p.tenant_id

    def usage(
        self,
        p: Principal,
        tenant: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[UsageOut]:
        """GPU-seconds and cost per (tenant, GPU type), a page at a time."""
        scope = self._scope(p, tenant)
        since_ts = parse_iso(since) if since is not None else None
        rows = self._ctl.store.usage(self._ctl.clock(), tenant_id=scope, since=since_ts)
        out = [UsageOut(**r.to_dict()) for r in rows]
        return paginate(out, lambda u: [u.tenant, u.gpu_type], limit, cursor)

    def status(self, p: Principal) -> StatusOut:
        ctl = self._ctl
        with ctl.lock:
            nodes = ctl.cluster_nodes(force=True)
            live = ctl.store.live_leases()
            tenants = ctl.tenants()
        types = {
            name: GpuTypeStatus(
                gpu_type=name, price_per_hour=spec.price_per_hour, perf=getattr(spec, "perf", None)
            )
            for name, spec in ctl.config.gpu_types.items()
        }
        for n in nodes:
            t = types.get(n.gpu_type or "")
            if n.alive and t is not None:
                t.total += n.total_gpus
                t.nodes += 1
        rows: dict[tuple[str, str], TenantStatus] = {}
        for rec in tenants:
            if not p.is_admin and rec.name != p.name:
                continue
            for gpu_type in ctl.config.gpu_types:
                q = rec.spec.quota(gpu_type)
                rows[(rec.id, gpu_type)] = TenantStatus(
                    tenant=rec.name,
                    gpu_type=gpu_type,
                    nominal=q.nominal,
                    borrowing_limit=q.borrowing_limit,
                    lending_limit=q.lending_limit,
                )
        for lease in live:
            t = types.get(lease.gpu_type)
            if t is None:
                continue
            held = lease.state in HOLDING_STATES
            count = lease.held_gpus if held else lease.min_gpus
            row = rows.get((lease.tenant_id or "", lease.gpu_type))
            if held:
                t.allocated += count
            else:
                t.pending += count
            if row is not None:
                if held:
                    row.allocated += count
                else:
                    row.pending += count
                row.leases += 1
        for t in types.values():
            t.free = max(0, t.total - t.allocated)
        return StatusOut(
            time=iso(ctl.clock()),
            gpu_types=list(types.values()),
            tenants=[
                r for r in rows.values() if r.nominal or r.allocated or r.pending or not p.is_admin
            ],
        )
