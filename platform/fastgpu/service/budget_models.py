"""Typed results of the budget service (``GET /api/v1/tenants/{name}/budget`` and
``GET /api/v1/budgets``): one definition per shape, used by the API, the SDK's callers, the CLI
and the console. Times are ISO 8601 strings (UTC); money is in the GPU types' currency units.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BudgetStateName = Literal["none", "ok", "warning", "exhausted"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Amounts(_Out):
    """GPU-hours and money; a field is None where the budget sets no such limit."""

    gpu_hours: float | None = Field(description="GPU-hours.")
    money: float | None = Field(description="Money, in currency units.")


class BurnRate(_Out):
    """What the tenant burns now: GPUs held x their price."""

    gpus_held: int = Field(description="GPUs the tenant's leases hold now.")
    gpu_hours_per_hour: float = Field(description="GPU-hours spent per hour at this rate.")
    money_per_hour: float = Field(description="Money spent per hour at this rate.")


class ThresholdOut(_Out):
    percent: float = Field(description="Warning threshold, percent of the budget.")
    crossed: bool = Field(description="Spend reached it this period.")
    crossed_at: str | None = Field(description="When its warning was recorded (None: not yet).")


class BudgetEventOut(_Out):
    at: str = Field(description="When it was recorded.")
    kind: Literal["warning", "cap", "stop", "kept"] = Field(
        description=(
            "warning: a threshold crossed; cap: the budget reached; stop: a preemptible lease's "
            "preemption announced; kept: a non-preemptible lease runs on past the cap."
        )
    )
    key: str = Field(description="Unique per tenant and period (warning:80, cap, stop:<id>).")
    threshold: float | None = Field(description="The threshold of a warning.")
    lease_id: str | None = Field(description="The lease a stop or kept event is about.")
    detail: str = Field(description="What happened, in words.")


class BudgetOut(_Out):
    """A tenant's budget this period: spend, limits, warnings, state and projection."""

    tenant: str
    state: BudgetStateName = Field(
        description=(
            "none: no budget; ok; warning: a threshold under 100 % crossed; exhausted: the cap "
            "reached (new requests wait; with action stop, preemptible leases are stopped)."
        )
    )
    action: Literal["queue", "stop"] | None = Field(description="What the cap does.")
    period: Literal["day", "week", "month"] | None = Field(description="Budget period (UTC).")
    period_start: str | None
    period_end: str | None
    used_pct: float = Field(description="Largest spend / limit over the limits set, percent.")
    spent: Amounts = Field(description="Spent this period.")
    limit: Amounts = Field(description="The budget's limits.")
    remaining: Amounts = Field(description="Limit - spent (negative: over budget).")
    burn: BurnRate
    runs_out_at: str | None = Field(
        description=(
            "When spend reaches the first limit at the current burn rate; None when nothing "
            "burns, the cap is already reached or it would fall after the period's end."
        )
    )
    thresholds: list[ThresholdOut]
    events: list[BudgetEventOut] = Field(description="This period's budget events, oldest first.")
    as_of: str = Field(description="When this was computed.")


class BudgetSummary(_Out):
    """One line of the admin's overview (the controller's last assessment)."""

    tenant: str
    state: BudgetStateName
    action: Literal["queue", "stop"]
    period: Literal["day", "week", "month"]
    used_pct: float
    spent: Amounts
    limit: Amounts
    runs_out_at: str | None
    warnings: list[float] = Field(description="Thresholds crossed this period.")
    as_of: str


class BudgetList(_Out):
    items: list[BudgetSummary] = Field(description="Every tenant with a budget, by name.")
