"""The simulated cluster: size, GPU type, and tenants' quotas derived from a trace.

Responsibility: pick a cluster size (given, or from a target offered load), and give each
tenant a nominal quota proportional to its virtual cluster's size, summing to the capacity.

Offered load over a window of length W on C GPUs is ``sum(gpus * duration) / (C * W)`` (the
work submitted in the window over the capacity-time of the window). Tenants the VC file does
not size count as ``unsized_nodes`` nodes in the split (a small nominal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastgpu.config import GpuTypeSpec, QuotaSpec
from fastgpu.scheduler.snapshot import NodeView
from fastgpu.sim.trace import Trace

GPU_TYPE = "V100"  # Philly's GPUs were mostly P100/P40/M40; one type, one price
PRICE_PER_HOUR = 2.0


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    gpus_per_node: int = 8
    gpu_type: str = GPU_TYPE

    @property
    def capacity(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_views(self) -> tuple[NodeView, ...]:
        return tuple(
            NodeView(f"n{i:04d}", self.gpu_type, self.gpus_per_node, self.gpus_per_node)
            for i in range(self.nodes)
        )

    def gpu_types(self) -> dict[str, GpuTypeSpec]:
        return {self.gpu_type: GpuTypeSpec(price_per_hour=PRICE_PER_HOUR)}


def offered_load(trace: Trace, capacity: int) -> float:
    window = max(trace.end - trace.start, 1.0)
    return trace.offered_gpu_seconds() / (capacity * window)


def size_for_load(trace: Trace, load: float, gpus_per_node: int = 8) -> ClusterSpec:
    """The node count whose offered load over the trace window is closest to ``load`` (at
    least one node, and at least as many GPUs as the largest job)."""
    if load <= 0:
        raise ValueError(f"Got {load} for load; expected a number > 0 (1.0: work = capacity)")
    window = max(trace.end - trace.start, 1.0)
    gpus = trace.offered_gpu_seconds() / (load * window)
    biggest = max(j.gpus for j in trace.jobs)
    nodes = max(1, round(gpus / gpus_per_node), math.ceil(biggest / gpus_per_node))
    return ClusterSpec(nodes=nodes, gpus_per_node=gpus_per_node)


def nominal_quotas(trace: Trace, capacity: int, unsized_nodes: int = 1) -> dict[str, QuotaSpec]:
    """Nominal per tenant proportional to VC nodes, largest remainder, summing to capacity."""
    sizes = {t: trace.vc_nodes.get(t, unsized_nodes) for t in trace.tenants}
    total = sum(sizes.values())
    exact = {t: capacity * n / total for t, n in sizes.items()}
    nominal = {t: math.floor(x) for t, x in exact.items()}
    left = capacity - sum(nominal.values())
    for t in sorted(exact, key=lambda t: (-(exact[t] - nominal[t]), t))[:left]:
        nominal[t] += 1
    return {t: QuotaSpec(nominal=n) for t, n in nominal.items()}
