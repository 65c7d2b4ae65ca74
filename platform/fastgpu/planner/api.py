"""The planner's entry points: read a spec, make a plan with its baselines and quota check.

:func:`make_plan` is what the CLI and the bench call: :func:`~fastgpu.planner.solve.solve_plan`
for the plan, :func:`~fastgpu.planner.baselines.baselines` for the simple rules, and, given a
platform config, :func:`~fastgpu.planner.quotas.check_quotas`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fastgpu.config import PlatformConfig
from fastgpu.planner.baselines import baselines
from fastgpu.planner.demand import Demand
from fastgpu.planner.errors import SpecError
from fastgpu.planner.model import Plan, PlanSpec
from fastgpu.planner.quotas import check_quotas
from fastgpu.planner.solve import solve_plan
from fastgpu.validation import describe_validation_error


def parse_spec(data: Any, source: str = "plan spec") -> PlanSpec:
    """Validate a mapping as a :class:`PlanSpec`; errors name the field and what is expected."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source} is invalid:\n{describe_validation_error(exc)}") from None


def load_spec(path: str | Path) -> PlanSpec:
    """Read a plan spec from YAML or JSON (JSON is YAML too)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(
            f"cannot read plan spec {p}: {exc.strerror}; pass a readable file"
        ) from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{p} is not valid YAML or JSON: {exc}") from None
    return parse_spec(data, str(p))


def make_plan(
    spec: PlanSpec,
    demand: Demand,
    config: PlatformConfig | None = None,
    with_baselines: bool = True,
) -> Plan:
    """The least-cost plan, priced against the baselines, its reservation checked against the
    guaranteed quotas of ``config`` when given."""
    plan = solve_plan(spec, demand)
    update: dict[str, Any] = {}
    if with_baselines:
        update["baselines"] = baselines(spec, demand)
    if config is not None:
        update["quota_findings"] = check_quotas(plan, config)
    return plan.model_copy(update=update)


__all__ = ["load_spec", "make_plan", "parse_spec"]
