"""Controller decisions stepped one tick at a time (fake clock and Ray seam, real SQLite file),
driven through the services the API calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fastgpu.auth import Principal, new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig, QuotaSpec
from fastgpu.controller.backend import GroupInfo, NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.controller.reconcile import reconcile
from fastgpu.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, PermissionDenied
from fastgpu.service import Services
from fastgpu.service.models import LeaseCreate, LeaseOut, TenantCreate, TenantUpdate
from fastgpu.store import open_store
from fastgpu.timeutil import iso
from fastgpu.validation import invalid_from

from .fakes import FakeBackend, FakeClock


@dataclass
class World:
    ctl: Controller
    svc: Services
    backend: FakeBackend
    clock: FakeClock
    admin: Principal
    #: Raw tokens of the tenants made by :meth:`tenant`, by tenant name.
    tokens: dict[str, str] = field(default_factory=dict)

    def tenant(self, name: str, nominal: int) -> Principal:
        created = self.svc.tenants.create(
            self.admin, TenantCreate(name=name, quotas={"A100": QuotaSpec(nominal=nominal)})
        )
        assert created.token
        self.tokens[name] = created.token
        return self.svc.auth.authenticate(created.token)

    def request(self, p: Principal, **body: Any) -> LeaseOut:
        return self.svc.leases.request(p, LeaseCreate.model_validate(body))


@pytest.fixture
def world(tmp_path: Path) -> World:
    config = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=3.6)}, state_dir=str(tmp_path)
    )
    backend = FakeBackend(
        node_list=[NodeInfo("n1", "A100", 4, True), NodeInfo("n2", "A100", 4, True)]
    )
    clock = FakeClock()
    ctl = Controller(config, open_store(config.resolved_store_url()), backend, clock=clock)
    svc = Services.build(ctl)
    admin = new_token()
    svc.auth.bootstrap_admin(admin)
    return World(ctl, svc, backend, clock, svc.auth.authenticate(admin))


def test_expiry_is_exact_and_metered(world: World) -> None:
    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=2, duration="10m")
    assert lease.state == "ADMITTED"
    w.ctl.tick()
    assert w.svc.leases.get(p, lease.id).state == "RESERVED"
    w.clock.advance(599)
    w.ctl.tick()
    assert w.svc.leases.get(p, lease.id).state == "RESERVED"
    w.clock.advance(1)
    w.ctl.tick()
    assert w.svc.leases.get(p, lease.id).state == "EXPIRED"
    assert lease.placement_group in w.backend.removed
    (row,) = w.svc.reads.usage(p).items
    assert row.gpu_seconds == pytest.approx(2 * 600)
    assert row.cost == pytest.approx(2 * 600 / 3600 * 3.6)
    # Usage keeps counting nothing once the lease ended.
    w.clock.advance(1000)
    assert w.svc.reads.usage(p).items[0].gpu_seconds == pytest.approx(2 * 600)


def test_usage_since_clips_records(world: World) -> None:
    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=1, duration="1h")
    w.ctl.tick()
    w.clock.advance(100)
    midpoint = iso(w.clock.now)
    assert midpoint is not None
    w.clock.advance(50)
    w.svc.leases.release(p, lease.id)
    w.clock.advance(1000)
    assert w.svc.reads.usage(p).items[0].gpu_seconds == pytest.approx(150)
    assert w.svc.reads.usage(p, since=midpoint).items[0].gpu_seconds == pytest.approx(50)


def test_wait_returns_at_once_when_settled(world: World) -> None:
    import asyncio

    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=1)
    w.ctl.tick()
    got = asyncio.run(w.svc.leases.wait(p, lease.id, 5.0))
    assert got.state == "RESERVED"
    other = w.tenant("other", 1)
    with pytest.raises(NotFound):
        asyncio.run(w.svc.leases.wait(other, lease.id, 0.0))


def test_a_wait_reads_a_file_store_on_the_event_loop(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll's reads (the lease's visibility, each re-read after a change) run in place
    on a file SQLite store: no worker thread per read (under load, 50 open polls made ~100
    thread hops a second compete with the writes for the GIL)."""
    import asyncio
    import threading

    import anyio.to_thread

    w = world
    assert w.ctl.store.reads_inline
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=1)
    assert lease.state == "ADMITTED"
    hops: list[str] = []

    async def no_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return fn(*args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)

    async def poll() -> LeaseOut:
        # The controller's loop reserves the group a moment after the wait started.
        threading.Timer(0.2, w.ctl.tick).start()
        return await w.svc.leases.wait(p, lease.id, 5.0)

    assert asyncio.run(poll()).state == "RESERVED"
    assert hops == []


def test_crash_between_commit_and_group_creation_is_repaired(world: World) -> None:
    w = world
    p = w.tenant("acme", 4)
    w.backend.fail_next_create = True
    with pytest.raises(RuntimeError):
        w.request(p, gpus=2, duration="10m", request_id="r1")
    # The lease was committed as ADMITTED; its group is missing until reconcile.
    (lease,) = w.svc.leases.list(p).items
    assert lease.state == "ADMITTED"
    assert not w.backend.group_table
    # A fresh controller on the same store (the restarted server) repairs it.
    fresh = Controller(w.ctl.config, w.ctl.store, w.backend, clock=w.clock)
    did = reconcile(fresh)
    assert did["groups_recreated"] == 1
    fresh.tick()
    svc = Services.build(fresh)
    again = svc.leases.request(p, LeaseCreate(gpus=2, duration="10m", request_id="r1"))
    assert again.id == lease.id
    assert again.state == "RESERVED"


def test_admin_and_tenant_scoping(world: World) -> None:
    w = world
    a = w.tenant("alpha", 2)
    b = w.tenant("beta", 2)
    lease = w.request(a, gpus=1)
    with pytest.raises(NotFound):
        w.svc.leases.get(b, lease.id)
    with pytest.raises(NotFound):
        w.svc.leases.release(b, lease.id)
    with pytest.raises(NotFound):
        w.svc.leases.bind(b, lease.id, "x")
    with pytest.raises(NotFound):
        w.svc.reads.usage(b, tenant="alpha")
    with pytest.raises(NotFound):
        w.request(b, gpus=1, tenant="alpha")
    with pytest.raises(NotFound):
        w.svc.leases.list(b, tenant="alpha")
    with pytest.raises(NotFound):
        w.svc.tenants.get(b, "alpha")
    with pytest.raises(PermissionDenied):
        w.svc.tenants.update(b, "alpha", TenantUpdate(weight=5))
    with pytest.raises(PermissionDenied):
        w.svc.tenants.create(b, TenantCreate(name="gamma"))
    with pytest.raises(PermissionDenied):
        w.svc.tenants.delete(b, "alpha")
    with pytest.raises(AuthenticationError):
        w.svc.auth.authenticate("fgpu_nope")
    with pytest.raises(AuthenticationError):
        w.svc.auth.authenticate(None)
    assert [t.name for t in w.svc.tenants.list(b).items] == ["beta"]
    assert {t.name for t in w.svc.tenants.list(w.admin).items} == {"alpha", "beta"}
    with pytest.raises(InvalidRequest, match="name the tenant"):
        w.request(w.admin, gpus=1)
    assert w.request(w.admin, gpus=1, tenant="beta").tenant == "beta"
    # The admin sees every lease; each tenant only its own.
    assert len(w.svc.leases.list(w.admin).items) == 2
    assert [x.id for x in w.svc.leases.list(a).items] == [lease.id]
    with pytest.raises(NotFound):
        w.svc.leases.get(a, "no-such-lease")


def _create(w: World, body: dict[str, Any]) -> None:
    """A create as the API makes it: the model validates first, then the service."""
    try:
        model = TenantCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_from(exc) from None
    w.svc.tenants.create(w.admin, model)


def test_tenant_lifecycle_and_bad_input(world: World) -> None:
    w = world
    for body, match in (
        ({"name": "Upper"}, "name"),
        ({"name": "admin"}, "reserved"),
        ({"name": "ok", "quotas": {"TPU": {"nominal": 1}}}, "TPU"),
        ({"name": "ok", "quotas": {"A100": {"nominal": -1}}}, "nominal"),
        ({"name": "ok", "weight": 0}, "weight"),
        ({"name": "ok", "sparkle": 1}, "sparkle"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            _create(w, body)
    assert w.svc.tenants.list(w.admin).items == []
    p = w.tenant("team", 2)
    with pytest.raises(Conflict):
        w.svc.tenants.create(w.admin, TenantCreate(name="team"))
    upd = w.svc.tenants.update(
        w.admin,
        "team",
        TenantUpdate.model_validate({"quotas": {"A100": {"borrowing_limit": 2}}, "weight": 3}),
    )
    assert upd.quotas["A100"] == QuotaSpec(nominal=2, borrowing_limit=2, lending_limit=None)
    with pytest.raises(ValidationError):
        TenantUpdate.model_validate({"weight": -1})
    with pytest.raises(InvalidRequest, match="TPU"):
        w.svc.tenants.update(
            w.admin, "team", TenantUpdate.model_validate({"quotas": {"TPU": {"nominal": 1}}})
        )
    assert w.svc.tenants.get(w.admin, "team").weight == 3
    with pytest.raises(NotFound):
        w.svc.tenants.update(w.admin, "nobody", TenantUpdate(weight=2))
    lease = w.request(p, gpus=1)
    w.ctl.tick()
    w.clock.advance(10)
    with pytest.raises(Conflict, match="live lease"):
        w.svc.tenants.delete(w.admin, "team")
    w.svc.leases.release(p, lease.id)
    new = w.svc.auth.rotate(w.admin, "team", grace=0).token
    with pytest.raises(AuthenticationError):
        w.svc.auth.authenticate(w.tokens["team"])
    assert w.svc.auth.whoami(w.svc.auth.authenticate(new)).tenant == "team"
    w.svc.tenants.delete(w.admin, "team")
    with pytest.raises(AuthenticationError):
        w.svc.auth.authenticate(new)
    with pytest.raises(NotFound):
        w.svc.tenants.get(w.admin, "team")
    # Usage history outlives the tenant, for billing.
    assert w.svc.reads.usage(w.admin).items[0].tenant == "team"


def test_create_tenant_is_idempotent_with_request_id(world: World) -> None:
    w = world
    first = w.svc.tenants.create(w.admin, TenantCreate(name="idem", request_id="t-1"))
    second = w.svc.tenants.create(w.admin, TenantCreate(name="idem", request_id="t-1"))
    assert first.token
    assert second.token is None
    assert second.id == first.id
    assert len(w.svc.tenants.list(w.admin).items) == 1
    with pytest.raises(Conflict, match="another call"):
        w.svc.tenants.create(w.admin, TenantCreate(name="other", request_id="t-1"))


def test_bind_hands_over_gpus_but_keeps_them_in_the_ledger(world: World) -> None:
    w = world
    p = w.tenant("trainer", 16)
    lease = w.request(p, gpus=4, strategy="STRICT_PACK")
    with pytest.raises(Conflict, match="only a RESERVED lease"):
        w.svc.leases.bind(p, lease.id, "train:x")
    w.ctl.tick()
    bound = w.svc.leases.bind(p, lease.id, "train:x")
    assert bound.state == "BOUND"
    assert w.backend.handed_over == [lease.placement_group]
    # Binding again is a no-op.
    assert w.svc.leases.bind(p, lease.id, "train:x").state == "BOUND"
    # The ledger still counts those 4 GPUs: the next 4 go to the other node, then none are left.
    other = w.request(p, gpus=4, strategy="STRICT_PACK")
    assert other.state == "ADMITTED"
    assert set(other.nodes).isdisjoint(bound.nodes)
    third = w.request(p, gpus=1)
    assert third.reason == "no_capacity"
    # Reconcile leaves a bound lease alone (its raylets run on) and fails it if its node dies.
    assert reconcile(w.ctl)["groups_recreated"] == 0
    w.backend.node_list = [n for n in w.backend.node_list if n.node_id not in bound.nodes]
    reconcile(w.ctl)
    assert w.svc.leases.get(p, lease.id).state == "FAILED"


def test_a_bound_lease_follows_what_the_backend_runs(world: World) -> None:
    """The pool reports a bound elastic lease's group RESCHEDULING with the GPUs that still run
    (a raylet died): reconcile shrinks the lease to them and tells the backend; a group holding
    other GPUs than the store says (a restart during a resize) is brought back to the store's."""
    w = world
    p = w.tenant("elastic", 8)
    lease = w.request(p, gpus=4, min_gpus=2, strategy="STRICT_PACK")
    w.ctl.tick()
    bound = w.svc.leases.bind(p, lease.id, "train:x")
    name = bound.placement_group
    assert name
    node = bound.nodes[0]
    w.backend.group_table[name] = GroupInfo(
        name, "g", "RESCHEDULING", "", (node,) * 3, "its raylet on h stopped (1 of 4 GPUs)"
    )
    removed = len(w.backend.removed)
    assert reconcile(w.ctl)["leases_shrunk"] == 1
    shrunk = w.svc.leases.get(p, lease.id)
    assert (shrunk.state, shrunk.held_gpus) == ("BOUND", 3)
    assert "(its raylet on h stopped (1 of 4 GPUs))" in (shrunk.reason_detail or "")
    assert w.backend.resized[-1] == (name, [node] * 3)
    assert len(w.backend.removed) == removed  # what still runs is not an orphan
    # The backend holds 4 again (say, adopted after a restart): back to the store's 3.
    w.backend.group_table[name] = GroupInfo(name, "g", "CREATED", "", (node,) * 4)
    w.backend.resized.clear()
    assert reconcile(w.ctl)["leases_shrunk"] == 0
    assert w.backend.resized == [(name, [node] * 3)]
    # Below its minimum, the lease fails instead.
    w.backend.group_table[name] = GroupInfo(name, "g", "RESCHEDULING", "", (node,), "gone")
    reconcile(w.ctl)
    assert w.svc.leases.get(p, lease.id).state == "FAILED"


def test_a_bound_lease_with_nothing_left_on_the_pool_fails(world: World) -> None:
    """The backend reports a bound lease's raylets; when it has none for it (all died while the
    server was down), the lease fails as node_lost."""
    w = world
    p = w.tenant("gone", 4)
    lease = w.request(p, gpus=2)
    w.ctl.tick()
    bound = w.svc.leases.bind(p, lease.id, "train:x")
    assert reconcile(w.ctl)["leases_failed"] == 0  # its raylets run
    del w.backend.group_table[bound.placement_group or ""]
    assert reconcile(w.ctl)["leases_failed"] == 1
    failed = w.svc.leases.get(p, lease.id)
    assert (failed.state, failed.reason) == ("FAILED", "node_lost")


def test_gpus_held_past_a_shrink_are_metered(world: World) -> None:
    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=2)
    w.ctl.tick()
    start = w.clock.now
    w.clock.advance(100)
    w.backend.held = [(lease.id, 1, start + 40, start + 50)]
    w.ctl.tick()
    w.svc.leases.release(p, lease.id)
    (row,) = w.svc.reads.usage(p).items
    assert row.gpu_seconds == pytest.approx(2 * 100 + 1 * 10)


def test_a_checkpoint_reaches_the_backend(world: World) -> None:
    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=1)
    w.ctl.tick()
    w.svc.leases.checkpoint(p, lease.id)
    assert w.backend.checkpoints == [lease.placement_group]


def test_checkpoint_needs_held_gpus(world: World) -> None:
    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=1)
    w.ctl.tick()
    assert w.svc.leases.checkpoint(p, lease.id).last_checkpoint_at == iso(w.clock.now)
    w.svc.leases.release(p, lease.id)
    with pytest.raises(Conflict, match="holds no GPUs"):
        w.svc.leases.checkpoint(p, lease.id)


def test_release_is_idempotent_and_cancels_pending(world: World) -> None:
    w = world
    p = w.tenant("acme", 8)
    held = w.request(p, gpus=8)
    w.ctl.tick()
    blocked = w.request(p, gpus=1)
    assert blocked.state == "PENDING"
    assert w.svc.leases.release(p, blocked.id).state == "CANCELLED"
    assert w.svc.leases.release(p, held.id).state == "RELEASED"
    again = w.svc.leases.release(p, held.id)
    assert again.state == "RELEASED"
    assert again.ended_at == w.svc.leases.get(p, held.id).ended_at


def test_bind_counts_recent_preemptions_of_the_workload(world: World) -> None:
    """A lease bound to a workload that was preempted before carries the count (the policy
    then protects it longer); another workload, or an old preemption, does not count."""
    from fastgpu.domain.lease import LeaseState

    w = world
    p = w.tenant("acme", 8)

    def bound(workload: str) -> LeaseOut:
        lease = w.request(p, gpus=1, duration="10m")
        w.ctl.tick()
        return w.svc.leases.bind(p, lease.id, workload)

    first = bound("run-1")
    assert first.restarts == 0
    # The controller preempts it (as after a reclaim's grace period).
    with w.ctl.lock:
        victim = w.ctl.store.get_lease(first.id)
        assert victim is not None
        w.ctl.end(victim, LeaseState.PREEMPTED, "reclaim")
    again = bound("run-1")
    assert again.restarts == 1
    # ...and the policy sees it (its minimum runtime doubles).
    (view,) = [v for v in w.ctl.snapshot().running if v.id == again.id]
    assert view.restarts == 1
    assert bound("run-2").restarts == 0
    w.clock.advance(25 * 3600)  # the preemption is more than a day old now
    assert bound("run-1").restarts == 0


def test_make_policy_passes_the_scheduler_settings(tmp_path: Path) -> None:
    from fastgpu.controller.loop import make_policy
    from fastgpu.scheduler import FairSharePolicy

    config = PlatformConfig.model_validate(
        {
            "gpu_types": {"A100": {"price_per_hour": 1.0}},
            "state_dir": str(tmp_path),
            "scheduler": {"min_runtime_backoff": 2, "borrow_non_preemptible": True, "grace_s": 7},
        }
    )
    policy = make_policy(config)
    assert isinstance(policy, FairSharePolicy)
    assert policy.settings.min_runtime_backoff == 2
    assert policy.settings.borrow_non_preemptible is True
    assert policy.settings.grace_s == 7
    assert policy.settings.enforce_time_limits is False  # the controller expires leases itself


def test_a_wait_on_a_failed_reservation_never_answers_reserved(world: World) -> None:
    """The backend's readiness resolves False (the raylet did not start): the waiter does not
    mark the lease RESERVED; it answers the lease as the controller leaves it (FAILED once the
    loop saw the failure), and never busy-loops on the done future meanwhile."""
    import asyncio
    import concurrent.futures

    w = world
    p = w.tenant("acme", 4)
    lease = w.request(p, gpus=1, duration="10m")
    assert lease.state == "ADMITTED"
    failed: concurrent.futures.Future[bool] = concurrent.futures.Future()
    failed.set_result(False)
    w.backend.ready_future = lambda name: failed  # type: ignore[attr-defined]
    out = asyncio.run(w.svc.leases.wait(p, lease.id, 0.5))
    assert out.state == "ADMITTED"  # not RESERVED: nothing holds its GPUs
    stored = w.ctl.store.get_lease(lease.id)
    assert stored is not None
    assert stored.state.value == "ADMITTED"
