"""The fair-share policy object: settings in, one :class:`~.cycle.Cycle` per snapshot.

Responsibility: the :class:`~fastgpu.scheduler.policy.Policy` the controller and the simulator
call. It holds settings and one memory: when each waiting request was first seen within its
tenant's nominal ("owed since", the order of guaranteed requests, docs/design/scheduler.md,
"Guaranteed requests in the order they became owed"). Everything else is the caller's (decayed
usage, leases, indexes); each ``schedule`` call runs a fresh cycle. A fresh policy (a restart)
has an empty memory and orders guaranteed requests by submit time, as before the rule; time
going backwards (a caller replaying unrelated snapshots) empties it.
"""

from __future__ import annotations

import gc

from fastgpu.scheduler.decisions import Decisions
from fastgpu.scheduler.fairshare.cycle import Cycle
from fastgpu.scheduler.fairshare.settings import FairShareSettings
from fastgpu.scheduler.snapshot import Snapshot


class FairSharePolicy:
    """Weighted fair sharing with Kueue quotas, preemption, backfill, budgets and elastic leases.

    >>> FairSharePolicy().schedule(snapshot)  # doctest: +SKIP
    """

    def __init__(self, settings: FairShareSettings | None = None) -> None:
        self.settings = settings or FairShareSettings()
        #: Pending lease id -> ``now`` of the first cycle that saw it within nominal.
        self._owed: dict[str, float] = {}
        self._last_now = float("-inf")

    def schedule(self, snapshot: Snapshot) -> Decisions:
        # A cycle allocates tens of thousands of short-lived objects and creates no reference
        # cycles: the cyclic collector would only rescan the snapshot, adding pauses of tens of
        # milliseconds (measured: bench/bench_scheduler.py). It runs again right after.
        enabled = gc.isenabled()
        gc.disable()
        try:
            if snapshot.now < self._last_now:
                self._owed.clear()  # not the next cycle of the same cluster
            self._last_now = snapshot.now
            return Cycle(snapshot, self.settings, self._owed).run()
        finally:
            if enabled:
                gc.enable()
