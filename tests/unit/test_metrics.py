"""Prometheus metrics (``fastgpu.metrics``) over a stepped controller: a fake Ray seam and
clock, a real SQLite store, the real fair-share policy. Each test builds a known state (leases
granted, one preempted, one waiting, budget spent), scrapes the text format and parses it back
with ``prometheus_client``'s own parser; plus ``GET /metrics`` in-process (who may read it) and
the config rule that keeps an open endpoint on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fastgpu.api.app import create_app
from fastgpu.auth import Principal, new_token
from fastgpu.config import (
    GpuTypeSpec,
    PlatformConfig,
    QuotaSpec,
    SchedulerSettings,
    parse_config,
)
from fastgpu.controller.backend import NodeInfo, group_name
from fastgpu.controller.loop import Controller
from fastgpu.domain.lease import LeaseState
from fastgpu.errors import ConfigError
from fastgpu.metrics import PlatformMetrics, install_metrics
from fastgpu.service import Services
from fastgpu.service.models import LeaseCreate, LeaseOut, TenantCreate
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
LIVE = ("PENDING", "ADMITTED", "RESERVED", "BOUND")


@dataclass
class World:
    ctl: Controller
    svc: Services
    backend: FakeBackend
    clock: FakeClock
    metrics: PlatformMetrics
    admin_token: str

    @property
    def admin(self) -> Principal:
        return self.svc.auth.authenticate(self.admin_token)

    def tenant(self, name: str, nominal: int = 4, **extra: Any) -> Principal:
        body = TenantCreate(name=name, quotas={"A100": QuotaSpec(nominal=nominal)}, **extra)
        token = self.svc.tenants.create(self.admin, body).token
        assert token
        return self.svc.auth.authenticate(token)

    def request(self, p: Principal, **body: Any) -> LeaseOut:
        return self.svc.leases.request(p, LeaseCreate.model_validate(body))

    def state(self, lease_id: str) -> LeaseState:
        lease = self.ctl.store.get_lease(lease_id)
        assert lease is not None
        return lease.state

    def scrape(self) -> Samples:
        body, content_type = self.metrics.render()
        assert content_type.startswith("text/plain")
        return parse(body.decode())


def parse(text: str) -> Samples:
    """``{(sample name, sorted labels): value}`` of a scrape, through the reference parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def make_world(tmp_path: Path, **config: Any) -> World:
    cfg = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=3.6)},
        state_dir=str(tmp_path),
        # Preempt at once and without a minimum runtime, so one pass shows a reclaim.
        scheduler=SchedulerSettings(grace_s=0, min_runtime_s=0),
        **config,
    )
    backend = FakeBackend(node_list=[NodeInfo(f"n{i}", "A100", 4, True) for i in range(2)])
    clock = FakeClock()
    ctl = Controller(cfg, open_store(cfg.resolved_store_url()), backend, clock=clock)
    svc = Services.build(ctl)
    admin = new_token()
    svc.auth.bootstrap_admin(admin)
    return World(ctl, svc, backend, clock, install_metrics(ctl), admin)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def test_a_known_state_scrapes_to_known_numbers(world: World) -> None:
    w = world
    acme = w.tenant("acme", budget={"gpu_hours": 10, "money": 100})
    beta = w.tenant("beta")
    # t=0: beta borrows all 8 GPUs (acme's 4 too), admitted at once, reserved 2 s later.
    borrower = w.request(beta, gpus=8, preemptible=True, duration="2h")
    w.clock.advance(2)
    w.ctl.tick()
    assert w.state(borrower.id) == LeaseState.RESERVED
    # t=12: acme wants its nominal back: beta's lease is preempted (reclaim); acme's is
    # admitted at the next pass (t=15) and reserved at the one after (t=18).
    w.clock.advance(10)
    owner = w.request(acme, gpus=4, duration="2h")
    assert w.state(borrower.id) == LeaseState.PREEMPTED
    w.clock.advance(3)
    w.ctl.tick()
    w.clock.advance(3)
    w.ctl.tick()
    assert w.state(owner.id) == LeaseState.RESERVED
    # t=18: beta takes its own 4 again; then wants 4 more, which waits for capacity.
    mine = w.request(beta, gpus=4, duration="2h")
    waiting = w.request(beta, gpus=4, duration="2h")
    w.request(beta, gpus=64, duration="2h")  # can never fit: rejected
    w.clock.advance(3600)  # acme holds 4 GPUs for an hour: 4 GPU-hours, 14.4 money
    w.ctl.tick()
    assert w.state(mine.id) == LeaseState.RESERVED
    assert w.state(waiting.id) == LeaseState.PENDING
    reason = w.ctl.store.get_lease(waiting.id).reason  # type: ignore[union-attr]
    assert reason

    s = w.scrape()
    assert value(s, "fastgpu_gpus_capacity", gpu_type="A100") == 8
    for tenant in ("acme", "beta"):
        assert value(s, "fastgpu_gpus_allocated", tenant=tenant, gpu_type="A100") == 4
        assert value(s, "fastgpu_gpus_guaranteed", tenant=tenant, gpu_type="A100") == 4
    assert {st: value(s, "fastgpu_leases", state=st) for st in LIVE} == {
        "PENDING": 1,
        "ADMITTED": 0,
        "RESERVED": 2,
        "BOUND": 0,
    }
    assert value(s, "fastgpu_pending_leases", reason=reason) == 1
    assert value(s, "fastgpu_preemptions_total", tenant="beta", reason="reclaim") == 1
    assert value(s, "fastgpu_leases_ended_total", state="PREEMPTED") == 1
    assert value(s, "fastgpu_leases_ended_total", state="REJECTED") == 1
    # Waits: 0 (borrower), 3 (owner), 0 (mine); grants: 2, 6, 3600.
    assert value(s, "fastgpu_lease_queue_wait_seconds_count", gpu_type="A100") == 3
    assert value(s, "fastgpu_lease_queue_wait_seconds_sum", gpu_type="A100") == 3
    assert value(s, "fastgpu_lease_grant_seconds_count", gpu_type="A100") == 3
    assert value(s, "fastgpu_lease_grant_seconds_sum", gpu_type="A100") == 3608
    grant_le_10 = value(s, "fastgpu_lease_grant_seconds_bucket", gpu_type="A100", le="10.0")
    assert grant_le_10 == 2
    assert value(s, "fastgpu_budget_spent", tenant="acme", unit="gpu_hours") == pytest.approx(4)
    assert value(s, "fastgpu_budget_remaining", tenant="acme", unit="gpu_hours") == (
        pytest.approx(6)
    )
    assert value(s, "fastgpu_budget_spent", tenant="acme", unit="money") == pytest.approx(14.4)
    assert value(s, "fastgpu_budget_remaining", tenant="acme", unit="money") == (
        pytest.approx(85.6)
    )
    assert not [k for k in s if k[0].startswith("fastgpu_budget") and ("tenant", "beta") in k[1]]
    # The fake backend runs no tenant clusters: those gauges are absent, not zero.
    assert not names(s) & {"fastgpu_tenant_clusters", "fastgpu_raylets"}


def test_an_empty_platform_has_every_state_gauge(world: World) -> None:
    w = world
    s = w.scrape()
    assert value(s, "fastgpu_gpus_capacity", gpu_type="A100") == 8
    assert all(value(s, "fastgpu_leases", state=st) == 0 for st in LIVE)
    w.tenant("idle", nominal=2)
    s = w.scrape()
    assert value(s, "fastgpu_gpus_allocated", tenant="idle", gpu_type="A100") == 0
    assert value(s, "fastgpu_gpus_guaranteed", tenant="idle", gpu_type="A100") == 2
    assert "fastgpu_preemptions_total" not in names(s)  # no series until the first one


def test_a_recreated_group_is_not_a_second_grant(world: World) -> None:
    w = world
    p = w.tenant("acme")
    lease = w.request(p, gpus=2)
    w.ctl.tick()
    assert w.state(lease.id) == LeaseState.RESERVED
    w.backend.group_table.clear()  # Ray lost the group: reconcile re-creates it
    w.clock.advance(w.ctl.config.controller.reconcile_interval_s)
    w.ctl.tick()
    w.ctl.tick()
    assert w.state(lease.id) == LeaseState.RESERVED
    assert w.backend.created.count(group_name(lease.id)) == 2
    s = w.scrape()
    assert value(s, "fastgpu_lease_grant_seconds_count", gpu_type="A100") == 1
    assert value(s, "fastgpu_lease_queue_wait_seconds_count", gpu_type="A100") == 1
    w.svc.leases.release(p, lease.id)
    s = w.scrape()
    assert value(s, "fastgpu_leases_ended_total", state="RELEASED") == 1
    assert value(s, "fastgpu_gpus_allocated", tenant="acme", gpu_type="A100") == 0


@dataclass
class StubCluster:
    up: bool

    def running(self) -> bool:
        return self.up


class StubClusters:
    """The shape of ``TenantClusters`` the metrics read."""

    def __init__(self, heads: dict[str, bool], raylets: list[str]) -> None:
        self.heads, self.raylets = heads, raylets

    def known(self) -> dict[str, StubCluster]:
        return {t: StubCluster(up) for t, up in self.heads.items()}

    def running_raylets(self) -> dict[tuple[str, tuple[str, str, int]], tuple[int, ...]]:
        return {(t, (f"lease{i}", "h0", 0)): (i,) for i, t in enumerate(self.raylets)}


def test_tenant_clusters_and_raylets_when_the_backend_has_them(world: World) -> None:
    w = world
    w.tenant("acme")
    acme_id = w.ctl.tenant("acme").id  # type: ignore[union-attr]
    w.backend.clusters = StubClusters(  # type: ignore[attr-defined]
        {acme_id: True, "gone": False, "other": True}, [acme_id, acme_id, "other"]
    )
    s = w.scrape()
    assert value(s, "fastgpu_tenant_clusters") == 2
    assert value(s, "fastgpu_raylets", tenant="acme") == 2
    assert value(s, "fastgpu_raylets", tenant="other") == 1  # an id the store does not name


def test_a_failing_hook_never_reaches_the_controller(world: World) -> None:
    w = world
    p = w.tenant("acme")
    broken = w.metrics.queue_wait
    w.metrics.queue_wait = None  # type: ignore[assignment]
    try:
        lease = w.request(p, gpus=1)  # the hook raises inside; the request still succeeds
    finally:
        w.metrics.queue_wait = broken
    assert lease.state in ("ADMITTED", "RESERVED")


# ==== GET /metrics: who may read it ==============================================================
def _client(w: World, **api: Any) -> TestClient:
    settings = w.ctl.config.api.model_copy(update=api)
    app = create_app(w.svc, settings, metrics=w.metrics.render)
    return TestClient(app, raise_server_exceptions=False)


def test_the_endpoint_needs_the_admin_token(world: World) -> None:
    w = world
    w.tenant("acme")
    tenant_token = w.svc.auth.issue(w.admin, "acme").token
    client = _client(w)
    r = client.get("/metrics", headers={"Authorization": f"Bearer {w.admin_token}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert value(parse(r.text), "fastgpu_gpus_capacity", gpu_type="A100") == 8
    r = client.get("/metrics")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    r = client.get("/metrics", headers={"Authorization": f"Bearer {tenant_token}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"


def test_metrics_public_serves_without_a_token(world: World) -> None:
    r = _client(world, metrics_public=True).get("/metrics")
    assert r.status_code == 200
    assert "fastgpu_gpus_capacity" in names(parse(r.text))


def test_no_renderer_no_route(world: World) -> None:
    client = TestClient(create_app(world.svc, world.ctl.config.api))
    r = client.get("/metrics", headers={"Authorization": f"Bearer {world.admin_token}"})
    assert r.status_code == 404


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_metrics_public_is_allowed_on_loopback(host: str) -> None:
    cfg = parse_config(
        {
            "gpu_types": {"A100": {"price_per_hour": 1}},
            "api": {"host": host, "metrics_public": True},
        }
    )
    assert cfg.api.metrics_public


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "gpu-box.example.com"])
def test_metrics_public_is_refused_beyond_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match="metrics_public") as err:
        parse_config(
            {
                "gpu_types": {"A100": {"price_per_hour": 1}},
                "api": {"host": host, "metrics_public": True},
            }
        )
    assert "admin token" in str(err.value)
    # Behind the admin token the same host is fine.
    parse_config({"gpu_types": {"A100": {"price_per_hour": 1}}, "api": {"host": host}})
