"""Budget events on PostgreSQL: recorded once per tenant, period and key (the same insert
decided twice, by a retried pass or a second server, adds nothing), read back in order, and
counted for the metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastgpu.domain.budget import BudgetEvent, EventKind
from fastgpu.store import open_store
from tests.integration.pg_fixtures import private_postgres


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from private_postgres()


def _warning(threshold: float, period: float, at: float) -> BudgetEvent:
    return BudgetEvent(
        "tid", "acme", period, f"warning:{threshold:g}", EventKind.WARNING, at, "w", threshold
    )


def test_budget_events_once_per_period_and_key(postgres_url: str) -> None:
    store = open_store(postgres_url)
    first = [_warning(50, 0.0, 1.0), _warning(80, 0.0, 2.0)]
    assert store.add_budget_events(first) == first
    assert store.add_budget_events([_warning(50, 0.0, 3.0)]) == []  # decided again: nothing
    stop = BudgetEvent("tid", "acme", 0.0, "stop:l1", EventKind.STOP, 4.0, "s", lease_id="l1")
    assert store.add_budget_events([stop]) == [stop]
    nxt = _warning(50, 100.0, 101.0)  # a new period warns again
    assert store.add_budget_events([nxt]) == [nxt]
    assert [e.key for e in store.budget_events("tid", 0.0)] == [
        "warning:50",
        "warning:80",
        "stop:l1",
    ]
    assert len(store.budget_events("tid")) == 4
    assert store.budget_warning_counts() == {("acme", 50.0): 2, ("acme", 80.0): 1}
