"""Agent-run GPU hosts: the store half. One row per host: its token's SHA-256 (the token
itself is shown once by ``fastgpu host add`` and never stored) and its drain as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from fastgpu.domain.host import HostRecord
from fastgpu.errors import Conflict, NotFound
from fastgpu.store import schema as t


def _host(row: Any) -> HostRecord:
    doc = json.loads(row.doc)
    return HostRecord(
        name=row.name,
        token_hash=row.token_hash,
        created_at=float(row.created_at),
        drain=doc.get("drain") or {},
    )


class HostsMixin:
    """Mixed into :class:`~fastgpu.store.sql.Store`, which provides the two transactions."""

    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def add_host(self, rec: HostRecord) -> None:
        """Insert a host; Conflict when the name is taken."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(t.hosts).values(
                        name=rec.name,
                        token_hash=rec.token_hash,
                        created_at=rec.created_at,
                        doc=json.dumps({"drain": rec.drain}),
                    )
                )
        except IntegrityError:
            raise Conflict(f"host {rec.name!r} exists") from None

    def get_host(self, name: str) -> HostRecord | None:
        with self._read() as conn:
            row = conn.execute(select(t.hosts).where(t.hosts.c.name == name)).first()
        return _host(row) if row is not None else None

    def list_hosts(self) -> list[HostRecord]:
        with self._read() as conn:
            rows = conn.execute(select(t.hosts).order_by(t.hosts.c.name)).all()
        return [_host(r) for r in rows]

    def set_host_drain(self, name: str, drain: dict[str, Any]) -> None:
        """Replace the host's drain ({} ends it); idempotent."""
        with self._tx() as conn:
            done = conn.execute(
                update(t.hosts)
                .where(t.hosts.c.name == name)
                .values(doc=json.dumps({"drain": drain}))
            )
        if done.rowcount == 0:
            raise NotFound(f"host {name!r} not found")
