"""Errors of the cost planner, one base class; every message says what to change.

    PlannerError (fastgpu.errors.InvalidRequest)   bad planner input (CLI exit 2)
    +-- SpecError          the plan spec: GPU types, offers, caps, options
    +-- DemandError        the demand: negative or missing values, a bad CSV or linear form
    +-- InfeasibleError    no plan meets the caps; ``constraint`` names the one that binds
    +-- SolverError        HiGHS stopped without a plan (time limit, numerical trouble)

They subclass :class:`~fastgpu.errors.InvalidRequest` so every FastGPU entry point maps them to
"the caller must change what it sent". They pickle with their extra fields.
"""

from __future__ import annotations

from fastgpu.errors import InvalidRequest


class PlannerError(InvalidRequest):
    """Base class of every planner error."""

    code = "invalid_plan"


class SpecError(PlannerError):
    code = "invalid_plan_spec"


class DemandError(PlannerError):
    code = "invalid_demand"


class InfeasibleError(PlannerError):
    """No plan covers the demand within the caps; ``constraint`` is the spec field (or rule)
    that binds, e.g. ``gpu_types.A100.max_nodes`` or ``max_spot_share``."""

    code = "infeasible_plan"

    def __init__(self, message: str, constraint: str = "") -> None:
        super().__init__(message)
        self.constraint = constraint

    def __reduce__(self) -> tuple[type[InfeasibleError], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.message, self.constraint))


class SolverError(PlannerError):
    code = "solver_failed"


__all__ = ["DemandError", "InfeasibleError", "PlannerError", "SolverError", "SpecError"]
