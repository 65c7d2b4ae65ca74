"""Step 3 of a cycle: gatekeeping per tenant, and the tenant queues admission walks.

Responsibility: reject what can never run (``infeasible``: no empty cluster places it, or it
exceeds the tenant's ceiling, or what a non-preemptible lease of the tenant may hold), hold
back (or reject, by setting) the requests of a tenant whose period budget is spent
(``budget_exhausted``), and hand the rest to admission as per-tenant queues in queue order
(lease priority descending, then submit time, then id).

Vocabulary: *shape* (what the verdict depends on: tenant, GPU type, minimum GPUs, strategy,
and whether the fixed-borrowing rule applies); *empty cap* (the largest request of a strategy
an empty cluster places: the largest node for STRICT_PACK, every GPU of the type otherwise).

Invariants: the verdict is taken once per shape; when every shape may queue (the common case),
the pending index's queues are the tenant queues as they are, neither scanned nor sorted, and
admission may jump over runs of known-blocked requests with the index; otherwise decisions
come in the snapshot's order and the queues are rebuilt without the refused requests.
"""

from __future__ import annotations

from collections.abc import Collection
from operator import attrgetter

from fastgpu.scheduler.decisions import Reject
from fastgpu.scheduler.fairshare.ledgers import CycleState
from fastgpu.scheduler.fairshare.ranking import Ranking
from fastgpu.scheduler.fairshare.reasons import Blocked, WaitReasons
from fastgpu.scheduler.index import PendingIndex
from fastgpu.scheduler.snapshot import LeaseView

_GPU_TYPE = attrgetter("gpu_type")
_MIN_GPUS = attrgetter("min_gpus")
_PREEMPTIBLE = attrgetter("preemptible")

Queues = dict[str, list[LeaseView]]


class Gatekeeper:
    """Step 3 of one cycle."""

    def __init__(self, state: CycleState, ranking: Ranking, reasons: WaitReasons) -> None:
        self.state = state
        self.ranking = ranking
        self.reasons = reasons
        #: (type, strategy) -> the largest request an empty cluster can place.
        self._caps: dict[tuple[str, str], int] = {}

    def run(self) -> tuple[Queues, PendingIndex | None]:
        """3. Reject what can never run, hold back spent budgets; build tenant queues.

        Returns the tenant queues and the pending index they are the queues of (None when
        gatekeeping filtered them: the index no longer matches)."""
        state = self.state
        index = state.snap.pending_index
        if index is None:
            index = PendingIndex.build(state.snap.pending)
        # Per (tenant, type, min GPUs, strategy, fixed rule): None (may queue) or the
        # verdict (reason, reject?).
        verdicts: dict[tuple[str, str, int, str, bool], tuple[Blocked, bool] | None] = {}
        clean = True
        fixed_rule = state.fixed_rule
        # A caller's index keeps one lease per shape (few per tenant): read those; a fresh
        # one, the queues themselves (building representatives would cost more).
        kept = state.snap.pending_index is not None
        for tenant, q in index.queues.items():
            leases = index.representatives(tenant).values() if kept else q
            # What the verdict reads per tenant (budget) and per tenant and type (ceiling),
            # once: a shape that fits an empty cluster and the ceiling of a tenant without a
            # budget may queue; anything else takes the full verdict.
            no_budget = self.ranking.tenant(tenant).budget is None
            if no_budget and self._all_may_queue(tenant, leases):
                continue
            ceilings: dict[tuple[str, bool], int] = {}
            for lease in leases:
                gpu_type, lo, strategy = lease.gpu_type, lease.min_gpus, lease.strategy
                fixed = fixed_rule and not lease.preemptible
                if no_budget:
                    cap = self._empty_cap(gpu_type, strategy)
                    ceiling = ceilings.get((gpu_type, fixed))
                    if ceiling is None:
                        ledger = state.type_state(gpu_type).ledger
                        ceiling = ceilings[gpu_type, fixed] = (
                            ledger.fixed_ceiling(tenant) if fixed else ledger.ceiling(tenant)
                        )
                    if lo <= cap and lo <= ceiling:
                        continue  # may queue
                key = (tenant, gpu_type, lo, strategy, fixed)
                if key in verdicts:
                    continue
                verdict = verdicts[key] = self._verdict(lease)
                if verdict is not None:
                    clean = False
        if clean:
            queues = index.queues
            state.max_pending_priority = max(
                (q[0].priority for q in queues.values() if q), default=0
            )
            return queues, index
        # Some requests are rejected or held back: queues without them, decisions in the
        # snapshot's order.
        queues = {}
        for lease in state.snap.pending:
            fixed = fixed_rule and not lease.preemptible
            key = (lease.tenant, lease.gpu_type, lease.min_gpus, lease.strategy, fixed)
            verdict = verdicts.get(key)
            if verdict is None:
                tq = queues.get(lease.tenant)
                if tq is None:
                    tq = queues[lease.tenant] = []
                tq.append(lease)
            elif verdict[1]:
                state.rejects.append(Reject(lease.id, verdict[0].code, verdict[0].detail))
            else:
                state.queue(lease, verdict[0])
        for q in queues.values():
            q.sort(key=lambda lv: (-lv.priority, lv.submitted_at, lv.id))
        state.max_pending_priority = max(
            (p.priority for q in queues.values() for p in q[:1]), default=0
        )
        return queues, None

    def _all_may_queue(self, tenant: str, leases: Collection[LeaseView]) -> bool:
        """Whether every pending lease of a tenant without a budget may queue, decided per
        tenant with C-level passes (the per-lease loop of :meth:`run` is the exact answer;
        this is a sufficient test for the common case of one GPU type)."""
        types = set(map(_GPU_TYPE, leases))
        if len(types) != 1:
            return False
        (gpu_type,) = types
        ledger = self.state.type_state(gpu_type).ledger
        fixed = self.state.fixed_rule and not all(map(_PREEMPTIBLE, leases))
        ceiling = ledger.fixed_ceiling(tenant) if fixed else ledger.ceiling(tenant)
        hi = max(map(_MIN_GPUS, leases))
        if hi > ceiling or hi > self._empty_cap(gpu_type, "PACK"):
            return False
        biggest = self._empty_cap(gpu_type, "STRICT_PACK")
        if hi <= biggest:
            return True
        return max((lv.min_gpus for lv in leases if lv.strategy == "STRICT_PACK"), default=0) <= (
            biggest
        )

    def _empty_cap(self, gpu_type: str, strategy: str) -> int:
        """The largest request of ``strategy`` an empty cluster places (cached per cycle)."""
        cap = self._caps.get((gpu_type, strategy))
        if cap is None:
            totals = self.state.type_state(gpu_type).totals
            cap = totals.max_free if strategy == "STRICT_PACK" else totals.total
            self._caps[gpu_type, strategy] = cap
        return cap

    def _verdict(self, lease: LeaseView) -> tuple[Blocked, bool] | None:
        """(why, reject?) for a request that may not queue normally, else None."""
        ts = self.state.type_state(lease.gpu_type)
        reasons = self.reasons
        if lease.min_gpus > self._empty_cap(lease.gpu_type, lease.strategy):
            return reasons.never_fits(lease, ts), True
        ceiling = ts.ledger.ceiling(lease.tenant)
        if lease.min_gpus > ceiling:
            return reasons.over_ceiling(lease, ceiling), True
        if self.state.fixed_rule and not lease.preemptible:
            fixed_ceiling = ts.ledger.fixed_ceiling(lease.tenant)
            if lease.min_gpus > fixed_ceiling:
                return reasons.over_fixed_ceiling(lease, ts, fixed_ceiling), True
        spent = reasons.budget_spent(self.ranking.tenant(lease.tenant))
        if spent is not None:
            return spent, self.state.s.reject_over_budget
        return None
