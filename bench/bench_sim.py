"""Full-trace replay time for one policy (target: two months of Philly in < 60 s, one core).

.venv/bin/python bench/bench_sim.py [--policy fairshare] [--load 1.0] [--start ... --end ...]
"""

from __future__ import annotations

import argparse
import time

from fastgpu.sim.cluster import size_for_load
from fastgpu.sim.runner import run_side_by_side
from fastgpu.sim.trace import load_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trace", default=None)
    ap.add_argument("--policy", default="fairshare")
    ap.add_argument("--load", type=float, default=1.0)
    ap.add_argument("--start", default=None)
    ap.add_argument("--end", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    trace = load_trace(args.trace, start=args.start, end=args.end)
    load_s = time.perf_counter() - t0
    cluster = size_for_load(trace, args.load)
    print("| policy | jobs | GPUs | load trace (s) | replay (s) | cycles | us/cycle |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.policy.split(","):
        run = run_side_by_side(trace, cluster, [name])
        res = run.results[0]
        print(
            f"| {name} | {len(trace.jobs):,} | {cluster.capacity} | {load_s:.2f} | "
            f"{res.wall_s:.1f} | {res.cycles:,} | {1e6 * res.wall_s / max(res.cycles, 1):.0f} |"
        )


if __name__ == "__main__":
    main()
