"""Model endpoints and their tokens: the store half (:mod:`fastgpu.endpoints` has the rules).

An endpoint is one row keyed by its id, unique per (tenant id, name); what changes while it
lives (model, checkpoint, scaling, lease, serving version, an update in progress) is one JSON
document, written whole. Tokens are stored as sha256 hashes only; a revoked token keeps its row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from fastgpu.domain.endpoint import EndpointRecord, EndpointTokenRecord
from fastgpu.errors import Conflict, NotFound
from fastgpu.store import schema as t


def _endpoint(row: Any) -> EndpointRecord:
    return EndpointRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        tenant=row.tenant,
        name=row.name,
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
        doc=json.loads(row.doc),
    )


class EndpointsMixin:
    """Mixed into :class:`~fastgpu.store.sql.Store`, which provides the two transactions."""

    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def create_endpoint(self, rec: EndpointRecord, token_id: str, token_hash: str) -> None:
        """Insert an endpoint and its first token; Conflict when the tenant has that name."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(t.endpoints).values(
                        id=rec.id,
                        tenant_id=rec.tenant_id,
                        tenant=rec.tenant,
                        name=rec.name,
                        doc=json.dumps(rec.doc, sort_keys=True),
                        created_at=rec.created_at,
                        updated_at=rec.updated_at,
                    )
                )
                self._insert_endpoint_token(conn, rec, token_id, token_hash, rec.created_at)
        except IntegrityError:
            raise Conflict(
                f"endpoint {rec.name!r} exists; choose another name or update it"
            ) from None

    @staticmethod
    def _insert_endpoint_token(
        conn: Connection, rec: EndpointRecord, token_id: str, token_hash: str, now: float
    ) -> None:
        conn.execute(
            insert(t.endpoint_tokens).values(
                id=token_id,
                endpoint_id=rec.id,
                tenant_id=rec.tenant_id,
                token_hash=token_hash,
                created_at=now,
            )
        )

    def save_endpoint(self, rec: EndpointRecord) -> None:
        with self._tx() as conn:
            n = conn.execute(
                update(t.endpoints)
                .where(t.endpoints.c.id == rec.id)
                .values(doc=json.dumps(rec.doc, sort_keys=True), updated_at=rec.updated_at)
            ).rowcount
        if not n:
            raise NotFound(f"endpoint {rec.name!r} not found")

    def endpoints(self, tenant_id: str | None = None) -> list[EndpointRecord]:
        q = select(t.endpoints).order_by(t.endpoints.c.tenant, t.endpoints.c.name)
        if tenant_id is not None:
            q = q.where(t.endpoints.c.tenant_id == tenant_id)
        with self._read() as conn:
            return [_endpoint(r) for r in conn.execute(q).all()]

    def endpoint(self, tenant_id: str, name: str) -> EndpointRecord | None:
        q = select(t.endpoints).where(
            t.endpoints.c.tenant_id == tenant_id, t.endpoints.c.name == name
        )
        with self._read() as conn:
            row = conn.execute(q).first()
        return _endpoint(row) if row is not None else None

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(t.endpoints).where(t.endpoints.c.id == endpoint_id))
            conn.execute(
                delete(t.endpoint_tokens).where(t.endpoint_tokens.c.endpoint_id == endpoint_id)
            )

    def add_endpoint_token(
        self, rec: EndpointRecord, token_id: str, token_hash: str, now: float
    ) -> None:
        with self._tx() as conn:
            self._insert_endpoint_token(conn, rec, token_id, token_hash, now)

    def revoke_endpoint_token(self, endpoint_id: str, token_id: str, now: float) -> bool:
        with self._tx() as conn:
            n = conn.execute(
                update(t.endpoint_tokens)
                .where(
                    t.endpoint_tokens.c.endpoint_id == endpoint_id,
                    t.endpoint_tokens.c.id == token_id,
                    t.endpoint_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            ).rowcount
        return bool(n)

    def endpoint_tokens(
        self, tenant_id: str, endpoint_id: str | None = None
    ) -> list[EndpointTokenRecord]:
        q = select(t.endpoint_tokens).where(t.endpoint_tokens.c.tenant_id == tenant_id)
        if endpoint_id is not None:
            q = q.where(t.endpoint_tokens.c.endpoint_id == endpoint_id)
        with self._read() as conn:
            rows = conn.execute(q.order_by(t.endpoint_tokens.c.created_at)).all()
        return [
            EndpointTokenRecord(
                id=r.id,
                endpoint_id=r.endpoint_id,
                tenant_id=r.tenant_id,
                token_hash=r.token_hash,
                created_at=float(r.created_at),
                revoked_at=r.revoked_at,
            )
            for r in rows
        ]
