"""How many GPUs an endpoint's lease should hold, from what Serve wants.

Serve's autoscaler decides replicas (between the endpoint's min and max, from ongoing
requests); the platform follows with GPUs: the lease of an endpoint holds
``replicas wanted x gpus_per_replica``, plus one replica's GPUs of *surge* while an update
rolls (the new version starts beside the old one). With nothing wanted for ``idle_s`` the
lease is released (scale to zero): a lease cannot hold 0 GPUs. The next request makes Serve
want a replica again; the platform then asks for a new lease and the request waits for it.

The lease grows *one replica's GPUs per pass* (asked for, then its maximum raised): the
scheduler fills each step with a raylet of its own, so a replica's GPUs are a raylet of their
own and a shrink can stop the raylet of a replica Serve stopped without the one it kept (a
raylet's GPUs are fixed: a raylet holding two replicas' GPUs stops whole when the lease keeps
one of them). Shrinks are at once, to what is wanted, once Serve has picked the replicas it
stops (no more RUNNING than it wants: the others are STOPPING), so that the pool can tell
which raylets hold the replicas it keeps.

:func:`decide` is the whole rule; the service acts on its :class:`Plan`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(str, enum.Enum):
    NONE = "none"  # the lease holds what is wanted (or is on its way)
    REQUEST = "request"  # no lease: ask for one of ``gpus`` (min one replica's)
    RESIZE = "resize"  # the lease's maximum becomes ``gpus`` (grow by the scheduler; shrink now)
    RELEASE = "release"  # nothing wanted for long enough: give the GPUs back


#: Serve replica states on the way out: stopping, or on a draining raylet (replaced elsewhere
#: first). Every other state is a replica Serve keeps, running or not yet.
LEAVING_STATES = ("STOPPING", "PENDING_MIGRATION")


@dataclass(frozen=True)
class Demand:
    """What Serve wants for one endpoint now (every version together)."""

    replicas_wanted: int  # Serve's target replicas, summed over the endpoint's applications
    updating: bool  # a new version is rolling: ask for one replica's GPUs of surge
    idle_for_s: float  # seconds since Serve last wanted a replica (0 while it does)
    #: Serve's RUNNING replicas (None: not known). More than wanted: Serve has not yet picked
    #: the replicas it stops (they turn STOPPING), and a shrink waits for that.
    #: Replicas Serve has that are not on their way out (any state but LEAVING_STATES): a
    #: shrink waits until that is no more than it wants, so the replicas it keeps are known.
    replicas_running: int | None = None


@dataclass(frozen=True)
class Plan:
    action: Action
    gpus: int = 0
    why: str = ""


def wanted_gpus(demand: Demand, gpus_per_replica: int, min_replicas: int, max_replicas: int) -> int:
    """GPUs for what Serve wants, clamped to the endpoint's bounds (surge on top)."""
    replicas = min(max(demand.replicas_wanted, min_replicas), max_replicas)
    if demand.updating:
        replicas = max(replicas, 1) + 1
    return replicas * gpus_per_replica


def decide(
    demand: Demand,
    lease_max_gpus: int | None,
    gpus_per_replica: int,
    min_replicas: int,
    max_replicas: int,
    idle_s: float,
) -> Plan:
    """What to do with the endpoint's lease (``lease_max_gpus``: its current maximum, None when
    it has no live lease)."""
    want = wanted_gpus(demand, gpus_per_replica, min_replicas, max_replicas)
    why = f"Serve wants {want // gpus_per_replica} replicas"
    if lease_max_gpus is None:
        if want > 0:
            return Plan(Action.REQUEST, min(want, gpus_per_replica), why)
        return Plan(Action.NONE, 0, "scaled to zero")
    if want == 0:
        if demand.idle_for_s >= idle_s:
            return Plan(Action.RELEASE, 0, f"no replica wanted for {demand.idle_for_s:.0f} s")
        return Plan(Action.NONE, lease_max_gpus, "idle; waiting before scaling to zero")
    if want > lease_max_gpus:  # a replica's GPUs at a time: a raylet each
        return Plan(Action.RESIZE, min(want, lease_max_gpus + gpus_per_replica), why)
    if want < lease_max_gpus:
        running = demand.replicas_running
        if running is not None and running > demand.replicas_wanted:
            # the pool keeps the raylets of the replicas Serve keeps: known once it chose
            return Plan(Action.NONE, lease_max_gpus, "waiting for Serve to pick what it stops")
        return Plan(Action.RESIZE, want, why)
    return Plan(Action.NONE, want, "holds what is wanted")
