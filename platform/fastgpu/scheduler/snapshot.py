"""The immutable picture of the cluster a policy decides on.

Vocabulary: a *node* offers GPUs of one type; a *running* lease holds GPUs on named nodes; a
*pending* lease waits. Times are epoch seconds from the caller's clock (the simulator's or the
controller's), so the policy never reads a clock itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastgpu.config import BudgetSpec, GpuTypeSpec, QuotaSpec

if TYPE_CHECKING:
    from fastgpu.scheduler.index import PendingIndex, RunningIndex


@dataclass(frozen=True)
class NodeView:
    node_id: str
    gpu_type: str
    total_gpus: int
    #: GPUs not held by any lease (the controller's ledger, not Ray's momentary view).
    free_gpus: int
    alive: bool = True


@dataclass(frozen=True)
class TenantView:
    name: str
    quotas: Mapping[str, QuotaSpec] = field(default_factory=dict)
    weight: float = 1.0
    priority: int = 0
    queueing: str = "best_effort_fifo"
    budget: BudgetSpec | None = None
    #: GPU-seconds used, decayed with the configured half-life (fair-share input).
    decayed_usage_gpu_s: float = 0.0
    #: Spent in the current budget period.
    period_gpu_hours: float = 0.0
    period_money: float = 0.0

    def quota(self, gpu_type: str) -> QuotaSpec:
        return self.quotas.get(gpu_type, QuotaSpec(nominal=0))


@dataclass(frozen=True)
class LeaseView:
    id: str
    tenant: str
    gpu_type: str
    gpus: int
    min_gpus: int
    strategy: str = "PACK"
    preemptible: bool = False
    priority: int = 0
    submitted_at: float = 0.0
    duration_s: float = 3600.0
    #: Running leases: when the GPUs were taken and on which nodes (node id -> GPUs).
    started_at: float | None = None
    placement: Mapping[str, int] = field(default_factory=dict)
    last_checkpoint_at: float | None = None
    #: Running leases announced for preemption: when their GPUs are taken (announcement time
    #: plus grace). The policy counts those GPUs as coming free and never picks the lease again.
    preempt_at: float | None = None
    #: How many times the workload this lease runs was preempted before (it restarted from a
    #: checkpoint): its minimum runtime doubles with each, up to a cap (see the settings).
    restarts: int = 0

    @property
    def held_gpus(self) -> int:
        return sum(self.placement.values())


@dataclass(frozen=True)
class Snapshot:
    now: float
    gpu_types: Mapping[str, GpuTypeSpec]
    nodes: tuple[NodeView, ...]
    tenants: Mapping[str, TenantView]
    running: tuple[LeaseView, ...] = ()
    pending: tuple[LeaseView, ...] = ()
    #: Optional index of exactly the leases in ``pending`` (per-tenant queues in queue
    #: order), kept by a caller that keeps its pending set between cycles (the simulator);
    #: None: the policy builds it. Read only by the policy.
    pending_index: PendingIndex | None = field(default=None, compare=False, repr=False)
    #: Optional sums over exactly the leases in ``running`` (per tenant and type), kept the
    #: same way; None: the policy sums them itself.
    running_index: RunningIndex | None = field(default=None, compare=False, repr=False)

    def free_by_node(self, gpu_type: str) -> dict[str, int]:
        return {
            n.node_id: n.free_gpus
            for n in self.nodes
            if n.alive and n.gpu_type == gpu_type and n.free_gpus > 0
        }

    def total_by_node(self, gpu_type: str) -> dict[str, int]:
        return {n.node_id: n.total_gpus for n in self.nodes if n.alive and n.gpu_type == gpu_type}

    def used_by(self, tenant: str, gpu_type: str) -> int:
        return sum(
            lease.held_gpus
            for lease in self.running
            if lease.tenant == tenant and lease.gpu_type == gpu_type
        )
