"""Usage records: written by the lease transitions' hooks, read as totals and reports.

A usage record is a stretch of a lease holding a fixed number of GPUs (tenant id, GPU type,
workload, price at the time, start, end; ``end`` None while open). :class:`StoreTx` is what a
transaction hook may write (metering opens and closes records inside the state change's
transaction); :class:`UsageMixin` is the read side of :class:`~fastgpu.store.sql.Store`
(totals, period reports, decayed usage for fair sharing) and the closed records the pool
meters after a shrink. Changing a price never rewrites a record.

The daily rollup (:data:`~fastgpu.store.schema.usage_daily`): per UTC day and (tenant id,
tenant, GPU type, workload), the GPU-seconds and cost of the *closed* records, each split
exactly at midnight and priced at its own price. Invariant: the rollup equals the split of the
closed records, because whatever closes a record (:meth:`StoreTx.close_usage`, or
:meth:`StoreTx.open_usage` of a closed one) adds its days in the same transaction, and records
are never edited once closed. :func:`rebuild_daily` recomputes it from the records (the
migration's backfill, or a repair after editing records by hand). A report by day, week, month
or over the whole range reads the rollup for the whole days in its range and the records only
for the partial days at its ends and the open records; a report by hour reads the records (an
hourly rollup would outgrow the ledger: a record held a week is 168 rows).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)

from fastgpu.domain.lease import Lease
from fastgpu.domain.ledger import FIXED_WIDTH, period_bounds
from fastgpu.store import schema as t

_INSERT_USAGE = insert(t.usage)
_OPEN_OF_LEASE = select(t.usage).where(
    (t.usage.c.lease_id == bindparam("lease_id")) & t.usage.c.end.is_(None)
)
DAY = 86400.0
#: The rollup's key, in its primary key's order.
_DAILY_KEY = ("day", "tenant_id", "tenant", "gpu_type", "workload")
_DailyTotals = dict[tuple[float, str, str, str, str], list[float]]


def _split_days(records: Iterable[Mapping[str, Any]], into: _DailyTotals) -> None:
    """Add each closed record's GPU-seconds and cost to ``into``, per UTC day it held GPUs
    in: the seconds of ``[start, end)`` inside each day, times its GPUs; the cost at its own
    price. A record with ``end <= start`` adds nothing (as in the report)."""
    for r in records:
        start, end = r["start"], r["end"]
        if end is None or end <= start:
            continue
        gpus, price = r["gpus"], r["price_per_hour"]
        key = (r["tenant_id"] or "", r["tenant"], r["gpu_type"], r["workload"] or "")
        day = math.floor(start / DAY) * DAY
        while day < end:
            gpu_s = gpus * (min(end, day + DAY) - max(start, day))
            acc = into.setdefault((day, *key), [0.0, 0.0])
            acc[0] += gpu_s
            acc[1] += gpu_s / 3600.0 * price
            day += DAY


def _daily_rows(totals: _DailyTotals) -> list[dict[str, Any]]:
    return [
        {**dict(zip(_DAILY_KEY, k, strict=True)), "gpu_seconds": v[0], "cost": v[1]}
        for k, v in totals.items()
    ]


_UPSERT_DAILY: dict[str, Any] = {}


def _upsert_daily(dialect: str) -> Any:
    """INSERT into the rollup, adding to a row that is there (SQLite and PostgreSQL say it
    alike: ON CONFLICT DO UPDATE); built once per dialect."""
    if dialect not in _UPSERT_DAILY:
        from sqlalchemy.dialects import postgresql, sqlite

        stmt: Any = (postgresql if dialect == "postgresql" else sqlite).insert(t.usage_daily)
        d = t.usage_daily.c
        _UPSERT_DAILY[dialect] = stmt.on_conflict_do_update(
            index_elements=list(_DAILY_KEY),
            set_={
                "gpu_seconds": d.gpu_seconds + stmt.excluded.gpu_seconds,
                "cost": d.cost + stmt.excluded.cost,
            },
        )
    return _UPSERT_DAILY[dialect]


def rebuild_daily(conn: Connection) -> int:
    """Recompute the daily rollup from the closed usage records (the migration's backfill; a
    repair after editing records by hand). Returns its number of rows."""
    conn.execute(delete(t.usage_daily))
    u = t.usage.c
    cols = (u.tenant_id, u.tenant, u.gpu_type, u.workload, u.gpus, u.price_per_hour)
    totals: _DailyTotals = {}
    result = conn.execute(select(*cols, u.start, u.end).where(u.end.is_not(None)))
    while batch := result.fetchmany(50_000):
        _split_days((dict(r._mapping) for r in batch), totals)
    rows = _daily_rows(totals)
    for i in range(0, len(rows), 50_000):
        conn.execute(insert(t.usage_daily), rows[i : i + 50_000])
    return len(rows)


class StoreTx:
    """What a transaction hook may write, inside the transition's transaction. Closing a
    record adds its days to the daily rollup in the same transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _add_daily(self, records: Iterable[Mapping[str, Any]]) -> None:
        totals: _DailyTotals = {}
        _split_days(records, totals)
        if totals:
            self._conn.execute(_upsert_daily(self._conn.dialect.name), _daily_rows(totals))

    def open_usage(
        self, lease: Lease, now: float, gpus: int | None = None, end: float | None = None
    ) -> None:
        """A usage record of the lease from ``now``: open, at its held GPUs; or, with ``gpus``
        and ``end``, a closed one (GPUs it held past a shrink, until its raylets stopped)."""
        record = {
            "lease_id": lease.id,
            "tenant": lease.tenant,
            "tenant_id": lease.tenant_id,
            "gpu_type": lease.gpu_type,
            "gpus": gpus or lease.held_gpus or lease.gpus,
            "price_per_hour": lease.price_per_hour,
            "start": now,
            "end": end,
            "workload": lease.workload or "lease",
        }
        self._conn.execute(_INSERT_USAGE, record)
        if end is not None:
            self._add_daily([record])

    def close_usage(self, lease_id: str, now: float) -> None:
        """Close the lease's open record(s) at ``now`` and add them to the daily rollup; a
        lease without one is left as it is (idempotent)."""
        records = self._conn.execute(_OPEN_OF_LEASE, {"lease_id": lease_id}).all()
        if not records:
            return
        self._conn.execute(
            update(t.usage)
            .where((t.usage.c.lease_id == lease_id) & t.usage.c.end.is_(None))
            .values(end=now)
        )
        self._add_daily({**r._mapping, "end": now} for r in records)


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


class _Groups:
    """A report's GPU-seconds and cost per (keys, bucket index), added from groups of records
    and from rollup rows."""

    def __init__(self, starts: list[float], period: str | None, hi: float) -> None:
        self.starts, self.period = starts, period
        origin = starts[0]
        # Bucket j ends at edges[j], in seconds from the first bucket's start.
        self._edges = [b - origin for b in starts[1:]] + [hi - origin]
        self.merged: dict[tuple[Any, ...], list[float]] = {}

    def bucket_of(self, ts: float) -> int:
        return bisect_right(self.starts, ts) - 1

    def add(self, key: tuple[Any, ...], gpu_s: float, cost: float) -> None:
        if gpu_s > 0:
            acc = self.merged.setdefault(key, [0.0, 0.0])
            acc[0] += gpu_s
            acc[1] += cost

    def add_span(
        self,
        head: tuple[Any, ...],
        i0: int,
        i1: int,
        g: tuple[float, float, float],
        p: tuple[float, float, float],
    ) -> None:
        """Split a group of records from bucket ``i0`` to ``i1`` into buckets, from its sums
        ``g`` (GPUs, GPUs x start, GPUs x end) and ``p`` (the same x price per hour): the first
        bucket gets G x (its end) - sum(g x s), each middle one G x its width, and the last
        sum(g x e) - G x (its start), the exact split of every record."""
        edges = self._edges
        (gn, gs, ge), (pn, ps, pe) = g, p
        if i0 == i1:
            self.add((*head, i0), ge - gs, (pe - ps) / 3600.0)
            return
        self.add((*head, i0), edges[i0] * gn - gs, (edges[i0] * pn - ps) / 3600.0)
        for j in range(i0 + 1, i1):
            width = edges[j] - edges[j - 1]
            self.add((*head, j), width * gn, width * pn / 3600.0)
        last = edges[i1 - 1]
        self.add((*head, i1), ge - last * gn, (pe - last * pn) / 3600.0)


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

    def rebuild_usage_rollup(self) -> int:
        """Recompute the daily rollup from the usage records, in one transaction (after
        records were written other than through :class:`StoreTx`, e.g. a bulk load). Returns
        its number of rows."""
        with self._tx() as conn:
            return rebuild_daily(conn)

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
        there; an open record counts up to ``now``. Unless by hour, the whole UTC days of the
        range come from the daily rollup (closed records), grouped by bucket and the keys; the
        partial days at the range's ends and the open records come from the records
        (:meth:`_record_queries`). By hour, or in a range without a whole day, everything
        comes from the records. All parts are one statement, so they see one snapshot.
        """
        hi = min(until, now)
        if hi <= since:
            return []
        starts = period_bounds(since, hi, period)
        u = t.usage.c
        keys: list[Any] = []
        if "tenant" in by:
            # coalesce: grouping on the bare column leads SQLite to walk the tenant index
            # (a random row read per record, 2x slower than the range scan on start).
            keys += [func.coalesce(u.tenant_id, "").label("tenant_id"), u.tenant]
        if "gpu_type" in by:
            keys.append(u.gpu_type)
        if "workload" in by:
            keys.append(u.workload)
        names = [k.name for k in keys]
        scope = [] if tenant_id is None else [u.tenant_id == tenant_id]
        first_day, last_day = math.ceil(since / DAY) * DAY, math.floor(hi / DAY) * DAY
        groups = _Groups(starts, period, hi)
        if period == "hour" or first_day >= last_day:
            parts = self._record_queries(groups, keys, scope, since, hi, now)
        else:
            closed = [u.end.is_not(None)]
            parts = self._record_queries(groups, keys, [*scope, u.end.is_(None)], since, hi)
            if since < first_day:
                parts += self._record_queries(groups, keys, [*scope, *closed], since, first_day)
            if last_day < hi:
                parts += self._record_queries(groups, keys, [*scope, *closed], last_day, hi)
            d = t.usage_daily.c
            dkeys = [getattr(d, n) for n in names]
            # By day: the day itself, so a report by day (and tenant) reads the rollup in its
            # key order without sorting; else the bucket, so fewer rows come back.
            when = d.day if period == "day" else self._bucket(d.day, starts, period)
            zero = literal(0.0)
            q = (
                select(
                    literal(1).label("rollup"),
                    *dkeys,
                    when,
                    when,
                    zero,
                    zero,
                    func.sum(d.gpu_seconds),
                    zero,
                    zero,
                    func.sum(d.cost),
                )
                .where(d.day >= first_day, d.day < last_day)
                .group_by(when, *dkeys)
            )
            parts.append(q if tenant_id is None else q.where(d.tenant_id == tenant_id))
        # One statement: one snapshot on SQLite and on PostgreSQL (READ COMMITTED gives each
        # statement its own), so a record closing meanwhile counts once, open or in the rollup.
        with self._read() as conn:
            # Typed Any: mypy 2.4 crashes inferring execute()'s overload for the union of a
            # select and a compound select.
            stmt: Any = parts[0] if len(parts) == 1 else union_all(*parts)
            rows = conn.execute(stmt).all()
        workload = names.index("workload") if "workload" in names else -1
        for rollup, *head, i0, i1, g, gs, ge, p, ps, pe in rows:
            if not rollup:
                groups.add_span(tuple(head), int(i0), int(i1), (g, gs, ge), (p, ps, pe))
                continue
            if workload >= 0 and head[workload] == "":
                head[workload] = None  # the rollup's "" for a record without one
            groups.add((*head, groups.bucket_of(i0) if period == "day" else int(i0)), ge, pe)
        out = []
        for key, (gpu_seconds, cost) in groups.merged.items():
            m = dict(zip(names, key, strict=False))
            out.append(
                ReportRow(
                    gpu_seconds=gpu_seconds,
                    cost=cost,
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

    def _record_queries(
        self,
        groups: _Groups,
        keys: list[Any],
        where: list[Any],
        lo: float,
        hi: float,
        now: float | None = None,
    ) -> list[Any]:
        """Queries of the records that ``where`` picks, clipped to ``[lo, hi)`` (an open one
        ends at ``hi``: callers pass ``hi <= now``), in groups for :meth:`_Groups.add_span`.

        Per group of (keys, first bucket, last bucket) they sum the GPUs and GPUs x start and
        GPUs x end (seconds from the first bucket's start, so sums stay exact in floats), and
        the same weighted by price: one row per (keys, bucket span) rather than one row per
        record. With ``now`` (the whole range from records), the records inside ``[lo, hi)``
        (most) are summed as they are, in one scan of the start index, apart from the few
        across its ends or open, which are clipped.
        """
        u = t.usage.c
        origin = groups.starts[0]

        def bucket(x: Any, edge: bool = False) -> Any:
            return self._bucket(x, groups.starts, groups.period, edge)

        def query(s: Any, e: Any, *cond: Any) -> Any:
            first, last = bucket(s), bucket(e, True)
            g, gp = u.gpus, u.gpus * u.price_per_hour
            return (
                select(
                    literal(0).label("rollup"),
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
                .where(u.start < hi, or_(u.end.is_(None), u.end > lo), *where, *cond)
                .group_by(*keys, first, last)
            )

        clipped_start = case((u.start < lo, literal(lo)), else_=u.start)
        if now is None:
            end = func.coalesce(u.end, hi)
            qs = [query(clipped_start, case((end > hi, literal(hi)), else_=end))]
        else:
            end = func.coalesce(u.end, now)
            qs = [
                query(
                    u.start, u.end, u.start >= lo, u.end.is_not(None), u.end <= hi, u.end > u.start
                ),
                query(
                    clipped_start,
                    case((end > hi, literal(hi)), else_=end),
                    or_(u.end.is_(None), and_(u.start < lo, u.end > lo), u.end > hi),
                ),
            ]
        return qs

    def _bucket(self, x: Any, starts: list[float], period: str | None, edge: bool = False) -> Any:
        """The bucket (index into ``starts``) holding time ``x``, in SQL (``edge``: an end, so
        a boundary is the one before it): arithmetic for hours, days and weeks (UTC has no
        DST), comparison with the month starts for months."""
        n = len(starts)
        if n == 1:
            return literal(0)
        width = FIXED_WIDTH.get(period or "")
        if width is not None:
            return self._floor((x - starts[0]) / width)
        return case(
            *((x <= b if edge else x < b, i) for i, b in enumerate(starts[1:])),
            else_=n - 1,
        )

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
