"""The horizon cut into independent blocks, and the LP solved block by block.

Steps are coupled only through reserved term windows (a reserved count holds for its whole
window). Cut the horizon where every reserved type starts a new window (a multiple of the least
common multiple of the term lengths, in steps) and the program falls apart into independent
programs, one per block: their LPs together are exactly the whole LP, and simplex time grows
faster than the size, so block by block is faster (a year of hourly steps in monthly blocks:
about a third less). Blocks are at least :data:`MIN_BLOCK` steps, so short terms do not make
thousands of tiny solves; without reserved offers any cut works.

Invariant: every column of a block's program maps to exactly one column of the whole program
(:attr:`Block.columns`), so a block's solution is copied into the whole plan by index.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fastgpu.planner.demand import Demand
from fastgpu.planner.program import Program, build, highs

MIN_BLOCK = 512


@dataclass(frozen=True)
class Block:
    start: int
    program: Program
    #: For each column of ``program``, its column in the whole program.
    columns: np.ndarray


@dataclass(frozen=True)
class LpResult:
    """The whole LP's solution, assembled from the blocks; ``status`` as HiGHS's (0 solved,
    2 infeasible), with the message of the first block that failed."""

    status: int
    x: np.ndarray | None
    fun: float
    message: str = ""


def block_length(whole: Program) -> int:
    """Steps per block: a common multiple of the term lengths of at least MIN_BLOCK steps."""
    spec = whole.spec
    spans = [spec.term_steps(n) for n, g in spec.gpu_types.items() if g.reserved is not None]
    length = math.lcm(*spans) if spans else 1
    if length >= whole.n:
        return whole.n
    return length * math.ceil(MIN_BLOCK / length)


def _columns(whole: Program, part: Program, start: int) -> np.ndarray:
    out = np.full(part.n_vars, -1, dtype=np.int64)
    n = part.n
    for name, p in part.cols.items():
        w = whole.cols[name]
        if p.reserved_windows is not None and w.reserved_windows is not None:
            first = start // whole.spec.term_steps(name)
            out[p.reserved_windows] = w.reserved_windows[first : first + len(p.reserved_windows)]
        if p.on_demand is not None and w.on_demand is not None:
            out[p.on_demand] = w.on_demand[start : start + n]
        if p.spot is not None and w.spot is not None:
            out[p.spot] = w.spot[start : start + n]
    for k, col in part.unmet.items():
        out[col] = whole.unmet[k][start : start + n]
    assert (out >= 0).all()
    return out


def split(whole: Program, fixed_reserved: Mapping[str, int] | None = None) -> list[Block]:
    """The blocks of ``whole`` (one block when nothing is gained by cutting)."""
    length = block_length(whole)
    if length >= whole.n:
        return [Block(0, whole, np.arange(whole.n_vars))]
    blocks = []
    for start in range(0, whole.n, length):
        series = {k: v[start : start + length] for k, v in whole.demand.series.items()}
        demand = Demand(series, whole.demand.source)
        part = build(whole.spec, demand, fixed_reserved, integer=False, cuts=whole.cuts)
        blocks.append(Block(start, part, _columns(whole, part, start)))
    return blocks


def solve_lp(
    blocks: list[Block],
    whole: Program,
    deadline: float,
    fixed: np.ndarray | None = None,
) -> LpResult:
    """The LP relaxation of ``whole`` (cuts and all), block by block. ``fixed``: values for
    whole-program columns to pin (NaN: free), e.g. the reserved counts."""
    x = np.zeros(whole.n_vars)
    total = 0.0
    for block in blocks:
        prog = block.program
        lower, upper = prog.lower, prog.upper
        if fixed is not None:
            pin = fixed[block.columns]
            free = np.isnan(pin)
            lower = np.where(free, lower, pin)
            upper = np.where(free, upper, pin)
        left = deadline - time.perf_counter()
        res = highs(prog, False, max(left, 0.1), lower, upper)
        if res.status != 0 or res.x is None:
            return LpResult(res.status, None, math.nan, str(res.message))
        x[block.columns] = res.x
        total += float(res.fun)
    return LpResult(0, x, total)


__all__ = ["Block", "LpResult", "block_length", "solve_lp", "split"]
