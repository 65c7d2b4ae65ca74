"""Backfill reservations: the earliest start of a blocked head, and whether a smaller request
may start now without delaying it (EASY backfill, placement-aware).

Responsibility: compute a :class:`Reservation` for the first request of a GPU type that is
blocked for capacity, from the expected ends of running leases (``started_at + duration_s``,
the requested duration being the only estimate we have), and check candidates against it.

Invariant: a candidate admitted through :meth:`Reservation.allows` either ends before the shadow
time or leaves room for the head at the shadow time, so under the duration estimates the head
starts no later than it would have without backfill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fastgpu.scheduler.pool import FreePool


@dataclass
class Reservation:
    lease_id: str
    gpus: int
    strategy: str
    #: When the head is expected to fit.
    shadow_time: float
    #: Free map expected at the shadow time, less what backfilled leases keep past it.
    shadow_pool: FreePool

    def allows(
        self, now: float, duration_s: float, placement: Mapping[str, int], *, force: bool = False
    ) -> bool:
        """Whether a lease placed at ``placement`` for ``duration_s`` keeps the head's start;
        if so (or if ``force``: a guaranteed request that outranks the head) the reservation
        is updated to account for it."""
        if now + duration_s <= self.shadow_time:
            return True
        trial = self.shadow_pool.copy()
        # Clamp: a node's GPUs free now are free at the shadow time too, unless a forced
        # admission already took them out of the expected map.
        trial.take({n: min(g, trial.free.get(n, 0)) for n, g in placement.items()})
        if not force and trial.place(self.gpus, self.strategy) is None:
            return False
        self.shadow_pool = trial
        return True


def reserve(
    lease_id: str,
    gpus: int,
    strategy: str,
    pool: FreePool,
    ends: Iterable[tuple[float, str, Mapping[str, int]]],
) -> Reservation | None:
    """The head's reservation: walk running leases by expected end (time, id, placement),
    freeing their GPUs on a copy of the free map until the head fits. None if it never does."""
    what_if = pool.copy()
    for end, _lid, placement in sorted(ends, key=lambda e: (e[0], e[1])):
        what_if.give(placement)
        if what_if.place(gpus, strategy) is not None:
            return Reservation(lease_id, gpus, strategy, end, what_if)
    return None
