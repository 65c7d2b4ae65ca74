"""The store: migrations, compare-and-set transitions, idempotent inserts, metering records."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from fastgpu.config import TenantSpec
from fastgpu.domain.lease import Lease, LeaseState
from fastgpu.errors import Conflict, FastGPUError
from fastgpu.store import SCHEMA_VERSION, open_store


def _lease(lid: str, request_id: str | None = None) -> Lease:
    return Lease(
        id=lid,
        tenant="t",
        state=LeaseState.PENDING,
        gpus=2,
        min_gpus=2,
        gpu_type="A100",
        strategy="PACK",
        duration_s=60,
        preemptible=False,
        price_per_hour=1.0,
        created_at=0.0,
        request_id=request_id,
    )


def test_migrates_once_and_reopens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = open_store(url)
    assert store.schema_version() == SCHEMA_VERSION
    store.create_tenant("t", TenantSpec(), "h" * 64, 0.0)
    store.close()
    again = open_store(url)
    assert again.schema_version() == SCHEMA_VERSION
    assert again.get_tenant("t") is not None


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = open_store(url)
    with store._engine.begin() as conn:
        conn.execute(text("update schema_version set version = 999"))
    with pytest.raises(FastGPUError, match="newer than this FastGPU"):
        open_store(url)


def test_request_id_makes_insert_idempotent() -> None:
    store = open_store("sqlite://")
    _first, created = store.insert_lease(_lease("a", "req"))
    again, created_again = store.insert_lease(_lease("b", "req"))
    assert created
    assert not created_again
    assert again.id == "a"
    assert len(store.list_leases()) == 1


def test_transition_is_compare_and_set_and_meters() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    stale = store.get_lease("a")
    assert stale is not None
    store.transition(lease, LeaseState.ADMITTED, 10.0)
    store.transition(lease, LeaseState.RESERVED, 20.0)
    # A writer holding an old copy cannot overwrite the newer state.
    with pytest.raises(Conflict, match="concurrently"):
        store.transition(stale, LeaseState.ADMITTED, 21.0)
    store.transition(lease, LeaseState.RELEASED, 80.0)
    (row,) = store.usage(now=1000.0)
    assert row.gpu_seconds == pytest.approx(2 * 60)
    events = [e["new"] for e in store.lease_events("a")]
    assert events == ["PENDING", "ADMITTED", "RESERVED", "RELEASED"]


def test_failed_transaction_changes_nothing() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    with pytest.raises(Conflict):
        store.transition(lease, LeaseState.RESERVED, 1.0)  # illegal from PENDING
    got = store.get_lease("a")
    assert got is not None
    assert got.state == LeaseState.PENDING
    assert store.usage(now=10.0) == []


def test_upgrade_from_v1_keeps_data(tmp_path: Path) -> None:
    """A database written by version 1 gains later versions' columns with its rows intact."""
    from sqlalchemy import create_engine, insert

    from fastgpu.store import schema

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        schema.schema_version.create(conn)
        conn.execute(insert(schema.schema_version).values(version=1))
        schema.MIGRATIONS[0](conn)
        conn.execute(
            text(
                "insert into leases (id, tenant, state, gpus, min_gpus, gpu_type, strategy, "
                "duration_s, preemptible, price_per_hour, nodes, created_at) values "
                "('old', 't', 'RELEASED', 2, 2, 'A100', 'PACK', 60, 0, 1.0, '[]', 0)"
            )
        )
    engine.dispose()
    store = open_store(url)
    assert store.schema_version() == SCHEMA_VERSION == 3
    old = store.get_lease("old")
    assert old is not None
    assert old.state == LeaseState.RELEASED
    assert old.priority == 0
    assert old.last_checkpoint_at is None
    assert old.restarts == 0


def test_count_preempted_by_workload_and_time() -> None:
    store = open_store("sqlite://")
    for lid, workload, ended in (
        ("a", "run-1", 100.0),
        ("b", "run-1", 10.0),
        ("c", "run-2", 100.0),
    ):
        lease, _ = store.insert_lease(_lease(lid))
        for state in (LeaseState.ADMITTED, LeaseState.RESERVED):
            store.transition(lease, state, 0.0)
        lease.workload = workload
        store.transition(lease, LeaseState.BOUND, 0.0)
        lease.ended_at = ended
        store.transition(lease, LeaseState.PREEMPTED, ended)
    assert store.count_preempted(_lease("x").tenant, "run-1", since=50.0) == 1
    assert store.count_preempted(_lease("x").tenant, "run-1", since=0.0) == 2
    assert store.count_preempted("someone-else", "run-1", since=0.0) == 0


def test_decayed_usage_halves_after_a_half_life() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    store.transition(lease, LeaseState.ADMITTED, 0.0)
    store.transition(lease, LeaseState.RESERVED, 0.0)
    store.transition(lease, LeaseState.RELEASED, 10.0)
    fresh = store.decayed_usage("t", now=10.0, half_life_s=3600.0)
    assert fresh == pytest.approx(20.0, rel=1e-3)  # 2 GPUs x 10 s, barely decayed
    assert store.decayed_usage("t", now=3610.0, half_life_s=3600.0) == pytest.approx(fresh / 2)
