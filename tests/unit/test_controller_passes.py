"""The controller's throughput mechanisms, on a fake Ray seam and a real SQLite file:

* concurrent requests *join* a scheduling pass (group commit): N requests cost fewer than N
  passes, and every request still answers with the lease as a pass that saw it left it;
* pacing: under a stream of writes the next pass waits for room (``controller.pass_share``),
  while a lone write is never held back;
* the in-memory live set: a write that fails half-way drops it, and the next pass works from
  the store's truth, not from a half-changed lease.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.domain.lease import LeaseState
from fastgpu.errors import Conflict
from fastgpu.scheduler import Decisions, Policy, Snapshot
from fastgpu.service import Services
from fastgpu.service.models import LeaseCreate, TenantCreate
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock


class SlowCountingPolicy:
    """Wraps the real policy; the first pass waits until every request was inserted."""

    def __init__(self, inner: Policy, inserted: threading.Event) -> None:
        self.inner = inner
        self.inserted = inserted
        self.passes = 0
        self.pending_seen: list[int] = []

    def schedule(self, snapshot: Snapshot) -> Decisions:
        self.passes += 1
        if self.passes == 1:
            self.inserted.wait(10)
        self.pending_seen.append(len(snapshot.pending))
        return self.inner.schedule(snapshot)


def _world(
    tmp_path: Path, policy: Any = None, **controller: Any
) -> tuple[Controller, Services, Any]:
    cfg = PlatformConfig.model_validate(
        {
            "gpu_types": {"A100": GpuTypeSpec(price_per_hour=1.0)},
            "state_dir": str(tmp_path),
            "controller": controller,
        }
    )
    backend = FakeBackend(node_list=[NodeInfo("n1", "A100", 16, True)])
    ctl = Controller(cfg, open_store(cfg.resolved_store_url()), backend, clock=FakeClock())
    if policy is not None:
        policy.inner = ctl.policy
        ctl.policy = policy
    svc = Services.build(ctl)
    admin = new_token()
    svc.auth.bootstrap_admin(admin)
    body = TenantCreate.model_validate({"name": "acme", "quotas": {"A100": {"nominal": 16}}})
    token = svc.tenants.create(svc.auth.authenticate(admin), body).token
    assert token
    return ctl, svc, svc.auth.authenticate(token)


def _stream(
    ctl: Controller, svc: Services, p: Any, inserted: threading.Event, n: int
) -> dict[int, Any]:
    """``n`` concurrent requests; ``inserted`` is set once all of them are in the store (the
    first pass waits for it). Each answers with its lease admitted."""
    store_insert = ctl.store.insert_lease
    inserts: list[int] = []

    def counting_insert(*args: Any, **kw: Any) -> Any:
        out = store_insert(*args, **kw)
        inserts.append(1)
        if len(inserts) == n:
            inserted.set()
        return out

    ctl.store.insert_lease = counting_insert  # type: ignore[method-assign]
    answers: dict[int, Any] = {}

    def request(i: int) -> None:
        answers[i] = svc.leases.request(p, LeaseCreate(gpus=1, request_id=f"s{i}"))

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers) == list(range(n))
    assert all(a.state == "ADMITTED" for a in answers.values())
    return answers


def test_concurrent_requests_share_scheduling_passes(tmp_path: Path) -> None:
    inserted = threading.Event()
    policy = SlowCountingPolicy(None, inserted)  # type: ignore[arg-type]
    ctl, svc, p = _world(tmp_path, policy)
    n = 8
    # Every request answers with its lease admitted by a pass that saw it...
    _stream(ctl, svc, p, inserted, n)
    # ...and the requests that were inserted while the first pass ran joined the next one:
    # far fewer passes than requests.
    assert policy.passes <= 3, policy.pending_seen
    assert max(policy.pending_seen) >= n - 1


def test_a_failed_write_drops_the_live_set_and_the_next_pass_uses_the_store(
    tmp_path: Path,
) -> None:
    ctl, svc, p = _world(tmp_path)
    store_transition = ctl.store.transition
    fail = {"once": True}

    def flaky_transition(lease: Any, new: LeaseState, *args: Any, **kw: Any) -> Any:
        if new == LeaseState.ADMITTED and fail["once"]:
            fail["once"] = False
            raise Conflict("simulated concurrent change")
        return store_transition(lease, new, *args, **kw)

    ctl.store.transition = flaky_transition  # type: ignore[method-assign]
    with pytest.raises(Conflict):
        svc.leases.request(p, LeaseCreate(gpus=2, request_id="x"))
    # The pass had filled in nodes and a group name before the write failed: memory may not
    # keep that half-changed lease. The store says PENDING, and so does the controller.
    assert ctl._live is None
    (stored,) = ctl.store.live_leases()
    assert stored.state == LeaseState.PENDING
    assert stored.nodes == []
    ctl.tick()
    (live,) = ctl.live()
    assert live.state == LeaseState.ADMITTED
    assert live.nodes == ["n1", "n1"]
    assert ctl.store.get_lease(live.id).state == LeaseState.ADMITTED  # type: ignore[union-attr]


def test_a_lease_released_before_any_pass_is_not_scheduled_from_memory(tmp_path: Path) -> None:
    """A request inserted, then released before a pass took it in: the pass must not find
    the stale PENDING copy and try to admit an ended lease."""
    ctl, svc, p = _world(tmp_path)
    assert ctl.live() == []  # the live set is loaded (and stays in memory from here)
    schedule = ctl.schedule
    ctl.schedule = dict  # type: ignore[method-assign]  # the insert's pass never runs
    lease = svc.leases.request(p, LeaseCreate(gpus=1, request_id="gone"))
    ctl.schedule = schedule  # type: ignore[method-assign]
    assert lease.state == "PENDING"
    assert svc.leases.release(p, lease.id).state == "CANCELLED"
    ctl.tick()  # no Conflict: the pass sees the lease as ended
    assert ctl.live() == []
    assert ctl.store.get_lease(lease.id).state == LeaseState.CANCELLED  # type: ignore[union-attr]


class TimedPolicy:
    """Wraps the real policy: records when each pass started; each pass takes ``took_s``."""

    def __init__(self, took_s: float) -> None:
        self.inner: Policy | None = None
        self.took_s = took_s
        self.started: list[float] = []
        self.go = threading.Event()

    def schedule(self, snapshot: Snapshot) -> Decisions:
        self.started.append(time.monotonic())
        if len(self.started) == 1:
            self.go.wait(10)  # the first pass runs until every request is in
        time.sleep(self.took_s)
        assert self.inner is not None
        return self.inner.schedule(snapshot)


def test_under_a_stream_of_writes_passes_leave_room_between_them(tmp_path: Path) -> None:
    policy = TimedPolicy(took_s=0.03)
    ctl, svc, p = _world(tmp_path, policy, pass_share=0.5)
    _stream(ctl, svc, p, policy.go, 6)
    # The writes that waited through the first pass joined one paced pass, which started
    # no sooner than the first pass's duration / pass_share (0.5) after the first began.
    assert len(policy.started) == 2, policy.started
    gap = policy.started[1] - policy.started[0]
    assert gap >= 2 * 0.03, gap


def test_a_slow_pass_holds_writes_back_at_most_50_ms(tmp_path: Path) -> None:
    """A pass slowed down (by Ray, say) to 0.3 s with a share of 0.1 would ask for 2.7 s of
    room: writes gather for at most 50 ms after it instead."""
    policy = TimedPolicy(took_s=0.3)
    ctl, svc, p = _world(tmp_path, policy, pass_share=0.1)
    naps: dict[int, float] = {}

    def nap(seconds: float) -> None:
        me = threading.get_ident()
        naps[me] = naps.get(me, 0.0) + seconds
        time.sleep(seconds)

    ctl.passes.nap = nap
    _stream(ctl, svc, p, policy.go, 4)
    assert naps, "the writes behind the slow pass did not wait for room"
    assert max(naps.values()) <= 0.05, naps


def test_a_lone_write_is_never_held_back(tmp_path: Path) -> None:
    policy = TimedPolicy(took_s=0.02)
    policy.go.set()
    ctl, svc, p = _world(tmp_path, policy)
    naps: list[float] = []
    ctl.passes.nap = naps.append
    first = svc.leases.request(p, LeaseCreate(gpus=1, request_id="one"))
    # Right after a 20 ms pass, a write with no company runs its pass at once...
    second = svc.leases.request(p, LeaseCreate(gpus=1, request_id="two"))
    assert first.state == second.state == "ADMITTED"
    assert naps == []
    # ...and a release, the other write that joins a pass, likewise.
    svc.leases.release(p, first.id)
    assert naps == []
    assert ctl.passes.settled()  # its pass ran
