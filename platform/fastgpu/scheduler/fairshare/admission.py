"""Step 4 of a cycle: admission in fair-share order, each tenant offering its head.

Responsibility: walk the tenant queues through a heap keyed by
:meth:`~fastgpu.scheduler.fairshare.ranking.Ranking.key` (requests within nominal first, in
submit order; then borrowers by tenant priority and fair-share score), trying each head
(:class:`~fastgpu.scheduler.fairshare.fit.FitTest`, steps 5-7) and queueing every request that
waits with its reason. A tenant stays at the front while its next key still ranks first.

Vocabulary: *strict FIFO* (a tenant queueing mode: a blocked head blocks the rest of its queue
for this cycle, which wait "behind" it); *best-effort FIFO* (the next request is tried).

Invariants: every request of the queues gets exactly one decision (admit, or a ``Queue`` when
reasons are on); known-blocked requests are passed over without a heap operation, and with
reasons off and the caller's index, runs of them are jumped over by shape (nothing changes
until the next request is actually tried); with reasons off the walk stops once only
borrowers are left and nothing more can fit; while another tenant's head within nominal of
the same GPU type waits in the heap, a request is tried without borrowing (an elastic one
gets only its nominal part now, the rest in step 8: docs/design/scheduler.md, "Only the
nominal part of an elastic request is owed").
"""

from __future__ import annotations

import heapq
from bisect import bisect_left

from fastgpu.scheduler.decisions import Queue
from fastgpu.scheduler.fairshare.fit import FitTest
from fastgpu.scheduler.fairshare.gatekeeping import Queues
from fastgpu.scheduler.fairshare.ledgers import CycleState
from fastgpu.scheduler.fairshare.ranking import Ranking
from fastgpu.scheduler.fairshare.reasons import Blocked, WaitReasons
from fastgpu.scheduler.index import PendingIndex
from fastgpu.scheduler.snapshot import LeaseView


class Admission:
    """Step 4 of one cycle."""

    def __init__(
        self, state: CycleState, ranking: Ranking, reasons: WaitReasons, fit: FitTest
    ) -> None:
        self.state = state
        self.ranking = ranking
        self.reasons = reasons
        self.fit = fit

    def run(self, queues: Queues, index: PendingIndex | None) -> None:
        """4. Tenants in fair-share order, each offering its head; 5-7 per head.

        ``index``: the pending index whose queues ``queues`` are (None if gatekeeping
        filtered them), which lets the walk jump over runs of known-blocked requests."""
        state = self.state
        cursor = dict.fromkeys(queues, 0)
        explain = state.s.explain
        skip = not explain and index is not None
        key_of = self.ranking.key
        tenant_of = self.ranking.tenant
        known_blocked = self.fit.known_blocked
        try_admit = self.fit.try_admit
        queued = state.queued
        heap = [(key_of(name, q[0]), name) for name, q in queues.items() if q]
        heapq.heapify(heap)
        # GPU type -> tenants in the heap whose head is owed (within nominal), and the type
        # of each such head: while another one waits, a request may not borrow.
        owed_heads: dict[str, int] = {}
        owed_type: dict[str, str] = {}
        for key, name in heap:
            if not key[0]:
                gpu_type = owed_type[name] = queues[name][0].gpu_type
                owed_heads[gpu_type] = owed_heads.get(gpu_type, 0) + 1
        while heap:
            if not explain and heap[0][0][0] and self._nothing_more_fits():
                break  # only borrowers left, no free GPU, nothing to shrink or reclaim
            popped, name = heapq.heappop(heap)
            if not popped[0]:
                owed_heads[owed_type[name]] -= 1
            q = queues[name]
            i = cursor[name]
            known: Blocked | None = None  # q[i] known to be blocked (tested just before)
            strict = tenant_of(name).queueing == "strict_fifo"
            while i < len(q):
                lease = q[i]
                i += 1
                blocked = known if known is not None else known_blocked(lease)
                known = None
                if blocked is None:
                    blocked = try_admit(lease, borrow=not owed_heads.get(lease.gpu_type))
                if blocked is not None:
                    if explain:
                        queued.append(Queue(lease.id, blocked.code, blocked.detail))
                    if strict:
                        if explain:
                            behind, lower_code, same_code = self.reasons.behind(lease, blocked)
                            prio = lease.priority
                            append = queued.append
                            for rest in q[i:]:
                                code = lower_code if rest.priority < prio else same_code
                                append(Queue(rest.id, code, behind))
                        i = len(q)
                        break
                    if i < len(q):
                        known = known_blocked(q[i])
                        if known is not None:
                            if not skip:
                                continue  # a known failure: no heap traffic
                            # Known failures only emit nothing: jump to the first request
                            # that is not one (state cannot change before it is tried).
                            assert index is not None
                            known = None
                            i = self._next_unblocked(index, name, q, i)
                            if i >= len(q):
                                break
                if i < len(q):
                    key = key_of(name, q[i])
                    if heap and heap[0][0] < key:
                        heapq.heappush(heap, (key, name))
                        if not key[0]:
                            gpu_type = owed_type[name] = q[i].gpu_type
                            owed_heads[gpu_type] = owed_heads.get(gpu_type, 0) + 1
                        break
            cursor[name] = i

    def _next_unblocked(self, index: PendingIndex, name: str, q: list[LeaseView], i: int) -> int:
        """The first position ``>= i`` of tenant ``name``'s queue whose request is not known
        to be blocked now (``len(q)`` if none), looking once at each shape, not each request."""
        keys = index.tenant_keys(name)
        start = keys[i]
        best: tuple[int, float, str] | None = None
        reps = index.representatives(name)
        known_blocked = self.fit.known_blocked
        for shape, skeys in index.shape_keys(name).items():
            j = bisect_left(skeys, start)
            if j == len(skeys) or (best is not None and skeys[j] >= best):
                continue
            if known_blocked(reps[shape]) is None:
                best = skeys[j]
        if best is None:
            return len(q)
        return bisect_left(keys, best, i)

    def _nothing_more_fits(self) -> bool:
        """No GPU free in any type and no way to make room for a borrowing request (borrowers
        never reclaim; priority preemption needs a lower-priority lease of the same tenant)."""
        state = self.state
        s = state.s
        for ts in state.types.values():
            if ts.pool.total > 0 or len(ts.incoming) > len(state.claimed):
                return False
            if s.elastic and ts.elastic_over_min:
                return False
            if (
                s.preemption
                and ts.min_preemptible_priority
                and state.max_pending_priority > min(ts.min_preemptible_priority.values())
            ):
                return False
        return True
