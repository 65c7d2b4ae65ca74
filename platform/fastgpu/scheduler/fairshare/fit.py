"""Step 5 (and 7) of a cycle: the tests one request must pass to start now, and what a refusal
rules out for the rest of the cycle.

Responsibility: try one request: the fixed-borrowing rule (a non-preemptible request borrows
only unowned GPUs), the quota test (ceiling and ``B <= S``, largest elastic size that fits),
the capacity and fragmentation test (a gang placement on the free map, best fit) and the
backfill test against the GPU type's reservation (step 7). Admit it if all pass; else ask
:class:`~fastgpu.scheduler.fairshare.make_room.MakeRoom` (step 6) where room could help, set the
backfill reservation of the first request blocked for capacity, and return why it waits.

Vocabulary: *lo* (the fewest GPUs the request runs with: ``min_gpus``, or all of them with
elastic off); *known blocked* (a request the failure memos already refuse, so it is not tried).

Invariants: within one cycle free maps only shrink and quota room only falls, so a refusal of
k GPUs means refusal of every request of the same key asking for >= k: (tenant, type) for
quota and the fixed rule, (type, strategy) for placement. A quota refusal within nominal is
memoized only once no make-room search is left (room could be made otherwise); a placement
refusal is used only if no room could be made either. A known-blocked request gets the reason
trying it would give.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastgpu.scheduler.backfill import reserve
from fastgpu.scheduler.decisions import Admit
from fastgpu.scheduler.fairshare.ledgers import CycleState, TypeState
from fastgpu.scheduler.fairshare.make_room import MakeRoom
from fastgpu.scheduler.fairshare.ranking import Ranking
from fastgpu.scheduler.fairshare.reasons import Blocked, WaitReasons
from fastgpu.scheduler.snapshot import LeaseView

#: (tenant or type, tenant type or strategy) -> (smallest k refused, why).
_Failures = dict[tuple[str, str], tuple[int, Blocked]]


def _remember(table: _Failures, key: tuple[str, str], k: int, blocked: Blocked) -> None:
    """Record that ``k`` GPUs were refused for ``key`` (within a cycle, >= k is refused too)."""
    hit = table.get(key)
    if hit is None or hit[0] > k:
        table[key] = (k, blocked)


class FitTest:
    """Step 5 of one cycle: try requests, admit those that fit, remember refusals."""

    def __init__(
        self, state: CycleState, ranking: Ranking, reasons: WaitReasons, room: MakeRoom
    ) -> None:
        self.state = state
        self.s = state.s
        self.ranking = ranking
        self.reasons = reasons
        self.room = room
        # Read for every request of a long queue: one attribute, not two.
        self.explain = state.s.explain
        self.fixed_rule = state.fixed_rule
        self.type_state = state.type_state
        #: (tenant, type) -> smallest k refused by quota.
        self._quota_fail: _Failures = {}
        #: (tenant, type) -> smallest k of a non-preemptible request refused by the fixed rule.
        self._fixed_fail: _Failures = {}
        #: (type, strategy) -> smallest k that found neither a placement nor room.
        self._place_fail: _Failures = {}
        #: Reasons of requests known to find no placement, by shape; valid until the next
        #: change of a free map or quota ledger, so a long run of one shape costs one reason.
        self._by_shape: dict[tuple[str, str, int, int, str, bool], Blocked] = {}
        # The dict's own method: no reference back to this object, so a cycle's objects form
        # no reference cycle (the policy runs cycles with the collector off).
        state.on_change(self._by_shape.clear)

    def known_blocked(self, lease: LeaseView) -> Blocked | None:
        """Why ``lease`` would be refused if tried now, when the failure memos already tell;
        None: it must be tried."""
        lo = lease.min_gpus
        if self._fixed_fail and not lease.preemptible:
            hit = self._fixed_fail.get((lease.tenant, lease.gpu_type))
            if hit is not None and lo >= hit[0]:
                return hit[1]
        hit = self._quota_fail.get((lease.tenant, lease.gpu_type))
        if hit is not None and lo >= hit[0]:
            if self.explain:
                return self._refused_by_fixed(lease, lo) or self.reasons.quota(
                    lease, self.type_state(lease.gpu_type), lo
                )
            return hit[1]
        hit = self._place_fail.get((lease.gpu_type, lease.strategy))
        if hit is not None and lo >= hit[0]:
            ts = self.type_state(lease.gpu_type)
            if not self.room.may_make_room(lease, ts, lo):
                if self.explain:
                    key = (
                        lease.tenant,
                        lease.gpu_type,
                        lo,
                        lease.priority,
                        lease.strategy,
                        lease.preemptible,
                    )
                    why = self._by_shape.get(key)
                    if why is None:
                        why = self._refused_by_fixed(lease, lo)
                        if why is None:
                            why = self.reasons.capacity(lease, ts, lo)
                        self._by_shape[key] = why
                    return why
                return hit[1]
        return None

    def _refused_by_fixed(self, lease: LeaseView, k: int) -> Blocked | None:
        """The fixed-borrowing refusal of a non-preemptible request, if it applies: tested
        first when a request is tried, so a known-blocked request gets the same reason."""
        if not self.fixed_rule or lease.preemptible:
            return None
        ts = self.type_state(lease.gpu_type)
        if ts.ledger.fixed_fits(lease.tenant, k):
            return None
        return self._blocked_by_fixed(lease, ts, k)

    def try_admit(self, lease: LeaseView, *, borrow: bool = True) -> Blocked | None:
        """5. Admit ``lease`` if quota and placement allow; else 6 (make room), 7 (backfill).
        None if admitted, else why it waits.

        ``borrow`` False: another tenant's request within nominal still waits, so an elastic
        request takes at most its tenant's nominal room (or its minimum) now; the rest is
        borrowing, which ranks after that request: step 8 may grow it (``TypeState.capped``)."""
        state = self.state
        ts = state.type_state(lease.gpu_type)
        name = lease.tenant
        want = lease.gpus if self.s.elastic else max(lease.gpus, lease.min_gpus)
        lo = lease.min_gpus if self.s.elastic else want
        capped = False
        if not borrow and lo < want:
            owed = max(lo, ts.ledger.nominal(name) - ts.ledger.used.get(name, 0))
            if owed < want:
                want, capped = owed, True
        fixed = state.fixed_rule and not lease.preemptible
        if fixed and not ts.ledger.fixed_fits(name, lo):
            return self._blocked_by_fixed(lease, ts, lo)
        if lo == want:  # not elastic: all or nothing, one quota test
            k = want if ts.ledger.fits(name, want) else 0
        else:
            k = ts.ledger.room(name, want)
        if k < lo:
            return self._blocked_by_quota(lease, ts, lo)
        pool = ts.pool
        k = min(k, pool.total)
        if lease.strategy == "STRICT_PACK":
            k = min(k, pool.max_free)
        placement = pool.place(k, lease.strategy) if k >= lo else None
        if placement is None and k > lo:
            placement = pool.place(lo, lease.strategy)
        if placement is None:
            return self._blocked_by_capacity(lease, ts, lo)
        res = ts.reservation
        if res is not None and res.lease_id != lease.id:
            # A guaranteed request outranks a borrowing head: it goes, the head waits longer.
            got = sum(placement.values())
            force = (
                ts.reservation_borrows
                and ts.reservation_tenant != name
                and ts.ledger.within_nominal(name, got)
            )
            if not res.allows(state.now, lease.duration_s, placement, force=force):
                ts.capacity_blocked = True
                return self.reasons.backfill(res)
        k = sum(placement.values())
        pool.take(placement)
        ts.ledger.add(name, k)
        if fixed:
            ts.ledger.add_fixed(name, lo)
        state.changed()
        self.ranking.add_held(name, k)
        ts.ends.append((state.now + lease.duration_s, lease.id, placement))
        top = ts.admitted_priority.get(name, lease.priority)
        ts.admitted_priority[name] = max(top, lease.priority)
        if capped:
            ts.capped.append((len(state.admits), lease))
        state.admits.append(Admit(lease.id, placement))
        return None

    def _blocked_by_fixed(self, lease: LeaseView, ts: TypeState, k: int) -> Blocked:
        """A non-preemptible request whose minimum would borrow beyond the unowned GPUs: no
        preemption helps (what blocks it cannot be preempted), so no make-room search."""
        blocked = self.reasons.fixed(lease, ts, k)
        _remember(self._fixed_fail, (lease.tenant, lease.gpu_type), k, blocked)
        return blocked

    def _blocked_by_quota(self, lease: LeaseView, ts: TypeState, k: int) -> Blocked:
        name = lease.tenant
        if ts.ledger.within_nominal(name, k):
            # Within nominal, yet others hold our lendable GPUs (or the unlendable part of
            # someone else's): take them back.
            made = self.room.make_room(lease, ts, k)
            if made is not None:
                return self.reasons.making_room(made, over_quota=False)
            blocked = self.reasons.quota(lease, ts, k)  # "the rest are borrowed"
            if self.room.attempts >= self.s.max_preemption_attempts:
                # No make-room search is left in this cycle and quota room only falls: this
                # tenant's requests of >= k GPUs are blocked the same way.
                _remember(self._quota_fail, (name, lease.gpu_type), k, blocked)
            return blocked
        made = (
            self.room.make_room(lease, ts, k) if self.room.has_lower_priority(lease, ts) else None
        )
        if made is not None:
            return self.reasons.making_room(made, over_quota=True)
        blocked = self.reasons.quota(lease, ts, k)
        _remember(self._quota_fail, (name, lease.gpu_type), k, blocked)
        return blocked

    def _blocked_by_capacity(self, lease: LeaseView, ts: TypeState, k: int) -> Blocked:
        made = self.room.make_room(lease, ts, k)
        if made is not None:
            return self.reasons.making_room(made, over_quota=False)
        ts.capacity_blocked = True
        if self.s.backfill and ts.reservation is None:
            ts.reservation = reserve(lease.id, k, lease.strategy, ts.pool, self._ends(ts))
            ts.reservation_borrows = not ts.ledger.within_nominal(lease.tenant, k)
            ts.reservation_tenant = lease.tenant
        blocked = self.reasons.capacity(lease, ts, k)
        _remember(self._place_fail, (lease.gpu_type, lease.strategy), k, blocked)
        return blocked

    def _ends(self, ts: TypeState) -> list[tuple[float, str, Mapping[str, int]]]:
        """Expected (end, id, placement) of every lease holding GPUs of this type."""
        now = self.state.now
        touched = self.state.touched
        out = list(ts.ends)  # admitted in this cycle
        for lease in ts.running:
            if lease.id in touched and lease.preempt_at is None:
                continue  # being preempted or resized now: its end is not known here
            if lease.preempt_at is not None:
                end = lease.preempt_at
            else:
                start = lease.started_at if lease.started_at is not None else now
                end = start + lease.duration_s
            out.append((max(now, end), lease.id, lease.placement))
        return out
