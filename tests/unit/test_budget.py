"""Budgets that are enforced: the pure rule (:func:`fastgpu.domain.budget.assess`), the config's
validation, and the controller's budget pass stepped on a fake Ray seam and a real SQLite
store (warnings once per period and threshold, a stop announced in the tick that sees the cap,
non-preemptible leases kept and reported), plus the budget service's views and access."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fastgpu.auth import Principal, new_token
from fastgpu.config import BudgetSpec, GpuTypeSpec, PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.domain.budget import (
    BudgetState,
    EventKind,
    HeldLease,
    Spend,
    assess,
    lease_key,
    warning_key,
)
from fastgpu.domain.lease import LeaseState
from fastgpu.errors import NotFound, PermissionDenied
from fastgpu.service import Services
from fastgpu.service.models import LeaseCreate, TenantCreate
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock

HOUR = 3600.0
END = 10 * 24 * HOUR  # a period end far after "now" (0)


def money(limit: float, action: str = "stop", warn_at: Any = (50, 80, 100)) -> BudgetSpec:
    return BudgetSpec(money=limit, action=action, warn_at=warn_at)  # type: ignore[arg-type]


def held(lease_id: str, gpus: int = 1, price: float = 1.0, **kw: Any) -> HeldLease:
    return HeldLease(id=lease_id, gpus=gpus, price_per_hour=price, preemptible=True, **kw)


# ---- the rule ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spent", "state", "crossed"),
    [
        (0.0, BudgetState.OK, ()),
        (4.99, BudgetState.OK, ()),
        (5.0, BudgetState.WARNING, (50.0,)),
        (8.5, BudgetState.WARNING, (50.0, 80.0)),
        (10.0, BudgetState.EXHAUSTED, (50.0, 80.0, 100.0)),
        (25.0, BudgetState.EXHAUSTED, (50.0, 80.0, 100.0)),
    ],
)
def test_state_and_thresholds_follow_spend(
    spent: float, state: BudgetState, crossed: tuple[float, ...]
) -> None:
    v = assess(money(10.0), Spend(money=spent), [], 0.0, END)
    assert v.state == state
    assert v.crossed == crossed
    assert v.new_warnings == crossed  # nothing recorded yet


def test_a_recorded_warning_is_not_new_again() -> None:
    recorded = {warning_key(50.0), warning_key(80.0)}
    v = assess(money(10.0), Spend(money=9.0), [], 0.0, END, recorded)
    assert v.crossed == (50.0, 80.0)
    assert v.new_warnings == ()


def test_the_larger_of_two_limits_decides() -> None:
    b = BudgetSpec(gpu_hours=100, money=10.0)
    v = assess(b, Spend(gpu_hours=90, money=1.0), [], 0.0, END)
    assert v.used_pct == pytest.approx(90.0)
    assert v.state == BudgetState.WARNING


def test_stop_at_the_cap_takes_preemptible_leases_and_reports_the_others() -> None:
    leases = [
        held("p1"),
        held("p2", announced=True),  # already announced: not twice
        HeldLease(id="n1", gpus=2, price_per_hour=1.0, preemptible=False),
    ]
    v = assess(money(10.0), Spend(money=10.0), leases, 0.0, END)
    assert v.state == BudgetState.EXHAUSTED
    assert v.new_cap
    assert v.stop == ("p1",)
    assert v.kept == ("n1",)
    again = assess(
        money(10.0), Spend(money=11.0), leases, 0.0, END, {"cap", lease_key(EventKind.KEPT, "n1")}
    )
    assert again.kept == ()
    assert not again.new_cap


def test_queue_action_never_stops_and_below_the_cap_nothing_stops() -> None:
    assert assess(money(10.0, "queue"), Spend(money=50.0), [held("p")], 0.0, END).stop == ()
    assert assess(money(10.0, "stop"), Spend(money=9.99), [held("p")], 0.0, END).stop == ()


def test_run_out_projection_at_the_burn_rate() -> None:
    # 4 GPUs x 2.5/h = 10/h; 6 left of 10 -> 0.6 h from now.
    v = assess(money(10.0), Spend(money=4.0), [held("a", gpus=4, price=2.5)], 100.0, END)
    assert v.burn == Spend(gpu_hours=4.0, money=10.0)
    assert v.runs_out_at == pytest.approx(100.0 + 0.6 * HOUR)
    # Nothing burns, or the cap is already there, or the period renews first: no projection.
    assert assess(money(10.0), Spend(money=4.0), [], 0.0, END).runs_out_at is None
    assert assess(money(10.0), Spend(money=10.0), [held("a")], 0.0, END).runs_out_at is None
    assert assess(money(1e6), Spend(), [held("a")], 0.0, END).runs_out_at is None


def test_gpu_hour_limit_projection() -> None:
    b = BudgetSpec(gpu_hours=10)
    v = assess(b, Spend(gpu_hours=8), [held("a", gpus=4)], 0.0, END)
    assert v.runs_out_at == pytest.approx(0.5 * HOUR)


# ---- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"money": 1, "warn_at": [0]}, "warn_at"),
        ({"money": 1, "warn_at": [50, 150]}, "warn_at"),
        ({"money": 1, "warn_at": [80, 80]}, "warn_at"),
        ({"money": 1, "action": "kill"}, "action"),
        ({"money": -1}, "money"),
        ({"action": "stop"}, "gpu_hours, money or both"),
    ],
)
def test_bad_budgets_name_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        BudgetSpec.model_validate(fields)


def test_thresholds_are_sorted_and_default() -> None:
    assert BudgetSpec(money=1, warn_at=(80, 50)).warn_at == (50.0, 80.0)  # type: ignore[arg-type]
    assert BudgetSpec(money=1).warn_at == (50.0, 80.0, 100.0)
    assert BudgetSpec(money=1).action == "queue"


# ---- the controller pass -------------------------------------------------------------------
class World:
    def __init__(self, tmp_path: Path, budget: dict[str, Any], grace_s: float = 30.0) -> None:
        cfg = PlatformConfig.model_validate(
            {
                "gpu_types": {"A100": GpuTypeSpec(price_per_hour=3.6)},
                "state_dir": str(tmp_path),
                "scheduler": {"grace_s": grace_s, "min_runtime_s": 0},
            }
        )
        self.clock = FakeClock()
        backend = FakeBackend(node_list=[NodeInfo("n1", "A100", 8, True)])
        store = open_store(cfg.resolved_store_url())
        self.ctl = Controller(cfg, store, backend, clock=self.clock)
        self.svc = Services.build(self.ctl)
        admin = new_token()
        self.svc.auth.bootstrap_admin(admin)
        self.admin = self.svc.auth.authenticate(admin)
        self.acme = self._tenant("acme", budget)
        self.other = self._tenant("other", None)

    def _tenant(self, name: str, budget: dict[str, Any] | None) -> Principal:
        body = TenantCreate.model_validate(
            {"name": name, "quotas": {"A100": {"nominal": 4}}, "budget": budget}
        )
        token = self.svc.tenants.create(self.admin, body).token
        assert token
        return self.svc.auth.authenticate(token)

    def lease(self, gpus: int, preemptible: bool) -> str:
        body = LeaseCreate.model_validate(
            {"gpus": gpus, "gpu_type": "A100", "duration": "10h", "preemptible": preemptible}
        )
        out = self.svc.leases.request(self.acme, body)
        self.ctl.tick()  # the fake group is ready: RESERVED
        assert self.state(out.id) == LeaseState.RESERVED
        return out.id

    def state(self, lease_id: str) -> LeaseState:
        lease = self.ctl.store.get_lease(lease_id)
        assert lease is not None
        return lease.state

    def preempt_at(self, lease_id: str) -> float | None:
        lease = self.ctl.store.get_lease(lease_id)
        assert lease is not None
        return lease.preempt_at


def test_stop_is_announced_in_the_tick_that_sees_the_cap(tmp_path: Path) -> None:
    # 3 GPUs x 3.6/h = 10.8/h burn; a budget of 1.8 lasts exactly 600 s.
    w = World(tmp_path, {"money": 1.8, "action": "stop", "warn_at": [50, 80, 100]})
    pre = w.lease(1, preemptible=True)
    keep = w.lease(2, preemptible=False)
    w.clock.advance(299)
    w.ctl.tick()
    assert w.ctl.budgets.latest["acme"].verdict.state == BudgetState.OK
    w.clock.advance(2)  # 301 s: 50 %
    w.ctl.tick()
    shown = w.svc.budgets.show(w.acme, "acme")
    assert shown.state == "warning"
    assert [t.crossed for t in shown.thresholds] == [True, False, False]
    assert shown.runs_out_at is not None
    w.clock.advance(298)  # 599 s: just under the cap
    w.ctl.tick()
    assert w.preempt_at(pre) is None
    w.clock.advance(1.0)  # 600 s: the cap
    w.ctl.tick()
    assert w.preempt_at(pre) == pytest.approx(w.clock.now + 30.0)
    assert w.preempt_at(keep) is None
    for _ in range(3):  # more ticks record nothing twice
        w.clock.advance(0.25)
        w.ctl.tick()
    kinds = [ev.kind.value for ev in w.ctl.store.budget_events(w.acme.tenant_id or "")]
    assert sorted(kinds) == sorted(["warning", "warning", "warning", "cap", "stop", "kept"])
    w.clock.advance(30)
    w.ctl.tick()
    assert w.state(pre) == LeaseState.PREEMPTED
    assert w.state(keep) == LeaseState.RESERVED
    shown = w.svc.budgets.show(w.acme, "acme")
    assert shown.state == "exhausted"
    assert (shown.remaining.money or 0.0) < 0
    assert {e.kind for e in shown.events} >= {"stop", "kept"}
    assert [e.lease_id for e in shown.events if e.kind == "kept"] == [keep]
    assert shown.burn.gpus_held == 2


def test_queue_action_warns_but_never_stops(tmp_path: Path) -> None:
    w = World(tmp_path, {"money": 0.36, "action": "queue"})
    pre = w.lease(1, preemptible=True)
    w.clock.advance(3600)
    w.ctl.tick()
    assert w.preempt_at(pre) is None
    assert w.state(pre) == LeaseState.RESERVED
    keys = {ev.key for ev in w.ctl.store.budget_events(w.acme.tenant_id or "")}
    assert keys == {"warning:50", "warning:80", "warning:100", "cap"}


def test_a_restarted_controller_does_not_warn_twice(tmp_path: Path) -> None:
    w = World(tmp_path, {"money": 0.36, "action": "queue"})
    w.lease(1, preemptible=True)
    w.clock.advance(190)  # 0.19 of 0.36: 52 %
    w.ctl.tick()
    fresh = Controller(w.ctl.config, w.ctl.store, w.ctl.backend, clock=w.clock)
    fresh.tick()
    events = w.ctl.store.budget_events(w.acme.tenant_id or "")
    assert [ev.key for ev in events] == ["warning:50"]


def test_budget_views_and_access(tmp_path: Path) -> None:
    w = World(tmp_path, {"money": 100.0, "action": "stop"})
    assert w.svc.budgets.show(w.admin, "acme").limit.money == 100.0
    assert w.svc.budgets.show(w.acme, "acme").state == "ok"
    with pytest.raises(NotFound):
        w.svc.budgets.show(w.other, "acme")  # another tenant: as if it did not exist
    with pytest.raises(NotFound):
        w.svc.budgets.show(w.admin, "nobody")
    assert w.svc.budgets.show(w.other, "other").state == "none"
    with pytest.raises(PermissionDenied):
        w.svc.budgets.overview(w.acme)
    w.ctl.tick()
    items = w.svc.budgets.overview(w.admin).items
    assert [i.tenant for i in items] == ["acme"]
    assert items[0].action == "stop"


def test_metrics_show_budget_state_and_warnings(tmp_path: Path) -> None:
    from fastgpu.metrics import PlatformMetrics

    w = World(tmp_path, {"money": 0.36, "action": "stop"})
    w.lease(1, preemptible=True)
    w.clock.advance(200)  # 55 %
    w.ctl.tick()
    text = PlatformMetrics(w.ctl).render()[0].decode()
    assert 'fastgpu_budget_state{tenant="acme"} 1.0' in text
    assert 'fastgpu_budget_warnings_total{tenant="acme",threshold="50"} 1.0' in text
