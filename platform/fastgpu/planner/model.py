"""The planner's specs (what to buy from) and its result (what was bought), as pydantic models.

Vocabulary. A *step* is one time slot of ``step_hours``; demand and purchases are constant over
a step. An *offer* is a way to buy a GPU type: ``reserved`` (a commitment of ``term_hours`` at
an hourly price, paid whether used or not), ``on_demand`` (bought per step), ``spot`` (bought per
step, cheaper, capped, and interrupted at an expected rate, so only ``1 - interruption_rate`` of
its GPU-hours do work). Purchases are counted in *nodes* of ``gpus_per_node`` GPUs. Prices are
per GPU-hour, like ``price_per_hour`` in the platform config.

Demand is in one of two units (``demand_unit``): ``gpus`` (GPUs busy per step of each type, i.e.
GPU-hours per hour) or ``flops`` (the seed's form: one aggregate series in the units of
``perf``, which every type contributes per GPU).

Every field is documented on the field, including what unset means; unknown fields are errors.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fastgpu.validation import GPU_TYPE_PATTERN, GPU_TYPE_RULE

OfferName = Literal["reserved", "on_demand", "spot"]
#: The offers in the order tables and plots show them.
OFFERS: tuple[OfferName, ...] = ("reserved", "on_demand", "spot")
DemandUnit = Literal["gpus", "flops"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReservedOffer(_Spec):
    """A commitment: the reserved node count is constant over each term window and paid for
    every hour of the window, used or not."""

    price_per_hour: float = Field(
        ge=0, le=10_000, description="Price of one reserved GPU for one hour of the term."
    )
    term_hours: float = Field(
        default=8760.0,
        gt=0,
        le=1_000_000,
        description=(
            "Length of one commitment (hours); a whole number of steps. The horizon is cut into "
            "windows of this length, each with its own reserved count; a window cut short by "
            "the end of the horizon is paid for its hours inside the horizon only."
        ),
    )
    max_nodes: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Most nodes that may be reserved. Unset: no limit beyond the type's.",
    )


class OnDemandOffer(_Spec):
    """Bought per step at a fixed hourly price."""

    price_per_hour: float = Field(ge=0, le=10_000, description="Price of one GPU for one hour.")
    max_nodes: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Most nodes available on demand in any step. Unset: no limit.",
    )


class SpotOffer(_Spec):
    """Bought per step, cheaper, capped, interrupted: ``interruption_rate`` of the GPU-hours
    bought is expected to be lost (work redone), so covering ``h`` GPU-hours of demand takes
    ``h / (1 - interruption_rate)`` GPU-hours of spot."""

    price_per_hour: float = Field(ge=0, le=10_000, description="Price of one GPU for one hour.")
    interruption_rate: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Expected fraction of spot GPU-hours lost to interruptions, in [0, 1).",
    )
    max_nodes: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Spot availability: most nodes obtainable in any step. Unset: no limit.",
    )


class GpuTypePlan(_Spec):
    """One GPU type and the offers it can be bought under (at least one)."""

    perf: float = Field(
        default=0.0,
        ge=0,
        le=1e9,
        description=(
            "Per-GPU speed on the platform config's scale. With `substitution`, a type may serve "
            "the demand of any type whose perf is at most its own (GPU-hour for GPU-hour); in the "
            "flops form each GPU contributes perf. Unset (0): unrated, serves only its own demand "
            "(and cannot be used in the flops form)."
        ),
    )
    gpus_per_node: int = Field(
        default=1, ge=1, le=1024, description="GPUs per node: the unit every offer sells."
    )
    max_nodes: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Most nodes of this type in any step, all offers together. Unset: no limit.",
    )
    reserved: ReservedOffer | None = Field(default=None, description="Unset: cannot be reserved.")
    on_demand: OnDemandOffer | None = Field(default=None, description="Unset: not sold on demand.")
    spot: SpotOffer | None = Field(default=None, description="Unset: no spot capacity.")

    @model_validator(mode="after")
    def _one_offer(self) -> GpuTypePlan:
        if self.reserved is None and self.on_demand is None and self.spot is None:
            raise ValueError("at least one offer: reserved, on_demand or spot")
        return self

    def offers(self) -> dict[OfferName, ReservedOffer | OnDemandOffer | SpotOffer]:
        """The offers this type has, in :data:`OFFERS` order."""
        found = {"reserved": self.reserved, "on_demand": self.on_demand, "spot": self.spot}
        return {name: found[name] for name in OFFERS if found[name] is not None}  # type: ignore[misc]


class PlanSpec(_Spec):
    """What may be bought, and the rules of the plan. Demand comes separately
    (:mod:`fastgpu.planner.demand`), or as ``demand`` here in the ``--demand`` grammar."""

    gpu_types: dict[str, GpuTypePlan] = Field(
        min_length=1, description="GPU types that may be bought, by name (e.g. A100, H100)."
    )
    step_hours: float = Field(
        default=1.0, gt=0, le=8760, description="Length of one step of the demand (hours)."
    )
    demand_unit: DemandUnit = Field(
        default="gpus",
        description=(
            "gpus: demand per GPU type in GPUs busy per step; flops: one aggregate series in "
            "perf units (the seed's form), served by every type through its perf."
        ),
    )
    substitution: bool = Field(
        default=True,
        description=(
            "Let a rated type serve the demand of a type with lower or equal perf, one GPU-hour "
            "for one GPU-hour (conservative: no speed-up is credited). gpus form only."
        ),
    )
    max_spot_share: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description=(
            "In every step, spot GPUs may be at most this fraction of all GPUs provisioned "
            "(all types together, GPUs bought, not usable). 1: no cap."
        ),
    )
    unmet_penalty: float | None = Field(
        default=None,
        ge=0,
        le=1e12,
        description=(
            "Price of one unit-hour of demand left unmet (a GPU-hour, or a perf-hour in the "
            "flops form). Unset: unmet demand is forbidden and a cap that cannot cover the "
            "demand is an error naming it."
        ),
    )
    integer: bool = Field(
        default=True,
        description=(
            "Whole nodes (a mixed-integer program). false: the LP relaxation (fractional nodes), "
            "faster and a lower bound on the integer cost."
        ),
    )
    mip_rel_gap: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description=(
            "Stop once the whole-node plan is proven within this fraction of the least cost. "
            "The proof is a lower bound, often looser than the plan: rounded plans are usually "
            "much closer to the optimum than the gap they are proven within (docs/planner.md)."
        ),
    )
    time_limit_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Solver time limit (s); the best plan found by then is reported as such.",
    )
    demand: str | None = Field(
        default=None,
        description=(
            "Demand in the --demand grammar (linear:a=..,b=..,T=.., csv:PATH, trace); a relative "
            "CSV path is relative to the spec file. The command line's --demand wins."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> PlanSpec:
        for name, gpu in self.gpu_types.items():
            if not re.fullmatch(GPU_TYPE_PATTERN, name):
                raise ValueError(f"GPU type names of {GPU_TYPE_RULE} (got {name!r})")
            if self.demand_unit == "flops" and gpu.perf <= 0:
                raise ValueError(
                    f"gpu_types.{name}.perf > 0: in the flops form each type serves demand "
                    "through its perf"
                )
            if gpu.reserved is not None:
                steps = gpu.reserved.term_hours / self.step_hours
                if steps < 1 or not math.isclose(steps, round(steps), rel_tol=1e-9):
                    raise ValueError(
                        f"gpu_types.{name}.reserved.term_hours a whole number of steps of "
                        f"{self.step_hours:g} h (got {gpu.reserved.term_hours:g})"
                    )
        return self

    def term_steps(self, gpu_type: str) -> int:
        reserved = self.gpu_types[gpu_type].reserved
        assert reserved is not None
        return round(reserved.term_hours / self.step_hours)


# ==== the result ================================================================================
class OfferLine(_Spec):
    """What the plan buys of one GPU type under one offer."""

    gpu_type: str = Field(description="The GPU type.")
    offer: OfferName = Field(description="reserved, on_demand or spot.")
    gpus_per_node: int = Field(description="GPUs per node of this type.")
    nodes: list[float] = Field(
        description="Nodes held in each step (reserved: its window's count in every step)."
    )
    reserved_windows: list[float] | None = Field(
        default=None, description="Reserved nodes per term window; unset for other offers."
    )
    gpu_hours: float = Field(description="GPU-hours bought (paid for) over the horizon.")
    usable_gpu_hours: float = Field(
        description="GPU-hours that do work: spot's net of interruptions, others' as bought."
    )
    cost: float = Field(description="What this line costs over the horizon.")

    @property
    def peak_nodes(self) -> float:
        return max(self.nodes, default=0.0)

    @property
    def mean_nodes(self) -> float:
        return sum(self.nodes) / len(self.nodes) if self.nodes else 0.0


class Baseline(_Spec):
    """A simple way to buy for the same demand, priced for comparison."""

    name: str = Field(description="peak, on_demand or median_rule.")
    label: str = Field(description="What the baseline buys, in words.")
    cost: float | None = Field(description="Its total cost; unset when the caps forbid it.")
    unmet: float | None = Field(
        default=None, description="Demand-hours it leaves unmet (priced demand only)."
    )
    note: str = Field(default="", description="Why it has no cost, when it has none.")


class QuotaFinding(_Spec):
    """Guaranteed quota of a GPU type that the planned reserved capacity does not cover."""

    gpu_type: str = Field(description="The GPU type.")
    guaranteed_gpus: int = Field(description="Sum of the tenants' nominal quotas of this type.")
    reserved_gpus: float = Field(
        description="Reserved GPUs of this type in the plan's leanest term window."
    )
    tenants: dict[str, int] = Field(description="Each tenant's nominal quota of this type.")
    message: str = Field(description="The finding in words, with what to change.")


class Plan(_Spec):
    """A solved plan: what to buy per step, type and offer, and what it costs."""

    status: Literal["optimal", "time_limit"] = Field(
        description=(
            "optimal: proven within mip_rel_gap of the least cost (an LP: exactly); "
            "time_limit: the best plan found by time_limit_s, mip_gap says how far it may be."
        )
    )
    method: Literal["lp", "lp_rounding", "branch_and_bound"] = Field(
        description=(
            "lp: fractional nodes; lp_rounding: the LP plan rounded to whole nodes, within "
            "mip_rel_gap of the bound; branch_and_bound: HiGHS's MILP search was needed."
        )
    )
    integer: bool = Field(description="Whole nodes (MILP) or the LP relaxation.")
    total_cost: float = Field(description="Cost of everything bought plus priced unmet demand.")
    unmet_cost: float = Field(description="The part of total_cost that prices unmet demand.")
    lower_bound: float = Field(
        description="No plan of whole nodes costs less (the LP with rounding cuts, or HiGHS's)."
    )
    mip_gap: float | None = Field(
        description="(total_cost - lower_bound) / total_cost; unset for fractional nodes."
    )
    solve_s: float = Field(description="Wall-clock seconds spent in HiGHS.")
    variables: int = Field(description="Variables of the program.")
    constraints: int = Field(description="Constraint rows of the program.")
    steps: int = Field(description="Steps in the horizon.")
    step_hours: float = Field(description="Hours per step.")
    demand_unit: DemandUnit = Field(description="gpus or flops.")
    source: str = Field(description="Where the demand came from.")
    demand: dict[str, list[float]] = Field(description="Demand per class per step.")
    perf: dict[str, float] = Field(
        description="Each type's perf (flops form: what one usable GPU of it covers)."
    )
    unmet: list[float] = Field(description="Demand left unmet per step (all classes).")
    unmet_total: float = Field(description="Demand-hours left unmet over the horizon.")
    lines: list[OfferLine] = Field(description="One line per GPU type and offer it has.")
    baselines: list[Baseline] = Field(
        default_factory=list, description="Simple buying rules priced on the same demand."
    )
    quota_findings: list[QuotaFinding] = Field(
        default_factory=list, description="Guaranteed quotas the reserved capacity misses."
    )

    @property
    def hours(self) -> float:
        return self.steps * self.step_hours

    def line(self, gpu_type: str, offer: OfferName) -> OfferLine | None:
        for line in self.lines:
            if line.gpu_type == gpu_type and line.offer == offer:
                return line
        return None

    def baseline(self, name: str) -> Baseline | None:
        return next((b for b in self.baselines if b.name == name), None)


__all__ = [
    "OFFERS",
    "Baseline",
    "DemandUnit",
    "GpuTypePlan",
    "OfferLine",
    "OfferName",
    "OnDemandOffer",
    "Plan",
    "PlanSpec",
    "QuotaFinding",
    "ReservedOffer",
    "SpotOffer",
]
