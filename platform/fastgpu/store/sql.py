"""The store: SQLAlchemy Core over SQLite (default) or PostgreSQL.

Invariants:
* every public mutating method is one transaction (all or nothing);
* a lease's state only changes through :meth:`Store.transition`, a compare-and-set on the
  current state that writes the audit event and runs the caller's *transaction hooks* in the
  same transaction (metering is such a hook, :mod:`fastgpu.controller.metering`), so a crash can
  never leave a lease RESERVED without metering or metered after it ended;
* lease requests are idempotent on ``(tenant id, request_id)``;
* leases and usage belong to a tenant's immutable id; the name is kept for display.

Tenants, tokens and idempotency keys live in :mod:`fastgpu.store.accounts`; usage records,
their reports and the transaction hooks' writer in :mod:`fastgpu.store.usage`; model
versions in :mod:`fastgpu.store.registry`.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Row,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from fastgpu.domain.lease import LIVE_STATES, Lease, LeaseState, check_transition
from fastgpu.errors import Conflict, FastGPUError
from fastgpu.store import schema as t
from fastgpu.store.accounts import AccountsMixin
from fastgpu.store.budget import BudgetMixin
from fastgpu.store.endpoints import EndpointsMixin
from fastgpu.store.hosts import HostsMixin
from fastgpu.store.registry import RegistryMixin
from fastgpu.store.schema import MIGRATIONS, SCHEMA_VERSION
from fastgpu.store.usage import StoreTx, UsageMixin

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
_CAS_LEASE = (
    update(t.leases)
    .where((t.leases.c.id == bindparam("_id")) & (t.leases.c.state == bindparam("_expected")))
    .values({c.name: bindparam(c.name) for c in t.leases.columns if c.name != "id"})
)

# A waiting lease's new wait reason: two columns, not the whole row (a busy queue re-reasons
# several leases a pass).
_SET_WAIT_REASON = (
    update(t.leases)
    .where((t.leases.c.id == bindparam("_id")) & (t.leases.c.state == LeaseState.PENDING.value))
    .values(reason=bindparam("reason"), reason_detail=bindparam("reason_detail"))
)


#: ``hook(tx, lease, prev, new, now)``; ``prev == new`` for a resize (same state, new size).
TxHook = Callable[[StoreTx, Lease, LeaseState, LeaseState, float], None]


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


@functools.lru_cache(maxsize=64)
def _lease_query(
    columns: tuple[str, ...], by_tenant: bool, by_state: bool, after: bool, limited: bool
) -> Any:
    """The select of :meth:`Store.lease_rows` for one shape, built once (its values are bound
    parameters: ``tenant_id``, ``states``, ``after_at``, ``after_id``, ``limit``)."""
    q = select(*(t.leases.c[name] for name in columns))
    if by_tenant:
        q = q.where(t.leases.c.tenant_id == bindparam("tenant_id"))
    if by_state:
        q = q.where(t.leases.c.state.in_(bindparam("states", expanding=True)))
    if after:
        at: Any = bindparam("after_at")
        lease_id: Any = bindparam("after_id")
        q = q.where(
            or_(
                t.leases.c.created_at > at,
                and_(t.leases.c.created_at == at, t.leases.c.id > lease_id),
            )
        )
    q = q.order_by(t.leases.c.created_at, t.leases.c.id)
    return q.limit(bindparam("limit", type_=Integer)) if limited else q


class Store(AccountsMixin, UsageMixin, RegistryMixin, BudgetMixin, EndpointsMixin, HostsMixin):
    """Durable platform state. Thread-safe; one instance per process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.RLock()  # SQLite allows one writer; keep ours in line.
        self._shared_connection = isinstance(engine.pool, StaticPool)
        self._migrate()

    # -- plumbing --------------------------------------------------------------------------
    @property
    def reads_inline(self) -> bool:
        """Whether a short read may run on the caller's event loop rather than in a worker
        thread: a file SQLite store in WAL mode, where a reader never waits for a writer and a
        page of 100 leases costs less than the hop to a thread and back (~0.2 ms). PostgreSQL
        (a network round trip) and an in-memory SQLite store (its one connection is shared
        with the writers, under their lock) read in a thread."""
        return self._engine.dialect.name == "sqlite" and not self._shared_connection

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
        rows = self.lease_rows(_LEASE_COLUMNS, tenant_id, states, limit, after)
        return [_lease_from_row(r) for r in rows]

    def lease_rows(
        self,
        columns: Sequence[str],
        tenant_id: str | None = None,
        states: Iterable[LeaseState] | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[Row[Any]]:
        """:meth:`list_leases` as stored rows of the named columns, in that order (for a
        read path that needs no domain object: the API's list)."""
        shape = (tenant_id is not None, states is not None, after is not None, limit is not None)
        q = _lease_query(tuple(columns), *shape)
        params: dict[str, Any] = {"limit": limit}
        if tenant_id is not None:
            params["tenant_id"] = tenant_id
        if states is not None:
            params["states"] = [s.value for s in states]
        if after is not None:
            params["after_at"], params["after_id"] = after
        with self._read() as conn:
            return list(conn.execute(q, params).all())

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

    def save_wait_reasons(self, leases: Sequence[Lease]) -> None:
        """The wait reasons (``reason``, ``reason_detail``) of PENDING leases, in one
        transaction: all or none (Conflict if one is no longer PENDING)."""
        if any(lease.state != LeaseState.PENDING for lease in leases):
            raise FastGPUError("save_wait_reasons is for PENDING leases")
        if not leases:
            return
        rows = [
            {"_id": lease.id, "reason": lease.reason, "reason_detail": lease.reason_detail}
            for lease in leases
        ]
        with self._tx() as conn:
            # One executemany (a pass over a busy queue saves ~100: 1.33 -> 0.45 ms on SQLite)
            # where the driver counts its rows; row by row where it does not.
            if len(rows) > 1 and conn.dialect.supports_sane_multi_rowcount:
                if conn.execute(_SET_WAIT_REASON, rows).rowcount != len(rows):
                    raise Conflict("a waiting lease changed concurrently (expected PENDING)")
                return
            for row in rows:
                if conn.execute(_SET_WAIT_REASON, row).rowcount != 1:
                    raise Conflict(f"lease {row['_id']} changed concurrently (expected PENDING)")

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


SQLITE_POOL_SIZE = 64
"""Open connections a file SQLite store keeps (as many again may open under a burst)."""


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
            # A connection per thread that may read at once (the API's 40 worker threads, its
            # write threads, the controller's), kept open: SQLAlchemy's default pool of 5 + 10
            # overflow made reads under load queue for a connection, and opened and closed
            # an overflow connection (with its pragmas) per read.
            kwargs.update(pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE)
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
