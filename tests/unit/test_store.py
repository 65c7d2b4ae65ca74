"""The store: migrations, compare-and-set transitions, idempotent inserts, metering records."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from fastgpu.config import TenantSpec
from fastgpu.controller.metering import meter
from fastgpu.domain.lease import Lease, LeaseState
from fastgpu.errors import Conflict, FastGPUError, NotFound
from fastgpu.store import SCHEMA_VERSION, Store, open_store
from fastgpu.store.schema import MIGRATIONS

TID = "tid-t"


def _lease(lid: str, request_id: str | None = None, tenant_id: str = TID) -> Lease:
    return Lease(
        id=lid,
        tenant="t",
        tenant_id=tenant_id,
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
    rec, token = store.create_tenant("t", TenantSpec(), "h" * 64, 0.0)
    assert token.principal == "t"
    assert not token.is_admin
    store.close()
    again = open_store(url)
    assert again.schema_version() == SCHEMA_VERSION
    got = again.get_tenant("t")
    assert got is not None
    assert got.id == rec.id
    assert again.lookup_token("h" * 64, 1.0) == token


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
    store.transition(lease, LeaseState.ADMITTED, 10.0, hooks=[meter])
    store.transition(lease, LeaseState.RESERVED, 20.0, hooks=[meter])
    # A writer holding an old copy cannot overwrite the newer state.
    with pytest.raises(Conflict, match="concurrently"):
        store.transition(stale, LeaseState.ADMITTED, 21.0, hooks=[meter])
    store.transition(lease, LeaseState.RELEASED, 80.0, hooks=[meter])
    (row,) = store.usage(now=1000.0)
    assert row.gpu_seconds == pytest.approx(2 * 60)
    events = [e["new"] for e in store.lease_events("a")]
    assert events == ["PENDING", "ADMITTED", "RESERVED", "RELEASED"]


def test_failed_transaction_changes_nothing() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    with pytest.raises(Conflict):
        store.transition(lease, LeaseState.RESERVED, 1.0, hooks=[meter])  # illegal from PENDING
    got = store.get_lease("a")
    assert got is not None
    assert got.state == LeaseState.PENDING
    assert store.usage(now=10.0) == []


def test_wait_reasons_are_saved_in_one_compare_and_set_transaction() -> None:
    store = open_store("sqlite://")
    a, _ = store.insert_lease(_lease("a"))
    b, _ = store.insert_lease(_lease("b"))
    a.reason_detail, b.reason_detail = "4 A100 GPUs wanted, 2 free", "behind a"
    a.reason, a.priority = "capacity", 7  # only the reason is the call's to write
    store.save_wait_reasons([a, b])
    got = store.get_lease("a")
    assert got is not None
    assert (got.reason, got.priority) == ("capacity", 0)
    assert [store.get_lease(x).reason_detail for x in "ab"] == [  # type: ignore[union-attr]
        "4 A100 GPUs wanted, 2 free",
        "behind a",
    ]
    # One stale lease in the batch: nothing of it is written.
    stale = store.get_lease("b")
    assert stale is not None
    store.transition(b, LeaseState.CANCELLED, 5.0)
    a.reason_detail, stale.reason_detail = "3 free", "gone"
    with pytest.raises(Conflict, match="concurrently"):
        store.save_wait_reasons([a, stale])
    assert store.get_lease("a").reason_detail == "4 A100 GPUs wanted, 2 free"  # type: ignore[union-attr]
    with pytest.raises(FastGPUError, match="for PENDING leases"):
        store.save_wait_reasons([a, b])


def _old_database(url: str, version: int) -> None:
    """A database as FastGPU at schema ``version`` left it, with a tenant, its token, an ended
    lease and its usage record (written with that version's columns only)."""
    from sqlalchemy import create_engine, insert

    from fastgpu.store import schema

    engine = create_engine(url)
    with engine.begin() as conn:
        schema.schema_version.create(conn)
        conn.execute(insert(schema.schema_version).values(version=version))
        for migrate in schema.MIGRATIONS[:version]:
            migrate(conn)
        conn.execute(
            text(
                "insert into tenants (name, spec, created_at, updated_at) values "
                """('t', '{"weight": 2.0}', 0, 0)"""
            )
        )
        conn.execute(
            text(
                "insert into tokens (token_hash, principal, is_admin, created_at) values "
                f"('{'a' * 64}', 't', 0, 0), ('{'b' * 64}', 'admin', 1, 0)"
            )
        )
        conn.execute(
            text(
                "insert into leases (id, tenant, state, gpus, min_gpus, gpu_type, strategy, "
                "duration_s, preemptible, price_per_hour, nodes, created_at, request_id) values "
                "('old', 't', 'RELEASED', 2, 2, 'A100', 'PACK', 60, 0, 1.0, '[]', 0, 'r1')"
            )
        )
        conn.execute(
            text(
                "insert into usage (lease_id, tenant, gpu_type, gpus, price_per_hour, start, "
                "\"end\") values ('old', 't', 'A100', 2, 1.0, 0, 60)"
            )
        )
        conn.execute(
            text(
                "insert into requests (principal, request_id, op, target, created_at) values "
                "('admin', 'req-1', 'create_tenant', 't', 0)"
            )
        )
    engine.dispose()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_upgrade_from_an_older_version_keeps_data(tmp_path: Path, version: int) -> None:
    """A database written by an older version gains later versions' columns with its rows
    intact; v4 gives the tenant an id and hangs its leases, usage and tokens on it."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    _old_database(url, version)
    store = open_store(url)
    assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    tenant = store.get_tenant("t")
    assert tenant is not None
    assert tenant.id
    assert tenant.spec.weight == 2.0
    old = store.get_lease("old")
    assert old is not None
    assert old.state == LeaseState.RELEASED
    assert old.priority == 0
    assert old.last_checkpoint_at is None
    assert old.restarts == 0
    assert old.tenant_id == tenant.id
    assert store.find_lease_by_request(tenant.id, "r1") == old
    assert [x.id for x in store.list_leases(tenant_id=tenant.id)] == ["old"]
    (row,) = store.usage(now=100.0, tenant_id=tenant.id)
    assert row.gpu_seconds == pytest.approx(120)
    assert store.decayed_usage(now=60.0, half_life_s=1e9)[tenant.id] == pytest.approx(120)
    tok = store.lookup_token("a" * 64, 1.0)
    assert tok is not None
    assert tok.principal == "t"
    assert tok.id
    assert tok.expires_at is None
    admin = store.lookup_token("b" * 64, 1.0)
    assert admin is not None
    assert admin.is_admin
    assert admin.id != tok.id
    assert store.recall_request("admin", "req-1") == ("create_tenant", "t", None)
    # The upgraded database takes new rows as a fresh one would.
    rec, _ = store.create_tenant("u", TenantSpec(), "c" * 64, 1.0)
    assert rec.id != tenant.id
    store.close()
    # ...and reopening does not migrate again.
    assert open_store(url).schema_version() == SCHEMA_VERSION


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
    assert store.count_preempted(TID, "run-1", since=50.0) == 1
    assert store.count_preempted(TID, "run-1", since=0.0) == 2
    assert store.count_preempted("someone-else", "run-1", since=0.0) == 0


def test_decayed_usage_halves_after_a_half_life() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    store.transition(lease, LeaseState.ADMITTED, 0.0, hooks=[meter])
    store.transition(lease, LeaseState.RESERVED, 0.0, hooks=[meter])
    store.transition(lease, LeaseState.RELEASED, 10.0, hooks=[meter])
    fresh = store.decayed_usage(now=10.0, half_life_s=3600.0)[TID]
    assert fresh == pytest.approx(20.0, rel=1e-3)  # 2 GPUs x 10 s, barely decayed
    assert store.decayed_usage(now=3610.0, half_life_s=3600.0)[TID] == pytest.approx(fresh / 2)
    assert "someone-else" not in store.decayed_usage(now=10.0, half_life_s=3600.0)


def _metered(store: Store, lid: str, start: float, end: float, tenant_id: str = TID) -> Lease:
    lease, _ = store.insert_lease(_lease(lid, tenant_id=tenant_id))
    store.transition(lease, LeaseState.ADMITTED, start, hooks=[meter])
    store.transition(lease, LeaseState.RESERVED, start, hooks=[meter])
    lease.ended_at = end
    store.transition(lease, LeaseState.RELEASED, end, hooks=[meter])
    return lease


def test_transition_without_hooks_meters_nothing() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    store.transition(lease, LeaseState.ADMITTED, 0.0)
    store.transition(lease, LeaseState.RESERVED, 0.0)
    assert store.usage(now=10.0) == []


def test_a_failing_hook_rolls_the_transition_back() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))

    def boom(*_: object) -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError):
        store.transition(lease, LeaseState.ADMITTED, 1.0, hooks=[meter, boom])
    assert lease.state == LeaseState.PENDING
    got = store.get_lease("a")
    assert got is not None
    assert got.state == LeaseState.PENDING
    assert [e["new"] for e in store.lease_events("a")] == ["PENDING"]


def test_resize_closes_and_opens_a_usage_record() -> None:
    store = open_store("sqlite://")
    lease, _ = store.insert_lease(_lease("a"))
    for state in (LeaseState.ADMITTED, LeaseState.RESERVED):
        store.transition(lease, state, 0.0, hooks=[meter])
    lease.nodes = ["n1"]  # 2 GPUs -> 1
    store.resize(lease, 10.0, hooks=[meter])
    (row,) = store.usage(now=20.0)
    assert row.gpu_seconds == pytest.approx(2 * 10 + 1 * 10)


def test_usage_by_tenant_id_and_since() -> None:
    store = open_store("sqlite://")
    _metered(store, "a", 0.0, 100.0)
    _metered(store, "b", 0.0, 100.0, tenant_id="other")
    (mine,) = store.usage(now=200.0, tenant_id=TID)
    assert mine.gpu_seconds == pytest.approx(200)
    assert store.usage(now=200.0, tenant_id=TID, since=50.0)[0].gpu_seconds == pytest.approx(100)
    assert sum(r.gpu_seconds for r in store.usage(now=200.0)) == pytest.approx(400)


def test_list_leases_pages_by_created_at_then_id() -> None:
    store = open_store("sqlite://")
    for i, at in enumerate([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0]):
        lease = _lease(f"l{6 - i}")  # ids in reverse of time: the order must not rely on them
        lease.created_at = at
        store.insert_lease(lease)
    seen: list[str] = []
    after = None
    while True:
        page = store.list_leases(tenant_id=TID, limit=2, after=after)
        if not page:
            break
        seen += [x.id for x in page]
        after = (page[-1].created_at, page[-1].id)
    every = store.list_leases(tenant_id=TID)
    assert seen == [x.id for x in every]
    assert len(set(seen)) == 7
    assert [x.created_at for x in every] == sorted(x.created_at for x in every)
    assert store.list_leases(tenant_id="other") == []
    assert len(store.list_leases(states=[LeaseState.PENDING], limit=3)) == 3


def test_purge_ended_keeps_live_leases_and_usage() -> None:
    store = open_store("sqlite://")
    _metered(store, "old", 0.0, 100.0)
    _metered(store, "new", 0.0, 500.0)
    live, _ = store.insert_lease(_lease("live"))
    assert store.purge_ended(before=200.0) == 1
    assert store.get_lease("old") is None
    assert store.lease_events("old") == []
    assert store.get_lease("new") is not None
    assert store.get_lease(live.id) is not None
    (row,) = store.usage(now=1000.0)
    assert row.gpu_seconds == pytest.approx(2 * 100 + 2 * 500)


def test_token_expiry_rotation_and_revocation() -> None:
    store = open_store("sqlite://")
    _, first = store.create_tenant("t", TenantSpec(), "a" * 64, 0.0)
    timed = store.add_token("b" * 64, "t", False, 0.0, expires_at=50.0, label="ci")
    assert store.lookup_token("b" * 64, 49.0) == timed
    assert store.lookup_token("b" * 64, 50.0) is None
    assert [r.id for r in store.list_tokens("t", 10.0)] == [first.id, timed.id]
    # Rotation: the old tokens keep working until old_expire_at, the new one from now on.
    new = store.rotate_tokens("t", False, "c" * 64, 10.0, old_expire_at=30.0)
    assert store.lookup_token("a" * 64, 29.0) is not None
    assert store.lookup_token("a" * 64, 30.0) is None
    # A token already ending sooner than the grace keeps its earlier end.
    assert store.lookup_token("b" * 64, 29.0) is not None
    assert store.lookup_token("c" * 64, 1e9) == new
    assert [r.id for r in store.list_tokens("t", 40.0)] == [new.id]
    assert store.purge_tokens(40.0) == 2
    assert store.revoke_token("t", new.id)
    assert not store.revoke_token("t", new.id)
    assert store.lookup_token("c" * 64, 41.0) is None


def test_a_recreated_tenant_name_is_a_new_tenant() -> None:
    store = open_store("sqlite://")
    first, _ = store.create_tenant("t", TenantSpec(), "a" * 64, 0.0)
    lease = _lease("a", request_id="r1", tenant_id=first.id)
    store.insert_lease(lease)
    with pytest.raises(Conflict, match="live lease"):
        store.delete_tenant("t")
    got = store.get_lease("a")
    assert got is not None
    store.transition(got, LeaseState.CANCELLED, 1.0)
    with pytest.raises(Conflict, match="already exists"):
        store.create_tenant("t", TenantSpec(), "b" * 64, 0.0)
    store.delete_tenant("t")
    with pytest.raises(NotFound):
        store.delete_tenant("t")
    assert store.lookup_token("a" * 64, 2.0) is None
    second, _ = store.create_tenant("t", TenantSpec(), "b" * 64, 2.0)
    assert second.id != first.id
    assert store.list_leases(tenant_id=second.id) == []
    # The old lease stays (audit) without its request id, so the new tenant may reuse it.
    assert store.find_lease_by_request(first.id, "r1") is None
    fresh, created = store.insert_lease(_lease("b", request_id="r1", tenant_id=second.id))
    assert created
    assert fresh.id == "b"


def test_lease_pages_read_an_index_in_page_order(tmp_path: Path) -> None:
    """A page of leases, a tenant's or all, walks an index in (created_at, id) order: SQLite
    neither scans the table nor sorts the leases for it."""
    from fastgpu.service.models import LEASE_COLUMNS
    from fastgpu.store.sql import _lease_query

    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for i in range(20):
        store.insert_lease(replace(_lease(f"l{i:02d}", tenant_id=f"t{i % 3}"), created_at=float(i)))
    for by_tenant in (True, False):
        q = _lease_query(("created_at", "id", *LEASE_COLUMNS), by_tenant, False, True, True)
        params = {"tenant_id": "t1", "after_at": 3.0, "after_id": "l03", "limit": 5}
        sql = q.params(**params).compile(store._engine, compile_kwargs={"literal_binds": True})
        with store._engine.connect() as conn:
            plan = " | ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert "ix_leases_tenant_page" in plan if by_tenant else "ix_leases_page" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    ids = [x.id for x in store.list_leases(tenant_id="t1", limit=3, after=(3.0, "l03"))]
    assert ids == ["l04", "l07", "l10"]


def test_only_a_file_sqlite_store_reads_on_the_event_loop(tmp_path: Path) -> None:
    """Reads run in place only where they never wait for a writer (WAL file); an in-memory
    store's one connection is the writers' (under their lock), so its reads go to a thread."""
    assert open_store(f"sqlite:///{tmp_path / 'db.sqlite'}").reads_inline
    assert not open_store("sqlite://").reads_inline
