"""The cost planner at scale, and on the Philly trace's demand against simple buying rules.

1. A year of hourly steps (8,760) x 3 GPU types x 3 offers (reserved for a month, on demand,
   spot with interruptions, a spot cap and a 30 % spot share; a faster type may serve a slower
   one): solve time and cost of the LP relaxation, of whole nodes by the default pipeline (LP
   with rounding cuts, rounded; proven within 2 %), of branch and bound pushed for 0.1 %, and of
   HiGHS's MILP alone for the same time. Goal: < 10 s on one core. The same year without the
   share cap and substitution separates by type and window, so its exact optimum is found by
   enumeration: the rounded plan is compared with it.
2. Philly (docs/examples/plan-philly.yaml; demand = GPUs running per hour with unlimited
   capacity): the plan against peak provisioning (goal: at least 30 % lower, no unmet
   GPU-hours), all on demand, and reserving the median with the rest on demand.

Pinned to one core unless --all-cores.

    .venv/bin/python bench/bench_planner.py [--quick] [--bb-time 60] [--all-cores]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from fastgpu.planner import Plan, PlanSpec, load_spec, make_demand, make_plan, parse_spec
from fastgpu.planner.demand import Demand, bind, from_jobs
from fastgpu.planner.program import build
from fastgpu.planner.solve import solve_plan
from fastgpu.sim.trace import load_trace

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
HOURS = 8760
#: name: (perf, on-demand price per GPU-hour, mean GPUs busy, daily swing)
TYPES = {
    "A10G": (125.0, 1.0, 60.0, 25.0),
    "A100": (312.0, 3.0, 120.0, 50.0),
    "H100": (989.0, 6.0, 40.0, 20.0),
}


def year_demand(seed: int = 0) -> Demand:
    """Hourly GPUs busy per type: 10 % growth over the year, daily and weekly cycles, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(HOURS)
    series = {}
    for name, (_, _, base, swing) in TYPES.items():
        d = base * (1 + 0.1 * t / HOURS) + swing * np.sin(2 * np.pi * t / 24)
        d += 0.3 * swing * np.sin(2 * np.pi * t / 168) + rng.normal(0, 0.1 * swing, HOURS)
        series[name] = np.maximum(d, 0.0)
    return make_demand(series, "synthetic year")


def year_spec(**options: Any) -> PlanSpec:
    types = {}
    for name, (perf, price, _, _) in TYPES.items():
        types[name] = {
            "perf": perf,
            "gpus_per_node": 8,
            "reserved": {"price_per_hour": 0.6 * price, "term_hours": 730},
            "on_demand": {"price_per_hour": price},
            "spot": {"price_per_hour": 0.35 * price, "interruption_rate": 0.1, "max_nodes": 4},
        }
    return parse_spec({"gpu_types": types, "max_spot_share": 0.3, **options})


def highs_alone(spec: PlanSpec, demand: Demand, seconds: float) -> tuple[float, float, float]:
    """HiGHS's MILP on the same program (cuts included), no rounding first: cost, gap, s."""
    prog = build(spec, bind(spec, demand), integer=True, cuts=True)
    t0 = time.perf_counter()
    res = milp(
        prog.cost,
        constraints=[
            LinearConstraint(
                prog.matrix(), np.concatenate(prog.row_lb), np.concatenate(prog.row_ub)
            )
        ],
        integrality=prog.integrality,
        bounds=Bounds(prog.lower, prog.upper),
        options={"time_limit": seconds, "mip_rel_gap": 1e-3},
    )
    cost = float(res.fun) if res.x is not None else float("nan")
    return cost, float(res.mip_gap or float("nan")), time.perf_counter() - t0


def exact_separable(demand: Demand) -> float:
    """Least cost of the year without share cap and substitution: each type and month apart,
    every reserved count tried, each hour's spot and on-demand nodes enumerated."""
    total = 0.0
    spot_cap, g, q = 4, 8.0, 0.1
    for name, (_, price, _, _) in TYPES.items():
        d = np.asarray(demand.series[name])
        for w in range(0, HOURS, 730):
            window = d[w : w + 730]
            spots = np.arange(spot_cap + 1)
            best = np.inf
            for reserved in range(int(window.max() // g) + 2):
                short = np.maximum(0.0, window[:, None] - g * reserved - g * (1 - q) * spots)
                on_demand = np.ceil(short / g - 1e-9)
                hourly = (price * g * on_demand + 0.35 * price * g * spots).min(axis=1)
                best = min(best, hourly.sum() + 0.6 * price * g * reserved * len(window))
            total += best
    return total


def _timed(spec: PlanSpec, demand: Demand) -> tuple[Plan, float, float]:
    """The plan, wall seconds and CPU seconds of the process (all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    plan = solve_plan(spec, demand)
    return plan, time.perf_counter() - wall, time.process_time() - cpu


def _row(label: str, method: str, cost: float, gap: float | None, wall: float, cpu: float) -> str:
    gap_s = "" if gap is None or np.isnan(gap) else f"{gap:.2%}"
    return f"| {label} | {method} | {wall:.1f} | {cpu:.1f} | {cost:,.0f} | {gap_s} |"


def year(bb_time: float) -> None:
    demand = year_demand()
    print(f"\n## A year hourly: {HOURS:,} steps x {len(TYPES)} types x 3 offers\n")
    print("| run | method | wall (s) | CPU (s) | cost | proven gap |")
    print("|---|---|---:|---:|---:|---:|")
    lp, wall, cpu = _timed(year_spec(integer=False), demand)
    print(_row("LP relaxation (fractional nodes)", lp.method, lp.total_cost, None, wall, cpu))
    plan, wall, cpu = _timed(year_spec(), demand)
    label = "whole nodes, default (gap 2 %)"
    print(_row(label, plan.method, plan.total_cost, plan.mip_gap, wall, cpu))
    strict, wall, cpu = _timed(year_spec(mip_rel_gap=1e-3, time_limit_s=bb_time), demand)
    label = f"whole nodes, gap 0.1 %, limit {bb_time:g} s"
    print(_row(label, strict.method, strict.total_cost, strict.mip_gap, wall, cpu))
    cpu0 = time.process_time()
    cost, gap, wall = highs_alone(year_spec(), demand, bb_time)
    label = f"HiGHS MILP alone, limit {bb_time:g} s"
    print(_row(label, "HiGHS MILP", cost, gap, wall, time.process_time() - cpu0))
    print(
        f"\n{plan.variables:,} variables, {plan.constraints:,} rows; whole nodes cost "
        f"{plan.total_cost / lp.total_cost:.3f}x the LP relaxation."
    )
    flat = year_spec(max_spot_share=1.0, substitution=False)
    sep, wall, _ = _timed(flat, demand)
    exact = exact_separable(demand)
    print(
        "\nWithout share cap and substitution (exact optimum by enumeration): rounded plan "
        f"{sep.total_cost:,.0f} in {wall:.1f} s, exact {exact:,.0f}: "
        f"{sep.total_cost / exact - 1:+.4%} (proven gap {sep.mip_gap:.2%})."
    )


def philly() -> None:
    spec = load_spec(EXAMPLES / "plan-philly.yaml")
    t0 = time.perf_counter()
    trace = load_trace()
    demand = from_jobs(trace.jobs, trace.end, spec.step_hours, "V100", "Philly")
    load_s = time.perf_counter() - t0
    plan = make_plan(spec, demand)
    no_spot = make_plan(
        parse_spec(
            {
                **spec.model_dump(),
                "gpu_types": {"V100": {**spec.gpu_types["V100"].model_dump(), "spot": None}},
            }
        ),
        demand,
        with_baselines=False,
    )
    d = np.asarray(demand.series["V100"])
    print(
        f"\n## Philly: {len(trace.jobs):,} jobs, {demand.steps:,} hours; GPUs busy mean "
        f"{d.mean():.0f}, median {np.median(d):.0f}, peak {d.max():.0f} (trace read in "
        f"{load_s:.1f} s)\n"
    )
    peak = plan.baseline("peak")
    assert peak is not None
    assert peak.cost
    print("| plan | cost | vs peak provisioning | planner saves | unmet GPU-hours | solve (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [
        ("planner (reserved + on demand + spot)", plan.total_cost, plan.unmet_total, plan.solve_s),
        ("planner without spot", no_spot.total_cost, no_spot.unmet_total, no_spot.solve_s),
    ]
    rows += [(b.label, b.cost or float("nan"), b.unmet or 0.0, None) for b in plan.baselines]
    for label, cost, unmet, secs in rows:
        saves = "" if label.startswith("planner") else f"{1 - plan.total_cost / cost:.1%}"
        solve = "" if secs is None else f"{secs:.2f}"
        print(
            f"| {label} | {cost:,.0f} | {cost / peak.cost:.3f} | {saves} | {unmet:,.0f} | {solve} |"
        )
    for line in plan.lines:
        windows = f", per month {line.reserved_windows}" if line.reserved_windows else ""
        print(
            f"\n{line.offer}: mean {line.mean_nodes:.1f} nodes, peak {line.peak_nodes:.0f}"
            f"{windows}; {line.cost / plan.total_cost:.0%} of the cost",
            end="",
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="Branch and bound for 10 s, not 60.")
    ap.add_argument("--bb-time", type=float, default=None, help="Branch-and-bound seconds.")
    ap.add_argument("--all-cores", action="store_true", help="Do not pin to one core.")
    args = ap.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    bb_time = args.bb_time if args.bb_time is not None else (10.0 if args.quick else 60.0)
    philly()
    year(bb_time)


if __name__ == "__main__":
    main()
