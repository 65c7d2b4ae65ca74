"""The budget pass: every controller tick, each tenant with a budget is assessed by the pure
rule (:func:`fastgpu.domain.budget.assess`); new warnings and cap events are recorded, and at
the cap with ``action: stop`` the tenant's preemptible leases get their preemption announced
through the scheduler's own path (:func:`fastgpu.controller.apply.announce_preemption`, with
``scheduler.grace_s``), all in the same tick that first sees the spend at the cap.

Spend per tick, without a store read per tick: a *base* (the tenant's usage records clipped to
the period, read every ``scheduler.usage_refresh_s`` and at a period's start) plus what the
leases that hold metered GPUs now have burnt since the base was read (GPUs x price x time,
from the controller's in-memory live set). A lease that ended since the base was read is
missing from the second part until the next read: the estimate can only be low, never high,
so the pass never stops a tenant early; a tenant whose leases all run on (the case that needs
stopping) is measured exactly.

Invariants: each event is recorded at most once per tenant, period and key (the store's
unique key backs the in-memory set); a lease is announced once (an announced lease has
``preempt_at`` and the rule skips it). The pass runs with the controller's lock held.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastgpu.config import BudgetSpec
from fastgpu.controller.apply import announce_preemption
from fastgpu.controller.metering import METERED_STATES
from fastgpu.domain.budget import (
    BudgetEvent,
    EventKind,
    HeldLease,
    Spend,
    Verdict,
    assess,
    lease_key,
    warning_key,
)
from fastgpu.domain.lease import HOLDING_STATES, Lease
from fastgpu.domain.ledger import next_period
from fastgpu.domain.usage import period_start
from fastgpu.store import TenantRecord

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantBudget:
    """The last assessment of one tenant (for metrics and the admin's overview)."""

    tenant: str
    budget: BudgetSpec
    period_start: float
    period_end: float
    spend: Spend
    verdict: Verdict
    at: float


def held_leases(leases: list[Lease]) -> list[HeldLease]:
    """The rule's view of the leases that hold GPUs."""
    return [
        HeldLease(
            id=lease.id,
            gpus=lease.held_gpus,
            price_per_hour=lease.price_per_hour,
            preemptible=lease.preemptible,
            announced=lease.preempt_at is not None,
        )
        for lease in leases
        if lease.state in HOLDING_STATES
    ]


def spend_of(rows: list[tuple[float, float]]) -> Spend:
    """Sum of (gpu_seconds, cost) pairs as a :class:`Spend`."""
    return Spend(
        gpu_hours=sum(gpu_s for gpu_s, _ in rows) / 3600.0, money=sum(cost for _, cost in rows)
    )


class BudgetPass:
    """Run by :meth:`Controller.tick` (``ctl.budgets.run(now)``), lock held."""

    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl
        #: tenant id -> (period start, base spend, read at)
        self._base: dict[str, tuple[float, Spend, float]] = {}
        #: (tenant id, period start) -> event keys recorded
        self._keys: dict[tuple[str, float], set[str]] = {}
        #: tenant name -> its last assessment
        self.latest: dict[str, TenantBudget] = {}
        #: Passes run (the bench counts ticks with it).
        self.ticks = 0

    def run(self, now: float) -> None:
        self.ticks += 1
        tenants = [rec for rec in self._ctl.tenants() if rec.spec.budget is not None]
        names = {rec.name for rec in tenants}
        for gone in set(self.latest) - names:
            del self.latest[gone]
        if not tenants:
            return
        by_tenant: dict[str, list[Lease]] = {}
        for lease in self._ctl.live():
            by_tenant.setdefault(lease.tenant_id or "", []).append(lease)
        for rec in tenants:
            try:
                self._one(rec, by_tenant.get(rec.id, []), now)
            except Exception:  # one tenant's failure must not stop the loop for the rest
                log.exception("budget pass failed for tenant %s", rec.name)

    def spend(self, rec: TenantRecord, leases: list[Lease], now: float) -> Spend:
        """The tenant's spend this period as of ``now`` (see the module docstring)."""
        budget = rec.spec.budget
        assert budget is not None
        start = period_start(now, budget.period)
        base = self._base.get(rec.id)
        refresh = self._ctl.config.scheduler.usage_refresh_s
        if base is None or base[0] != start or now - base[2] >= refresh:
            rows = self._ctl.store.usage(now, tenant_id=rec.id, since=start)
            base = (start, spend_of([(r.gpu_seconds, r.cost) for r in rows]), now)
            self._base[rec.id] = base
        _, spent, read_at = base
        gpu_s = money = 0.0
        for lease in leases:
            if lease.state not in METERED_STATES or lease.reserved_at is None:
                continue
            dt = now - max(read_at, lease.reserved_at, start)
            if dt > 0:
                gpu_s += lease.held_gpus * dt
                money += lease.held_gpus * dt / 3600.0 * lease.price_per_hour
        return Spend(spent.gpu_hours + gpu_s / 3600.0, spent.money + money)

    def _recorded(self, tenant_id: str, start: float) -> set[str]:
        key = (tenant_id, start)
        if key not in self._keys:
            # Forget earlier periods of this tenant; load this one's (a restart, a new leader).
            for old in [k for k in self._keys if k[0] == tenant_id]:
                del self._keys[old]
            self._keys[key] = {ev.key for ev in self._ctl.store.budget_events(tenant_id, start)}
        return self._keys[key]

    def _one(self, rec: TenantRecord, leases: list[Lease], now: float) -> None:
        budget = rec.spec.budget
        assert budget is not None
        start = period_start(now, budget.period)
        end = next_period(start, budget.period)
        spent = self.spend(rec, leases, now)
        recorded = self._recorded(rec.id, start)
        verdict = assess(budget, spent, held_leases(leases), now, end, recorded)
        self.latest[rec.name] = TenantBudget(rec.name, budget, start, end, spent, verdict, now)
        events = self._events(rec, budget, start, spent, verdict, leases, now)
        if not events:
            return
        # Record first: a crash between the two leaves a recorded stop whose lease the next
        # tick (or the next leader) announces; never an announced stop nobody reported.
        for ev in self._ctl.store.add_budget_events(events):
            log.info("budget %s: %s", rec.name, ev.detail)
        recorded.update(ev.key for ev in events)
        by_id = {lease.id: lease for lease in leases}
        grace = self._ctl.config.scheduler.grace_s
        for lease_id in verdict.stop:
            detail = f"tenant {rec.name} reached its {budget.period} budget"
            announce_preemption(self._ctl, by_id.get(lease_id), "budget", detail, grace, now)

    def _events(
        self,
        rec: TenantRecord,
        budget: BudgetSpec,
        start: float,
        spent: Spend,
        verdict: Verdict,
        leases: list[Lease],
        now: float,
    ) -> list[BudgetEvent]:
        def event(key: str, kind: EventKind, detail: str, **kw: object) -> BudgetEvent:
            return BudgetEvent(rec.id, rec.name, start, key, kind, now, detail, **kw)  # type: ignore[arg-type]

        what = _spent_text(budget, spent)
        out = [
            event(
                warning_key(t),
                EventKind.WARNING,
                f"{t:g} % of the {budget.period} budget used ({what})",
                threshold=t,
            )
            for t in verdict.new_warnings
        ]
        if verdict.new_cap:
            then = (
                "running preemptible leases are stopped"
                if budget.action == "stop"
                else "new requests wait; running leases run on"
            )
            out.append(event("cap", EventKind.CAP, f"budget reached ({what}): {then}"))
        by_id = {lease.id: lease for lease in leases}
        grace = self._ctl.config.scheduler.grace_s
        for lease_id in verdict.stop:
            lease = by_id[lease_id]
            out.append(
                event(
                    lease_key(EventKind.STOP, lease_id),
                    EventKind.STOP,
                    f"lease {lease_id} ({lease.held_gpus} {lease.gpu_type}) preempted by the "
                    f"budget; GPUs taken back in {grace:g} s",
                    lease_id=lease_id,
                )
            )
        for lease_id in verdict.kept:
            lease = by_id[lease_id]
            out.append(
                event(
                    lease_key(EventKind.KEPT, lease_id),
                    EventKind.KEPT,
                    f"lease {lease_id} ({lease.held_gpus} {lease.gpu_type}) is not preemptible: "
                    "it runs to its end past the budget",
                    lease_id=lease_id,
                )
            )
        return out


def _spent_text(budget: BudgetSpec, spent: Spend) -> str:
    parts = []
    if budget.money is not None:
        parts.append(f"spent {spent.money:.4g} of {budget.money:g}")
    if budget.gpu_hours is not None:
        parts.append(f"{spent.gpu_hours:.4g} of {budget.gpu_hours:g} GPU-hours")
    return ", ".join(parts)
