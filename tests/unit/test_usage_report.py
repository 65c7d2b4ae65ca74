"""The usage ledger: records carry the workload that held the GPUs and the price at admission;
the report splits records at hour/day/week/month boundaries (UTC) exactly, in SQL, reading the
daily rollup for whole days. Reports are checked against a straightforward split of every
record (:func:`reference_report`), whatever path wrote the records and the rollup."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgpu.config import GpuTypeSpec
from fastgpu.controller.metering import meter
from fastgpu.domain.lease import LeaseState
from fastgpu.domain.ledger import REPORT_GROUPS, period_bounds
from fastgpu.errors import InvalidRequest, NotFound
from fastgpu.store import SCHEMA_VERSION, Store, StoreTx, open_store
from fastgpu.store import schema as t
from fastgpu.store.schema import MIGRATIONS, _v_usage_daily
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
    with store._tx() as conn:  # c still holds: an open record, as metering writes it
        StoreTx(conn).open_usage(c, utc(2026, 11, 30, 23, 30), gpus=4)


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
    (day,) = store.usage_report(3 * 86400, 0.0, 2 * 86400, (), "day")  # from the rollup
    assert day.cost == pytest.approx(12.0)
    assert _rollup(store) == {(0.0, TID, "t", "A100", "lease"): (4 * H, pytest.approx(12.0))}


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


# ---- the daily rollup against a straightforward split ------------------------------------------
@dataclass(frozen=True)
class Rec:
    """A usage record as the reference sees it (``end`` None: open)."""

    tenant_id: str | None
    tenant: str
    gpu_type: str
    workload: str | None
    gpus: int
    price: float
    start: float
    end: float | None


def reference_report(
    recs: list[Rec],
    now: float,
    since: float,
    until: float,
    by: tuple[str, ...],
    period: str | None,
    tenant_id: str | None = None,
) -> dict[tuple[Any, ...], tuple[float, float]]:
    """Each record clipped to ``[since, min(until, now))``, split into the period's buckets one
    at a time: {(tenant, gpu type, workload, bucket start): (GPU-seconds, cost)}, a field not
    grouped by None."""
    hi = min(until, now)
    if hi <= since:
        return {}
    starts = period_bounds(since, hi, period)
    ends = [*starts[1:], hi]
    out: dict[tuple[Any, ...], list[float]] = {}
    for r in recs:
        if tenant_id is not None and r.tenant_id != tenant_id:
            continue
        s, e = max(r.start, since), min(r.end if r.end is not None else now, hi)
        for b0, b1 in zip(starts, ends, strict=True):
            secs = min(e, b1) - max(s, b0)
            if secs <= 0:
                continue
            key = (
                r.tenant if "tenant" in by else None,
                r.gpu_type if "gpu_type" in by else None,
                r.workload if "workload" in by else None,
                b0 if period is not None else None,
            )
            acc = out.setdefault(key, [0.0, 0.0])
            acc[0] += r.gpus * secs
            acc[1] += r.gpus * secs / 3600 * r.price
    return {k: (v[0], v[1]) for k, v in out.items()}


def _as_dict(rows: list[Any]) -> dict[tuple[Any, ...], tuple[float, float]]:
    got = {
        (r.tenant, r.gpu_type, r.workload, r.period_start): (r.gpu_seconds, r.cost) for r in rows
    }
    assert len(got) == len(rows)  # tenant names are unique here
    return got


def assert_same_report(store: Store, recs: list[Rec], now: float, *args: Any) -> None:
    got = _as_dict(store.usage_report(now, *args))
    want = reference_report(recs, now, *args)
    # A bucket the reference gives a few microseconds may round to nothing in the report.
    assert {k for k, v in got.items() if v[0] > 1e-3} == {k for k, v in want.items() if v[0] > 1e-3}
    for k, (gpu_s, cost) in want.items():
        assert got.get(k, (0.0, 0.0)) == (
            pytest.approx(gpu_s, rel=1e-9, abs=1e-3),
            pytest.approx(cost, rel=1e-9, abs=1e-6),
        )


def _rollup(store: Store) -> dict[tuple[Any, ...], tuple[float, float]]:
    with store._read() as conn:
        rows = conn.execute(t.usage_daily.select()).all()
    return {
        (r.day, r.tenant_id, r.tenant, r.gpu_type, r.workload): (r.gpu_seconds, r.cost)
        for r in rows
    }


BASE = utc(2026, 10, 20)
TENANTS = [("tid-a", "a"), ("tid-b", "b"), ("tid-c", "c")]
DAY = 86400.0


def write_ledger(store: Store, spec: list[tuple[Any, ...]]) -> list[Rec]:
    """Write the records of ``spec`` the ways the platform does: closed at once (add_usage, a
    shrink's record), opened and left open, or opened then closed (metering's close), the
    last two through :class:`StoreTx` in their own transactions."""
    recs = []
    leases = []
    for i, (start, length, gpus, price, tenant, workload, gpu_type, how) in enumerate(spec):
        tid, name = TENANTS[tenant]
        lease = replace(
            _lease(f"l{i}", tenant_id=tid),
            tenant=name,
            gpu_type=gpu_type,
            price_per_hour=price,
            workload=workload,
        )
        begin = BASE + start
        end = None if how == "open" else begin + length
        if how == "closed":
            store.add_usage(lease, gpus, begin, begin + length)
        else:
            with store._tx() as conn:
                StoreTx(conn).open_usage(lease, begin, gpus=gpus)
            leases.append((lease.id, end))
        recs.append(Rec(tid, name, gpu_type, workload or "lease", gpus, price, begin, end))
    for lease_id, end in leases:
        if end is not None:
            with store._tx() as conn:
                StoreTx(conn).close_usage(lease_id, end)
                StoreTx(conn).close_usage(lease_id, end + 1.0)  # again: nothing left to close
    return recs


ledgers = st.lists(
    st.tuples(
        st.one_of(st.floats(0, 40 * DAY), st.integers(0, 40).map(lambda d: d * DAY)),
        st.one_of(st.floats(0, 5 * DAY), st.sampled_from([DAY, H, 0.0])),
        st.integers(1, 8),
        st.sampled_from([1.0, 2.5, 3.6]),
        st.integers(0, len(TENANTS) - 1),
        st.sampled_from([None, "train:x", "job:y"]),
        st.sampled_from(["A100", "H100"]),
        st.sampled_from(["closed", "open", "closed later"]),
    ),
    max_size=10,
)
bounds = st.one_of(st.floats(0, 45 * DAY), st.integers(0, 45).map(lambda d: d * DAY))
groupings = st.sampled_from(
    [(), ("tenant",), ("gpu_type",), ("workload",), ("tenant", "workload"), REPORT_GROUPS]
)


@settings(max_examples=60, deadline=None)
@given(
    spec=ledgers,
    since=bounds,
    span=st.one_of(st.floats(1, 30 * DAY), st.integers(1, 30).map(lambda d: d * DAY)),
    now=st.floats(20 * DAY, 50 * DAY),
    by=groupings,
    period=st.sampled_from(["hour", "day", "week", "month", None]),
    scoped=st.booleans(),
)
def test_report_equals_a_straightforward_split(
    spec: list[tuple[Any, ...]],
    since: float,
    span: float,
    now: float,
    by: tuple[str, ...],
    period: str | None,
    scoped: bool,
) -> None:
    """Records across hour, day, week and month boundaries, open ones, several prices; ranges
    from midnight or not, ending at now or before; every grouping and period."""
    store = open_store("sqlite://")
    recs = write_ledger(store, [r for r in spec if r[0] < now])
    if period == "hour":
        span = min(span, 5 * DAY)
    lo = BASE + since
    assert_same_report(
        store, recs, BASE + now, lo, lo + span, by, period, "tid-b" if scoped else None
    )


def _dense_spec(seed: int, n: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    return [
        (
            rng.choice([rng.uniform(0, 40 * DAY), rng.randrange(40) * DAY]),
            rng.choice([rng.uniform(0, 3 * DAY), rng.uniform(0, 2 * H), DAY, 0.0]),
            rng.randint(1, 8),
            rng.choice([1.0, 2.5, 3.6]),
            rng.randrange(len(TENANTS)),
            rng.choice([None, "train:x", "job:y"]),
            rng.choice(["A100", "H100"]),
            rng.choice(["closed"] * 4 + ["closed later"] * 3 + ["open"]),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("since", "until", "now"),
    [
        (utc(2026, 11, 1), utc(2026, 12, 1), utc(2026, 12, 10)),  # a month, from midnight
        (utc(2026, 11, 1, 5, 30), utc(2026, 11, 20, 17), utc(2026, 12, 10)),  # partial days
        (utc(2026, 11, 2, 0, 0, 7), utc(2026, 12, 1), utc(2026, 11, 24, 13, 3)),  # until now
        (utc(2026, 11, 3, 1), utc(2026, 11, 3, 22), utc(2026, 12, 10)),  # inside one day
        (utc(2026, 11, 3, 12), utc(2026, 11, 4, 12), utc(2026, 12, 10)),  # across midnight
        (utc(2026, 10, 20), utc(2026, 12, 31), utc(2026, 11, 30)),  # all, open ones to now
    ],
)
def test_report_equals_a_straightforward_split_on_a_dense_ledger(
    since: float, until: float, now: float
) -> None:
    """200 records of every kind, reported by every grouping and period."""
    store = open_store("sqlite://")
    recs = write_ledger(store, [r for r in _dense_spec(7, 200) if BASE + r[0] < now])
    for by in [(), ("tenant",), ("gpu_type", "workload"), REPORT_GROUPS]:
        for period in ["hour", "day", "week", "month", None]:
            assert_same_report(store, recs, now, since, until, by, period)
        assert_same_report(store, recs, now, since, until, by, "day", "tid-b")


@settings(max_examples=25, deadline=None)
@given(spec=ledgers)
def test_the_rollup_is_the_split_of_the_closed_records(spec: list[tuple[Any, ...]]) -> None:
    """Whatever closed them (add_usage, close_usage), the rollup holds what a rebuild from the
    records gives: each closed record's GPU-seconds per UTC day, priced at its own price."""
    store = open_store("sqlite://")
    write_ledger(store, spec)
    written = _rollup(store)
    store.rebuild_usage_rollup()
    rebuilt = _rollup(store)
    assert written.keys() == rebuilt.keys()
    for k, (gpu_s, cost) in rebuilt.items():
        assert k[0] % DAY == 0
        assert written[k] == (pytest.approx(gpu_s, rel=1e-12), pytest.approx(cost, rel=1e-12))


def test_migration_backfills_the_rollup(tmp_path: Path) -> None:
    """A store from before the rollup (records of every kind, one without tenant id or
    workload, as versions before 4 and 5 wrote them) reports the straightforward split after
    migrating."""
    from sqlalchemy import insert, text

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = open_store(url)
    spec = [
        (0.5 * DAY, 3 * DAY, 2, 1.0, 0, "train:x", "A100", "closed"),
        (2 * DAY + 5, H, 4, 2.5, 1, None, "H100", "closed later"),
        (9 * DAY, 0.0, 1, 1.0, 2, None, "A100", "open"),
    ]
    recs = write_ledger(store, spec)
    with store._tx() as conn:
        old = {"lease_id": "old", "gpus": 1, "price_per_hour": 2.0, "gpu_type": "A100"}
        conn.execute(insert(t.usage), {**old, "tenant": "z", "start": BASE, "end": BASE + DAY})
    recs.append(Rec(None, "z", "A100", None, 1, 2.0, BASE, BASE + DAY))
    args = (BASE + 12 * DAY, BASE, BASE + 11 * DAY)
    with store._tx() as conn:  # back to the version before the rollup
        conn.execute(text("DROP TABLE usage_daily"))
        before = MIGRATIONS.index(_v_usage_daily)
        conn.execute(text(f"UPDATE schema_version SET version = {before}"))
    store.close()
    store = open_store(url)
    assert store.schema_version() == SCHEMA_VERSION
    assert (BASE, "", "z", "A100", "") in _rollup(store)  # null tenant id and workload: ""
    for by in [("tenant", "workload"), ("gpu_type",)]:
        for period in ["hour", "day", "week", None]:
            assert_same_report(store, recs, *args, by, period)
    (z,) = [r for r in store.usage_report(*args, ("tenant", "workload")) if r.tenant == "z"]
    assert (z.workload, z.gpu_seconds) == (None, DAY)


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
