"""One scheduling cycle: the numbered pipeline of ``docs/design/scheduler.md`` over a snapshot.

Responsibility: wire the steps of one cycle together and run them in order; each step lives in
its own module and reads and updates the cycle's shared :class:`CycleState`:

1. index the snapshot into per-GPU-type ledgers (:mod:`.ledgers`);
2. time limits (:mod:`.time_limits`);
3. gatekeeping per tenant: infeasible and over-budget requests (:mod:`.gatekeeping`);
4. admission in fair-share order (:mod:`.admission`, ranks from :mod:`.ranking`), each head
   through 5. the fixed-borrowing, quota, capacity and fragmentation tests (:mod:`.fit`),
   6. make room: shrink, reclaim, priority preemption (:mod:`.make_room`), and
   7. backfill (:mod:`fastgpu.scheduler.backfill`);
8. growth of elastic leases (:mod:`.grow`);
9. wake-up time and the decisions (:mod:`.time_limits`).

Every reason a waiting or rejected request gets comes from one place, :mod:`.reasons`.

Invariant: a cycle is used once; the snapshot is never changed; the only state it carries to
the next cycle is when each waiting request became owed its GPUs (``owed``, step 4).
"""

from __future__ import annotations

from fastgpu.scheduler.decisions import Decisions
from fastgpu.scheduler.fairshare.admission import Admission
from fastgpu.scheduler.fairshare.fit import FitTest
from fastgpu.scheduler.fairshare.gatekeeping import Gatekeeper
from fastgpu.scheduler.fairshare.grow import grow
from fastgpu.scheduler.fairshare.ledgers import index_snapshot
from fastgpu.scheduler.fairshare.make_room import MakeRoom
from fastgpu.scheduler.fairshare.ranking import Ranking
from fastgpu.scheduler.fairshare.reasons import WaitReasons
from fastgpu.scheduler.fairshare.settings import FairShareSettings
from fastgpu.scheduler.fairshare.time_limits import expire, wake_at
from fastgpu.scheduler.snapshot import Snapshot


class Cycle:
    """One scheduling cycle; :meth:`run` once."""

    def __init__(
        self, snap: Snapshot, settings: FairShareSettings, owed: dict[str, float] | None = None
    ) -> None:
        self.snap = snap
        self.s = settings
        #: Pending lease id -> owed since (step 4), the policy's memory between cycles; this
        #: cycle reads and updates it.
        self.owed = owed

    def run(self) -> Decisions:
        s = self.s
        state = index_snapshot(self.snap, s)  # 1
        ranking = Ranking(state, self.owed)
        reasons = WaitReasons(state)
        room = MakeRoom(state)
        if s.enforce_time_limits:
            expire(state)  # 2
        queues, index = Gatekeeper(state, ranking, reasons).run()  # 3
        fit = FitTest(state, ranking, reasons, room)
        Admission(state, ranking, reasons, fit).run(queues, index)  # 4, each head 5-7
        ranking.settle()
        if s.elastic:
            grow(state, ranking)  # 8
        return state.decisions(wake_at(state, room.young_until))  # 9
