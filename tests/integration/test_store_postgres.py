"""The store and controller on PostgreSQL (the production backend), on a private server.

The fixture starts a throwaway PostgreSQL server (:mod:`tests.integration.pg_fixtures`); the
tests skip when no PostgreSQL server binaries are installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import text

from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig, TenantSpec
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.controller.metering import meter
from fastgpu.domain.lease import Lease, LeaseState
from fastgpu.errors import Conflict
from fastgpu.service import Services
from fastgpu.service.models import LeaseCreate, TenantCreate
from fastgpu.store import SCHEMA_VERSION, open_store
from tests.integration.pg_fixtures import private_postgres
from tests.unit.fakes import FakeBackend, FakeClock
from tests.unit.test_store import _lease


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from private_postgres()


def test_store_on_postgres(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert store.schema_version() == SCHEMA_VERSION
    assert not store.reads_inline  # a network round trip: reads go to a worker thread
    assert open_store(postgres_url).schema_version() == SCHEMA_VERSION  # re-open: no re-migration
    rec, _ = store.create_tenant("pg", TenantSpec(), "h" * 64, 0.0)
    lease = replace(_lease("pg1", "r", tenant_id=rec.id), tenant="pg", price_per_hour=3.6)
    store.insert_lease(lease)
    again, created = store.insert_lease(Lease(**{**lease.__dict__, "id": "pg2"}))
    assert not created
    assert again.id == "pg1"
    # A waiting lease's reason: written alone, compare-and-set on PENDING (rowcount on PG).
    lease.reason, lease.reason_detail = "capacity", "2 A100 GPUs wanted, 0 free"
    store.save_wait_reasons([lease])
    assert store.get_lease("pg1").reason_detail == "2 A100 GPUs wanted, 0 free"  # type: ignore[union-attr]
    gone = replace(lease, id="pg-none")
    with pytest.raises(Conflict):
        store.save_wait_reasons([gone])
    # A batch (one executemany where the driver counts its rows): all or none.
    other, _ = store.insert_lease(replace(lease, id="pg3", request_id="r3"))
    lease.reason_detail, other.reason_detail = "2 A100 GPUs wanted, 1 free", "behind pg1"
    with pytest.raises(Conflict):
        store.save_wait_reasons([lease, gone])
    assert store.get_lease("pg1").reason_detail == "2 A100 GPUs wanted, 0 free"  # type: ignore[union-attr]
    store.save_wait_reasons([lease, other])
    assert [store.get_lease(x).reason_detail for x in ("pg1", "pg3")] == [  # type: ignore[union-attr]
        "2 A100 GPUs wanted, 1 free",
        "behind pg1",
    ]
    store.transition(other, LeaseState.CANCELLED, 1.0)
    store.transition(lease, LeaseState.ADMITTED, 1.0, hooks=[meter])
    store.transition(lease, LeaseState.RESERVED, 2.0, hooks=[meter])
    store.transition(lease, LeaseState.RELEASED, 12.0, hooks=[meter])
    (row,) = store.usage(now=100.0)
    assert row.gpu_seconds == pytest.approx(20.0)
    assert row.cost == pytest.approx(20.0 / 3600 * 3.6)


def test_controller_on_postgres(postgres_url: str) -> None:
    config = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)}, store_url=postgres_url
    )
    backend = FakeBackend(node_list=[NodeInfo("n1", "A100", 8, True)])
    clock = FakeClock()
    ctl = Controller(config, open_store(postgres_url), backend, clock=clock)
    svc = Services.build(ctl)
    admin = new_token()
    svc.auth.bootstrap_admin(admin)
    quotas = {"A100": {"nominal": 4, "borrowing_limit": 0}}
    tok = svc.tenants.create(
        svc.auth.authenticate(admin),
        TenantCreate.model_validate({"name": "pgteam", "quotas": quotas}),
    ).token
    p = svc.auth.authenticate(tok)
    lease = svc.leases.request(p, LeaseCreate(gpus=4, duration="1m", request_id="x"))
    ctl.tick()
    assert svc.leases.get(p, lease.id).state == "RESERVED"
    queued = svc.leases.request(p, LeaseCreate(gpus=1))
    assert queued.reason == "over_quota"
    clock.advance(60)
    ctl.tick()
    assert svc.leases.get(p, lease.id).state == "EXPIRED"
    assert svc.leases.get(p, queued.id).state == "ADMITTED"
    assert svc.reads.usage(p).items[0].gpu_seconds == pytest.approx(240)
    # The list's row path (bound limit, cursor and state filter) pages through every lease once.
    more = [svc.leases.request(p, LeaseCreate(gpus=1)).id for _ in range(4)]
    pages, cursor = [], None
    while True:
        page = svc.leases.list(p, limit=2, cursor=cursor)
        pages.append([x.id for x in page.items])
        if (cursor := page.next_cursor) is None:
            break
    flat = [i for ids in pages for i in ids]
    assert flat == [x.id for x in svc.leases.list(p).items]  # one page of all, same order
    assert sorted(flat) == sorted([lease.id, queued.id, *more])
    assert [len(ids) for ids in pages] == [2, 2, 2]
    live = svc.leases.list(p, live=True).items
    assert [(x.id, x.state) for x in live][:1] == [(queued.id, "ADMITTED")]
    assert lease.id not in {x.id for x in live}


def test_usage_report_on_postgres(postgres_url: str) -> None:
    """The report's SQL (recursive bucket CTE, floor, month CASE) and the daily rollup's
    upsert on PostgreSQL: the same hand-checked splits as on SQLite, and a dense ledger against
    the straightforward split (tests/unit/test_usage_report.py)."""
    from tests.unit.test_usage_report import (
        NOW,
        REPORT_GROUPS,
        _dense_spec,
        _ledger,
        assert_same_report,
        utc,
        write_ledger,
    )

    store = open_store(postgres_url)
    with store._engine.begin() as conn:
        conn.execute(text("DELETE FROM usage"))
        conn.execute(text("DELETE FROM usage_daily"))
    _ledger(store)
    days = store.usage_report(NOW, utc(2026, 10, 31), utc(2026, 12, 2), (), "day")
    assert {r.period_start: r.gpu_seconds / 3600 for r in days} == {
        utc(2026, 10, 31): 4.0,
        utc(2026, 11, 1): 6.0,
        utc(2026, 11, 2): 2.0,
        utc(2026, 11, 30): 2.0,
        utc(2026, 12, 1): 4.0,
    }
    months = store.usage_report(NOW, utc(2026, 10, 1), NOW, ("gpu_type",), "month")
    assert {(r.period_start, r.gpu_type): r.gpu_seconds / 3600 for r in months} == {
        (utc(2026, 10, 1), "A100"): 4.0,
        (utc(2026, 11, 1), "A100"): 8.0,
        (utc(2026, 11, 1), "H100"): 2.0,
        (utc(2026, 12, 1), "H100"): 4.0,
    }
    with store._engine.begin() as conn:
        conn.execute(text("DELETE FROM usage"))
        conn.execute(text("DELETE FROM usage_daily"))
    now = utc(2026, 12, 10)
    recs = write_ledger(store, _dense_spec(7, 200))
    for _ in range(2):  # as written by the transactions, then rebuilt
        for since, until in [(utc(2026, 11, 1), utc(2026, 12, 1)), (utc(2026, 11, 1, 5), now)]:
            for by in [("tenant",), REPORT_GROUPS]:
                for period in ["hour", "day", "week", "month", None]:
                    assert_same_report(store, recs, now, since, until, by, period)
        store.rebuild_usage_rollup()
