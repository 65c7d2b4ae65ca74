"""Budget views: a tenant's budget this period (spend, limits, warnings crossed, state, the
run-out projection, events) and the admin's overview of every tenant with a budget.

Authorization: a tenant sees its own budget; the admin sees any; another tenant's name is
404 (as if it did not exist). The single-tenant view reads the store (exact to the request's
time); the overview is the controller's last assessment (at most a tick old), so a console
polling 1,000 tenants costs no store read per tenant. Decisions are the budget rule's
(:func:`fastgpu.domain.budget.assess`), never re-derived here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.config import BudgetSpec
from fastgpu.controller.budgets import TenantBudget, held_leases, spend_of
from fastgpu.domain.budget import BudgetEvent, assess
from fastgpu.domain.ledger import next_period
from fastgpu.domain.usage import period_start
from fastgpu.errors import NotFound, PermissionDenied
from fastgpu.service.budget_models import (
    Amounts,
    BudgetEventOut,
    BudgetList,
    BudgetOut,
    BudgetSummary,
    BurnRate,
    ThresholdOut,
)
from fastgpu.timeutil import iso

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


def _amounts(budget: BudgetSpec, gpu_hours: float, money: float) -> Amounts:
    return Amounts(
        gpu_hours=round(gpu_hours, 9) if budget.gpu_hours is not None else None,
        money=round(money, 9) if budget.money is not None else None,
    )


def _limits(budget: BudgetSpec) -> Amounts:
    return Amounts(gpu_hours=budget.gpu_hours, money=budget.money)


def _event_out(ev: BudgetEvent) -> BudgetEventOut:
    return BudgetEventOut(
        at=iso(ev.at) or "",
        kind=ev.kind.value,
        key=ev.key,
        threshold=ev.threshold,
        lease_id=ev.lease_id,
        detail=ev.detail,
    )


class BudgetService:
    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl

    def show(self, p: Principal, name: str) -> BudgetOut:
        """The tenant's budget now (``name``: the tenant; its own or, for the admin, any)."""
        if not p.is_admin and name != p.name:
            raise NotFound(f"tenant {name!r} not found")
        rec = self._ctl.tenant(name) or self._ctl.store.get_tenant(name)
        if rec is None:
            raise NotFound(f"tenant {name!r} not found")
        now = self._ctl.clock()
        budget = rec.spec.budget
        live = [lease for lease in self._ctl.store.live_leases() if lease.tenant_id == rec.id]
        held = held_leases(live)
        if budget is None:
            gpus = sum(h.gpus for h in held)
            money = sum(h.gpus * h.price_per_hour for h in held)
            return BudgetOut(
                tenant=name,
                state="none",
                action=None,
                period=None,
                period_start=None,
                period_end=None,
                used_pct=0.0,
                spent=Amounts(gpu_hours=None, money=None),
                limit=Amounts(gpu_hours=None, money=None),
                remaining=Amounts(gpu_hours=None, money=None),
                burn=BurnRate(gpus_held=gpus, gpu_hours_per_hour=float(gpus), money_per_hour=money),
                runs_out_at=None,
                thresholds=[],
                events=[],
                as_of=iso(now) or "",
            )
        start = period_start(now, budget.period)
        end = next_period(start, budget.period)
        rows = self._ctl.store.usage(now, tenant_id=rec.id, since=start)
        spent = spend_of([(r.gpu_seconds, r.cost) for r in rows])
        events = self._ctl.store.budget_events(rec.id, start)
        verdict = assess(budget, spent, held, now, end, {ev.key for ev in events})
        warned = {ev.threshold: ev.at for ev in events if ev.threshold is not None}
        return BudgetOut(
            tenant=name,
            state=verdict.state.value,
            action=budget.action,
            period=budget.period,
            period_start=iso(start),
            period_end=iso(end),
            used_pct=round(verdict.used_pct, 6),
            spent=_amounts(budget, spent.gpu_hours, spent.money),
            limit=_limits(budget),
            remaining=_amounts(
                budget,
                (budget.gpu_hours or 0.0) - spent.gpu_hours,
                (budget.money or 0.0) - spent.money,
            ),
            burn=BurnRate(
                gpus_held=verdict.gpus_held,
                gpu_hours_per_hour=verdict.burn.gpu_hours,
                money_per_hour=round(verdict.burn.money, 9),
            ),
            runs_out_at=iso(verdict.runs_out_at),
            thresholds=[
                ThresholdOut(
                    percent=t,
                    crossed=t in verdict.crossed,
                    crossed_at=iso(warned.get(t)),
                )
                for t in budget.warn_at
            ],
            events=[_event_out(ev) for ev in events],
            as_of=iso(now) or "",
        )

    def overview(self, p: Principal) -> BudgetList:
        """Every tenant with a budget, as the controller last assessed it (admin only)."""
        if not p.is_admin:
            raise PermissionDenied("only the admin sees every tenant's budget")
        latest = dict(self._ctl.budgets.latest)
        items = []
        for rec in sorted(self._ctl.tenants(), key=lambda r: r.name):
            budget = rec.spec.budget
            if budget is None:
                continue
            tb = latest.get(rec.name)
            if tb is None:  # not assessed yet (a new tenant, a server that does not lead)
                tb = self._assess_now(rec.name, budget, rec.id)
            items.append(_summary(tb))
        return BudgetList(items=items)

    def _assess_now(self, name: str, budget: BudgetSpec, tenant_id: str) -> TenantBudget:
        now = self._ctl.clock()
        start = period_start(now, budget.period)
        end = next_period(start, budget.period)
        rows = self._ctl.store.usage(now, tenant_id=tenant_id, since=start)
        spent = spend_of([(r.gpu_seconds, r.cost) for r in rows])
        live = [lease for lease in self._ctl.store.live_leases() if lease.tenant_id == tenant_id]
        keys = {ev.key for ev in self._ctl.store.budget_events(tenant_id, start)}
        verdict = assess(budget, spent, held_leases(live), now, end, keys)
        return TenantBudget(name, budget, start, end, spent, verdict, now)


def _summary(tb: TenantBudget) -> BudgetSummary:
    b, s, v = tb.budget, tb.spend, tb.verdict
    return BudgetSummary(
        tenant=tb.tenant,
        state=v.state.value,
        action=b.action,
        period=b.period,
        used_pct=round(v.used_pct, 6),
        spent=_amounts(b, s.gpu_hours, s.money),
        limit=_limits(b),
        runs_out_at=iso(v.runs_out_at),
        warnings=list(v.crossed),
        as_of=iso(tb.at) or "",
    )
