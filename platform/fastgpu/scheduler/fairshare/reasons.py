"""The one producer of wait reasons: why a request does not start now, or never will.

Responsibility: turn a request that a step of the cycle refused into a :class:`Blocked`: a
:class:`~fastgpu.domain.lease.PendingReason` and a detail text that says what stands in the way
(numbers included). Every ``Queue`` and ``Reject`` a cycle returns carries a Blocked made
here; the steps decide *that* a request waits, only :class:`WaitReasons` says *why* in words.

Which reason, by the step that refused the request:

============================ =============================================================
gatekeeping (step 3)         ``infeasible`` (never fits the cluster, the tenant's ceiling, or
                             what a non-preemptible lease may hold); ``budget_exhausted``
fixed-borrowing rule (5)     ``over_quota`` (non-preemptible borrowers took the unowned GPUs)
quota (5)                    ``no_capacity`` (within nominal; the rest are borrowed),
                             ``lower_priority`` / ``fair_share_rank`` (others took the room
                             this cycle), ``over_quota`` (ceiling, or lendable supply)
placement (5)                ``lower_priority`` / ``fair_share_rank`` (it fitted at cycle
                             start), ``fragmentation``, ``no_capacity``
make room (6)                ``no_capacity`` (reclaim, shrink), ``over_quota`` (priority
                             preemption beyond nominal): "making room: ..."
backfill (7)                 ``backfill_window``
strict FIFO (4)              the head's reason, or ``lower_priority``: "behind <head>"
============================ =============================================================

Invariants: a text depends only on what it quotes, so quota texts are memoized per quoted
numbers for the whole cycle (a long queue of one tenant costs one text); the reason of a
request known to be blocked is the one trying it would give (the caller,
:meth:`~fastgpu.scheduler.fairshare.fit.FitTest.known_blocked`, asks for the same case).
"""

from __future__ import annotations

from fastgpu.domain.lease import PendingReason
from fastgpu.scheduler.backfill import Reservation
from fastgpu.scheduler.fairshare.ledgers import CycleState, TypeState
from fastgpu.scheduler.snapshot import LeaseView, TenantView

# The members, read once: attribute access on an Enum class is a Python-level call in 3.11
# (~80 ns), and a cycle under long queues makes thousands of reasons.
_OVER_QUOTA = PendingReason.OVER_QUOTA
_NO_CAPACITY = PendingReason.NO_CAPACITY
_FRAGMENTATION = PendingReason.FRAGMENTATION
_INFEASIBLE = PendingReason.INFEASIBLE
_BUDGET = PendingReason.BUDGET
_FAIR_SHARE = PendingReason.FAIR_SHARE
_BACKFILL = PendingReason.BACKFILL
_PRIORITY = PendingReason.PRIORITY
_PRIORITY_CODE = _PRIORITY.value


class Blocked:
    """Why a request waits (or is rejected): a reason and its detail text."""

    __slots__ = ("code", "detail", "reason")

    def __init__(self, reason: PendingReason, detail: str = "") -> None:
        self.reason = reason
        #: ``reason.value``: the stable string decisions carry (read as the member's plain
        #: attribute: ``.value`` and hashing an enum member are Python-level calls, and
        #: thousands of reasons are made per cycle).
        self.code: str = reason._value_
        self.detail = detail

    def __repr__(self) -> str:
        return f"Blocked({self.code!r}, {self.detail!r})"


#: Placement refused with reasons off: nobody reads the detail.
NO_CAPACITY = Blocked(_NO_CAPACITY)


class WaitReasons:
    """Reasons of one cycle (memos included); see the module docstring."""

    def __init__(self, state: CycleState) -> None:
        self.state = state
        self.explain = state.s.explain
        #: Quota reasons by what their text depends on (see :meth:`quota`); never cleared.
        self._quota: dict[tuple[str, str, int, int, int], Blocked] = {}

    # -- gatekeeping (step 3) --------------------------------------------------------------
    def never_fits(self, lease: LeaseView, ts: TypeState) -> Blocked:
        return Blocked(
            _INFEASIBLE,
            f"{lease.min_gpus} {lease.gpu_type} GPUs ({lease.strategy}) never fit: "
            f"{ts.totals.total} GPUs in the cluster, at most {ts.totals.max_free} per node",
        )

    def over_ceiling(self, lease: LeaseView, ceiling: int) -> Blocked:
        return Blocked(
            _INFEASIBLE,
            f"{lease.min_gpus} {lease.gpu_type} GPUs exceed tenant {lease.tenant}'s "
            f"limit of {ceiling} (nominal + borrowing limit)",
        )

    def over_fixed_ceiling(self, lease: LeaseView, ts: TypeState, fixed_ceiling: int) -> Blocked:
        return Blocked(
            _INFEASIBLE,
            f"{lease.min_gpus} {lease.gpu_type} GPUs exceed what a non-preemptible "
            f"lease of tenant {lease.tenant} may hold: {fixed_ceiling} (nominal "
            f"{ts.ledger.nominal(lease.tenant)} + {ts.ledger.unowned} unowned); "
            "mark it preemptible to borrow beyond that",
        )

    def budget_spent(self, tenant: TenantView) -> Blocked | None:
        """``budget_exhausted`` if the tenant's period budget is spent, else None."""
        b = tenant.budget
        if b is None:
            return None
        if b.gpu_hours is not None and tenant.period_gpu_hours >= b.gpu_hours:
            return Blocked(
                _BUDGET,
                f"tenant {tenant.name} used {tenant.period_gpu_hours:.1f} of {b.gpu_hours:g} "
                f"GPU-hours this {b.period}",
            )
        if b.money is not None and tenant.period_money >= b.money:
            return Blocked(
                _BUDGET,
                f"tenant {tenant.name} spent {tenant.period_money:.2f} of {b.money:g} "
                f"this {b.period}",
            )
        return None

    # -- strict FIFO (step 4) --------------------------------------------------------------
    def behind(self, head: LeaseView, blocked: Blocked) -> tuple[str, str, str]:
        """The reason of every request queued behind a blocked strict-FIFO head, as
        ``(detail, code of a lower-priority request, code of the others)``: plain strings,
        applied to the whole rest of the queue."""
        return f"behind {head.id} (strict_fifo)", _PRIORITY_CODE, blocked.code

    # -- quota (step 5) --------------------------------------------------------------------
    def fixed(self, lease: LeaseView, ts: TypeState, k: int) -> Blocked:
        """A non-preemptible request whose minimum would borrow beyond the unowned GPUs."""
        ledger = ts.ledger
        name = lease.tenant
        return Blocked(
            _OVER_QUOTA,
            f"a non-preemptible lease may borrow only unowned {lease.gpu_type} GPUs: tenant "
            f"{name} holds {ledger.fixed.get(name, 0)} in non-preemptible leases (nominal "
            f"{ledger.nominal(name)}), non-preemptible borrowers hold {ledger.fixed_borrowed} "
            f"of {ledger.unowned} unowned; {k} more do not fit (mark it preemptible to borrow)",
        )

    def quota(self, lease: LeaseView, ts: TypeState, k: int) -> Blocked:
        """Why a request of ``k`` GPUs is refused by quota now. The text does not depend on
        ``k``, only on which case applies and on what it quotes (the tenant's GPUs, the
        lendable GPUs), so one answer per (tenant, type, case, quoted numbers) serves a whole
        queue, across state changes."""
        ledger = ts.ledger
        name = lease.tenant
        used = ledger.used.get(name, 0)
        lim = ledger.limits(name)
        nominal = lim.nominal
        if used + k <= nominal:
            case = 0
        elif ledger.fitted_at_start(name, k):
            top = ts.admitted_priority.get(name)
            case = 1 if top is not None and top > lease.priority else 2
        elif used + k > ledger.ceiling(name):
            case = 3
        else:
            case = 4
        # A short ledger (borrowed > lendable: a lost node, a lowered lending limit) lends 0.
        lendable = max(0, ledger.supply - ledger.borrowed) if case == 4 else 0
        key = (name, lease.gpu_type, case, used, lendable)
        why = self._quota.get(key)
        if why is not None:
            return why
        gpu_type = lease.gpu_type
        if case == 0:
            why = Blocked(
                _NO_CAPACITY,
                f"tenant {name} holds {used} of its {nominal} nominal {gpu_type} GPUs; "
                "the rest are borrowed by leases that cannot be preempted yet",
            )
        elif case == 1:
            why = Blocked(
                _PRIORITY,
                f"higher-priority leases of tenant {name} took its quota room",
            )
        elif case == 2:
            why = Blocked(
                _FAIR_SHARE,
                f"tenants ranked higher by fair share took the lendable {gpu_type} GPUs",
            )
        elif case == 3:
            why = Blocked(
                _OVER_QUOTA,
                f"tenant {name} holds {used} {gpu_type} GPUs; the request would exceed its "
                f"limit of {ledger.ceiling(name)} (nominal {nominal} + borrowing limit)",
            )
        else:
            why = Blocked(
                _OVER_QUOTA,
                f"tenant {name} holds {used} of its {nominal} nominal {gpu_type} GPUs; "
                f"borrowing the request exceeds what others lend ({lendable} lendable now)",
            )
        self._quota[key] = why
        return why

    # -- placement (step 5) ----------------------------------------------------------------
    def capacity(self, lease: LeaseView, ts: TypeState, k: int) -> Blocked:
        """Why ``k`` GPUs of the request's strategy cannot be placed now."""
        if not self.explain:
            return NO_CAPACITY
        pool = ts.pool
        if ts.start_pool.place(k, lease.strategy) is not None:
            top = ts.admitted_priority.get(lease.tenant)
            if top is not None and top > lease.priority:
                return Blocked(
                    _PRIORITY,
                    f"higher-priority leases of tenant {lease.tenant} took the free GPUs",
                )
            return Blocked(
                _FAIR_SHARE,
                f"tenants ranked higher by fair share took the free {lease.gpu_type} GPUs",
            )
        if pool.total >= k:
            return Blocked(
                _FRAGMENTATION,
                f"{pool.total} {lease.gpu_type} GPUs are free but not on nodes {lease.strategy} "
                f"can use for {k} (largest free block {pool.max_free})",
            )
        return Blocked(
            _NO_CAPACITY,
            f"{k} {lease.gpu_type} GPUs wanted, {pool.total} free",
        )

    # -- make room (step 6) and backfill (step 7) ------------------------------------------
    def making_room(self, parts: list[str], *, over_quota: bool) -> Blocked:
        """The request waits for the GPUs its victims free (``parts``: what each does)."""
        return Blocked(
            _OVER_QUOTA if over_quota else _NO_CAPACITY,
            "making room: " + ", ".join(parts) + f" (grace {self.state.s.grace_s:g} s)",
        )

    def backfill(self, res: Reservation) -> Blocked:
        now = self.state.now
        return Blocked(
            _BACKFILL,
            f"would delay {res.lease_id}, expected to start at "
            f"{res.shadow_time:.0f} (in {res.shadow_time - now:.0f} s)",
        )
