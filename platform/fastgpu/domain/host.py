"""GPU hosts run by agents: their states, the one table of legal transitions, and the record
the store keeps (the host's name, the hash of its token, its drain).

States (:class:`HostState`)::

    PENDING  --register-->  READY  --drain-->  DRAINING  --empty-->  DRAINED
       ^                    |  ^                  |   |                 |
       |                    |  +----undrain-------+---+-----------------+
       |                    v                     v                     v
       +------ (never) ---  LOST  <-- no heartbeat within lost_after_s --+
                             |
                             +--register--> READY (or DRAINING when a drain still stands)

* PENDING: declared (``fastgpu host add`` or cluster.yaml) but its agent never registered;
  not schedulable.
* READY: registered and heartbeating: schedulable.
* DRAINING: no new placements; the leases on it were told to leave (preemption with their
  grace, or an elastic shrink); becomes DRAINED when nothing is left on it.
* DRAINED: empty and unschedulable until ``undrain``.
* LOST: no heartbeat for ``lost_after_s``: its raylets count as gone (its leases shrink or fail
  by the lease policy); a raylet still running there when it comes back is stale and stopped.

No state is terminal: a host can always come back. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class HostState(str, Enum):
    PENDING = "PENDING"
    READY = "READY"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"
    LOST = "LOST"

    @property
    def schedulable(self) -> bool:
        """Whether new raylets may be placed on a host in this state."""
        return self is HostState.READY

    @property
    def alive(self) -> bool:
        """Whether its raylets count as running (the agent answers)."""
        return self in (HostState.READY, HostState.DRAINING, HostState.DRAINED)


#: prev -> the states it may go to, and the event that moves it.
TRANSITIONS: dict[HostState, dict[HostState, str]] = {
    HostState.PENDING: {HostState.READY: "register", HostState.DRAINING: "register"},
    HostState.READY: {HostState.DRAINING: "drain", HostState.LOST: "heartbeat timeout"},
    HostState.DRAINING: {
        HostState.DRAINED: "empty",
        HostState.READY: "undrain",
        HostState.LOST: "heartbeat timeout",
    },
    HostState.DRAINED: {
        HostState.READY: "undrain",
        HostState.DRAINING: "a lease still on it",
        HostState.LOST: "heartbeat timeout",
    },
    HostState.LOST: {HostState.READY: "register", HostState.DRAINING: "register"},
}


class HostTransitionError(ValueError):
    """A transition the table does not allow (a bug in the caller)."""


def check_transition(prev: HostState, nxt: HostState) -> str:
    """The event that moves ``prev`` to ``nxt``; raise :class:`HostTransitionError` if none."""
    if prev == nxt:
        return "unchanged"
    event = TRANSITIONS[prev].get(nxt)
    if event is None:
        allowed = ", ".join(s.value for s in TRANSITIONS[prev]) or "none"
        raise HostTransitionError(
            f"host cannot go {prev.value} -> {nxt.value} (from {prev.value}: {allowed})"
        )
    return event


def after_register(prev: HostState, drain_requested: bool) -> HostState:
    """Where a registering agent's host goes: READY, or DRAINING when an operator's drain
    still stands (a drain survives the host's loss and the server's restart)."""
    del prev
    return HostState.DRAINING if drain_requested else HostState.READY


def is_lost(last_seen: float, now: float, lost_after_s: float) -> bool:
    """Whether a host last heard from at ``last_seen`` is lost at ``now``."""
    return now - last_seen > lost_after_s


@dataclass(frozen=True)
class HostRecord:
    """What the store keeps of a host an agent runs: its token's hash and its drain."""

    name: str
    token_hash: str
    created_at: float
    #: Drain, if one stands: ``{"requested_at", "deadline_s", "drained_at"}``; {} otherwise.
    drain: dict[str, Any] = field(default_factory=dict)
