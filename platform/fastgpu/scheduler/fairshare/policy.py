"""The fair-share policy object: settings in, one :class:`~.cycle.Cycle` per snapshot.

Responsibility: the :class:`~fastgpu.scheduler.policy.Policy` the controller and the simulator
call. It holds only settings; each ``schedule`` call runs a fresh cycle, so the policy is
stateless between calls (the caller keeps decayed usage, leases and indexes).
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

    def schedule(self, snapshot: Snapshot) -> Decisions:
        # A cycle allocates tens of thousands of short-lived objects and creates no reference
        # cycles: the cyclic collector would only rescan the snapshot, adding pauses of tens of
        # milliseconds (measured: bench/bench_scheduler.py). It runs again right after.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return Cycle(snapshot, self.settings).run()
        finally:
            if enabled:
                gc.enable()
