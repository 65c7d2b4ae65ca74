"""Leases: the unit of GPU reservation, its states and the one place they change.

A lease is a tenant's claim on N GPUs of one type for a duration. Its life::

    PENDING --admit--> ADMITTED --group ready--> RESERVED --workload attached--> BOUND
       |                  |                         |                            |
       +-> REJECTED       +-> RELEASED / EXPIRED / PREEMPTED / FAILED (from any holding state)
       +-> CANCELLED      +-> PENDING (reservation lost before it was ready)
                          RESERVED -> ADMITTED (its group vanished and is being re-created)

* PENDING: waiting for admission; ``reason`` says why (see :class:`PendingReason`).
* ADMITTED: the controller decided to grant it and created its placement group; not ready yet.
* RESERVED: the placement group is ready: the GPUs are held and metered.
* BOUND: a workload (training run, sweep, deployment) has taken the lease over.
* Terminal: RELEASED (by the tenant), EXPIRED (duration over), PREEMPTED (reclaim/priority),
  FAILED (its node died or the group could not be kept), REJECTED (can never fit),
  CANCELLED (released while still pending).

``TRANSITIONS`` is the whole table; :func:`check_transition` is the only gate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from fastgpu.errors import Conflict
from fastgpu.validation import (
    GPU_TYPE_PATTERN,
    MAX_DURATION_S,
    MAX_GPUS_PER_LEASE,
    REQUEST_ID_PATTERN,
)

#: Ray node labels of a tenant cluster's lease raylets (set by the pool; workloads select on
#: them): the lease, its GPU type, the host, the part (the raylet's first device id).
LEASE_LABEL = "fastgpu.io/lease"
GPU_TYPE_LABEL = "fastgpu.io/gpu-type"
HOST_LABEL = "fastgpu.io/host"
PART_LABEL = "fastgpu.io/part"


LEASE_RESOURCE_PREFIX = "fastgpu_lease_"


def lease_resource(lease_id: str) -> str:
    """The custom Ray resource a lease's raylets advertise, one unit per leased GPU, in a
    tenant cluster: a placement group bundle (a Tune trial, a Serve replica) that asks for it
    can only land on that lease, and never on more of it than the lease holds."""
    return f"{LEASE_RESOURCE_PREFIX}{lease_id}"


class LeaseState(str, enum.Enum):
    PENDING = "PENDING"
    ADMITTED = "ADMITTED"
    RESERVED = "RESERVED"
    BOUND = "BOUND"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    PREEMPTED = "PREEMPTED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def holds_gpus(self) -> bool:
        """Whether GPUs are assigned to the lease in the controller's ledger."""
        return self in HOLDING_STATES


TERMINAL_STATES = frozenset(
    {
        LeaseState.RELEASED,
        LeaseState.EXPIRED,
        LeaseState.PREEMPTED,
        LeaseState.FAILED,
        LeaseState.REJECTED,
        LeaseState.CANCELLED,
    }
)
HOLDING_STATES = frozenset({LeaseState.ADMITTED, LeaseState.RESERVED, LeaseState.BOUND})
#: Not ended yet: pending or holding GPUs.
LIVE_STATES = frozenset(s for s in LeaseState if s not in TERMINAL_STATES)
_ENDINGS = {LeaseState.RELEASED, LeaseState.EXPIRED, LeaseState.PREEMPTED, LeaseState.FAILED}

TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.PENDING: frozenset({LeaseState.ADMITTED, LeaseState.REJECTED, LeaseState.CANCELLED}),
    LeaseState.ADMITTED: frozenset({LeaseState.RESERVED, LeaseState.PENDING, *_ENDINGS}),
    # RESERVED -> ADMITTED: the group vanished (e.g. the controller died while Ray lost it) and
    # is being re-created; metering pauses until it is ready again.
    LeaseState.RESERVED: frozenset({LeaseState.BOUND, LeaseState.ADMITTED, *_ENDINGS}),
    LeaseState.BOUND: frozenset({LeaseState.RESERVED, *_ENDINGS}),
    **{s: frozenset() for s in TERMINAL_STATES},
}


def check_transition(lease_id: str, prev: LeaseState, new: LeaseState) -> None:
    """Raise Conflict unless ``prev -> new`` is in :data:`TRANSITIONS`."""
    if new not in TRANSITIONS[prev]:
        raise Conflict(f"lease {lease_id} is {prev.value}; it cannot become {new.value}")


class PendingReason(str, enum.Enum):
    """Why a lease is not (yet) running; machine-readable, stable strings."""

    OVER_QUOTA = "over_quota"
    NO_CAPACITY = "no_capacity"
    FRAGMENTATION = "fragmentation"
    INFEASIBLE = "infeasible"
    BUDGET = "budget_exhausted"
    FAIR_SHARE = "fair_share_rank"
    BACKFILL = "backfill_window"
    PRIORITY = "lower_priority"
    RESERVING = "reserving"


Strategy = Literal["PACK", "STRICT_PACK", "SPREAD"]


class LeaseSpec(BaseModel):
    """A lease as a caller asks for it: the one shape the HTTP API, the SDK and the CLI send.

    Types are strict (``true`` is not a GPU count, ``"2"`` is not a number). The server
    resolves it into a :class:`LeaseRequest`: the GPU type chosen (by name, by ``perf`` or the
    only one), the duration parsed and checked against the configured minimum.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: StrictInt = Field(
        ge=1,
        le=MAX_GPUS_PER_LEASE,
        description="GPUs wanted (for an elastic lease: the most it may grow to).",
    )
    min_gpus: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_GPUS_PER_LEASE,
        description="Elastic lease: the fewest GPUs it may run with; unset: exactly `gpus`.",
    )
    gpu_type: StrictStr | None = Field(
        default=None,
        pattern=GPU_TYPE_PATTERN,
        description="GPU type name, e.g. A100; unset: chosen by `perf`, or the only type.",
    )
    perf: StrictFloat | StrictInt | None = Field(
        default=None,
        gt=0,
        description=(
            "Minimum per-GPU performance (the `perf` figure of the config's GPU types); the "
            "cheapest type that meets it is chosen."
        ),
    )
    duration: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None,
        description=(
            "How long the lease may hold its GPUs: '30m', '2h', '1h30m' or seconds; "
            "unset: the platform's default."
        ),
    )
    preemptible: StrictBool = Field(
        default=False,
        description=(
            "Whether the scheduler may preempt it; only preemptible leases borrow GPUs behind "
            "another tenant's nominal quota."
        ),
    )
    priority: StrictInt = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Priority among the tenant's own leases; higher may preempt lower.",
    )
    strategy: Literal["PACK", "STRICT_PACK", "SPREAD"] = Field(
        default="PACK",
        description="Placement: PACK (few nodes), STRICT_PACK (one node), SPREAD (many nodes).",
    )
    request_id: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=REQUEST_ID_PATTERN,
        description="Idempotency key: a retry with the same key returns the same lease.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> LeaseSpec:
        if self.min_gpus is not None and self.min_gpus > self.gpus:
            raise ValueError(f"min_gpus <= gpus (got min_gpus={self.min_gpus}, gpus={self.gpus})")
        return self


class LeaseRequest(BaseModel):
    """A lease request resolved by the server (type chosen, duration in seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: int = Field(
        ge=1,
        le=MAX_GPUS_PER_LEASE,
        description="GPUs wanted (for an elastic lease: the most it may grow to).",
    )
    min_gpus: int | None = Field(
        default=None,
        ge=1,
        le=MAX_GPUS_PER_LEASE,
        description="Elastic lease: the fewest GPUs it may run with; unset: exactly `gpus`.",
    )
    gpu_type: str = Field(pattern=GPU_TYPE_PATTERN, description="GPU type name, e.g. A100.")
    duration_s: float = Field(
        gt=0, le=MAX_DURATION_S, description="How long the lease may hold its GPUs (seconds)."
    )
    preemptible: bool = Field(
        default=False, description="Whether the scheduler may preempt it to reclaim GPUs."
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Priority among the tenant's own leases; higher may preempt lower.",
    )
    strategy: Strategy = Field(
        default="PACK",
        description="Placement: PACK (few nodes), STRICT_PACK (one node), SPREAD (many nodes).",
    )
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=REQUEST_ID_PATTERN,
        description="Client idempotency key: the same key returns the same lease.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> LeaseRequest:
        if self.min_gpus is not None and self.min_gpus > self.gpus:
            raise ValueError(f"min_gpus <= gpus (got min_gpus={self.min_gpus}, gpus={self.gpus})")
        return self


@dataclass
class Lease:
    """A lease as stored; the controller is its only writer."""

    id: str
    tenant: str
    state: LeaseState
    gpus: int
    min_gpus: int
    gpu_type: str
    strategy: str
    duration_s: float
    preemptible: bool
    price_per_hour: float
    created_at: float
    request_id: str | None = None
    reason: str | None = None
    reason_detail: str | None = None
    placement_group: str | None = None
    placement_group_id: str | None = None
    nodes: list[str] = field(default_factory=list)
    admitted_at: float | None = None
    reserved_at: float | None = None
    ended_at: float | None = None
    expires_at: float | None = None
    workload: str | None = None
    preempt_at: float | None = None
    priority: int = 0
    last_checkpoint_at: float | None = None
    #: Preemptions of the same tenant's workload (same ``workload`` label) in the 24 hours
    #: before this lease was bound; set at bind time.
    restarts: int = 0
    #: The owning tenant's immutable id (``tenant`` is its name, for display).
    tenant_id: str | None = None

    @property
    def held_gpus(self) -> int:
        """GPUs assigned now (an elastic lease may hold fewer than ``gpus``, its maximum)."""
        return len(self.nodes)

    def to_dict(self) -> dict[str, Any]:
        from fastgpu.timeutil import iso

        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state.value,
            "gpus": self.gpus,
            "min_gpus": self.min_gpus,
            "held_gpus": self.held_gpus,
            "gpu_type": self.gpu_type,
            "strategy": self.strategy,
            "duration_s": self.duration_s,
            "preemptible": self.preemptible,
            "placement_group": self.placement_group,
            "placement_group_id": self.placement_group_id,
            "nodes": list(self.nodes),
            "reason": self.reason,
            "reason_detail": self.reason_detail,
            "request_id": self.request_id,
            "created_at": iso(self.created_at),
            "admitted_at": iso(self.admitted_at),
            "reserved_at": iso(self.reserved_at),
            "expires_at": iso(self.expires_at),
            "ended_at": iso(self.ended_at),
            "workload": self.workload,
            "preempt_at": iso(self.preempt_at),
            "priority": self.priority,
            "last_checkpoint_at": iso(self.last_checkpoint_at),
            "restarts": self.restarts,
        }
