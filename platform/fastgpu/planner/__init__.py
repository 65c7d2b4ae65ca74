"""Cost planner: how many GPUs of each type to reserve, and how much to leave to on-demand or
spot capacity, step by step, so that a demand is met at the least cost.

A mixed-integer program solved with HiGHS (``scipy.optimize.milp``); pure, no Ray. Modules:
:mod:`model` (specs and the plan, pydantic), :mod:`demand` (linear, CSV and trace demand),
:mod:`program` (the sparse program), :mod:`rounding` (whole nodes from the LP),
:mod:`solve` (the pipeline), :mod:`baselines` (peak provisioning, all on demand, the median
rule), :mod:`quotas` (guaranteed quotas against the reservation), :mod:`report` (tables, JSON,
PNG), :mod:`api` (entry points), :mod:`errors`. The maths: docs/planner.md.
"""

from fastgpu.planner.api import load_spec, make_plan, parse_spec
from fastgpu.planner.baselines import baselines
from fastgpu.planner.demand import Demand, from_csv, from_jobs, linear, make_demand, parse_demand
from fastgpu.planner.errors import (
    DemandError,
    InfeasibleError,
    PlannerError,
    SolverError,
    SpecError,
)
from fastgpu.planner.model import (
    OFFERS,
    Baseline,
    GpuTypePlan,
    OfferLine,
    OnDemandOffer,
    Plan,
    PlanSpec,
    QuotaFinding,
    ReservedOffer,
    SpotOffer,
)
from fastgpu.planner.quotas import check_quotas
from fastgpu.planner.solve import solve_plan

__all__ = [
    "OFFERS",
    "Baseline",
    "Demand",
    "DemandError",
    "GpuTypePlan",
    "InfeasibleError",
    "OfferLine",
    "OnDemandOffer",
    "Plan",
    "PlanSpec",
    "PlannerError",
    "QuotaFinding",
    "ReservedOffer",
    "SolverError",
    "SpecError",
    "SpotOffer",
    "baselines",
    "check_quotas",
    "from_csv",
    "from_jobs",
    "linear",
    "load_spec",
    "make_demand",
    "make_plan",
    "parse_demand",
    "parse_spec",
    "solve_plan",
]
