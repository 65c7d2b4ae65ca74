"""The budget rule: from a tenant's spend this period, its limits and the leases it holds, what
to warn about and which leases to stop. Pure (no store, no Ray, no clock): the controller's
budget pass (:mod:`fastgpu.controller.budgets`) and the budget service both call :func:`assess`.

Vocabulary:

* *spend*: GPU-hours and money of the tenant's usage records clipped to the current budget
  period (calendar day, ISO week or month, UTC; :func:`fastgpu.domain.usage.period_start`);
* *used*: the largest of spend / limit over the limits the budget sets, in percent;
* *threshold*: a percentage in ``BudgetSpec.warn_at``; it is *crossed* when used >= it;
* *cap*: used >= 100 %; the state is then ``exhausted``, and with ``action: stop`` every held
  preemptible lease not yet announced is to be preempted, every non-preemptible one is reported
  as running on (it runs to its end: the tenant was promised it would not be preempted);
* *burn rate*: GPUs held now x their price (per hour); the *run-out time* is when the spend
  reaches the first limit at that rate, None when nothing burns, the cap is already reached,
  or it would fall after the period's end (the budget renews first).

Each event has a *key* unique per tenant and period (``warning:80``, ``cap``, ``stop:<lease>``,
``kept:<lease>``), so "once per period" is a set-membership test here and a unique index in the
store.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from fastgpu.config import BudgetSpec


class BudgetState(enum.Enum):
    OK = "ok"
    #: At least one warning threshold below 100 % crossed.
    WARNING = "warning"
    #: The cap (100 %) reached: new requests wait; with ``stop``, preemptible leases end.
    EXHAUSTED = "exhausted"


class EventKind(enum.Enum):
    WARNING = "warning"
    CAP = "cap"
    STOP = "stop"
    KEPT = "kept"


@dataclass(frozen=True)
class Spend:
    """GPU-hours and money, spent in a period or burnt per hour."""

    gpu_hours: float = 0.0
    money: float = 0.0


@dataclass(frozen=True)
class HeldLease:
    """What the rule needs of a lease that holds GPUs."""

    id: str
    gpus: int
    price_per_hour: float
    preemptible: bool
    #: Its preemption is already announced (by the budget or by the scheduler).
    announced: bool = False


@dataclass(frozen=True)
class BudgetEvent:
    """One recorded budget event (a row of the store's ``budget_events``)."""

    tenant_id: str
    tenant: str
    period_start: float
    key: str
    kind: EventKind
    at: float
    detail: str
    threshold: float | None = None
    lease_id: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What :func:`assess` decided."""

    state: BudgetState
    used_pct: float
    #: Thresholds crossed now (recorded or not), ascending.
    crossed: tuple[float, ...]
    #: Crossed thresholds not yet recorded this period: record each as a warning event.
    new_warnings: tuple[float, ...]
    #: The cap is reached and its event is not recorded yet.
    new_cap: bool
    #: Leases whose preemption to announce now (``action: stop``, cap reached).
    stop: tuple[str, ...]
    #: Non-preemptible leases running past the cap, not yet reported this period.
    kept: tuple[str, ...]
    burn: Spend
    gpus_held: int
    runs_out_at: float | None


def warning_key(threshold: float) -> str:
    return f"{EventKind.WARNING.value}:{threshold:g}"


def lease_key(kind: EventKind, lease_id: str) -> str:
    return f"{kind.value}:{lease_id}"


def used_percent(budget: BudgetSpec, spend: Spend) -> float:
    """The largest spend / limit over the limits set, in percent."""
    used = 0.0
    if budget.gpu_hours is not None:
        used = max(used, 100.0 * spend.gpu_hours / budget.gpu_hours)
    if budget.money is not None:
        used = max(used, 100.0 * spend.money / budget.money)
    return used


def run_out_at(
    budget: BudgetSpec, spend: Spend, burn: Spend, now: float, period_end: float
) -> float | None:
    """When spend reaches the first limit at the burn rate (None: never this period)."""
    hours = math.inf
    for limit, spent, rate in (
        (budget.gpu_hours, spend.gpu_hours, burn.gpu_hours),
        (budget.money, spend.money, burn.money),
    ):
        if limit is None:
            continue
        if spent >= limit:
            return None  # already there: nothing to project
        if rate > 0:
            hours = min(hours, (limit - spent) / rate)
    if math.isinf(hours):
        return None
    at = now + hours * 3600.0
    return at if at < period_end else None


def assess(
    budget: BudgetSpec,
    spend: Spend,
    held: Sequence[HeldLease],
    now: float,
    period_end: float,
    recorded: Collection[str] = (),
) -> Verdict:
    """Decide warnings and stops for one tenant; ``recorded`` is the set of event keys already
    recorded this period (so each is decided once)."""
    used = used_percent(budget, spend)
    # A float sum of records can land a hair under the limit it reached; 1e-9 % is far below
    # any real money or GPU-hour granularity.
    eps = 1e-9
    crossed = tuple(t for t in budget.warn_at if used + eps >= t)
    capped = used + eps >= 100.0
    if capped:
        state = BudgetState.EXHAUSTED
    elif any(t < 100.0 for t in crossed):
        state = BudgetState.WARNING
    else:
        state = BudgetState.OK
    stop: list[str] = []
    kept: list[str] = []
    if capped and budget.action == "stop":
        for lease in held:
            if lease.preemptible:
                if not lease.announced:
                    stop.append(lease.id)
            elif lease_key(EventKind.KEPT, lease.id) not in recorded:
                kept.append(lease.id)
    gpus = sum(lease.gpus for lease in held)
    burn = Spend(
        gpu_hours=float(gpus), money=sum(lease.gpus * lease.price_per_hour for lease in held)
    )
    return Verdict(
        state=state,
        used_pct=used,
        crossed=crossed,
        new_warnings=tuple(t for t in crossed if warning_key(t) not in recorded),
        new_cap=capped and EventKind.CAP.value not in recorded,
        stop=tuple(stop),
        kept=tuple(kept),
        burn=burn,
        gpus_held=gpus,
        runs_out_at=run_out_at(budget, spend, burn, now, period_end),
    )
