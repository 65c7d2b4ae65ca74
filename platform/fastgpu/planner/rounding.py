"""Whole nodes from a fractional plan: floor, repair greedily, trim. Used before branch and bound.

Why: HiGHS's branch and bound closes the gap slowly on long horizons (each step is a small
knapsack of its own, and a year has 8,760 of them), while the LP relaxation with the rounding
cuts is solved in about a second and is usually within a few percent of the integer optimum.
So the solver first rounds the LP plan with the reserved counts fixed; if that plan is within
``mip_rel_gap`` of the LP bound it is the answer, otherwise branch and bound runs.

The rounding, with the reserved (window) columns already whole:

1. floor every per-step purchase;
2. repair, step by step and vectorised over steps: while some cover row is short, add to it the
   purchase that costs least per unit of the shortfall it covers (a node of a type able to serve
   the row, under the caps and the spot share; or, when unmet demand is priced, the shortfall
   itself). Rows with fewer servers (the fastest types) go first: what they add counts for the
   rows below them too;
3. trim: drop single nodes, dearest first, where every row stays covered.

Invariant: the result meets every constraint of the program or is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastgpu.planner.program import Cover, Program

_TOL = 1e-7


@dataclass(frozen=True)
class _Option:
    """One purchase that can be added a node at a time in every step."""

    gpu_type: str
    col: np.ndarray  # per step
    gpus: float  # GPUs per node
    spot: bool
    usable: dict[int, float]  # cover index -> usable weight per node


def _options(prog: Program) -> list[_Option]:
    out = []
    for name, gpu in prog.spec.gpu_types.items():
        tc = prog.cols[name]
        for col, spot in ((tc.on_demand, False), (tc.spot, True)):
            if col is None:
                continue
            per_node = float(gpu.gpus_per_node)
            if spot and gpu.spot is not None:
                per_node *= 1.0 - gpu.spot.interruption_rate
            usable = {
                i: w * per_node
                for i, g in enumerate(prog.covers)
                for j, w in g.servers.items()
                if j == name
            }
            out.append(_Option(name, col, float(gpu.gpus_per_node), spot, usable))
    return out


class _State:
    """The per-step quantities the rules read, kept in step with ``x``."""

    def __init__(self, prog: Program, x: np.ndarray) -> None:
        self.prog, self.x = prog, x
        self.upper = prog.upper
        spec = prog.spec
        self.share = spec.max_spot_share
        n = prog.n
        self.spot_gpus = np.zeros(n)
        self.nonspot_gpus = np.zeros(n)
        self.nodes: dict[str, np.ndarray] = {}
        for name, gpu in spec.gpu_types.items():
            tc, g = prog.cols[name], float(gpu.gpus_per_node)
            total = np.zeros(n)
            for col, spot in ((tc.reserved, False), (tc.on_demand, False), (tc.spot, True)):
                if col is None:
                    continue
                total += x[col]
                if spot:
                    self.spot_gpus += g * x[col]
                else:
                    self.nonspot_gpus += g * x[col]
            self.nodes[name] = total

    def lhs(self, group: Cover) -> np.ndarray:
        total = np.zeros(self.prog.n)
        for col, coef in self.prog.cover_terms(group):
            total += coef * self.x[col]
        for k in group.classes:
            if k in self.prog.unmet:
                total += self.x[self.prog.unmet[k]]
        return total

    def can_add(self, opt: _Option, steps: np.ndarray) -> np.ndarray:
        prog = self.prog
        ok = self.x[opt.col[steps]] + 1 <= self.upper[opt.col[steps]] + _TOL
        cap = prog.spec.gpu_types[opt.gpu_type].max_nodes
        if cap is not None:
            ok &= self.nodes[opt.gpu_type][steps] + 1 <= cap + _TOL
        if opt.spot and self.share < 1.0:
            ok &= (self.spot_gpus[steps] + opt.gpus) * (1 - self.share) <= (
                self.share * self.nonspot_gpus[steps] + _TOL
            )
        return ok

    def can_drop(self, opt: _Option, steps: np.ndarray) -> np.ndarray:
        ok = self.x[opt.col[steps]] >= 1 - _TOL
        if not opt.spot and self.share < 1.0:
            ok &= self.spot_gpus[steps] * (1 - self.share) <= (
                self.share * (self.nonspot_gpus[steps] - opt.gpus) + _TOL
            )
        return ok

    def add(self, opt: _Option, steps: np.ndarray, count: float) -> None:
        self.x[opt.col[steps]] += count
        self.nodes[opt.gpu_type][steps] += count
        if opt.spot:
            self.spot_gpus[steps] += count * opt.gpus
        else:
            self.nonspot_gpus[steps] += count * opt.gpus


def round_plan(prog: Program, x_lp: np.ndarray, max_rounds: int = 64) -> np.ndarray | None:
    """An integer plan near ``x_lp`` (whose reserved columns are whole), or None if the
    repair finds none (the caller then relies on branch and bound)."""
    x = x_lp.copy()
    integ = prog.integrality.astype(bool)
    x[integ] = np.floor(x[integ] + 1e-6)
    state = _State(prog, x)
    options = _options(prog)
    cost = prog.cost
    penalty = prog.spec.unmet_penalty
    order = sorted(range(len(prog.covers)), key=lambda i: len(prog.covers[i].servers))
    for _ in range(max_rounds):
        short_any = False
        for i in order:
            group = prog.covers[i]
            deficit = group.rhs - state.lhs(group)
            steps = np.flatnonzero(deficit > _TOL)
            if not steps.size:
                continue
            short_any = True
            need = deficit[steps]
            best = np.full(steps.size, math.inf)
            choice = np.full(steps.size, -1)
            for o, opt in enumerate(options):
                w = opt.usable.get(i, 0.0)
                if w <= 0:
                    continue
                per_unit = cost[opt.col[steps]] / np.minimum(w, need)
                per_unit = np.where(state.can_add(opt, steps), per_unit, math.inf)
                better = per_unit < best
                best[better], choice[better] = per_unit[better], o
            if penalty is not None:
                unmet_col = prog.unmet[max(group.classes, key=_perf_key(prog))]
                better = penalty * prog.spec.step_hours < best
                x[unmet_col[steps[better]]] += need[better]
                choice[better] = -2
            if np.any(choice == -1):
                return None
            for o, opt in enumerate(options):
                chosen = steps[choice == o]
                if chosen.size:
                    state.add(opt, chosen, 1.0)
        if not short_any:
            _trim(prog, state, options)
            return x
    return None


def _perf_key(prog: Program) -> Callable[[str], float]:
    types = prog.spec.gpu_types
    return lambda k: types[k].perf if k in types else 0.0


def _trim(prog: Program, state: _State, options: list[_Option]) -> None:
    """Drop one node at a time, dearest per node first, wherever every row stays covered."""
    cost = prog.cost
    n = prog.n
    ranked = sorted(options, key=lambda o: -float(np.max(cost[o.col])) if n else 0.0)
    for _ in range(2):
        changed = False
        for opt in ranked:
            steps = np.arange(n)
            ok = state.can_drop(opt, steps)
            for i, w in opt.usable.items():
                group = prog.covers[i]
                ok &= state.lhs(group) - w >= group.rhs - _TOL
            chosen = np.flatnonzero(ok)
            if chosen.size:
                state.add(opt, chosen, -1.0)
                changed = True
        if not changed:
            break


__all__ = ["round_plan"]
