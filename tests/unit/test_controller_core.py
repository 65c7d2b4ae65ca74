"""Controller decisions stepped one tick at a time (fake clock and Ray seam, real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.core import Controller
from fastgpu.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, PermissionDenied
from fastgpu.store import open_store
from tests.unit.fakes import FakeBackend, FakeClock


@pytest.fixture
def world(tmp_path: Path) -> tuple[Controller, FakeBackend, FakeClock, str]:
    config = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=3.6)}, state_dir=str(tmp_path)
    )
    backend = FakeBackend(
        node_list=[NodeInfo("n1", "A100", 4, True), NodeInfo("n2", "A100", 4, True)]
    )
    clock = FakeClock()
    ctl = Controller(config, open_store(config.resolved_store_url()), backend, clock=clock)
    admin = new_token()
    ctl.bootstrap_admin(admin)
    return ctl, backend, clock, admin


def _tenant(ctl: Controller, admin: str, name: str, nominal: int) -> str:
    return str(ctl.create_tenant(admin, name, {"quotas": {"A100": {"nominal": nominal}}})["token"])


def test_expiry_is_exact_and_metered(world: tuple[Controller, FakeBackend, FakeClock, str]) -> None:
    ctl, backend, clock, admin = world
    tok = _tenant(ctl, admin, "acme", 4)
    lease = ctl.request_lease(tok, {"gpus": 2, "duration": "10m"})
    assert lease["state"] == "ADMITTED"
    ctl.tick()
    assert ctl.get_lease(tok, lease["id"])["state"] == "RESERVED"
    clock.advance(599)
    ctl.tick()
    assert ctl.get_lease(tok, lease["id"])["state"] == "RESERVED"
    clock.advance(1)
    ctl.tick()
    assert ctl.get_lease(tok, lease["id"])["state"] == "EXPIRED"
    assert lease["placement_group"] in backend.removed
    (row,) = ctl.usage(tok)
    assert row["gpu_seconds"] == pytest.approx(2 * 600)
    assert row["cost"] == pytest.approx(2 * 600 / 3600 * 3.6)


def test_usage_since_clips_records(world: tuple[Controller, FakeBackend, FakeClock, str]) -> None:
    ctl, _, clock, admin = world
    tok = _tenant(ctl, admin, "acme", 4)
    lease = ctl.request_lease(tok, {"gpus": 1, "duration": "1h"})
    ctl.tick()
    clock.advance(100)
    from fastgpu.timeutil import iso

    midpoint = iso(clock.now)
    clock.advance(50)
    ctl.release_lease(tok, lease["id"])
    clock.advance(1000)
    assert ctl.usage(tok)[0]["gpu_seconds"] == pytest.approx(150)
    assert ctl.usage(tok, since=midpoint)[0]["gpu_seconds"] == pytest.approx(50)


def test_crash_between_commit_and_group_creation_is_repaired(
    world: tuple[Controller, FakeBackend, FakeClock, str],
) -> None:
    ctl, backend, _, admin = world
    tok = _tenant(ctl, admin, "acme", 4)
    backend.fail_next_create = True
    with pytest.raises(RuntimeError):
        ctl.request_lease(tok, {"gpus": 2, "duration": "10m", "request_id": "r1"})
    # The lease was committed as ADMITTED; its group is missing until reconcile.
    (lease,) = ctl.list_leases(tok)
    assert lease["state"] == "ADMITTED"
    assert not backend.group_table
    # A fresh controller on the same store (the restarted actor) repairs it.
    fresh = Controller(ctl.config, ctl.store, backend, clock=ctl.clock)
    did = fresh.reconcile()
    assert did["groups_recreated"] == 1
    fresh.tick()
    again = fresh.request_lease(tok, {"gpus": 2, "duration": "10m", "request_id": "r1"})
    assert again["id"] == lease["id"]
    assert again["state"] == "RESERVED"


def test_admin_and_tenant_scoping(world: tuple[Controller, FakeBackend, FakeClock, str]) -> None:
    ctl, _, _, admin = world
    a = _tenant(ctl, admin, "alpha", 2)
    b = _tenant(ctl, admin, "beta", 2)
    lease = ctl.request_lease(a, {"gpus": 1})
    with pytest.raises(NotFound):
        ctl.get_lease(b, lease["id"])
    with pytest.raises(NotFound):
        ctl.release_lease(b, lease["id"])
    with pytest.raises(NotFound):
        ctl.usage(b, tenant="alpha")
    with pytest.raises(NotFound):
        ctl.request_lease(b, {"gpus": 1}, tenant="alpha")
    with pytest.raises(PermissionDenied):
        ctl.update_tenant(b, "alpha", {"weight": 5})
    with pytest.raises(AuthenticationError):
        ctl.list_leases("fgpu_nope")
    with pytest.raises(AuthenticationError):
        ctl.list_leases(None)
    assert [t["name"] for t in ctl.list_tenants(b)] == ["beta"]
    assert {t["name"] for t in ctl.list_tenants(admin)} == {"alpha", "beta"}
    with pytest.raises(InvalidRequest, match="name the tenant"):
        ctl.request_lease(admin, {"gpus": 1})
    assert ctl.request_lease(admin, {"gpus": 1}, tenant="beta")["tenant"] == "beta"


def test_tenant_lifecycle_and_bad_input(
    world: tuple[Controller, FakeBackend, FakeClock, str],
) -> None:
    ctl, _, _, admin = world
    for name, spec, match in (
        ("Upper", {}, "name"),
        ("admin", {}, "reserved"),
        ("ok", {"quotas": {"TPU": {"nominal": 1}}}, "TPU"),
        ("ok", {"quotas": {"A100": {"nominal": -1}}}, "nominal"),
        ("ok", {"weight": 0}, "weight"),
        ("ok", {"sparkle": 1}, "sparkle"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            ctl.create_tenant(admin, name, spec)
    assert ctl.list_tenants(admin) == []
    tok = _tenant(ctl, admin, "team", 2)
    with pytest.raises(Conflict):
        ctl.create_tenant(admin, "team", {})
    upd = ctl.update_tenant(
        admin, "team", {"quotas": {"A100": {"borrowing_limit": 2}}, "weight": 3}
    )
    assert upd["quotas"]["A100"] == {"nominal": 2, "borrowing_limit": 2, "lending_limit": None}
    with pytest.raises(InvalidRequest):
        ctl.update_tenant(admin, "team", {"weight": -1})
    assert ctl.get_tenant(admin, "team")["weight"] == 3
    lease = ctl.request_lease(tok, {"gpus": 1})
    ctl.tick()
    ctl.clock.advance(10)  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="live lease"):
        ctl.delete_tenant(admin, "team")
    ctl.release_lease(tok, lease["id"])
    new = ctl.rotate_token(admin, "team")["token"]
    with pytest.raises(AuthenticationError):
        ctl.whoami(tok)
    assert ctl.whoami(new)["tenant"] == "team"
    ctl.delete_tenant(admin, "team")
    with pytest.raises(AuthenticationError):
        ctl.whoami(new)
    # Usage history outlives the tenant, for billing.
    assert ctl.usage(admin)[0]["tenant"] == "team"


def test_create_tenant_is_idempotent_with_request_id(
    world: tuple[Controller, FakeBackend, FakeClock, str],
) -> None:
    ctl, _, _, admin = world
    first = ctl.create_tenant(admin, "idem", {}, request_id="t-1")
    second = ctl.create_tenant(admin, "idem", {}, request_id="t-1")
    assert first["token"]
    assert second["token"] is None
    assert len(ctl.list_tenants(admin)) == 1


def test_bind_hands_over_gpus_but_keeps_them_in_the_ledger(
    world: tuple[Controller, FakeBackend, FakeClock, str],
) -> None:
    ctl, backend, _, admin = world
    tok = _tenant(ctl, admin, "trainer", 16)
    lease = ctl.request_lease(tok, {"gpus": 4, "strategy": "STRICT_PACK"})
    with pytest.raises(Conflict, match="only a RESERVED lease"):
        ctl.bind_lease(tok, lease["id"], "train:x")
    ctl.tick()
    bound = ctl.bind_lease(tok, lease["id"], "train:x")
    assert bound["state"] == "BOUND"
    assert lease["placement_group"] not in backend.group_table
    # The ledger still counts those 4 GPUs: the next 4 go to the other node, then none are left.
    other = ctl.request_lease(tok, {"gpus": 4, "strategy": "STRICT_PACK"})
    assert other["state"] == "ADMITTED"
    assert set(other["nodes"]).isdisjoint(bound["nodes"])
    third = ctl.request_lease(tok, {"gpus": 1})
    assert third["reason"] == "no_capacity"
    # Reconcile leaves a bound lease alone (no group expected) and fails it if its node dies.
    assert ctl.reconcile()["groups_recreated"] == 0
    backend.node_list = [n for n in backend.node_list if n.node_id not in bound["nodes"]]
    ctl.reconcile()
    assert ctl.get_lease(tok, lease["id"])["state"] == "FAILED"


def test_bind_counts_recent_preemptions_of_the_workload(
    world: tuple[Controller, FakeBackend, FakeClock, str],
) -> None:
    """A lease bound to a workload that was preempted before carries the count (the policy
    then protects it longer); another workload, or an old preemption, does not count."""
    from fastgpu.domain.lease import LeaseState

    ctl, _, clock, admin = world
    tok = _tenant(ctl, admin, "acme", 8)

    def bound(workload: str) -> dict[str, object]:
        lease = ctl.request_lease(tok, {"gpus": 1, "duration": "10m"})
        ctl.tick()
        return ctl.bind_lease(tok, lease["id"], workload)

    first = bound("run-1")
    assert first["restarts"] == 0
    # The controller preempts it (as after a reclaim's grace period).
    with ctl._mu:
        victim = ctl.store.get_lease(str(first["id"]))
        assert victim is not None
        ctl._end(victim, LeaseState.PREEMPTED, "reclaim")
    again = bound("run-1")
    assert again["restarts"] == 1
    # ...and the policy sees it (its minimum runtime doubles).
    (view,) = [v for v in ctl.snapshot().running if v.id == again["id"]]
    assert view.restarts == 1
    assert bound("run-2")["restarts"] == 0
    clock.advance(25 * 3600)  # the preemption is more than a day old now
    assert bound("run-1")["restarts"] == 0


def test_make_policy_passes_the_scheduler_settings(tmp_path: Path) -> None:
    from fastgpu.controller.core import make_policy
    from fastgpu.scheduler import FairSharePolicy

    config = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)},
        state_dir=str(tmp_path),
        scheduler={"min_runtime_backoff": 2, "borrow_non_preemptible": True, "grace_s": 7},
    )
    policy = make_policy(config)
    assert isinstance(policy, FairSharePolicy)
    assert policy.settings.min_runtime_backoff == 2
    assert policy.settings.borrow_non_preemptible is True
    assert policy.settings.grace_s == 7
    assert policy.settings.enforce_time_limits is False  # the controller expires leases itself
