"""Scheduling policy: pure functions from an immutable :class:`Snapshot` to :class:`Decisions`.

No Ray, no store, no clock: the live controller and the trace simulator call the same code.
A policy implements :class:`Policy` (``schedule(snapshot) -> Decisions``).
:class:`QuotaCapacityPolicy` is the baseline (nominal quota, no borrowing, no preemption);
:class:`FairSharePolicy` is the full policy of ``docs/design/scheduler.md``.
"""

from fastgpu.domain.usage import decay_usage
from fastgpu.scheduler.decisions import (
    Admit,
    Decisions,
    Preempt,
    PreemptReason,
    Queue,
    Reject,
    Resize,
    ResizeReason,
)
from fastgpu.scheduler.fairshare import FairSharePolicy, FairShareSettings, fair_share_score
from fastgpu.scheduler.placement import place
from fastgpu.scheduler.policy import Policy, QuotaCapacityPolicy
from fastgpu.scheduler.snapshot import LeaseView, NodeView, Snapshot, TenantView

__all__ = [
    "Admit",
    "Decisions",
    "FairSharePolicy",
    "FairShareSettings",
    "LeaseView",
    "NodeView",
    "Policy",
    "Preempt",
    "PreemptReason",
    "Queue",
    "QuotaCapacityPolicy",
    "Reject",
    "Resize",
    "ResizeReason",
    "Snapshot",
    "TenantView",
    "decay_usage",
    "fair_share_score",
    "place",
]
