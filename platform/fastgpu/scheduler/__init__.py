"""Scheduling policy: pure functions from an immutable :class:`Snapshot` to :class:`Decisions`.

No Ray, no store, no clock: the live controller and the trace simulator call the same code.
A policy implements :class:`Policy` (``schedule(snapshot) -> Decisions``).
"""

from fastgpu.scheduler.decisions import Admit, Decisions, Preempt, Queue, Reject, Resize
from fastgpu.scheduler.placement import place
from fastgpu.scheduler.policy import Policy, QuotaCapacityPolicy
from fastgpu.scheduler.snapshot import LeaseView, NodeView, Snapshot, TenantView

__all__ = [
    "Admit",
    "Decisions",
    "LeaseView",
    "NodeView",
    "Policy",
    "Preempt",
    "Queue",
    "QuotaCapacityPolicy",
    "Reject",
    "Resize",
    "Snapshot",
    "TenantView",
    "place",
]
