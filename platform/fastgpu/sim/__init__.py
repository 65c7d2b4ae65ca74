"""Trace-driven simulator: replays a job trace through the same scheduling policies as the live
controller, side by side with baselines, and reports metrics, tables and plots.

No Ray. Modules: :mod:`trace` (loading), :mod:`cluster` (size, quotas), :mod:`engine` (the
event loop), :mod:`baselines` (FIFO, SRTF oracle), :mod:`metrics`, :mod:`report`,
:mod:`runner` (policies side by side).
"""

from fastgpu.sim.cluster import ClusterSpec, nominal_quotas, offered_load, size_for_load
from fastgpu.sim.engine import JobModel, SimResult, Simulation
from fastgpu.sim.metrics import Metrics, compute
from fastgpu.sim.runner import DEFAULT_POLICIES, POLICIES, SideBySide, run_side_by_side
from fastgpu.sim.trace import Job, Trace, TraceError, load_trace, trace_from_jobs

__all__ = [
    "DEFAULT_POLICIES",
    "POLICIES",
    "ClusterSpec",
    "Job",
    "JobModel",
    "Metrics",
    "SideBySide",
    "SimResult",
    "Simulation",
    "Trace",
    "TraceError",
    "compute",
    "load_trace",
    "nominal_quotas",
    "offered_load",
    "run_side_by_side",
    "size_for_load",
    "trace_from_jobs",
]
