"""Read-only views: usage (metering) and cluster status, scoped to the caller.

A tenant sees only its own rows; the admin sees every tenant, or one by name.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.domain.lease import HOLDING_STATES
from fastgpu.domain.ledger import PERIODS, REPORT_GROUPS, next_period, period_start
from fastgpu.errors import InvalidRequest, NotFound
from fastgpu.service.models import (
    GpuTypeStatus,
    Page,
    StatementLine,
    StatementOut,
    StatusOut,
    TenantStatement,
    TenantStatus,
    UsageOut,
    UsageReportOut,
    UsageReportRow,
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

    def usage_report(
        self,
        p: Principal,
        by: str | None = None,
        period: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tenant: str | None = None,
    ) -> UsageReportOut:
        """GPU-hours and cost grouped by ``by`` (comma-separated) and ``period`` buckets over
        ``[since, until)``; since defaults to the start of this month (UTC), until to now."""
        groups = _parse_by(by)
        if period is not None and period not in PERIODS:
            raise InvalidRequest(f"period: got {period!r}; expected one of {', '.join(PERIODS)}")
        scope = self._scope(p, tenant)
        now = self._ctl.clock()
        since_ts = parse_iso(since, "since") if since else period_start(now, "month")
        until_ts = min(parse_iso(until, "until"), now) if until else now
        if until_ts <= since_ts:
            raise InvalidRequest(
                f"until: got {iso(until_ts)}, not after since {iso(since_ts)}; expected "
                "until > since (and since before now)"
            )
        rows = self._ctl.store.usage_report(now, since_ts, until_ts, groups, period, scope)
        out = [
            UsageReportRow(
                tenant=r.tenant,
                gpu_type=r.gpu_type,
                workload=r.workload,
                period=iso(r.period_start),
                gpu_seconds=round(r.gpu_seconds, 3),
                gpu_hours=round(r.gpu_seconds / 3600, 6),
                cost=round(r.cost, 6),
            )
            for r in rows
        ]
        return UsageReportOut(
            since=iso(since_ts) or "",
            until=iso(until_ts) or "",
            by=list(groups),
            period=period,
            rows=out,
            gpu_hours=round(sum(r.gpu_seconds for r in rows) / 3600, 6),
            cost=round(sum(r.cost for r in rows), 6),
        )

    def statement(
        self, p: Principal, at: str, period: str = "month", tenant: str | None = None
    ) -> StatementOut:
        """Per tenant: GPU-hours and cost by GPU type and workload over one calendar period
        (``at``: 2026-11 for a month; a date for a day or the ISO week that holds it)."""
        if period not in ("day", "week", "month"):
            raise InvalidRequest(f"period: got {period!r}; expected day, week or month")
        start = period_start(_parse_at(at, period), period)
        end = next_period(start, period)
        scope = self._scope(p, tenant)
        now = self._ctl.clock()
        rows = self._ctl.store.usage_report(
            now, start, end, ("tenant", "gpu_type", "workload"), None, scope
        )
        per: dict[str, list[StatementLine]] = {}
        for r in rows:
            per.setdefault(r.tenant or "", []).append(
                StatementLine(
                    gpu_type=r.gpu_type or "",
                    workload=r.workload,
                    gpu_hours=round(r.gpu_seconds / 3600, 6),
                    cost=round(r.cost, 6),
                )
            )
        return StatementOut(
            period=period,
            at=at,
            since=iso(start) or "",
            until=iso(end) or "",
            tenants=[
                TenantStatement(
                    tenant=name,
                    lines=lines,
                    gpu_hours=round(sum(x.gpu_hours for x in lines), 6),
                    cost=round(sum(x.cost for x in lines), 6),
                )
                for name, lines in sorted(per.items())
            ],
        )

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


def _parse_by(by: str | None) -> tuple[str, ...]:
    """``tenant,gpu_type`` -> ("tenant", "gpu_type"); empty: no grouping but the period."""
    if not by:
        return ()
    groups = tuple(g.strip() for g in by.split(",") if g.strip())
    bad = [g for g in groups if g not in REPORT_GROUPS]
    if bad or len(set(groups)) != len(groups):
        raise InvalidRequest(
            f"by: got {by!r}; expected distinct names of {', '.join(REPORT_GROUPS)}, "
            "comma-separated"
        )
    return groups


def _parse_at(at: str, period: str) -> float:
    """2026-11 (a month) or 2026-11-05 (a day, or the ISO week that holds it), UTC."""
    pattern = r"\d{4}-\d{2}" if period == "month" else r"\d{4}-\d{2}-\d{2}"
    fmt = "%Y-%m" if period == "month" else "%Y-%m-%d"
    example = "2026-11" if period == "month" else "2026-11-05"
    try:
        if not re.fullmatch(pattern, at):
            raise ValueError(at)
        d = datetime.strptime(at, fmt).replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidRequest(f"at: got {at!r}; expected a {period} such as {example}") from None
    return d.timestamp()
