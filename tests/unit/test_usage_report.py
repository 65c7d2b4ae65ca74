"""The usage ledger: records carry the workload that held the GPUs and the price at admission;
the report splits records at hour/day/week/month boundaries (UTC) exactly, in SQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgpu.config import GpuTypeSpec
from fastgpu.controller.metering import meter
from fastgpu.domain.lease import LeaseState
from fastgpu.errors import InvalidRequest, NotFound
from fastgpu.store import Store, open_store
from tests.unit.test_store import TID, _lease


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


H = 3600.0


def _ledger(store: Store) -> None:
    """Hand-checked records (2 GPUs at 1.0/h unless said):
    a: 2026-10-31 22:00 -> 2026-11-01 02:00 (crosses a day and a month; Saturday -> Sunday);
    b: 2026-11-01 23:00 -> 2026-11-02 01:00 (crosses a day and a week: 11-02 is a Monday);
    c: H100, 4 GPUs at 3.0/h, workload train:x, open since 2026-11-30 23:30."""
    a = _lease("a")
    store.add_usage(a, 2, utc(2026, 10, 31, 22), utc(2026, 11, 1, 2))
    store.add_usage(_lease("b"), 2, utc(2026, 11, 1, 23), utc(2026, 11, 2, 1))
    c = replace(_lease("c"), gpu_type="H100", price_per_hour=3.0, workload="train:x")
    store.add_usage(c, 4, utc(2026, 11, 30, 23, 30), utc(2026, 11, 30, 23, 30))
    with store._engine.begin() as conn:  # reopen c: it still holds
        from sqlalchemy import update

        from fastgpu.store import schema

        conn.execute(update(schema.usage).where(schema.usage.c.lease_id == "c").values(end=None))


@pytest.fixture
def store() -> Store:
    s = open_store("sqlite://")
    _ledger(s)
    return s


NOW = utc(2026, 12, 1, 1)


def _by_bucket(rows: list, key: str = "period_start") -> dict:
    return {getattr(r, key): r.gpu_seconds / H for r in rows}


def test_day_buckets_split_exactly(store: Store) -> None:
    rows = store.usage_report(NOW, utc(2026, 10, 31), utc(2026, 12, 2), (), "day")
    assert _by_bucket(rows) == {
        utc(2026, 10, 31): 4.0,  # a: 2 h x 2 GPUs
        utc(2026, 11, 1): 4.0 + 2.0,  # a: 2 h x 2; b: 1 h x 2
        utc(2026, 11, 2): 2.0,  # b
        utc(2026, 11, 30): 2.0,  # c: 0.5 h x 4
        utc(2026, 12, 1): 4.0,  # c, open: up to now (01:00)
    }


def test_week_buckets_are_iso_weeks(store: Store) -> None:
    rows = store.usage_report(NOW, utc(2026, 10, 31), utc(2026, 12, 2), (), "week")
    assert _by_bucket(rows) == {
        utc(2026, 10, 26): 10.0,  # Monday 10-26: a, b until Monday 11-02 00:00
        utc(2026, 11, 2): 2.0,  # b
        utc(2026, 11, 30): 6.0,  # c
    }


def test_month_buckets_and_cost(store: Store) -> None:
    rows = store.usage_report(NOW, utc(2026, 10, 1), NOW, ("gpu_type",), "month")
    got = {(r.period_start, r.gpu_type): (r.gpu_seconds / H, r.cost) for r in rows}
    assert got == {
        (utc(2026, 10, 1), "A100"): (4.0, pytest.approx(4.0)),
        (utc(2026, 11, 1), "A100"): (8.0, pytest.approx(8.0)),  # a: 2 h x 2; b: 2 h x 2
        (utc(2026, 11, 1), "H100"): (2.0, pytest.approx(6.0)),
        (utc(2026, 12, 1), "H100"): (4.0, pytest.approx(12.0)),
    }


def test_range_clips_and_groups(store: Store) -> None:
    rows = store.usage_report(NOW, utc(2026, 11, 1, 1), utc(2026, 11, 2), ("workload",), "hour")
    assert {(r.workload, r.period_start): r.gpu_seconds / H for r in rows} == {
        ("lease", utc(2026, 11, 1, 1)): 2.0,
        ("lease", utc(2026, 11, 1, 23)): 2.0,
    }
    (total,) = store.usage_report(NOW, utc(2026, 11, 1), utc(2026, 12, 1), ("tenant",))
    assert (total.tenant, total.gpu_seconds / H) == ("t", 4.0 + 4.0 + 2.0)
    assert store.usage_report(NOW, NOW, NOW + H) == []


def test_tenant_scope(store: Store) -> None:
    other = replace(_lease("o", tenant_id="tid-o"), tenant="o")
    store.add_usage(other, 1, utc(2026, 11, 5), utc(2026, 11, 5, 1))
    rows = store.usage_report(NOW, utc(2026, 11, 1), NOW, ("tenant",), tenant_id="tid-o")
    assert [(r.tenant, r.gpu_seconds) for r in rows] == [("o", H)]


def test_too_many_buckets_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="since/until"):
        store.usage_report(utc(2030, 1, 1), utc(2020, 1, 1), utc(2030, 1, 1), (), "hour")


def test_bind_splits_the_record_and_names_the_workload() -> None:
    store = open_store("sqlite://")
    lease = _lease("x")
    store.insert_lease(lease)
    store.transition(lease, LeaseState.ADMITTED, 0.0, hooks=[meter])
    store.transition(lease, LeaseState.RESERVED, 10.0, hooks=[meter])
    lease.workload = "train:run-1"
    store.transition(lease, LeaseState.BOUND, 20.0, hooks=[meter])
    store.transition(lease, LeaseState.RELEASED, 50.0, hooks=[meter])
    rows = store.usage_report(100.0, 0.0, 100.0, ("workload",))
    assert [(r.workload, r.gpu_seconds) for r in rows] == [("lease", 20.0), ("train:run-1", 60.0)]


def test_a_price_change_never_rewrites_past_records() -> None:
    store = open_store("sqlite://")
    old = _lease("p1")  # admitted at 1.0/h
    store.add_usage(old, 2, 0.0, H)
    new = replace(_lease("p2"), price_per_hour=5.0)  # the config's price changed to 5.0/h
    store.add_usage(new, 2, H, 2 * H)
    rows = store.usage_report(3 * H, 0.0, 3 * H, (), "hour")
    assert [r.cost for r in rows] == [pytest.approx(2.0), pytest.approx(10.0)]
    assert store.usage(now=3 * H)[0].cost == pytest.approx(12.0)


records = st.lists(
    st.tuples(
        st.floats(0, 40 * 86400, allow_nan=False),
        st.floats(0, 10 * 86400, allow_nan=False),
        st.integers(1, 8),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(
    recs=records,
    since=st.floats(0, 20 * 86400, allow_nan=False),
    span=st.floats(1, 30 * 86400, allow_nan=False),
    period=st.sampled_from(["hour", "day", "week", "month", None]),
)
def test_buckets_sum_to_the_clipped_total(
    recs: list[tuple[float, float, int]], since: float, span: float, period: str | None
) -> None:
    store = open_store("sqlite://")
    base = utc(2026, 10, 20)
    for i, (start, length, gpus) in enumerate(recs):
        store.add_usage(_lease(f"l{i}"), gpus, base + start, base + start + length)
    lo, hi = base + since, base + since + span
    expect = sum(g * max(0.0, min(base + s + n, hi) - max(base + s, lo)) for s, n, g in recs)
    rows = store.usage_report(base + 60 * 86400, lo, hi, ("tenant",), period)
    assert sum(r.gpu_seconds for r in rows) == pytest.approx(expect, rel=1e-9, abs=1e-3)
    assert all(r.tenant == "t" for r in rows)
    assert TID


# ---- service, API and CLI ---------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> Any:
    from tests.unit.test_services import _world

    w = _world(tmp_path)
    w.tenant("acme")
    w.tenant("beta")
    w.clock.now = utc(2026, 11, 3)
    return w


def _hold(w: Any, name: str, hours: float, workload: str | None = None) -> None:
    """A lease of 2 GPUs held for ``hours`` from now, then released."""
    p = w.auth(w.tokens[name])
    lease = w.request(p, gpus=2)
    w.ctl.tick()
    if workload is not None:
        w.svc.leases.bind(p, lease.id, workload)
    w.clock.advance(hours * H)
    w.svc.leases.release(p, lease.id)


def test_service_report_scope_and_price_change(world: Any) -> None:
    _hold(world, "acme", 1.0, "train:r1")
    # The operator raises the price: past records keep the price the lease was admitted at.
    world.ctl.config.gpu_types["A100"] = GpuTypeSpec(price_per_hour=100.0)
    _hold(world, "beta", 0.5)
    admin = world.admin
    rep = world.svc.reads.usage_report(
        admin, "tenant,workload", "day", "2026-11-01T00:00:00Z", None
    )
    got = {(r.tenant, r.workload): (r.gpu_hours, r.cost) for r in rep.rows}
    assert got == {("acme", "train:r1"): (2.0, 7.2), ("beta", "lease"): (1.0, 100.0)}
    assert rep.cost == pytest.approx(107.2)
    mine = world.svc.reads.usage_report(world.auth(world.tokens["beta"]), "tenant", None, None)
    assert [r.tenant for r in mine.rows] == ["beta"]
    with pytest.raises(NotFound):
        world.svc.reads.usage_report(world.auth(world.tokens["beta"]), tenant="acme")
    st = world.svc.reads.statement(admin, "2026-11")
    assert [(s.tenant, s.cost, [x.workload for x in s.lines]) for s in st.tenants] == [
        ("acme", 7.2, ["train:r1"]),
        ("beta", 100.0, ["lease"]),
    ]
    assert (st.since, st.until) == (
        "2026-11-01T00:00:00.000+00:00",
        "2026-12-01T00:00:00.000+00:00",
    )


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"period": "fortnight"}, "period"),
        ({"by": "tenant,colour"}, "by"),
        ({"by": "tenant,tenant"}, "by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "soon"}, "until"),
        ({"since": "2026-11-02T00:00Z", "until": "2026-11-01T00:00Z"}, "until"),
        ({"period": "hour", "since": "2000-01-01T00:00Z"}, "since/until"),
    ],
)
def test_api_refuses_bad_parameters_naming_them(
    world: Any, params: dict[str, str], named: str
) -> None:
    from fastapi.testclient import TestClient

    from fastgpu.api.app import create_app

    http = TestClient(create_app(world.svc, world.ctl.config.api))
    r = http.get(
        "/api/v1/usage/report",
        params=params,
        headers={"Authorization": f"Bearer {world.admin_token}"},
    )
    assert r.status_code == 422
    assert named in r.json()["error"]["message"]


def test_api_tenant_sees_only_its_own_and_statement(world: Any) -> None:
    from fastapi.testclient import TestClient

    from fastgpu.api.app import create_app

    _hold(world, "acme", 1.0)
    _hold(world, "beta", 1.0)
    http = TestClient(create_app(world.svc, world.ctl.config.api))
    beta = {"Authorization": f"Bearer {world.tokens['beta']}"}
    r = http.get("/api/v1/usage/report", params={"by": "tenant,gpu_type"}, headers=beta)
    assert r.status_code == 200
    assert [row["tenant"] for row in r.json()["rows"]] == ["beta"]
    r = http.get("/api/v1/usage/report", params={"tenant": "acme"}, headers=beta)
    assert r.status_code == 404
    r = http.get("/api/v1/usage/statement", params={"at": "2026-11"}, headers=beta)
    assert [t["tenant"] for t in r.json()["tenants"]] == ["beta"]
    r = http.get("/api/v1/usage/statement", params={"at": "November"}, headers=beta)
    assert r.status_code == 422
    assert "at:" in r.json()["error"]["message"]


def test_cli_report_as_csv(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from fastgpu.api.app import create_app
    from fastgpu.cli import main as cli
    from fastgpu.sdk import Client

    world.clock.now = utc(2026, 11, 3, 23)
    _hold(world, "acme", 2.0)  # 23:00 -> 01:00: one hour on each day
    http = TestClient(create_app(world.svc, world.ctl.config.api))
    sdk = Client(token=world.admin_token, address="http://testserver", transport=http._transport)
    monkeypatch.setattr(cli, "_client", lambda: sdk)
    args = ["usage", "--by", "day", "--group", "tenant,workload", "--since", "2026-11-03T00:00Z"]
    result = CliRunner().invoke(cli.app, [*args, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "period,tenant,workload,gpu_seconds,gpu_hours,cost",
        "2026-11-03T00:00:00.000+00:00,acme,lease,7200.0,2.0,7.2",
        "2026-11-04T00:00:00.000+00:00,acme,lease,7200.0,2.0,7.2",
    ]
    table = CliRunner().invoke(cli.app, args)
    assert table.exit_code == 0, table.output
    assert "total" in table.output
    old = CliRunner().invoke(cli.app, ["usage", "--output", "json"])
    assert old.exit_code == 0, old.output
    assert '"gpu_type": "A100"' in old.output
    st = CliRunner().invoke(cli.app, ["usage", "statement", "--month", "2026-11"])
    assert st.exit_code == 0, st.output
    assert "acme" in st.output
