"""Decision values a policy returns; only the controller (or simulator) carries them out.

Reason strings are stable (stored, shown, matched by scripts): a waiting or rejected request's
reason is a :class:`~fastgpu.domain.lease.PendingReason` value, a preemption's a
:class:`PreemptReason`, a resize's a :class:`ResizeReason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class PreemptReason:
    """``Preempt.reason`` values (stable strings)."""

    RECLAIM = "reclaim"  # a tenant below nominal takes back GPUs a borrower holds
    PRIORITY = "priority"  # a higher-priority lease of the same tenant needs the GPUs
    TIME_LIMIT = "time_limit"  # the lease reached started_at + duration_s


class ResizeReason:
    """``Resize.reason`` values (stable strings)."""

    GROW = "grow"  # idle capacity: an elastic lease grows toward its maximum
    SHRINK = "shrink"  # a blocked request needs the GPUs: shrink toward min_gpus


@dataclass(frozen=True)
class Admit:
    lease_id: str
    #: Node id -> GPUs on it; the lease gets exactly these (gang: all or none).
    placement: Mapping[str, int]

    @property
    def gpus(self) -> int:
        return sum(self.placement.values())


@dataclass(frozen=True, init=False)
class Queue:
    lease_id: str
    reason: str
    detail: str = ""

    # A cycle with reasons on builds one per waiting request (10,000 a cycle under long
    # queues): fill the instance dict directly instead of the frozen dataclass's
    # ``object.__setattr__`` per field (3x cheaper; same fields, equality, hash and repr).
    def __init__(self, lease_id: str, reason: str, detail: str = "") -> None:
        d = self.__dict__
        d["lease_id"] = lease_id
        d["reason"] = reason
        d["detail"] = detail


@dataclass(frozen=True)
class Reject:
    lease_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Preempt:
    lease_id: str
    reason: str
    detail: str = ""
    #: Seconds the workload has between the announcement and losing the GPUs.
    grace_s: float = 0.0


@dataclass(frozen=True)
class Resize:
    lease_id: str
    #: The new placement (node id -> GPUs) after growing or shrinking.
    placement: Mapping[str, int]
    reason: str = ""


@dataclass(frozen=True)
class Decisions:
    admit: tuple[Admit, ...] = ()
    queue: tuple[Queue, ...] = ()
    reject: tuple[Reject, ...] = ()
    preempt: tuple[Preempt, ...] = ()
    resize: tuple[Resize, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: Earliest time at which the policy's answer may change without any event (e.g. a running
    #: lease passes its minimum runtime and becomes a preemption candidate); None: no such time.
    wake_at: float | None = None
