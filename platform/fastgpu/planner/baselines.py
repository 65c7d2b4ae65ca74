"""Simple buying rules priced on the same demand, to compare the plan with.

Each baseline is the planner itself run on a restricted spec, so caps, substitution, node sizes
and whole nodes count the same way for all of them:

* ``peak``: capacity for the peak held all the time: one reservation over the whole horizon,
  at the type's reserved price (its on-demand price if it has no reserved offer); nothing else.
* ``on_demand``: only on-demand capacity, bought step by step.
* ``median_rule``: reserve the median demand for the whole horizon (per type; in the flops form
  on the type with the lowest reserved price per unit of perf), buy the rest on demand.

A baseline the caps make impossible (or one that needs an offer a type lacks) has no cost and a
note saying why. Unmet demand is priced as in the spec.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastgpu.planner.demand import Demand, bind
from fastgpu.planner.errors import PlannerError
from fastgpu.planner.model import Baseline, GpuTypePlan, PlanSpec
from fastgpu.planner.solve import solve_plan

LABELS = {
    "peak": "peak provisioning: the peak reserved all the time",
    "on_demand": "all on demand",
    "median_rule": "reserve the median, the rest on demand",
}


def _respec(spec: PlanSpec, types: dict[str, dict[str, Any]]) -> PlanSpec:
    data = spec.model_dump()
    data.update(gpu_types=types, max_spot_share=1.0, demand=None)
    return PlanSpec.model_validate(data)


def _type(gpu: GpuTypePlan, **offers: Any) -> dict[str, Any]:
    return {
        "perf": gpu.perf,
        "gpus_per_node": gpu.gpus_per_node,
        "max_nodes": gpu.max_nodes,
        **offers,
    }


def _priced(name: str, spec: PlanSpec | str, demand: Demand, fixed: dict[str, int]) -> Baseline:
    if isinstance(spec, str):
        return Baseline(name=name, label=LABELS[name], cost=None, note=spec)
    try:
        plan = solve_plan(spec, demand, fixed)
    except PlannerError as exc:
        return Baseline(name=name, label=LABELS[name], cost=None, note=exc.message)
    return Baseline(name=name, label=LABELS[name], cost=plan.total_cost, unmet=plan.unmet_total)


def _peak_spec(spec: PlanSpec, hours: float) -> PlanSpec | str:
    types = {}
    for name, gpu in spec.gpu_types.items():
        held = gpu.reserved or gpu.on_demand
        if held is None:
            return f"{name} is sold only as spot, which cannot be held for the peak"
        reserved = {
            "price_per_hour": held.price_per_hour,
            "term_hours": hours,
            "max_nodes": held.max_nodes,
        }
        types[name] = _type(gpu, reserved=reserved)
    return _respec(spec, types)


def _on_demand_spec(spec: PlanSpec) -> PlanSpec | str:
    types = {}
    for name, gpu in spec.gpu_types.items():
        if gpu.on_demand is None:
            return f"{name} is not sold on demand"
        types[name] = _type(gpu, on_demand=gpu.on_demand.model_dump())
    return _respec(spec, types)


def _median_spec(spec: PlanSpec, demand: Demand, hours: float) -> tuple[PlanSpec | str, dict]:
    types: dict[str, dict[str, Any]] = {}
    for name, gpu in spec.gpu_types.items():
        offers: dict[str, Any] = {}
        if gpu.reserved is not None:
            offers["reserved"] = {**gpu.reserved.model_dump(), "term_hours": hours}
        if gpu.on_demand is not None:
            offers["on_demand"] = gpu.on_demand.model_dump()
        if not offers:
            return f"{name} is sold only as spot", {}
        types[name] = _type(gpu, **offers)
    fixed: dict[str, int] = {}
    if spec.demand_unit == "flops":
        rated = [n for n, g in spec.gpu_types.items() if g.reserved is not None]
        if rated:
            best = min(rated, key=lambda n: _per_perf(spec.gpu_types[n]))
            gpu = spec.gpu_types[best]
            median = float(np.median(demand.total()))
            fixed[best] = math.ceil(median / (gpu.perf * gpu.gpus_per_node) - 1e-9)
    else:
        for name, values in demand.series.items():
            gpu = spec.gpu_types[name]
            if gpu.reserved is not None:
                fixed[name] = math.ceil(float(np.median(values)) / gpu.gpus_per_node - 1e-9)
    for name, gpu in spec.gpu_types.items():
        if gpu.reserved is not None:
            fixed.setdefault(name, 0)
    return _respec(spec, types), fixed


def _per_perf(gpu: GpuTypePlan) -> float:
    assert gpu.reserved is not None
    return gpu.reserved.price_per_hour / gpu.perf


def baselines(spec: PlanSpec, demand: Demand) -> list[Baseline]:
    """The three baselines of the module docstring, in that order."""
    demand = bind(spec, demand)
    hours = demand.steps * spec.step_hours
    median, fixed = _median_spec(spec, demand, hours)
    return [
        _priced("peak", _peak_spec(spec, hours), demand, {}),
        _priced("on_demand", _on_demand_spec(spec), demand, {}),
        _priced("median_rule", median, demand, fixed),
    ]


__all__ = ["LABELS", "baselines"]
