"""The store: SQLAlchemy Core over SQLite (default) or PostgreSQL.

Invariants:
* every public mutating method is one transaction (all or nothing);
* a lease's state only changes through :meth:`Store.transition`, a compare-and-set on the
  current state that also writes the audit event and opens/closes the usage record, so a crash
  can never leave a lease RESERVED without metering or metered after it ended;
* lease requests are idempotent on ``(tenant, request_id)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from fastgpu.config import TenantSpec
from fastgpu.domain.lease import Lease, LeaseState, check_transition
from fastgpu.errors import Conflict, FastGPUError, NotFound
from fastgpu.store import schema as t
from fastgpu.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Store", "TenantRecord", "UsageRow", "open_store"]


@dataclass(frozen=True)
class TenantRecord:
    name: str
    spec: TenantSpec
    created_at: float
    updated_at: float


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


class Store:
    """Durable platform state. Thread-safe; one instance per process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.RLock()  # SQLite allows one writer; keep ours in line.
        self._migrate()

    # -- plumbing --------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._lock, self._engine.begin() as conn:
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
        with self._tx() as conn:
            return int(conn.execute(select(t.schema_version.c.version)).scalar_one())

    def close(self) -> None:
        self._engine.dispose()

    # -- tokens ------------------------------------------------------------------------------
    def add_token(self, token_hash: str, principal: str, is_admin: bool, now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.tokens).values(
                    token_hash=token_hash, principal=principal, is_admin=is_admin, created_at=now
                )
            )

    def lookup_token(self, token_hash: str) -> tuple[str, bool] | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.tokens.c.principal, t.tokens.c.is_admin).where(
                    t.tokens.c.token_hash == token_hash
                )
            ).first()
        return (row.principal, bool(row.is_admin)) if row else None

    def replace_tokens(self, principal: str, token_hash: str, now: float) -> None:
        """Rotate: drop every token of a tenant and store the new one, atomically."""
        with self._tx() as conn:
            conn.execute(t.tokens.delete().where(t.tokens.c.principal == principal))
            conn.execute(
                insert(t.tokens).values(
                    token_hash=token_hash, principal=principal, is_admin=False, created_at=now
                )
            )

    # -- tenants -----------------------------------------------------------------------------
    def create_tenant(
        self, name: str, spec: TenantSpec, token_hash: str, now: float
    ) -> TenantRecord:
        with self._tx() as conn:
            if conn.execute(select(t.tenants.c.name).where(t.tenants.c.name == name)).first():
                raise Conflict(f"tenant {name!r} already exists; choose another name")
            conn.execute(
                insert(t.tenants).values(
                    name=name, spec=spec.model_dump_json(), created_at=now, updated_at=now
                )
            )
            conn.execute(
                insert(t.tokens).values(
                    token_hash=token_hash, principal=name, is_admin=False, created_at=now
                )
            )
        return TenantRecord(name, spec, now, now)

    def get_tenant(self, name: str) -> TenantRecord | None:
        with self._tx() as conn:
            row = conn.execute(select(t.tenants).where(t.tenants.c.name == name)).first()
        return self._tenant(row) if row else None

    def list_tenants(self) -> list[TenantRecord]:
        with self._tx() as conn:
            rows = conn.execute(select(t.tenants).order_by(t.tenants.c.name)).all()
        return [self._tenant(r) for r in rows]

    @staticmethod
    def _tenant(row: Any) -> TenantRecord:
        return TenantRecord(
            row.name, TenantSpec.model_validate_json(row.spec), row.created_at, row.updated_at
        )

    def update_tenant(self, name: str, spec: TenantSpec, now: float) -> TenantRecord:
        with self._tx() as conn:
            res = conn.execute(
                update(t.tenants)
                .where(t.tenants.c.name == name)
                .values(spec=spec.model_dump_json(), updated_at=now)
            )
            if res.rowcount == 0:
                raise NotFound(f"tenant {name!r} not found")
            row = conn.execute(select(t.tenants).where(t.tenants.c.name == name)).one()
        return self._tenant(row)

    def delete_tenant(self, name: str) -> None:
        """Delete a tenant with no live lease; its usage history stays for billing."""
        with self._tx() as conn:
            live = conn.execute(
                select(func.count())
                .select_from(t.leases)
                .where(t.leases.c.tenant == name)
                .where(t.leases.c.state.in_([s.value for s in LeaseState if not s.is_terminal]))
            ).scalar_one()
            if live:
                raise Conflict(
                    f"tenant {name!r} has {live} live lease(s); release them before deleting it"
                )
            res = conn.execute(t.tenants.delete().where(t.tenants.c.name == name))
            if res.rowcount == 0:
                raise NotFound(f"tenant {name!r} not found")
            conn.execute(t.tokens.delete().where(t.tokens.c.principal == name))

    # -- idempotency of other mutations ----------------------------------------------------------
    def remember_request(
        self, principal: str, request_id: str, op: str, target: str, now: float
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.requests).values(
                    principal=principal, request_id=request_id, op=op, target=target, created_at=now
                )
            )

    def recall_request(self, principal: str, request_id: str) -> tuple[str, str] | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.requests.c.op, t.requests.c.target).where(
                    (t.requests.c.principal == principal) & (t.requests.c.request_id == request_id)
                )
            ).first()
        return (row.op, row.target) if row else None

    # -- leases ------------------------------------------------------------------------------
    def insert_lease(self, lease: Lease) -> tuple[Lease, bool]:
        """Insert a new lease; with a request id already used, return that lease instead.

        Returns ``(lease, created)``.
        """
        with self._tx() as conn:
            if lease.request_id is not None:
                row = conn.execute(
                    select(t.leases).where(
                        (t.leases.c.tenant == lease.tenant)
                        & (t.leases.c.request_id == lease.request_id)
                    )
                ).first()
                if row:
                    return _lease_from_row(row), False
            try:
                conn.execute(insert(t.leases).values(**_lease_to_row(lease)))
            except IntegrityError:
                raise Conflict(f"lease id {lease.id} already exists") from None
            conn.execute(
                insert(t.lease_events).values(
                    lease_id=lease.id,
                    at=lease.created_at,
                    prev=None,
                    new=lease.state.value,
                    reason=lease.reason,
                )
            )
        return lease, True

    def find_lease_by_request(self, tenant: str, request_id: str) -> Lease | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.leases).where(
                    (t.leases.c.tenant == tenant) & (t.leases.c.request_id == request_id)
                )
            ).first()
        return _lease_from_row(row) if row else None

    def get_lease(self, lease_id: str) -> Lease | None:
        with self._tx() as conn:
            row = conn.execute(select(t.leases).where(t.leases.c.id == lease_id)).first()
        return _lease_from_row(row) if row else None

    def list_leases(
        self,
        tenant: str | None = None,
        states: Iterable[LeaseState] | None = None,
        limit: int | None = None,
    ) -> list[Lease]:
        q = select(t.leases)
        if tenant is not None:
            q = q.where(t.leases.c.tenant == tenant)
        if states is not None:
            q = q.where(t.leases.c.state.in_([s.value for s in states]))
        q = q.order_by(t.leases.c.created_at, t.leases.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self._tx() as conn:
            return [_lease_from_row(r) for r in conn.execute(q).all()]

    def _count_leases(self, *where: Any) -> int:
        with self._tx() as conn:
            q = select(func.count()).select_from(t.leases)
            for cond in where:
                q = q.where(cond)
            return int(conn.execute(q).scalar_one())

    def count_leases(self, tenant: str, states: Iterable[LeaseState]) -> int:
        return self._count_leases(
            t.leases.c.tenant == tenant, t.leases.c.state.in_([s.value for s in states])
        )

    def count_preempted(self, tenant: str, workload: str, since: float) -> int:
        """Leases of ``tenant`` bound to ``workload`` that were preempted after ``since``."""
        return self._count_leases(
            t.leases.c.tenant == tenant,
            t.leases.c.workload == workload,
            t.leases.c.state == LeaseState.PREEMPTED.value,
            t.leases.c.ended_at >= since,
        )

    def live_leases(self) -> list[Lease]:
        return self.list_leases(states=[s for s in LeaseState if not s.is_terminal])

    def save_lease(self, lease: Lease, expected_state: LeaseState) -> None:
        """Write fields of a lease whose state does not change (compare-and-set on state)."""
        if lease.state != expected_state:
            raise FastGPUError("save_lease cannot change state; use transition()")
        with self._tx() as conn:
            self._cas(conn, lease, expected_state)

    def transition(
        self, lease: Lease, new: LeaseState, now: float, reason: str | None = None
    ) -> Lease:
        """Move ``lease`` to ``new`` (checked against the table), with its other field changes.

        Opens a usage record when the lease starts holding reserved GPUs (RESERVED) and closes
        it when it stops; all in one transaction with the state change.
        """
        prev = lease.state
        check_transition(lease.id, prev, new)
        lease.state = new
        with self._tx() as conn:
            self._cas(conn, lease, prev)
            conn.execute(
                insert(t.lease_events).values(
                    lease_id=lease.id, at=now, prev=prev.value, new=new.value, reason=reason
                )
            )
            metered_before = prev in (LeaseState.RESERVED, LeaseState.BOUND)
            metered_after = new in (LeaseState.RESERVED, LeaseState.BOUND)
            if metered_after and not metered_before:
                self._open_usage(conn, lease, now)
            elif metered_before and not metered_after:
                self._close_usage(conn, lease.id, now)
        return lease

    def resize_usage(self, lease: Lease, now: float) -> None:
        """Close the lease's open usage record and open one at its new GPU count."""
        with self._tx() as conn:
            self._close_usage(conn, lease.id, now)
            self._open_usage(conn, lease, now)
            self._cas(conn, lease, lease.state)

    @staticmethod
    def _cas(conn: Connection, lease: Lease, expected: LeaseState) -> None:
        row = _lease_to_row(lease)
        row.pop("id")
        res = conn.execute(
            update(t.leases)
            .where((t.leases.c.id == lease.id) & (t.leases.c.state == expected.value))
            .values(**row)
        )
        if res.rowcount != 1:
            raise Conflict(f"lease {lease.id} changed concurrently (expected {expected.value})")

    @staticmethod
    def _open_usage(conn: Connection, lease: Lease, now: float) -> None:
        conn.execute(
            insert(t.usage).values(
                lease_id=lease.id,
                tenant=lease.tenant,
                gpu_type=lease.gpu_type,
                gpus=lease.held_gpus or lease.gpus,
                price_per_hour=lease.price_per_hour,
                start=now,
                end=None,
            )
        )

    @staticmethod
    def _close_usage(conn: Connection, lease_id: str, now: float) -> None:
        conn.execute(
            update(t.usage)
            .where((t.usage.c.lease_id == lease_id) & t.usage.c.end.is_(None))
            .values(end=now)
        )

    def lease_events(self, lease_id: str) -> list[dict[str, Any]]:
        with self._tx() as conn:
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
        tenant: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageRow]:
        """GPU-seconds and cost per (tenant, GPU type), records clipped to [since, until]."""
        q = select(t.usage)
        if tenant is not None:
            q = q.where(t.usage.c.tenant == tenant)
        with self._tx() as conn:
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

    def decayed_usage(self, tenant: str, now: float, half_life_s: float) -> float:
        """GPU-seconds of the tenant's usage records, each second weighted by
        ``2 ** -(age / half_life)``: the exact integral, so it needs no periodic state."""
        import math

        with self._tx() as conn:
            rows = conn.execute(
                select(t.usage.c.gpus, t.usage.c.start, t.usage.c.end).where(
                    t.usage.c.tenant == tenant
                )
            ).all()
        k = math.log(2.0) / half_life_s
        total = 0.0
        for gpus, start, end in rows:
            stop = now if end is None else min(end, now)
            if stop > start:
                total += gpus * (math.exp(-k * (now - stop)) - math.exp(-k * (now - start))) / k
        return total


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
