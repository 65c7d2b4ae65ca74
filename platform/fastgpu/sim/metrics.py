"""Metrics of one simulated policy run, and the work-conserving utilisation bound.

Definitions (also in ``docs/simulator.md``):

* JCT: completion - submit; queueing delay: first start - submit (Philly's definition). Both
  over completed jobs; rejected and unfinished jobs are counted apart.
* utilisation: allocated GPU-seconds / (capacity x window) over the submission window (the
  tail after the last submission, where a few long jobs run alone, would dilute it).
* work-conserving bound: the same ratio for a fluid server of rate = capacity fed with the
  jobs' GPU-seconds at their submit times (no gangs, no placement): a non-elastic schedule
  cannot allocate more in the window. Elastic jobs can exceed it: growing a job adds GPUs
  without adding work at the same rate (sublinear speedup), so their "utilisation" counts
  GPUs held, not work done.
* guarantee violations: GPU-seconds a tenant held less than ``min(nominal, used + waiting)``.
* fairness: Jain's index over tenants of their GPU-time-weighted slowdown
  ``sum(jct * gpus) / sum(duration * gpus)`` (1.0: every tenant slowed down alike).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from fastgpu.sim.engine import SimResult
from fastgpu.sim.trace import Trace


@dataclass(frozen=True)
class Metrics:
    policy: str
    jobs: int
    completed: int
    rejected: int
    unfinished: int
    avg_jct_s: float
    median_jct_s: float
    p99_jct_s: float
    avg_queue_s: float
    median_queue_s: float
    p99_queue_s: float
    utilization: float
    util_bound: float
    makespan_s: float
    violation_gpu_h: float
    preemptions: int
    lost_gpu_h: float
    resizes: int
    jain_fairness: float
    cycles: int
    wall_s: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list; 0.0 for an empty one."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def jain(values: list[float]) -> float:
    if not values:
        return 1.0
    s = sum(values)
    sq = sum(v * v for v in values)
    return (s * s) / (len(values) * sq) if sq > 0 else 1.0


def fluid_bound(trace: Trace, capacity: int, horizon: float) -> float:
    """Utilisation of a work-conserving fluid server over [0, horizon]."""
    if horizon <= 0:
        return 0.0
    backlog = 0.0
    served = 0.0
    t = 0.0
    for job in trace.jobs:
        if job.submit > horizon:
            break
        step = min(backlog, capacity * (job.submit - t))
        served += step
        backlog -= step
        t = job.submit
        backlog += job.gpu_seconds
    served += min(backlog, capacity * max(0.0, horizon - t))
    return served / (capacity * horizon)


def compute(result: SimResult, trace: Trace) -> Metrics:
    done = [j for j in result.jobs if j.end is not None and j.start is not None]
    jct = [j.end - j.submit for j in done if j.end is not None]
    wait = [j.start - j.submit for j in done if j.start is not None]
    makespan = max((j.end for j in done if j.end is not None), default=0.0)
    window = max(trace.end - trace.start, 1.0)
    weighted: dict[str, list[float]] = {}
    for j in done:
        assert j.end is not None
        acc = weighted.setdefault(j.tenant, [0.0, 0.0])
        acc[0] += (j.end - j.submit) * j.gpus
        acc[1] += j.duration * j.gpus
    slowdowns = [a / b for a, b in weighted.values() if b > 0]
    return Metrics(
        policy=result.policy,
        jobs=len(result.jobs),
        completed=len(done),
        rejected=sum(1 for j in result.jobs if j.rejected),
        unfinished=result.unfinished,
        avg_jct_s=statistics.fmean(jct) if jct else 0.0,
        median_jct_s=statistics.median(jct) if jct else 0.0,
        p99_jct_s=percentile(jct, 99),
        avg_queue_s=statistics.fmean(wait) if wait else 0.0,
        median_queue_s=statistics.median(wait) if wait else 0.0,
        p99_queue_s=percentile(wait, 99),
        utilization=result.busy_window_gpu_s / (result.cluster.capacity * window),
        util_bound=fluid_bound(trace, result.cluster.capacity, window),
        makespan_s=makespan,
        violation_gpu_h=sum(result.violation_gpu_s.values()) / 3600.0,
        preemptions=sum(j.preemptions for j in result.jobs),
        lost_gpu_h=sum(j.lost_gpu_s for j in result.jobs) / 3600.0,
        resizes=sum(j.resizes for j in result.jobs),
        jain_fairness=jain(slowdowns),
        cycles=result.cycles,
        wall_s=result.wall_s,
    )
