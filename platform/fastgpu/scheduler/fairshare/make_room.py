"""Step 6 of a cycle: make room for a blocked request (shrink, reclaim, priority preemption).

Responsibility: decide *who may* give GPUs to a blocked request and commit the cheapest
sufficient choice: build the candidates in order (incoming leases, elastic shrinks, then
victims by least lost work), let :func:`fastgpu.scheduler.preemption.select` pick a minimal
prefix as a what-if, then commit (announce preemptions, shrink, hold the room).

Vocabulary: *victim* (a preemptible running lease past its minimum runtime: ``min_runtime_s``,
doubled per earlier preemption of its workload up to ``min_runtime_backoff`` times, unless it
checkpointed since it started); *lost work* (GPU-seconds since its last checkpoint, else its
start); *reclaim* (a request within its tenant's nominal takes GPUs from borrowers); *priority
preemption* (a request takes GPUs from its own tenant's lower-priority leases); *young* (a
candidate skipped for its minimum runtime: the cycle wakes when the first becomes eligible).

Invariants: shrinking takes only what the owner holds beyond nominal (or the requester's own
GPUs); a victim is never chosen twice (touched, claimed); at most ``max_preemption_attempts``
searches per cycle, each over at most the 128 cheapest candidates; a search that found nothing
is not repeated for the same requester shape until the cycle's state changes; once room is
made, the GPUs free now that the fit counts on and the requester's quota room are held for it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from fastgpu.scheduler.decisions import Preempt, PreemptReason, Resize, ResizeReason
from fastgpu.scheduler.fairshare.ledgers import CycleState, TypeState
from fastgpu.scheduler.preemption import INCOMING, PREEMPT, SHRINK, Candidate, select, shrink_frees
from fastgpu.scheduler.snapshot import LeaseView


class Victims:
    """Preemptible leases of one type, cheapest victim first (least lost work, then fewest
    GPUs, then id), sorted only as far as the cycle's make-room searches read: a heap, popped
    into ``rows`` on demand (searches stop after a few dozen of thousands)."""

    __slots__ = ("_heap", "rows")

    def __init__(self, keyed: list[tuple[float, int, str, LeaseView]]) -> None:
        heapq.heapify(keyed)  # ids are unique: the tuples never compare the leases
        self._heap = keyed
        #: (lost work, id, lease, tenant, priority), in victim order.
        self.rows: list[tuple[float, str, LeaseView, str, int]] = []

    def more(self, n: int = 32) -> bool:
        """Append up to ``n`` more rows; False if none was left."""
        heap = self._heap
        if not heap:
            return False
        pop = heapq.heappop
        append = self.rows.append
        for _ in range(min(n, len(heap))):
            cost, _g, rid, r = pop(heap)
            append((cost, rid, r, r.tenant, r.priority))
        return True


class MakeRoom:
    """Step 6 of one cycle: make-room searches and their commits."""

    def __init__(self, state: CycleState) -> None:
        self.state = state
        self.s = state.s
        #: Make-room searches so far (bounded by ``max_preemption_attempts``).
        self.attempts = 0
        #: Earliest time a candidate skipped for its minimum runtime becomes eligible.
        self.young_until: float | None = None
        #: Searches that found nothing, by requester shape; the same search in the same state
        #: finds nothing again. Cleared on every change (:meth:`CycleState.changed`).
        self._failed: set[tuple[str, str, int, int, str, int]] = set()
        state.on_change(self._failed.clear)  # the set's method: no reference cycle

    def has_lower_priority(self, lease: LeaseView, ts: TypeState) -> bool:
        """Whether the requester's tenant runs a preemptible lease of lower priority."""
        low = ts.min_preemptible_priority.get(lease.tenant)
        return self.s.preemption and low is not None and low < lease.priority

    def may_make_room(self, lease: LeaseView, ts: TypeState, k: int) -> bool:
        """O(1) pre-check, so that long queues of hopeless requests stay cheap."""
        if self.attempts >= self.s.max_preemption_attempts:
            return False
        if len(ts.incoming) > len(self.state.claimed):
            return True
        if self.s.elastic and ts.elastic_over_min:
            return True
        if not self.s.preemption:
            return False
        if self.has_lower_priority(lease, ts):
            return True
        ledger = ts.ledger
        return ledger.within_nominal(lease.tenant, k) and any(
            ledger.used.get(o, 0) > ledger.nominal(o)
            for o in ts.preemptible_owners
            if o != lease.tenant
        )

    def make_room(self, lease: LeaseView, ts: TypeState, k: int) -> list[str] | None:
        """Shrink, reclaim or preempt for ``k`` GPUs of ``lease`` (what-if, then commit);
        what each chosen candidate does (for the request's reason), or None if no room."""
        if not self.may_make_room(lease, ts, k):
            return None
        self.attempts += 1
        memo = (lease.tenant, lease.gpu_type, k, lease.min_gpus, lease.strategy, lease.priority)
        if memo in self._failed:
            return None  # the same search in the same state: nothing again
        state = self.state
        chosen = select(
            self._candidates(lease, ts), ts.pool, k, lease.strategy, ts.ledger, lease.tenant
        )
        if chosen is None:
            self._failed.add(memo)
            return None
        ledger = ts.ledger
        # Hold for the requester, in this cycle, the GPUs free now that its fit counts on, and
        # its quota room: else a later, lower-ranked request takes them and the room made by
        # the victims falls short when they leave.
        trial = ts.pool.copy()
        for cand in chosen:
            trial.give(cand.frees)
        spot = trial.place(k, lease.strategy) or {}
        ts.pool.take({n: min(g, ts.pool.free.get(n, 0)) for n, g in spot.items()})
        ledger.add(lease.tenant, k)
        if state.fixed_rule and not lease.preemptible:
            ledger.add_fixed(lease.tenant, k)
        state.changed()
        parts: list[str] = []
        # A lease chosen both to shrink and to go: going frees all of it, so it only goes.
        going = {c.lease.id for c in chosen if c.kind == PREEMPT}
        chosen = [c for c in chosen if not (c.kind == SHRINK and c.lease.id in going)]
        for cand in chosen:
            victim = cand.lease
            if cand.kind == INCOMING:
                state.claimed.add(victim.id)
                parts.append(f"{victim.id} (already leaving)")
                continue
            state.touched.add(victim.id)
            if cand.kind == SHRINK:
                new = dict(victim.placement)
                for node, n in cand.frees.items():
                    new[node] -= n
                    if not new[node]:
                        del new[node]
                state.resizes.append(Resize(victim.id, new, ResizeReason.SHRINK))
                parts.append(f"shrinking {victim.id} by {cand.gpus}")
            else:
                reason = (
                    PreemptReason.PRIORITY
                    if victim.tenant == lease.tenant
                    else PreemptReason.RECLAIM
                )
                state.preempts.append(
                    Preempt(
                        victim.id,
                        reason,
                        f"{reason} for {lease.id} of tenant {lease.tenant}",
                        self.s.grace_s,
                    )
                )
                parts.append(f"preempting {victim.id}")
        ts.capacity_blocked = True
        return parts

    def _candidates(self, lease: LeaseView, ts: TypeState) -> Iterator[Candidate]:
        """Incoming first, then shrinks, then victims by lost work and size; lazily, so a
        search that fits after a few victims does not build the rest."""
        claimed = self.state.claimed
        for v in ts.incoming:
            if v.id not in claimed:
                yield Candidate(v, INCOMING, v.placement, (0.0,))
        ledger = ts.ledger
        name = lease.tenant
        touched = self.state.touched
        if self.s.elastic and ts.elastic_over_min:
            shrinks: list[Candidate] = []
            for r in ts.running:
                if r.id in touched or r.preempt_at is not None:
                    continue
                extra = r.held_gpus - r.min_gpus
                if extra <= 0:
                    continue
                if r.tenant != name:
                    # Take only what the owner holds beyond nominal: never break a guarantee.
                    extra = min(extra, ledger.used.get(r.tenant, 0) - ledger.nominal(r.tenant))
                if extra > 0:
                    shrinks.append(
                        Candidate(r, SHRINK, shrink_frees(r, extra), (-float(extra), 0.0))
                    )
            shrinks.sort(key=lambda c: (c.cost, c.lease.id))
            yield from shrinks
        if not self.s.preemption:
            return
        victims = ts.victims
        if victims is None:
            victims = ts.victims = self._sort_victims(ts)
        rows = victims.rows
        within = ledger.within_nominal(name, lease.min_gpus)
        borrowing: dict[str, bool] = {}
        i = 0
        while i < len(rows) or victims.more():
            cost, rid, r, owner, priority = rows[i]
            i += 1
            if rid in touched:
                continue
            if owner == name:
                if priority >= lease.priority:
                    continue
            else:
                if not within:
                    continue
                b = borrowing.get(owner)
                if b is None:
                    b = borrowing[owner] = ledger.used.get(owner, 0) > ledger.nominal(owner)
                if not b:
                    continue
            yield Candidate(r, PREEMPT, r.placement, (cost,))

    def _sort_victims(self, ts: TypeState) -> Victims:
        """Preemptible leases of a type past their minimum runtime, least lost work
        (GPU-seconds since the last checkpoint, else the start) first, then fewest GPUs, then
        id; once per cycle, with what the candidate scan reads of each. The earliest time a
        younger one becomes eligible goes to ``young_until`` (the cycle wakes then)."""
        now = self.state.now
        min_runtime = self.s.min_runtime_s
        backoff = self.s.min_runtime_backoff
        keyed = []
        young_until = self.young_until
        for r in ts.running:
            if not r.preemptible or r.preempt_at is not None:
                continue
            started = r.started_at
            ckpt = r.last_checkpoint_at
            protect = min_runtime
            if r.restarts and (ckpt is None or started is None or ckpt < started):
                # Restarted and no checkpoint since: protected longer (see the settings).
                protect = min_runtime * (1 << min(r.restarts, backoff))
            if started is not None and now - started < protect:
                ready = started + protect
                if young_until is None or ready < young_until:
                    young_until = ready
                continue
            g = sum(r.placement.values())
            begun = started if started is not None else now
            since = begun if ckpt is None else max(begun, ckpt)
            keyed.append((g * max(0.0, now - since), g, r.id, r))
        self.young_until = young_until
        return Victims(keyed)
