"""Budget events: written by the controller's budget pass, read by the budget service and the
metrics.

Each event is unique per (tenant id, period start, key) (:mod:`fastgpu.domain.budget` names
the keys), so recording is idempotent: a second server, a restart or a retried pass that
decides the same warning again inserts nothing. :class:`BudgetMixin` is mixed into
:class:`~fastgpu.store.sql.Store`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from sqlalchemy import Connection, func, insert, select

from fastgpu.domain.budget import BudgetEvent, EventKind
from fastgpu.store import schema as t

_T = t.budget_events


def _event(row: object) -> BudgetEvent:
    r = row._mapping  # type: ignore[attr-defined]
    return BudgetEvent(
        tenant_id=r["tenant_id"],
        tenant=r["tenant"],
        period_start=r["period_start"],
        key=r["key"],
        kind=EventKind(r["kind"]),
        at=r["at"],
        detail=r["detail"],
        threshold=r["threshold"],
        lease_id=r["lease_id"],
    )


class BudgetMixin:
    """Mixed into :class:`~fastgpu.store.sql.Store`, which provides the two transactions."""

    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def add_budget_events(self, events: Iterable[BudgetEvent]) -> list[BudgetEvent]:
        """Record the events whose key is new for their tenant and period; return those."""
        added: list[BudgetEvent] = []
        with self._tx() as conn:
            for ev in events:
                seen = conn.execute(
                    select(_T.c.seq).where(
                        (_T.c.tenant_id == ev.tenant_id)
                        & (_T.c.period_start == ev.period_start)
                        & (_T.c.key == ev.key)
                    )
                ).first()
                if seen is not None:
                    continue
                conn.execute(
                    insert(_T).values(
                        tenant_id=ev.tenant_id,
                        tenant=ev.tenant,
                        period_start=ev.period_start,
                        key=ev.key,
                        kind=ev.kind.value,
                        at=ev.at,
                        threshold=ev.threshold,
                        lease_id=ev.lease_id,
                        detail=ev.detail,
                    )
                )
                added.append(ev)
        return added

    def budget_events(self, tenant_id: str, period_start: float | None = None) -> list[BudgetEvent]:
        """A tenant's events, oldest first; only one period's with ``period_start``."""
        q = select(_T).where(_T.c.tenant_id == tenant_id)
        if period_start is not None:
            q = q.where(_T.c.period_start == period_start)
        with self._read() as conn:
            return [_event(r) for r in conn.execute(q.order_by(_T.c.seq)).all()]

    def budget_warning_counts(self) -> dict[tuple[str, float], int]:
        """Warning events ever recorded, per (tenant name, threshold)."""
        q = (
            select(_T.c.tenant, _T.c.threshold, func.count())
            .where(_T.c.kind == EventKind.WARNING.value)
            .group_by(_T.c.tenant, _T.c.threshold)
        )
        with self._read() as conn:
            return {(r[0], float(r[1])): int(r[2]) for r in conn.execute(q).all()}
