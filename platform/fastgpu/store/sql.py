"""The store: SQLAlchemy Core over SQLite (default) or PostgreSQL.

Invariants:
* every public mutating method is one transaction (all or nothing);
* a lease's state only changes through :meth:`Store.transition`, a compare-and-set on the
  current state that writes the audit event and runs the caller's *transaction hooks* in the
  same transaction (metering is such a hook, :mod:`fastgpu.controller.metering`), so a crash can
  never leave a lease RESERVED without metering or metered after it ended;
* lease requests are idempotent on ``(tenant id, request_id)``;
* leases and usage belong to a tenant's immutable id; the name is kept for display.

Tenants, tokens and idempotency keys live in :mod:`fastgpu.store.accounts`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from fastgpu.domain.lease import LIVE_STATES, Lease, LeaseState, check_transition
from fastgpu.domain.ledger import FIXED_WIDTH, period_bounds
from fastgpu.errors import Conflict, FastGPUError
from fastgpu.store import schema as t
from fastgpu.store.accounts import AccountsMixin
from fastgpu.store.schema import MIGRATIONS, SCHEMA_VERSION

# Statements built once and executed with parameters: building a 30-column UPDATE per call
# cost more than running it (SQLAlchemy coerces every value clause each time).
_LIVE_VALUES = sorted(s.value for s in LIVE_STATES)
_INSERT_LEASE = insert(t.leases)
_GET_LEASE = select(t.leases).where(t.leases.c.id == bindparam("id"))
_BY_REQUEST = select(t.leases).where(
    (t.leases.c.tenant_id == bindparam("tenant_id"))
    & (t.leases.c.request_id == bindparam("request_id"))
)
_COUNT_LIVE = (
    select(func.count())
    .select_from(t.leases)
    .where(t.leases.c.tenant_id == bindparam("tenant_id"))
    .where(t.leases.c.state.in_(_LIVE_VALUES))
)
_LIVE_LEASES = (
    select(t.leases)
    .where(t.leases.c.state.in_(_LIVE_VALUES))
    .order_by(t.leases.c.created_at, t.leases.c.id)
)
_INSERT_EVENT = insert(t.lease_events)
_INSERT_USAGE = insert(t.usage)
_CAS_LEASE = (
    update(t.leases)
    .where((t.leases.c.id == bindparam("_id")) & (t.leases.c.state == bindparam("_expected")))
    .values({c.name: bindparam(c.name) for c in t.leases.columns if c.name != "id"})
)


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


#: ``hook(tx, lease, prev, new, now)``; ``prev == new`` for a resize (same state, new size).
TxHook = Callable[[StoreTx, Lease, LeaseState, LeaseState, float], None]


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


_LEASE_COLUMNS = [c.name for c in t.leases.columns]


def _lease_from_row(row: Any) -> Lease:
    d = dict(row._mapping)
    d["state"] = LeaseState(d["state"])
    d["nodes"] = json.loads(d["nodes"] or "[]")
    d["preemptible"] = bool(d["preemptible"])
    return Lease(**d)


def _lease_to_row(lease: Lease) -> dict[str, Any]:
    d = {name: getattr(lease, name) for name in _LEASE_COLUMNS}
    d["state"] = lease.state.value
    d["nodes"] = json.dumps(list(lease.nodes))
    return d


class Store(AccountsMixin):
    """Durable platform state. Thread-safe; one instance per process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.RLock()  # SQLite allows one writer; keep ours in line.
        self._shared_connection = isinstance(engine.pool, StaticPool)
        self._migrate()

    # -- plumbing --------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction; writers go one at a time (SQLite allows one writer)."""
        with self._lock, self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction, without the writers' lock: readers never queue behind
        writers (SQLite's WAL and PostgreSQL's MVCC give each a consistent snapshot). An
        in-memory SQLite store has one shared connection, so there reads take the lock too."""
        if self._shared_connection:
            with self._lock, self._engine.connect() as conn:
                yield conn
            return
        with self._engine.connect() as conn:
            yield conn

    def _migrate(self) -> None:
        with self._tx() as conn:
            t.schema_version.create(conn, checkfirst=True)
            current = conn.execute(select(t.schema_version.c.version)).scalar()
            if current is None:
                conn.execute(insert(t.schema_version).values(version=0))
                current = 0
        if current > SCHEMA_VERSION:
            raise FastGPUError(
                f"the store is at schema version {current}, newer than this FastGPU "
                f"({SCHEMA_VERSION}); upgrade FastGPU"
            )
        for version in range(current, SCHEMA_VERSION):
            with self._tx() as conn:
                MIGRATIONS[version](conn)
                conn.execute(update(t.schema_version).values(version=version + 1))

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(t.schema_version.c.version)).scalar_one())

    def close(self) -> None:
        self._engine.dispose()

    # -- leases ------------------------------------------------------------------------------
    def insert_lease(self, lease: Lease, max_live: int | None = None) -> tuple[Lease, bool]:
        """Insert a new lease; with a request id already used, return that lease instead.
        With ``max_live``, refuse (Conflict) when the tenant already has that many live leases.
        One transaction. Returns ``(lease, created)``.
        """
        with self._tx() as conn:
            if lease.request_id is not None:
                row = conn.execute(
                    _BY_REQUEST, {"tenant_id": lease.tenant_id, "request_id": lease.request_id}
                ).first()
                if row:
                    return _lease_from_row(row), False
            if max_live is not None:
                live = conn.execute(_COUNT_LIVE, {"tenant_id": lease.tenant_id}).scalar_one()
                if live >= max_live:
                    raise Conflict(
                        f"tenant {lease.tenant} has {live} live leases, the most allowed; "
                        "release some"
                    )
            try:
                conn.execute(_INSERT_LEASE, _lease_to_row(lease))
            except IntegrityError:
                raise Conflict(f"lease id {lease.id} already exists") from None
            conn.execute(
                _INSERT_EVENT,
                {
                    "lease_id": lease.id,
                    "at": lease.created_at,
                    "prev": None,
                    "new": lease.state.value,
                    "reason": lease.reason,
                },
            )
        return lease, True

    def find_lease_by_request(self, tenant_id: str, request_id: str) -> Lease | None:
        with self._read() as conn:
            row = conn.execute(
                select(t.leases).where(
                    (t.leases.c.tenant_id == tenant_id) & (t.leases.c.request_id == request_id)
                )
            ).first()
        return _lease_from_row(row) if row else None

    def get_lease(self, lease_id: str) -> Lease | None:
        with self._read() as conn:
            row = conn.execute(_GET_LEASE, {"id": lease_id}).first()
        return _lease_from_row(row) if row else None

    def list_leases(
        self,
        tenant_id: str | None = None,
        states: Iterable[LeaseState] | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[Lease]:
        """Leases in (created_at, id) order; ``after`` is the last key of the previous page."""
        q = select(t.leases)
        if tenant_id is not None:
            q = q.where(t.leases.c.tenant_id == tenant_id)
        if states is not None:
            q = q.where(t.leases.c.state.in_([s.value for s in states]))
        if after is not None:
            at, lease_id = after
            q = q.where(
                or_(
                    t.leases.c.created_at > at,
                    and_(t.leases.c.created_at == at, t.leases.c.id > lease_id),
                )
            )
        q = q.order_by(t.leases.c.created_at, t.leases.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [_lease_from_row(r) for r in conn.execute(q).all()]

    def _count_leases(self, *where: Any) -> int:
        with self._read() as conn:
            q = select(func.count()).select_from(t.leases)
            for cond in where:
                q = q.where(cond)
            return int(conn.execute(q).scalar_one())

    def count_preempted(self, tenant_id: str, workload: str, since: float) -> int:
        """Leases of the tenant bound to ``workload`` that were preempted after ``since``."""
        return self._count_leases(
            t.leases.c.tenant_id == tenant_id,
            t.leases.c.workload == workload,
            t.leases.c.state == LeaseState.PREEMPTED.value,
            t.leases.c.ended_at >= since,
        )

    def live_leases(self) -> list[Lease]:
        with self._read() as conn:
            return [_lease_from_row(r) for r in conn.execute(_LIVE_LEASES).all()]

    def save_lease(self, lease: Lease, expected_state: LeaseState) -> None:
        """Write fields of a lease whose state does not change (compare-and-set on state)."""
        if lease.state != expected_state:
            raise FastGPUError("save_lease cannot change state; use transition()")
        with self._tx() as conn:
            self._cas(conn, lease, expected_state)

    def transition(
        self,
        lease: Lease,
        new: LeaseState,
        now: float,
        reason: str | None = None,
        hooks: Sequence[TxHook] = (),
    ) -> Lease:
        """Move ``lease`` to ``new`` (checked against the table), with its other field changes,
        the audit event and every hook, in one transaction."""
        prev = lease.state
        check_transition(lease.id, prev, new)
        lease.state = new
        try:
            with self._tx() as conn:
                self._cas(conn, lease, prev)
                conn.execute(
                    _INSERT_EVENT,
                    {
                        "lease_id": lease.id,
                        "at": now,
                        "prev": prev.value,
                        "new": new.value,
                        "reason": reason,
                    },
                )
                tx = StoreTx(conn)
                for hook in hooks:
                    hook(tx, lease, prev, new, now)
        except BaseException:
            lease.state = prev
            raise
        return lease

    def resize(self, lease: Lease, now: float, hooks: Sequence[TxHook] = ()) -> None:
        """Write a lease whose size changed (same state); hooks see ``prev == new``."""
        with self._tx() as conn:
            self._cas(conn, lease, lease.state)
            tx = StoreTx(conn)
            for hook in hooks:
                hook(tx, lease, lease.state, lease.state, now)

    def add_usage(self, lease: Lease, gpus: int, start: float, end: float) -> None:
        """A closed usage record: ``gpus`` of the lease held from ``start`` to ``end``."""
        with self._tx() as conn:
            StoreTx(conn).open_usage(lease, start, gpus=gpus, end=end)

    def purge_ended(self, before: float) -> int:
        """Delete leases that ended before ``before`` and their events; usage stays."""
        ended = [s.value for s in LeaseState if s.is_terminal]
        with self._tx() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    select(t.leases.c.id)
                    .where(t.leases.c.state.in_(ended))
                    .where(t.leases.c.ended_at < before)
                    .limit(5000)
                ).all()
            ]
            if ids:
                conn.execute(t.lease_events.delete().where(t.lease_events.c.lease_id.in_(ids)))
                conn.execute(t.leases.delete().where(t.leases.c.id.in_(ids)))
        return len(ids)

    @staticmethod
    def _cas(conn: Connection, lease: Lease, expected: LeaseState) -> None:
        row = _lease_to_row(lease)
        row["_id"] = row.pop("id")
        row["_expected"] = expected.value
        res = conn.execute(_CAS_LEASE, row)
        if res.rowcount != 1:
            raise Conflict(f"lease {lease.id} changed concurrently (expected {expected.value})")

    def lease_events(self, lease_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                select(t.lease_events)
                .where(t.lease_events.c.lease_id == lease_id)
                .order_by(t.lease_events.c.seq)
            ).all()
        return [dict(r._mapping) for r in rows]

    # -- usage -------------------------------------------------------------------------------
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


def open_store(url: str) -> Store:
    """Open (creating and migrating as needed) the store at a SQLAlchemy URL."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        else:
            path = url.split("sqlite:///", 1)[-1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return Store(engine)
