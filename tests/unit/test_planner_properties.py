"""Properties of the cost planner on random small cases (hypothesis), solved to proven
optimality: more demand never costs less, the plan never costs more than buying everything on
demand, the demand is always covered, and the LP relaxation is a lower bound. With caps and
priced unmet demand, the default (rounded, 2 % gap) plan covers what it does not price as unmet
and costs at most the proven gap above the optimum."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgpu.planner import Demand, Plan, PlanSpec, baselines, make_demand, parse_spec, solve_plan

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRICE = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0])


@st.composite
def gpu_types(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "perf": draw(st.sampled_from([1.0, 2.0, 3.0])),
        "gpus_per_node": draw(st.sampled_from([1, 2, 4])),
        # Always on demand without a cap: every case is feasible and has the baseline.
        "on_demand": {"price_per_hour": draw(PRICE)},
    }
    if draw(st.booleans()):
        out["reserved"] = {
            "price_per_hour": draw(PRICE),
            "term_hours": draw(st.sampled_from([1.0, 2.0, 4.0])),
        }
    if draw(st.booleans()):
        out["spot"] = {
            "price_per_hour": draw(PRICE),
            "interruption_rate": draw(st.sampled_from([0.0, 0.1, 0.5])),
            "max_nodes": draw(st.sampled_from([None, 0, 1, 3])),
        }
    return out


@st.composite
def cases(draw: st.DrawFn, capped: bool = False) -> tuple[PlanSpec, Demand, Demand]:
    """A spec, a demand, and the same demand plus something >= 0. ``capped``: types have node
    caps and unmet demand is priced (so every case stays feasible)."""
    names = draw(st.lists(st.sampled_from(["A", "B", "C"]), min_size=1, max_size=3, unique=True))
    types = {name: draw(gpu_types()) for name in names}
    options: dict[str, Any] = {}
    if capped:
        for gpu in types.values():
            gpu["max_nodes"] = draw(st.sampled_from([None, 0, 2, 5]))
        options["unmet_penalty"] = draw(st.sampled_from([0.5, 5.0, 50.0]))
    spec = parse_spec(
        {
            "gpu_types": types,
            "substitution": draw(st.booleans()),
            "max_spot_share": draw(st.sampled_from([1.0, 0.5, 0.25])),
            "mip_rel_gap": 0.0,
            **options,
        }
    )
    steps = draw(st.integers(1, 6))
    value = st.integers(0, 24).map(lambda v: v / 2)
    base = {n: draw(st.lists(value, min_size=steps, max_size=steps)) for n in names}
    extra = {n: draw(st.lists(value, min_size=steps, max_size=steps)) for n in names}
    more = {n: [a + b for a, b in zip(base[n], extra[n], strict=True)] for n in names}
    return spec, make_demand(base), make_demand(more)


def usable(plan: Plan, gpu_type: str) -> np.ndarray:
    total = np.zeros(plan.steps)
    for line in plan.lines:
        if line.gpu_type == gpu_type and line.gpu_hours:
            kept = line.usable_gpu_hours / line.gpu_hours
            total += np.array(line.nodes) * line.gpus_per_node * kept
    return total


def covered(spec: PlanSpec, plan: Plan) -> bool:
    """Assign supply to demand fastest first (a type serves its own or lower perf); demand
    left unmet counts as supply that fits any demand."""
    demand = {k: np.array(v) for k, v in plan.demand.items()}
    unmet = np.array(plan.unmet)
    if not spec.substitution:
        short = sum((np.maximum(d - usable(plan, k), 0.0) for k, d in demand.items()), unmet * 0)
        return bool(np.all(short <= unmet + 1e-6))
    levels = sorted({g.perf for g in spec.gpu_types.values()}, reverse=True)
    spare = unmet.copy()
    for p in levels:
        at = [n for n, g in spec.gpu_types.items() if g.perf == p]
        spare += sum((usable(plan, n) for n in at), np.zeros(plan.steps))
        spare -= sum((demand.get(n, 0.0) for n in at), np.zeros(plan.steps))
        if np.any(spare < -1e-6):
            return False
    return True


@SETTINGS
@given(cases())
def test_more_demand_never_costs_less(case: tuple[PlanSpec, Demand, Demand]) -> None:
    spec, demand, more = case
    low, high = solve_plan(spec, demand), solve_plan(spec, more)
    assert high.total_cost >= low.total_cost - 1e-6 * (1 + low.total_cost)


@SETTINGS
@given(cases())
def test_never_dearer_than_all_on_demand_and_always_covered(
    case: tuple[PlanSpec, Demand, Demand],
) -> None:
    spec, demand, _ = case
    plan = solve_plan(spec, demand)
    on_demand = next(b for b in baselines(spec, demand) if b.name == "on_demand")
    assert on_demand.cost is not None
    assert plan.total_cost <= on_demand.cost + 1e-6 * (1 + on_demand.cost)
    assert plan.unmet_total == 0.0
    assert covered(spec, plan)
    assert plan.lower_bound <= plan.total_cost + 1e-6 * (1 + plan.total_cost)


@SETTINGS
@given(cases())
def test_the_lp_relaxation_is_a_lower_bound(case: tuple[PlanSpec, Demand, Demand]) -> None:
    spec, demand, _ = case
    whole = solve_plan(spec, demand)
    relaxed = solve_plan(spec.model_copy(update={"integer": False}), demand)
    assert relaxed.total_cost <= whole.total_cost + 1e-6 * (1 + whole.total_cost)
    assert covered(spec, relaxed)


@SETTINGS
@given(cases(capped=True))
def test_rounded_plans_under_caps(case: tuple[PlanSpec, Demand, Demand]) -> None:
    spec, demand, _ = case
    exact = solve_plan(spec, demand)
    default = solve_plan(spec.model_copy(update={"mip_rel_gap": 0.02}), demand)
    for plan in (exact, default):
        assert covered(spec, plan)
    assert default.total_cost <= exact.total_cost / (1 - 0.02) + 1e-6
    assert default.total_cost >= exact.total_cost - 1e-6 * (1 + exact.total_cost)
