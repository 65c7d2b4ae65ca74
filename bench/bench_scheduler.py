"""One FairSharePolicy cycle at scale: 1,000 tenants, 2,000 nodes x 8 GPUs, 100..10,000 pending.

Prints a table: pending requests -> median and best cycle time (ms) over a few repetitions, with
reasons on (the live controller's settings). Target: < 50 ms at 10,000 pending. On a shared
machine the best of the repetitions is the steadier figure.

    .venv/bin/python bench/bench_scheduler.py [--reps 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from fastgpu.config import QuotaSpec, SchedulerSettings
from fastgpu.scheduler import (
    FairSharePolicy,
    FairShareSettings,
    LeaseView,
    NodeView,
    Snapshot,
    TenantView,
)
from fastgpu.scheduler.pool import FreePool

GPU = "H100"


def build(pending: int, tenants: int = 1000, nodes: int = 2000, fill: float = 0.9, seed: int = 1):
    rng = random.Random(seed)
    per_node = 8
    names = [f"t{i:04d}" for i in range(tenants)]
    nominal = nodes * per_node // tenants
    tviews = {
        n: TenantView(
            name=n,
            quotas={GPU: QuotaSpec(nominal=nominal)},
            weight=rng.choice([1.0, 2.0]),
            decayed_usage_gpu_s=rng.uniform(0, 1e6),
            queueing=rng.choice(["strict_fifo", "best_effort_fifo"]),
        )
        for n in names
    }
    free = {f"n{i:05d}": per_node for i in range(nodes)}
    pool = FreePool(free)
    running = []
    target = fill * nodes * per_node
    i = 0
    while nodes * per_node - pool.total < target:
        g = rng.choice([1, 1, 2, 4, 8])
        spot = pool.place(g, "PACK")
        if spot is None:
            break
        pool.take(spot)
        running.append(
            LeaseView(
                id=f"r{i}",
                tenant=rng.choice(names),
                gpu_type=GPU,
                gpus=g,
                min_gpus=g,
                preemptible=rng.random() < 0.5,
                started_at=-rng.uniform(0, 7200),
                # None past its end: the live controller expires leases itself.
                duration_s=rng.uniform(7200, 86400),
                placement=spot,
            )
        )
        i += 1
    pend = []
    for j in range(pending):
        g = rng.choice([1, 1, 1, 2, 4, 8, 16])
        pend.append(
            LeaseView(
                id=f"p{j}",
                tenant=rng.choice(names),
                gpu_type=GPU,
                gpus=g,
                min_gpus=g,
                preemptible=rng.random() < 0.5,
                strategy="STRICT_PACK" if g <= per_node else "PACK",
                priority=rng.choice([0, 0, 1]),
                submitted_at=float(j),
                duration_s=rng.uniform(60, 36000),
            )
        )
    node_views = tuple(NodeView(n, GPU, per_node, pool.free.get(n, 0)) for n in free)
    return Snapshot(
        now=0.0,
        gpu_types={},
        nodes=node_views,
        tenants=tviews,
        running=tuple(running),
        pending=tuple(pend),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    # The live controller's policy and settings with a default config (its make_policy: reasons
    # on, time limits left to the controller).
    policy = FairSharePolicy(
        FairShareSettings.from_config(SchedulerSettings(), enforce_time_limits=False, explain=True)
    )
    print(
        "| pending | running | tenants | nodes | cycle ms (median) | cycle ms (best) "
        "| admitted | preempted |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (100, 1000, 3000, 10000):
        snap = build(n)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            d = policy.schedule(snap)
            times.append((time.perf_counter() - t0) * 1000)
        print(
            f"| {n:,} | {len(snap.running):,} | {len(snap.tenants):,} | {len(snap.nodes):,} | "
            f"{statistics.median(times):.1f} | {min(times):.1f} | {len(d.admit)} | "
            f"{len(d.preempt)} |"
        )


if __name__ == "__main__":
    main()
