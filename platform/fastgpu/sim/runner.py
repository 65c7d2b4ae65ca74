"""Policies side by side on one trace and cluster: the simulator's entry point.

Policy names (``POLICIES``):

* ``fifo``: one global strict FIFO queue, no quotas (:class:`FifoPolicy`).
* ``static``: hard quotas = static partitioning (``FairSharePolicy`` without borrowing or
  preemption; backfill within the partition stays on).
* ``fairshare``: our policy (:class:`FairSharePolicy`), jobs preemptible.
* ``elastic``: our policy with elastic jobs (see :class:`JobModel`).
* ``srtf``: preemptive shortest-remaining-time-first oracle, lossless preemption, no quotas.

Determinism: the trace order, node names and every tie-break are fixed, so a run is a function
of its inputs; ``seed`` only feeds the optional job-order jitter (``jitter_s``), off by default.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from fastgpu.config import SchedulerSettings
from fastgpu.scheduler.fairshare import FairSharePolicy, FairShareSettings
from fastgpu.scheduler.policy import Policy
from fastgpu.sim.baselines import FifoPolicy, SrtfOraclePolicy
from fastgpu.sim.cluster import ClusterSpec, nominal_quotas, offered_load
from fastgpu.sim.engine import JobModel, SimResult, Simulation
from fastgpu.sim.metrics import Metrics, compute
from fastgpu.sim.trace import Trace

#: The simulator's settings for our policy: the platform's defaults (a config's ``scheduler``
#: section, as the live controller reads it), minus what the simulator does itself (ending
#: jobs at their duration) or does not need (reasons on every waiting job).
SIM_SETTINGS = FairShareSettings.from_config(
    SchedulerSettings(), explain=False, enforce_time_limits=False
)


def _fairshare(settings: FairShareSettings) -> Callable[[], Policy]:
    return lambda: FairSharePolicy(settings)


POLICIES: dict[str, tuple[Callable[[], Policy], JobModel]] = {
    "fifo": (lambda: FifoPolicy(), JobModel(preemptible=False)),
    "static": (
        _fairshare(replace(SIM_SETTINGS, borrowing=False, preemption=False, elastic=False)),
        JobModel(preemptible=False),
    ),
    "fairshare": (_fairshare(replace(SIM_SETTINGS, elastic=False)), JobModel()),
    "elastic": (_fairshare(SIM_SETTINGS), JobModel(elastic=True)),
    "srtf": (lambda: SrtfOraclePolicy(), JobModel(lossless_preemption=True)),
}
DEFAULT_POLICIES = ("fifo", "static", "fairshare", "elastic", "srtf")


@dataclass
class SideBySide:
    trace: Trace
    cluster: ClusterSpec
    load: float
    results: list[SimResult]
    metrics: list[Metrics]


def jitter(trace: Trace, seed: int, jitter_s: float) -> Trace:
    """Submit times moved by up to ``jitter_s`` seconds (seeded), e.g. for sensitivity runs."""
    if jitter_s <= 0:
        return trace
    rng = random.Random(seed)
    jobs = sorted(
        (
            replace(j, submit=max(0.0, j.submit + rng.uniform(-jitter_s, jitter_s)))
            for j in trace.jobs
        ),
        key=lambda j: (j.submit, j.id),
    )
    return replace(trace, jobs=tuple(jobs))


def run_side_by_side(
    trace: Trace,
    cluster: ClusterSpec,
    policies: list[str] | tuple[str, ...] = DEFAULT_POLICIES,
    *,
    seed: int = 0,
    jitter_s: float = 0.0,
    bucket_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> SideBySide:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(
            f"Got unknown policies {unknown}; expected a comma list of {', '.join(POLICIES)}"
        )
    trace = jitter(trace, seed, jitter_s)
    quotas = nominal_quotas(trace, cluster.capacity)
    span = max(trace.end - trace.start, 1.0)
    bucket = bucket_s or max(60.0, span / 400.0)
    results: list[SimResult] = []
    metrics: list[Metrics] = []
    for name in policies:
        make, model = POLICIES[name]
        sim = Simulation(
            trace,
            cluster,
            quotas,
            make(),
            name=name,
            model=model,
            half_life_s=SIM_SETTINGS.usage_half_life_s,
            bucket_s=bucket,
            skip_full_arrivals=name != "srtf",
        )
        res = sim.run()
        results.append(res)
        metrics.append(compute(res, trace))
        if progress:
            progress(f"{name}: {res.wall_s:.1f} s, {res.cycles} cycles")
    return SideBySide(trace, cluster, offered_load(trace, cluster.capacity), results, metrics)
