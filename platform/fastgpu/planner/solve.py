"""Solve the planner's program (:mod:`fastgpu.planner.program`) with HiGHS and read the plan.

Pipeline of :func:`solve_plan`:

1. bind the demand to the spec and check the caps against it (an error naming the cap);
2. fractional nodes (``integer: false``): solve the LP and stop (method ``lp``). Every LP
   here is solved block by block (:mod:`fastgpu.planner.blocks`);
3. whole nodes: solve the LP relaxation with the rounding cuts (its value is a lower bound on
   every integer plan); round its reserved counts to whole nodes (up, if rounding to the
   nearest leaves the caps unable to cover) and its per-step purchases around them
   (:mod:`fastgpu.planner.rounding`); if that is not within ``mip_rel_gap`` of the bound, solve
   the LP again with those reserved counts fixed and round that. Within the gap: done (method
   ``lp_rounding``);
4. otherwise HiGHS's branch and bound for the time left (method ``branch_and_bound``); the
   better of its plan and the rounded one is reported with the best bound known.

HiGHS infeasibility left after step 1 can only come from the spot share, and is reported so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fastgpu.planner.blocks import Block, solve_lp, split
from fastgpu.planner.demand import Demand, bind
from fastgpu.planner.errors import InfeasibleError, SolverError
from fastgpu.planner.model import OFFERS, OfferLine, Plan, PlanSpec
from fastgpu.planner.program import Program, build, check_caps, highs
from fastgpu.planner.rounding import round_plan


def solve_plan(
    spec: PlanSpec, demand: Demand, fixed_reserved: Mapping[str, int] | None = None
) -> Plan:
    """The least-cost plan for ``demand`` under ``spec`` (see the module docstring).
    ``fixed_reserved`` pins the reserved nodes of some types in every window (baselines)."""
    demand = bind(spec, demand)
    check_caps(spec, demand, fixed_reserved)
    started = time.perf_counter()
    deadline = started + spec.time_limit_s
    prog = build(spec, demand, fixed_reserved, integer=spec.integer, cuts=spec.integer)
    blocks = split(prog, fixed_reserved)
    lp = solve_lp(blocks, prog, deadline)
    if lp.status == 2:
        raise _infeasible(spec)
    if lp.x is None:
        raise SolverError(
            f"HiGHS stopped without a plan ({lp.message}); raise time_limit_s (now "
            f"{spec.time_limit_s:g} s) or use longer steps"
        )
    if not spec.integer:
        x = np.maximum(lp.x, 0.0)
        return _extract(prog, x, "lp", lp.fun, time.perf_counter() - started, True)

    bound = lp.fun
    best, best_cost = None, np.inf
    for found in _roundings(prog, blocks, lp.x, deadline):
        if float(prog.cost @ found) < best_cost:
            best, best_cost = found, float(prog.cost @ found)
        if _gap(best_cost, bound) <= spec.mip_rel_gap:
            elapsed = time.perf_counter() - started
            return _extract(prog, best, "lp_rounding", bound, elapsed, True)

    left = deadline - time.perf_counter()
    res = highs(prog, True, left) if left > 0 else None
    optimal = False
    if res is not None and res.status == 2:
        raise _infeasible(spec)
    if res is not None and res.x is not None and res.status in (0, 1):
        x = _whole(prog, np.asarray(res.x, dtype=float))
        if float(prog.cost @ x) < best_cost - 1e-9:
            best, best_cost = x, float(prog.cost @ x)
        optimal = res.status == 0
        if res.mip_dual_bound is not None and np.isfinite(res.mip_dual_bound):
            bound = max(bound, float(res.mip_dual_bound))
    if best is None:
        message = res.message if res is not None else "no time left"
        raise SolverError(
            f"HiGHS stopped without a whole-node plan ({message}); raise time_limit_s (now "
            f"{spec.time_limit_s:g} s), set integer: false, or use longer steps"
        )
    optimal = optimal or _gap(best_cost, bound) <= spec.mip_rel_gap
    elapsed = time.perf_counter() - started
    return _extract(prog, best, "branch_and_bound", bound, elapsed, optimal)


def _gap(cost: float, bound: float) -> float:
    return max(0.0, cost - bound) / max(abs(cost), 1e-9)


def _whole(prog: Program, x: np.ndarray) -> np.ndarray:
    integ = prog.integrality.astype(bool)
    x = x.copy()
    x[integ] = np.round(x[integ]) + 0.0  # + 0.0: no -0.0 in reports
    x[~integ] = np.maximum(x[~integ], 0.0)
    return x


def _roundings(
    prog: Program, blocks: list[Block], x_lp: np.ndarray, deadline: float
) -> Iterator[np.ndarray]:
    """Step 3 of the pipeline: whole-node plans near the LP's, cheapest to make first. The
    LP's reserved counts rounded to the nearest (then up, if the caps cannot make up the
    rest) with its per-step purchases rounded around them; then the same after the LP is
    solved again with those reserved counts fixed (slower, sometimes a little cheaper)."""
    windows = [tc.reserved_windows for tc in prog.cols.values()]
    cols = np.concatenate([w for w in windows if w is not None] or [np.zeros(0, dtype=int)])
    if not cols.size:
        found = round_plan(prog, x_lp)
        if found is not None:
            yield found
        return
    upper = prog.upper[cols]
    wholes = [np.minimum(w, upper) for w in (np.round(x_lp[cols]), np.ceil(x_lp[cols] - 1e-6))]
    for whole in wholes:
        x = x_lp.copy()
        x[cols] = whole
        found = round_plan(prog, x)
        if found is not None:
            yield found
            break
    for whole in wholes:
        if deadline <= time.perf_counter():
            return
        fixed = np.full(prog.n_vars, np.nan)
        fixed[cols] = whole
        lp = solve_lp(blocks, prog, deadline, fixed)
        if lp.x is not None:
            found = round_plan(prog, lp.x)
            if found is not None:
                yield found
                return


def _infeasible(spec: PlanSpec) -> InfeasibleError:
    if spec.max_spot_share < 1.0:
        return InfeasibleError(
            f"no plan covers the demand with spot at most {spec.max_spot_share:g} of the GPUs "
            "in every step: the reserved and on-demand caps leave too little room beside it; "
            "raise max_spot_share or the max_nodes of the reserved or on-demand offers",
            constraint="max_spot_share",
        )
    return InfeasibleError(
        "no plan meets the caps together; raise the max_nodes caps or set unmet_penalty",
        constraint="max_nodes",
    )


def _extract(
    prog: Program, x: Any, method: str, bound: float, solve_s: float, optimal: bool
) -> Plan:
    spec, demand = prog.spec, prog.demand
    c = prog.cost
    n, h = demand.steps, spec.step_hours
    lines = []
    for name, gpu in spec.gpu_types.items():
        tc, g = prog.cols[name], gpu.gpus_per_node
        for offer in OFFERS:
            col = {"reserved": tc.reserved, "on_demand": tc.on_demand, "spot": tc.spot}[offer]
            if col is None:
                continue
            nodes = x[col]
            windows = None
            if offer == "reserved" and tc.reserved_windows is not None:
                windows = [float(v) for v in x[tc.reserved_windows]]
                cost = float(c[tc.reserved_windows] @ x[tc.reserved_windows])
            else:
                cost = float(c[col] @ x[col])
            bought = float(nodes.sum()) * g * h
            usable = bought
            if offer == "spot" and gpu.spot is not None:
                usable = bought * (1.0 - gpu.spot.interruption_rate)
            lines.append(
                OfferLine(
                    gpu_type=name,
                    offer=offer,
                    gpus_per_node=g,
                    nodes=[float(v) for v in nodes],
                    reserved_windows=windows,
                    gpu_hours=bought,
                    usable_gpu_hours=usable,
                    cost=cost,
                )
            )
    left = np.zeros(n)
    for col in prog.unmet.values():
        left += x[col]
    total = float(c @ x)
    return Plan(
        status="optimal" if optimal else "time_limit",
        method=method,  # type: ignore[arg-type]
        integer=spec.integer,
        total_cost=total,
        unmet_cost=float(sum(c[col] @ x[col] for col in prog.unmet.values())),
        lower_bound=bound,
        mip_gap=_gap(total, bound) if spec.integer else None,
        solve_s=solve_s,
        variables=prog.n_vars,
        constraints=prog.n_rows,
        steps=n,
        step_hours=h,
        demand_unit=spec.demand_unit,
        source=demand.source,
        demand={k: [float(v) for v in s] for k, s in demand.series.items()},
        perf={name: gpu.perf for name, gpu in spec.gpu_types.items()},
        unmet=[float(v) for v in left],
        unmet_total=float(left.sum()) * h,
        lines=lines,
    )


__all__ = ["solve_plan"]
