"""Model versions of the registry: the store half (:mod:`fastgpu.registry` has the rules).

A version is a row naming a content-addressed folder in the tenant's storage with its hash;
``version`` counts up per (tenant id, model name) and is never reused, so a deleted version keeps
its row (``deleted_at``) and ``name:v3`` never names two different models.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from fastgpu.errors import NotFound
from fastgpu.store import schema as t


@dataclass(frozen=True)
class ModelRecord:
    tenant_id: str
    tenant: str
    name: str
    version: int
    path: str
    content_hash: str
    size_bytes: int
    created_at: float
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    deleted_at: float | None = None


def _record(row: Any) -> ModelRecord:
    return ModelRecord(
        tenant_id=row.tenant_id,
        tenant=row.tenant,
        name=row.name,
        version=int(row.version),
        path=row.path,
        content_hash=row.content_hash,
        size_bytes=int(row.size_bytes),
        created_at=float(row.created_at),
        config=json.loads(row.config),
        metrics=json.loads(row.metrics),
        lineage=json.loads(row.lineage),
        deleted_at=row.deleted_at,
    )


class RegistryMixin:
    """Mixed into :class:`~fastgpu.store.sql.Store`, which provides the two transactions."""

    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def add_model_version(
        self,
        tenant_id: str,
        tenant: str,
        name: str,
        path: str,
        content_hash: str,
        size_bytes: int,
        config: dict[str, Any],
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        now: float,
    ) -> ModelRecord:
        """The next version of ``name`` for the tenant (one transaction: two registrations at
        once get different versions; the primary key refuses a duplicate)."""
        m = t.models.c
        with self._tx() as conn:
            last = conn.execute(
                select(func.max(m.version)).where((m.tenant_id == tenant_id) & (m.name == name))
            ).scalar()
            version = int(last or 0) + 1
            conn.execute(
                insert(t.models).values(
                    tenant_id=tenant_id,
                    tenant=tenant,
                    name=name,
                    version=version,
                    path=path,
                    content_hash=content_hash,
                    size_bytes=size_bytes,
                    config=json.dumps(config, sort_keys=True),
                    metrics=json.dumps(metrics, sort_keys=True),
                    lineage=json.dumps(lineage, sort_keys=True),
                    created_at=now,
                )
            )
        return ModelRecord(
            tenant_id=tenant_id,
            tenant=tenant,
            name=name,
            version=version,
            path=path,
            content_hash=content_hash,
            size_bytes=size_bytes,
            created_at=now,
            config=config,
            metrics=metrics,
            lineage=lineage,
        )

    def model_versions(
        self,
        tenant_id: str | None,
        name: str | None = None,
        after: tuple[str, str, int] | None = None,
        limit: int = 1000,
    ) -> list[ModelRecord]:
        """Live versions (of one tenant, or all), by (tenant id, name, version), after the
        cursor key ``after``."""
        m = t.models.c
        q = select(t.models).where(m.deleted_at.is_(None))
        if tenant_id is not None:
            q = q.where(m.tenant_id == tenant_id)
        if name is not None:
            q = q.where(m.name == name)
        if after is not None:
            a_tenant, a_name, a_version = after
            q = q.where(
                (m.tenant_id > a_tenant)
                | ((m.tenant_id == a_tenant) & (m.name > a_name))
                | ((m.tenant_id == a_tenant) & (m.name == a_name) & (m.version > a_version))
            )
        q = q.order_by(m.tenant_id, m.name, m.version).limit(limit)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(q).all()]

    def model_version(
        self, tenant_id: str, name: str, version: int | None = None
    ) -> ModelRecord | None:
        """One live version; ``version=None``: the latest live one."""
        m = t.models.c
        q = select(t.models).where(
            (m.tenant_id == tenant_id) & (m.name == name) & m.deleted_at.is_(None)
        )
        q = q.where(m.version == version) if version is not None else q
        q = q.order_by(m.version.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(q).first()
        return None if row is None else _record(row)

    def delete_model_version(self, tenant_id: str, name: str, version: int, now: float) -> bool:
        """Mark a live version deleted; True if no other live version names its folder (the
        caller may then remove the files)."""
        m = t.models.c
        with self._tx() as conn:
            row = conn.execute(
                select(t.models).where(
                    (m.tenant_id == tenant_id)
                    & (m.name == name)
                    & (m.version == version)
                    & m.deleted_at.is_(None)
                )
            ).first()
            if row is None:
                raise NotFound(f"model {name}:v{version} not found")
            conn.execute(
                update(t.models)
                .where((m.tenant_id == tenant_id) & (m.name == name) & (m.version == version))
                .values(deleted_at=now)
            )
            others = conn.execute(
                select(func.count())
                .select_from(t.models)
                .where((m.tenant_id == tenant_id) & (m.path == row.path) & m.deleted_at.is_(None))
            ).scalar_one()
        return int(others) == 0
