"""The cost planner: small optima worked out by hand, the seed's worked case, bad input."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.optimize import linprog

from fastgpu.config import parse_config
from fastgpu.planner import (
    DemandError,
    InfeasibleError,
    Plan,
    PlanSpec,
    SpecError,
    baselines,
    check_quotas,
    from_csv,
    from_jobs,
    linear,
    make_demand,
    make_plan,
    parse_demand,
    parse_spec,
    solve_plan,
)


# ==== builders ==================================================================================
def gpu(
    *,
    perf: float = 0.0,
    per_node: int = 1,
    max_nodes: int | None = None,
    reserved: float | None = None,
    term: float = 10.0,
    reserved_max: int | None = None,
    on_demand: float | None = None,
    on_demand_max: int | None = None,
    spot: float | None = None,
    interruption: float = 0.0,
    spot_max: int | None = None,
) -> dict[str, Any]:
    """One GPU type of a spec, offers by their price per GPU-hour."""
    out: dict[str, Any] = {"perf": perf, "gpus_per_node": per_node, "max_nodes": max_nodes}
    if reserved is not None:
        out["reserved"] = {
            "price_per_hour": reserved,
            "term_hours": term,
            "max_nodes": reserved_max,
        }
    if on_demand is not None:
        out["on_demand"] = {"price_per_hour": on_demand, "max_nodes": on_demand_max}
    if spot is not None:
        out["spot"] = {
            "price_per_hour": spot,
            "interruption_rate": interruption,
            "max_nodes": spot_max,
        }
    return out


def spec(types: dict[str, dict[str, Any]], **options: Any) -> PlanSpec:
    """A spec solved to proven optimality (gap 0), so hand-computed optima compare exactly."""
    return parse_spec({"gpu_types": types, "mip_rel_gap": 0.0, **options})


def nodes(plan: Plan, gpu_type: str, offer: str) -> list[float]:
    line = plan.line(gpu_type, offer)  # type: ignore[arg-type]
    assert line is not None
    return line.nodes


# ==== small optima by hand ======================================================================
def test_flat_demand_is_reserved() -> None:
    """4 GPUs for 10 h: reserved 1.0/h (40) beats on demand 2.0/h (80)."""
    plan = solve_plan(spec({"A": gpu(reserved=1.0, on_demand=2.0)}), make_demand({"A": [4] * 10}))
    assert plan.total_cost == pytest.approx(40.0)
    assert nodes(plan, "A", "reserved") == [4.0] * 10
    assert nodes(plan, "A", "on_demand") == [0.0] * 10
    assert plan.status == "optimal"
    assert plan.unmet_total == 0.0


def test_a_one_hour_spike_is_bought_on_demand() -> None:
    plan = solve_plan(
        spec({"A": gpu(reserved=1.0, on_demand=2.0)}), make_demand({"A": [0] * 9 + [1]})
    )
    assert plan.total_cost == pytest.approx(2.0)
    assert nodes(plan, "A", "on_demand")[-1] == 1.0
    assert nodes(plan, "A", "reserved") == [0.0] * 10


@pytest.mark.parametrize(("busy_hours", "reserve", "cost"), [(6, 1.0, 10.0), (4, 0.0, 8.0)])
def test_reserving_pays_above_the_price_ratio(busy_hours: int, reserve: float, cost: float) -> None:
    """Reserved at half the on-demand price pays once the GPU is busy over half the term."""
    demand = make_demand({"A": [1] * busy_hours + [0] * (10 - busy_hours)})
    plan = solve_plan(spec({"A": gpu(reserved=1.0, on_demand=2.0)}), demand)
    assert plan.total_cost == pytest.approx(cost)
    assert nodes(plan, "A", "reserved")[0] == reserve


def test_reservations_follow_their_term_windows() -> None:
    """Two 10-hour windows, busy then idle; 15 steps cut the second window to 5 paid hours."""
    demand = make_demand({"A": [4] * 10 + [2] * 5})
    plan = solve_plan(spec({"A": gpu(reserved=1.0, on_demand=3.0)}), demand)
    line = plan.line("A", "reserved")
    assert line is not None
    assert line.reserved_windows == [4.0, 2.0]
    assert plan.total_cost == pytest.approx(4 * 10 * 1.0 + 2 * 5 * 1.0)


def test_spot_until_its_cap_then_on_demand() -> None:
    """Spot at 0.4 with half its hours lost covers a GPU-hour for 0.8 < 1.0 on demand; 6 spot
    GPUs do the work of 3, on demand covers the other 7 of 10."""
    types = {"A": gpu(on_demand=1.0, spot=0.4, interruption=0.5, spot_max=6)}
    plan = solve_plan(spec(types), make_demand({"A": [10] * 5}))
    assert nodes(plan, "A", "spot") == [6.0] * 5
    assert nodes(plan, "A", "on_demand") == [7.0] * 5
    assert plan.total_cost == pytest.approx(5 * (6 * 0.4 + 7 * 1.0))
    line = plan.line("A", "spot")
    assert line is not None
    assert line.usable_gpu_hours == pytest.approx(15.0)


def test_spot_share_cap() -> None:
    """At most a quarter spot: S <= (S + O) / 4 and O + S / 2 >= 10; S = 2, O = 9 (9.8/h)
    beats S = 3, O = 9 (10.2) and S = 0, O = 10 (10.0)."""
    types = {"A": gpu(on_demand=1.0, spot=0.4, interruption=0.5)}
    plan = solve_plan(spec(types, max_spot_share=0.25), make_demand({"A": [10] * 5}))
    assert nodes(plan, "A", "spot") == [2.0] * 5
    assert nodes(plan, "A", "on_demand") == [9.0] * 5
    assert plan.total_cost == pytest.approx(5 * 9.8)


def test_whole_nodes_and_the_lp_relaxation() -> None:
    types = {"A": gpu(per_node=8, on_demand=1.0)}
    whole = solve_plan(spec(types), make_demand({"A": [9.0]}))
    assert nodes(whole, "A", "on_demand") == [2.0]
    assert whole.total_cost == pytest.approx(16.0)
    relaxed = solve_plan(spec(types, integer=False), make_demand({"A": [9.0]}))
    assert nodes(relaxed, "A", "on_demand") == [pytest.approx(9 / 8)]
    assert relaxed.method == "lp"
    assert relaxed.mip_gap is None


def test_a_faster_type_stands_in_for_a_slower_one() -> None:
    types = {"slow": gpu(perf=1, on_demand=3.0), "fast": gpu(perf=2, on_demand=2.0)}
    demand = make_demand({"slow": [5, 5]})
    plan = solve_plan(spec(types), demand)
    assert nodes(plan, "fast", "on_demand") == [5.0, 5.0]
    assert plan.total_cost == pytest.approx(20.0)
    alone = solve_plan(spec(types, substitution=False), demand)
    assert nodes(alone, "slow", "on_demand") == [5.0, 5.0]
    assert alone.total_cost == pytest.approx(30.0)


def test_a_slower_type_never_stands_in_for_a_faster_one() -> None:
    types = {"slow": gpu(perf=1, on_demand=1.0), "fast": gpu(perf=2, on_demand=2.0, max_nodes=2)}
    with pytest.raises(InfeasibleError, match=r"fast.*step 0") as err:
        solve_plan(spec(types), make_demand({"fast": [3.0]}))
    assert err.value.constraint == "gpu_types.fast.max_nodes"


def test_substitution_levels_share_the_fast_capacity() -> None:
    """fast demand 2 and slow demand 3, 4 fast GPUs at most: fast covers its own 2 and 2 of
    slow's (cheaper than slow's price), slow buys the last one."""
    types = {
        "slow": gpu(perf=1, on_demand=5.0),
        "fast": gpu(perf=2, on_demand=2.0, max_nodes=4),
    }
    plan = solve_plan(spec(types), make_demand({"slow": [3.0], "fast": [2.0]}))
    assert nodes(plan, "fast", "on_demand") == [4.0]
    assert nodes(plan, "slow", "on_demand") == [1.0]
    assert plan.total_cost == pytest.approx(4 * 2.0 + 5.0)


def test_type_cap_covers_all_offers_together() -> None:
    types = {"A": gpu(max_nodes=5, reserved=1.0, on_demand=2.0), "B": gpu(on_demand=4.0)}
    plan = solve_plan(spec(types, substitution=False), make_demand({"A": [5] * 10, "B": [1] * 10}))
    assert nodes(plan, "A", "reserved") == [5.0] * 10
    with pytest.raises(InfeasibleError) as err:
        solve_plan(spec(types, substitution=False), make_demand({"A": [6] * 10}))
    assert err.value.constraint == "gpu_types.A.max_nodes"
    assert "step 0" in err.value.message
    assert "unmet_penalty" in err.value.message


def test_unmet_demand_priced_or_forbidden() -> None:
    types = {"A": gpu(on_demand=1.0, max_nodes=3)}
    demand = make_demand({"A": [5.0, 5.0]})
    with pytest.raises(InfeasibleError, match=r"gpu_types\.A\.max_nodes"):
        solve_plan(spec(types), demand)
    dear = solve_plan(spec(types, unmet_penalty=10.0), demand)
    assert nodes(dear, "A", "on_demand") == [3.0, 3.0]
    assert dear.unmet == [2.0, 2.0]
    assert dear.unmet_total == pytest.approx(4.0)
    assert dear.unmet_cost == pytest.approx(40.0)
    assert dear.total_cost == pytest.approx(6.0 + 40.0)
    cheap = solve_plan(spec(types, unmet_penalty=0.5), demand)
    assert cheap.unmet_total == pytest.approx(10.0)
    assert cheap.total_cost == pytest.approx(5.0)


def test_spot_share_that_cannot_be_met_names_it() -> None:
    types = {"A": gpu(spot=0.5)}
    with pytest.raises(InfeasibleError) as err:
        solve_plan(spec(types, max_spot_share=0.0), make_demand({"A": [1.0]}))
    assert err.value.constraint == "max_spot_share"
    assert "raise max_spot_share" in err.value.message


def test_flops_form_counts_perf() -> None:
    """250 perf units: two of perf 100 and one of 50 (4.0) beat three of 100 (4.5), one of 100
    and three of 50 (4.5) and five of 50 (5.0)."""
    types = {"small": gpu(perf=50, on_demand=1.0), "big": gpu(perf=100, on_demand=1.5)}
    plan = solve_plan(spec(types, demand_unit="flops"), make_demand({"": [250.0]}))
    assert plan.total_cost == pytest.approx(4.0)
    assert nodes(plan, "big", "on_demand") == [2.0]
    assert nodes(plan, "small", "on_demand") == [1.0]


# ==== the seed's worked case ====================================================================
SEED = {"gpu": gpu(perf=10, max_nodes=50, on_demand=1.0)}


def test_seed_case_as_written_is_infeasible_from_t_49() -> None:
    """50 GPUs of 10 GFLOPS give 500; D(t) = 10 t + 20 passes it after t = 48."""
    with pytest.raises(InfeasibleError) as err:
        solve_plan(spec(SEED, demand_unit="flops"), linear(10, 20, 100))
    assert err.value.constraint == "gpu_types.gpu.max_nodes"
    assert "510 perf units at step 49" in err.value.message
    assert "at most 500" in err.value.message


def test_seed_case_over_its_feasible_horizon() -> None:
    """t = 0..48: x_t = t + 2 GPUs, sum 1,274 GPU-hours, the objective sum P x_t 12,740."""
    plan = solve_plan(spec(SEED, demand_unit="flops"), linear(10, 20, 48))
    x = nodes(plan, "gpu", "on_demand")
    assert x == [t + 2.0 for t in range(49)]
    assert plan.total_cost == pytest.approx(1274.0)
    assert 10 * sum(x) == pytest.approx(12_740.0)


def test_seed_case_with_unmet_demand_priced() -> None:
    """t = 0..100 with unmet priced: 50 GPUs from t = 48 on, 3,874 GPU-hours; 13,780
    GFLOPS-hours unmet of the 52,520 asked for."""
    plan = solve_plan(spec(SEED, demand_unit="flops", unmet_penalty=1000.0), linear(10, 20, 100))
    x = nodes(plan, "gpu", "on_demand")
    assert x == [min(t + 2.0, 50.0) for t in range(101)]
    assert sum(x) == pytest.approx(3874.0)
    assert plan.unmet_total == pytest.approx(13_780.0)
    assert sum(plan.demand["flops"]) == pytest.approx(52_520.0)
    assert plan.unmet[48] == 0.0
    assert plan.unmet[49] == pytest.approx(10.0)


def test_seed_case_read_literally() -> None:
    """As written (0 <= x_t <= P and sum_t x_t <= N, P x_t >= D(t)) the GPU count per step is
    capped at P = 10 and the GPU-steps of the whole horizon at N = 50: feasible to T = 7 only."""

    def feasible(horizon: int) -> bool:
        t = np.arange(horizon + 1)
        n = len(t)
        res = linprog(
            np.full(n, 10.0),
            A_ub=np.vstack([-10.0 * np.eye(n), np.ones((1, n))]),
            b_ub=np.concatenate([-(10.0 * t + 20.0), [50.0]]),
            bounds=[(0, 10)] * n,
            method="highs",
        )
        return bool(res.status == 0)

    assert feasible(7)
    assert not feasible(8)


# ==== baselines and quotas ======================================================================
def test_baselines_on_a_small_case() -> None:
    """Demand 1 GPU for 8 h then 3 for 2 h: peak 3 reserved x 10 h = 30; all on demand
    (8 + 6) x 2 = 28; median 1 reserved (10) + 2 x 2 h on demand (8) = 18 = the plan."""
    types = {"A": gpu(reserved=1.0, on_demand=2.0)}
    demand = make_demand({"A": [1] * 8 + [3] * 2})
    got = {b.name: b.cost for b in baselines(spec(types), demand)}
    assert got == {"peak": 30.0, "on_demand": 28.0, "median_rule": 18.0}
    plan = make_plan(spec(types), demand)
    assert plan.total_cost == pytest.approx(18.0)
    assert [b.name for b in plan.baselines] == ["peak", "on_demand", "median_rule"]


def test_a_baseline_the_caps_forbid_says_why() -> None:
    types = {"A": gpu(reserved=1.0, on_demand=2.0, on_demand_max=1)}
    demand = make_demand({"A": [1] * 8 + [3] * 2})
    by_name = {b.name: b for b in baselines(spec(types), demand)}
    assert by_name["on_demand"].cost is None
    assert "max_nodes" in by_name["on_demand"].note


def test_guaranteed_quotas_beyond_the_reservation_are_reported() -> None:
    config = parse_config(
        {
            "gpu_types": {"A": {"price_per_hour": 2.0}, "B": {"price_per_hour": 1.0}},
            "tenants": {
                "acme": {"quotas": {"A": {"nominal": 4}, "B": {"nominal": 1}}},
                "beta": {"quotas": {"A": {"nominal": 2}}},
            },
        }
    )
    plan = make_plan(
        spec({"A": gpu(reserved=1.0, on_demand=2.0)}),
        make_demand({"A": [4] * 10}),
        config,
        with_baselines=False,
    )
    findings = {f.gpu_type: f for f in plan.quota_findings}
    assert set(findings) == {"A", "B"}
    assert findings["A"].guaranteed_gpus == 6
    assert findings["A"].reserved_gpus == 4.0
    assert findings["A"].tenants == {"acme": 4, "beta": 2}
    assert "acme 4, beta 2" in findings["A"].message
    assert "does not buy" in findings["B"].message
    assert check_quotas(plan, parse_config({"gpu_types": {"A": {"price_per_hour": 2.0}}})) == []


# ==== demand ====================================================================================
def test_trace_demand_counts_gpu_seconds_per_step() -> None:
    class Job:
        def __init__(self, submit: float, duration: float, gpus: int) -> None:
            self.submit, self.duration, self.gpus = submit, duration, gpus

    jobs = [Job(1800.0, 3600.0, 2), Job(0.0, 600.0, 6), Job(7000.0, 99_999.0, 1)]
    demand = from_jobs(jobs, horizon_s=3 * 3600.0, step_hours=1.0, key="A")
    assert demand.series["A"] == pytest.approx([1.0 + 1.0, 1.0 + 200 / 3600, 1.0])


def test_csv_demand(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("hour,A100,H100\n0,1.5,2\n1,3,0\n")
    demand = from_csv(path)
    assert {k: list(v) for k, v in demand.series.items()} == {"A100": [1.5, 3.0], "H100": [2, 0]}
    path.write_text("t,demand\n0,1\n1,x\n")
    with pytest.raises(DemandError, match=r"line 3, column 'demand': got 'x'"):
        from_csv(path)


def test_linear_demand_grammar() -> None:
    d = parse_demand("linear:a=10,b=20,T=100")
    assert d.steps == 101
    assert d.series[""][100] == 1020.0
    assert parse_demand("linear:a=0,b=2,T=1,type=A100").series["A100"][0] == 2.0
    with pytest.raises(DemandError, match="expected linear:a=A,b=B,T=STEPS"):
        parse_demand("linear:a=10,c=2,T=5")
    with pytest.raises(DemandError, match="expected linear:a=A,b=B,T=STEPS, csv:PATH or trace"):
        parse_demand("quadratic")


# ==== bad input =================================================================================
def test_negative_demand_names_the_step() -> None:
    with pytest.raises(DemandError, match=r"demand of A at step 1 is -2; demand must be >= 0"):
        make_demand({"A": [1.0, -2.0]})
    with pytest.raises(DemandError, match=r"is -10 at t=3"):
        linear(-10, 20, 10)
    with pytest.raises(DemandError, match="finite"):
        make_demand({"A": [math.nan]})


def test_negative_price_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"gpu_types\.A\.on_demand\.price_per_hour: got -1"):
        spec({"A": gpu(on_demand=-1.0)})


@pytest.mark.parametrize(
    ("types", "options", "match"),
    [
        ({"A": gpu()}, {}, "at least one offer"),
        ({"A": gpu(reserved=1.0, term=1.5)}, {}, "term_hours a whole number of steps"),
        ({"A": gpu(on_demand=1.0)}, {"demand_unit": "flops"}, r"gpu_types\.A\.perf > 0"),
        ({"A": gpu(spot=1.0, interruption=1.0)}, {}, "interruption_rate: got 1.0"),
        ({"A": gpu(on_demand=1.0)}, {"max_spot_share": 1.5}, "max_spot_share: got 1.5"),
        ({"A": gpu(on_demand=1.0)}, {"surprise": 1}, "surprise: unknown field"),
    ],
)
def test_bad_specs_say_what_to_change(
    types: dict[str, Any], options: dict[str, Any], match: str
) -> None:
    with pytest.raises(SpecError, match=match):
        spec(types, **options)


def test_demand_for_a_type_not_offered() -> None:
    with pytest.raises(DemandError, match="GPU type 'B', which the spec does not offer"):
        solve_plan(spec({"A": gpu(on_demand=1.0)}), make_demand({"B": [1.0]}))
    with pytest.raises(DemandError, match="name one"):
        solve_plan(
            spec({"A": gpu(on_demand=1.0), "B": gpu(on_demand=1.0)}), make_demand({"": [1.0]})
        )


def test_errors_pickle_with_their_constraint() -> None:
    err = InfeasibleError("too little", constraint="max_spot_share")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.message, back.constraint) == (
        InfeasibleError,
        "too little",
        "max_spot_share",
    )


def test_blocks_solve_the_whole_lp() -> None:
    """1,200 hourly steps with 10-hour terms fall into blocks of 520 steps; block by block the
    LP is the same as in one piece, and every column lands once."""
    from fastgpu.planner.blocks import solve_lp, split
    from fastgpu.planner.program import build, highs

    rng = np.random.default_rng(3)
    demand = make_demand({"A": rng.uniform(0, 20, 1200), "B": rng.uniform(0, 5, 1200)})
    types = {
        "A": gpu(perf=1, per_node=4, reserved=1.0, on_demand=2.0, spot=0.5, interruption=0.2),
        "B": gpu(perf=2, per_node=2, reserved=2.0, term=5.0, on_demand=3.0, max_nodes=3),
    }
    plan_spec = spec(types, max_spot_share=0.4, unmet_penalty=50.0)
    whole = build(plan_spec, demand, integer=True, cuts=True)
    blocks = split(whole)
    assert [b.start for b in blocks] == [0, 520, 1040]
    columns = np.concatenate([b.columns for b in blocks])
    assert sorted(columns) == list(range(whole.n_vars))
    pieces = solve_lp(blocks, whole, deadline=math.inf)
    one = highs(whole, False, 60.0)
    assert pieces.fun == pytest.approx(float(one.fun), rel=1e-9)
    plan = solve_plan(plan_spec.model_copy(update={"mip_rel_gap": 0.2}), demand)
    assert plan.method == "lp_rounding"
    assert plan.lower_bound == pytest.approx(float(one.fun), rel=1e-9)
    assert plan.lower_bound <= plan.total_cost <= plan.lower_bound / 0.8
