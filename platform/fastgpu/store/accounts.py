"""Tenants, tokens and idempotency keys: the account half of the store.

Vocabulary:
* a *tenant* has an immutable ``id`` (leases and usage belong to it) and a unique, reusable
  ``name``: deleting ``vision`` and creating ``vision`` again gives a new tenant with no leases
  or usage of the old one;
* a *token* is stored as its SHA-256 only, with a short public ``id`` (to list and revoke it),
  an optional ``expires_at`` (rotation grace or a chosen expiry) and a ``label``;
* a *request* row remembers a mutating call's idempotency key and what it answered.

Every method is one transaction; see :mod:`fastgpu.store.sql` for the plumbing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update

from fastgpu.config import TenantSpec
from fastgpu.domain.lease import LIVE_STATES
from fastgpu.errors import Conflict, NotFound
from fastgpu.store import schema as t


def new_tenant_id() -> str:
    return uuid.uuid4().hex[:16]


def new_token_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class TenantRecord:
    id: str
    name: str
    spec: TenantSpec
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class TokenRecord:
    id: str
    principal: str
    is_admin: bool
    created_at: float
    expires_at: float | None
    label: str | None


_LIVE = sorted(s.value for s in LIVE_STATES)


class AccountsMixin:
    """Mixed into :class:`~fastgpu.store.sql.Store`, which provides the two transactions."""

    #: A write transaction (writers one at a time) and a read without the writers' lock.
    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    # -- tokens ------------------------------------------------------------------------------
    @staticmethod
    def _insert_token(
        conn: Connection,
        token_hash: str,
        principal: str,
        is_admin: bool,
        now: float,
        expires_at: float | None,
        label: str | None,
    ) -> TokenRecord:
        rec = TokenRecord(new_token_id(), principal, is_admin, now, expires_at, label)
        conn.execute(
            insert(t.tokens).values(
                token_hash=token_hash,
                id=rec.id,
                principal=principal,
                is_admin=is_admin,
                created_at=now,
                expires_at=expires_at,
                label=label,
            )
        )
        return rec

    def add_token(
        self,
        token_hash: str,
        principal: str,
        is_admin: bool,
        now: float,
        expires_at: float | None = None,
        label: str | None = None,
    ) -> TokenRecord:
        with self._tx() as conn:
            return self._insert_token(conn, token_hash, principal, is_admin, now, expires_at, label)

    @staticmethod
    def _token(row: Any) -> TokenRecord:
        return TokenRecord(
            row.id, row.principal, bool(row.is_admin), row.created_at, row.expires_at, row.label
        )

    def lookup_token(self, token_hash: str, now: float) -> TokenRecord | None:
        """The token's record, unless it is unknown or expired."""
        with self._read() as conn:
            row = conn.execute(select(t.tokens).where(t.tokens.c.token_hash == token_hash)).first()
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            return None
        return self._token(row)

    def list_tokens(self, principal: str, now: float) -> list[TokenRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(t.tokens)
                .where(t.tokens.c.principal == principal)
                .where(or_(t.tokens.c.expires_at.is_(None), t.tokens.c.expires_at > now))
                .order_by(t.tokens.c.created_at)
            ).all()
        return [self._token(r) for r in rows]

    def rotate_tokens(
        self,
        principal: str,
        is_admin: bool,
        token_hash: str,
        now: float,
        old_expire_at: float,
        expires_at: float | None = None,
        label: str | None = None,
    ) -> TokenRecord:
        """Add a token and make every other token of ``principal`` stop at ``old_expire_at``
        (now: revoke at once; later: a grace period for running jobs), atomically."""
        with self._tx() as conn:
            conn.execute(
                update(t.tokens)
                .where(t.tokens.c.principal == principal)
                .where(or_(t.tokens.c.expires_at.is_(None), t.tokens.c.expires_at > old_expire_at))
                .values(expires_at=old_expire_at)
            )
            return self._insert_token(conn, token_hash, principal, is_admin, now, expires_at, label)

    def revoke_token(self, principal: str, token_id: str) -> bool:
        with self._tx() as conn:
            res = conn.execute(
                t.tokens.delete().where(
                    (t.tokens.c.principal == principal) & (t.tokens.c.id == token_id)
                )
            )
            return bool(res.rowcount)

    def purge_tokens(self, now: float) -> int:
        with self._tx() as conn:
            res = conn.execute(
                t.tokens.delete().where(
                    t.tokens.c.expires_at.is_not(None) & (t.tokens.c.expires_at <= now)
                )
            )
            return int(res.rowcount or 0)

    # -- tenants -----------------------------------------------------------------------------
    def create_tenant(
        self,
        name: str,
        spec: TenantSpec,
        token_hash: str,
        now: float,
        expires_at: float | None = None,
    ) -> tuple[TenantRecord, TokenRecord]:
        with self._tx() as conn:
            if conn.execute(select(t.tenants.c.name).where(t.tenants.c.name == name)).first():
                raise Conflict(f"tenant {name!r} already exists; choose another name")
            rec = TenantRecord(new_tenant_id(), name, spec, now, now)
            conn.execute(
                insert(t.tenants).values(
                    id=rec.id,
                    name=name,
                    spec=spec.model_dump_json(),
                    created_at=now,
                    updated_at=now,
                )
            )
            token = self._insert_token(conn, token_hash, name, False, now, expires_at, "initial")
        return rec, token

    def get_tenant(self, name: str) -> TenantRecord | None:
        with self._read() as conn:
            row = conn.execute(select(t.tenants).where(t.tenants.c.name == name)).first()
        return self._tenant(row) if row else None

    def list_tenants(self) -> list[TenantRecord]:
        with self._read() as conn:
            rows = conn.execute(select(t.tenants).order_by(t.tenants.c.name)).all()
        return [self._tenant(r) for r in rows]

    def page_tenants(self, limit: int, after: str | None = None) -> list[TenantRecord]:
        q = select(t.tenants).order_by(t.tenants.c.name).limit(limit)
        if after is not None:
            q = q.where(t.tenants.c.name > after)
        with self._read() as conn:
            return [self._tenant(r) for r in conn.execute(q).all()]

    @staticmethod
    def _tenant(row: Any) -> TenantRecord:
        return TenantRecord(
            row.id,
            row.name,
            TenantSpec.model_validate_json(row.spec),
            row.created_at,
            row.updated_at,
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

    def delete_tenant(self, name: str) -> TenantRecord:
        """Delete a tenant with no live lease. Its leases and usage stay (billing, audit) under
        its id; their request ids are dropped so a new tenant of the same name starts clean."""
        with self._tx() as conn:
            row = conn.execute(select(t.tenants).where(t.tenants.c.name == name)).first()
            if row is None:
                raise NotFound(f"tenant {name!r} not found")
            live = conn.execute(
                select(func.count())
                .select_from(t.leases)
                .where(t.leases.c.tenant_id == row.id)
                .where(t.leases.c.state.in_(_LIVE))
            ).scalar_one()
            if live:
                raise Conflict(
                    f"tenant {name!r} has {live} live lease(s); release them before deleting it"
                )
            conn.execute(
                update(t.leases).where(t.leases.c.tenant_id == row.id).values(request_id=None)
            )
            conn.execute(t.tenants.delete().where(t.tenants.c.name == name))
            conn.execute(t.tokens.delete().where(t.tokens.c.principal == name))
            conn.execute(t.requests.delete().where(t.requests.c.principal == name))
        return self._tenant(row)

    # -- idempotency of other mutations ----------------------------------------------------------
    def remember_request(
        self,
        principal: str,
        request_id: str,
        op: str,
        target: str,
        now: float,
        result: Any = None,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.requests).values(
                    principal=principal,
                    request_id=request_id,
                    op=op,
                    target=target,
                    created_at=now,
                    result=None if result is None else json.dumps(result),
                )
            )

    def recall_request(self, principal: str, request_id: str) -> tuple[str, str, Any] | None:
        """``(op, target, result)`` of an earlier call with this key, if any."""
        with self._read() as conn:
            row = conn.execute(
                select(t.requests.c.op, t.requests.c.target, t.requests.c.result).where(
                    (t.requests.c.principal == principal) & (t.requests.c.request_id == request_id)
                )
            ).first()
        if row is None:
            return None
        return row.op, row.target, (json.loads(row.result) if row.result else None)

    def purge_requests(self, before: float) -> int:
        with self._tx() as conn:
            res = conn.execute(t.requests.delete().where(t.requests.c.created_at < before))
            return int(res.rowcount or 0)
