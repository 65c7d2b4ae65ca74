"""Usage records: written by the lease transitions' hooks, read as totals and reports.

A usage record is a stretch of a lease holding a fixed number of GPUs (tenant id, GPU type,
workload, price at the time, start, end; ``end`` None while open). :class:`StoreTx` is what a
transaction hook may write (metering opens and closes records inside the state change's
transaction); :class:`UsageMixin` is the read side of :class:`~fastgpu.store.sql.Store`
(totals, period reports, decayed usage for fair sharing) and the closed records the pool
meters after a shrink. Changing a price never rewrites a record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from fastgpu.domain.lease import Lease
from fastgpu.domain.ledger import FIXED_WIDTH, period_bounds
from fastgpu.store import schema as t

_INSERT_USAGE = insert(t.usage)


class StoreTx:
    """What a transaction hook may write, inside the transition's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def open_usage(
        self, lease: Lease, now: float, gpus: int | None = None, end: float | None = None
    ) -> None:
        """A usage record of the lease from ``now``: open, at its held GPUs; or, with ``gpus``
        and ``end``, a closed one (GPUs it held past a shrink, until its raylets stopped)."""
        self._conn.execute(
            _INSERT_USAGE,
            {
                "lease_id": lease.id,
                "tenant": lease.tenant,
                "tenant_id": lease.tenant_id,
                "gpu_type": lease.gpu_type,
                "gpus": gpus or lease.held_gpus or lease.gpus,
                "price_per_hour": lease.price_per_hour,
                "start": now,
                "end": end,
                "workload": lease.workload or "lease",
            },
        )

    def close_usage(self, lease_id: str, now: float) -> None:
        self._conn.execute(
            update(t.usage)
            .where((t.usage.c.lease_id == lease_id) & t.usage.c.end.is_(None))
            .values(end=now)
        )


@dataclass(frozen=True)
class UsageRow:
    tenant: str
    gpu_type: str
    gpu_seconds: float
    cost: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "gpu_type": self.gpu_type,
            "gpu_seconds": round(self.gpu_seconds, 3),
            "gpu_hours": round(self.gpu_seconds / 3600, 6),
            "cost": round(self.cost, 6),
        }


@dataclass(frozen=True)
class ReportRow:
    """GPU-seconds and cost of one group of a usage report; a field not grouped by is None."""

    gpu_seconds: float
    cost: float
    tenant: str | None = None
    gpu_type: str | None = None
    workload: str | None = None
    period_start: float | None = None


class UsageMixin:
    """Mixed into :class:`~fastgpu.store.sql.Store`, which provides the engine and the two
    transactions."""

    _engine: Engine
    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def add_usage(self, lease: Lease, gpus: int, start: float, end: float) -> None:
        """A closed usage record: ``gpus`` of the lease held from ``start`` to ``end``."""
        with self._tx() as conn:
            StoreTx(conn).open_usage(lease, start, gpus=gpus, end=end)

    def usage(
        self,
        now: float,
        tenant_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageRow]:
        """GPU-seconds and cost per (tenant, GPU type), records clipped to [since, until]."""
        q = select(t.usage)
        if tenant_id is not None:
            q = q.where(t.usage.c.tenant_id == tenant_id)
        if since is not None:
            q = q.where(or_(t.usage.c.end.is_(None), t.usage.c.end > since))
        with self._read() as conn:
            rows = conn.execute(q).all()
        lo = since if since is not None else float("-inf")
        hi = min(until, now) if until is not None else now
        totals: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            start = max(r.start, lo)
            end = min(r.end if r.end is not None else now, hi)
            if end <= start:
                totals.setdefault((r.tenant, r.gpu_type), [0.0, 0.0])
                continue
            gpu_s = r.gpus * (end - start)
            acc = totals.setdefault((r.tenant, r.gpu_type), [0.0, 0.0])
            acc[0] += gpu_s
            acc[1] += gpu_s / 3600.0 * r.price_per_hour
        return [
            UsageRow(tenant=k[0], gpu_type=k[1], gpu_seconds=v[0], cost=v[1])
            for k, v in sorted(totals.items())
        ]

    def usage_report(
        self,
        now: float,
        since: float,
        until: float,
        by: Sequence[str] = ("tenant",),
        period: str | None = None,
        tenant_id: str | None = None,
    ) -> list[ReportRow]:
        """GPU-seconds and cost of the usage records over ``[since, min(until, now))``, grouped
        by ``by`` (of :data:`~fastgpu.domain.ledger.REPORT_GROUPS`) and by ``period`` bucket
        (of :data:`~fastgpu.domain.ledger.PERIODS`).

        A record that spans bucket boundaries counts in each bucket for the seconds it held
        there; an open record counts up to ``now``. Two aggregate queries in one read (records
        inside the range; open ones and those across its ends, clipped) group by the keys and
        each record's first and last bucket; the split of those groups into buckets is exact
        arithmetic on their sums. Buckets are found arithmetically for hours, days and weeks
        (UTC has no DST) and by comparison with the month starts for months.
        """
        hi = min(until, now)
        if hi <= since:
            return []
        starts = period_bounds(since, hi, period)
        n = len(starts)
        u = t.usage.c
        width = FIXED_WIDTH.get(period or "")
        origin = starts[0]

        def bucket(x: Any, edge: bool = False) -> Any:
            """The bucket holding time ``x`` (``edge``: an end, so a boundary is the one
            before it)."""
            if n == 1:
                return literal(0)
            if width is not None:
                return self._floor((x - origin) / width)
            return case(
                *((x <= b if edge else x < b, i) for i, b in enumerate(starts[1:])),
                else_=n - 1,
            )

        keys: list[Any] = []
        if "tenant" in by:
            # coalesce: grouping on the bare column leads SQLite to walk the tenant index
            # (a random row read per record, 2x slower than the range scan on start).
            keys += [func.coalesce(u.tenant_id, "").label("tenant_id"), u.tenant]
        if "gpu_type" in by:
            keys.append(u.gpu_type)
        if "workload" in by:
            keys.append(u.workload)
        where = [u.start < hi, or_(u.end.is_(None), u.end > since)]
        if tenant_id is not None:
            where.append(u.tenant_id == tenant_id)

        # Per group of (keys, first bucket, last bucket): the GPUs and GPUs x start and
        # GPUs x end (seconds from the first bucket's start, so sums stay exact in floats),
        # and the same weighted by price. Python then gives the first bucket
        # G x (its end) - sum(g x s), each middle bucket G x its width, and the last
        # sum(g x e) - G x (its start): the exact split of every record, with one group row
        # per (keys, bucket span) rather than one row per record.
        def query(s: Any, e: Any, *cond: Any) -> Any:
            first, last = bucket(s), bucket(e, True)
            g, gp = u.gpus, u.gpus * u.price_per_hour
            return (
                select(
                    *keys,
                    first.label("i0"),
                    last.label("i1"),
                    func.sum(g).label("g"),
                    func.sum(g * (s - origin)).label("gs"),
                    func.sum(g * (e - origin)).label("ge"),
                    func.sum(gp).label("p"),
                    func.sum(gp * (s - origin)).label("ps"),
                    func.sum(gp * (e - origin)).label("pe"),
                )
                .where(*where, *cond)
                .group_by(*keys, first, last)
            )

        # 1. Records inside the range (most): as they are, one scan of the start index.
        q_inner = query(
            u.start, u.end, u.start >= since, u.end.is_not(None), u.end <= hi, u.end > u.start
        )
        # 2. Open records and those across the range's ends (few; found by the start and end
        # indexes): clipped to the range.
        end = func.coalesce(u.end, now)
        q_edge = query(
            case((u.start < since, literal(since)), else_=u.start),
            case((end > hi, literal(hi)), else_=end),
            or_(u.end.is_(None), and_(u.start < since, u.end > since), u.end > hi),
        )
        with self._read() as conn:
            rows = [*conn.execute(q_inner).all(), *conn.execute(q_edge).all()]
        names = [k.name for k in keys]
        edges = [b - origin for b in starts[1:]] + [hi - origin]  # bucket j ends at edges[j]
        merged: dict[tuple[Any, ...], list[float]] = {}

        def add(key: tuple[Any, ...], gpu_s: float, cost: float) -> None:
            if gpu_s > 0:
                acc = merged.setdefault(key, [0.0, 0.0])
                acc[0] += gpu_s
                acc[1] += cost

        for row in rows:
            got = row._mapping
            head = tuple(got[k] for k in names)
            i0, i1 = int(got["i0"]), int(got["i1"])
            g, p = float(got["g"]), float(got["p"])
            if i0 == i1:
                add((*head, i0), got["ge"] - got["gs"], got["pe"] - got["ps"])
                continue
            add((*head, i0), edges[i0] * g - got["gs"], edges[i0] * p - got["ps"])
            for j in range(i0 + 1, i1):
                width_j = edges[j] - edges[j - 1]
                add((*head, j), width_j * g, width_j * p)
            add((*head, i1), got["ge"] - edges[i1 - 1] * g, got["pe"] - edges[i1 - 1] * p)
        out = []
        for key, (gpu_seconds, cost) in merged.items():
            m = dict(zip(names, key, strict=False))
            out.append(
                ReportRow(
                    gpu_seconds=gpu_seconds,
                    cost=cost / 3600.0,
                    tenant=m.get("tenant"),
                    gpu_type=m.get("gpu_type"),
                    workload=m.get("workload"),
                    period_start=starts[key[-1]] if period is not None else None,
                )
            )
        out.sort(
            key=lambda x: (
                x.period_start or 0.0,
                x.tenant or "",
                x.gpu_type or "",
                x.workload or "",
            )
        )
        return out

    def _floor(self, x: Any) -> Any:
        # Arguments are >= 0: SQLite's integer cast truncates, which is floor there;
        # PostgreSQL's rounds, so it gets floor() (SQLite may lack it).
        if self._engine.dialect.name == "sqlite":
            return cast(x, Integer)
        return cast(func.floor(x), Integer)

    def decayed_usage(self, now: float, half_life_s: float) -> dict[str, float]:
        """Per tenant id: GPU-seconds of its usage records, each second weighted by
        ``2 ** -(age / half_life)`` (:func:`fastgpu.domain.usage.decayed_gpu_seconds`); one
        read for every tenant."""
        from fastgpu.domain.usage import decayed_gpu_seconds

        with self._read() as conn:
            rows = conn.execute(
                select(t.usage.c.tenant_id, t.usage.c.gpus, t.usage.c.start, t.usage.c.end)
            ).all()
        per: dict[str, list[tuple[float, float, float | None]]] = {}
        for tenant_id, gpus, start, end in rows:
            per.setdefault(tenant_id, []).append((gpus, start, end))
        return {tid: decayed_gpu_seconds(iv, now, half_life_s) for tid, iv in per.items()}
