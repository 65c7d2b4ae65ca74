"""Step 1 of a cycle: index the snapshot into per-GPU-type ledgers, and the cycle's shared state.

Responsibility: build, once per cycle, what every later step reads and updates: per GPU type a
free map (:class:`~fastgpu.scheduler.pool.FreePool`), the free map at cycle start, node
totals, the quota ledger (:class:`~fastgpu.scheduler.quota.QuotaLedger`) and the running
leases; per tenant the GPUs held; and the decisions taken so far. From the caller's
:class:`~fastgpu.scheduler.index.RunningIndex` when the snapshot carries one, else in one
pass over the running leases (same sums, same decisions).

Vocabulary: *touched* (a running lease that already got a decision this cycle: preempted,
shrunk or grown; it gets no second one); *claimed* (a lease already announced for preemption
whose coming-free GPUs a make-room search counted on); *incoming* (a running lease announced
for preemption: ``LeaseView.preempt_at`` set); *fixed* GPUs (those of non-preemptible leases,
which reclaim cannot take back).

Invariants: free maps and quota room only fall during a cycle (admissions, growth and the
room held for a requester take; nothing gives back), which the memos of later steps rely on;
every change of a free map, ledger or the touched set goes through :meth:`CycleState.changed`,
which clears what was derived from the old state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastgpu.scheduler.backfill import Reservation
from fastgpu.scheduler.decisions import Admit, Decisions, Preempt, Queue, Reject, Resize
from fastgpu.scheduler.fairshare.settings import FairShareSettings
from fastgpu.scheduler.pool import FreePool
from fastgpu.scheduler.quota import QuotaLedger
from fastgpu.scheduler.snapshot import LeaseView, Snapshot

if TYPE_CHECKING:
    from fastgpu.scheduler.fairshare.make_room import Victims
    from fastgpu.scheduler.fairshare.reasons import Blocked


@dataclass
class TypeState:
    """Per GPU type state of one cycle."""

    #: Free GPUs per node now (falls as the cycle admits, grows and holds room).
    pool: FreePool
    #: Free GPUs per node at cycle start (tells "others took it" from "never there").
    start_pool: FreePool
    #: GPUs per node, free or not (what an empty cluster could place).
    totals: FreePool
    ledger: QuotaLedger
    #: Running leases announced for preemption: their GPUs are coming free.
    incoming: list[LeaseView] = field(default_factory=list)
    running: list[LeaseView] = field(default_factory=list)
    #: Expected (end, id, placement) of leases admitted this cycle (backfill input).
    ends: list[tuple[float, str, Mapping[str, int]]] = field(default_factory=list)
    #: The backfill reservation of the first request blocked for capacity (step 7).
    reservation: Reservation | None = None
    reservation_borrows: bool = False
    reservation_tenant: str = ""
    #: A request was left waiting for capacity (or room is being made): no growth (step 8).
    capacity_blocked: bool = False
    #: Tenant -> highest lease priority admitted this cycle (to tell lower_priority apart).
    admitted_priority: dict[str, int] = field(default_factory=dict)
    #: Preemptible leases past their minimum runtime, cheapest victim first; built on the
    #: first make-room search (step 6).
    victims: Victims | None = None
    #: Tenant -> lowest priority among its preemptible running leases (priority preemption).
    min_preemptible_priority: dict[str, int] = field(default_factory=dict)
    #: Tenants holding preemptible leases (reclaim candidates when they borrow).
    preemptible_owners: set[str] = field(default_factory=set)
    #: Running leases not announced that hold more than their minimum (shrink candidates).
    elastic_over_min: int = 0
    #: Elastic requests admitted this cycle at their nominal part only, because another
    #: tenant's request within nominal was still waiting (step 4): (index in
    #: ``CycleState.admits``, the request); step 8 may grow them like running leases.
    capped: list[tuple[int, LeaseView]] = field(default_factory=list)


class CycleState:
    """The mutable state of one cycle that its steps share; discarded after the cycle."""

    def __init__(self, snap: Snapshot, settings: FairShareSettings) -> None:
        self.snap = snap
        self.s = settings
        self.now = snap.now
        self.types: dict[str, TypeState] = {}
        #: Tenant -> GPUs held, all types (the fair-share score's first term).
        self.held: dict[str, int] = {}
        self.touched: set[str] = set()
        self.claimed: set[str] = set()
        #: Non-preemptible leases borrow only unowned capacity (see the design note).
        self.fixed_rule = (
            settings.preemption and settings.borrowing and not settings.borrow_non_preemptible
        )
        #: Highest priority among the tenant queues' heads (set by gatekeeping).
        self.max_pending_priority = 0
        self.admits: list[Admit] = []
        self.queued: list[Queue] = []
        self.rejects: list[Reject] = []
        self.preempts: list[Preempt] = []
        self.resizes: list[Resize] = []
        self._forget: list[Callable[[], None]] = []

    def type_state(self, gpu_type: str) -> TypeState:
        ts = self.types.get(gpu_type)
        if ts is None:  # a type no node offers: empty pools, nothing fits
            empty = FreePool({})
            ts = self.types[gpu_type] = TypeState(
                empty, empty.copy(), empty.copy(), QuotaLedger(0, {}, {}, borrowing=False)
            )
        return ts

    def on_change(self, forget: Callable[[], None]) -> None:
        """Register a memo to clear whenever :meth:`changed` is called: pass the memo's own
        method (``memo.clear``), which keeps no reference to an object holding this state, so
        a cycle's objects form no reference cycle (cycles run with the collector off)."""
        self._forget.append(forget)

    def changed(self) -> None:
        """A free map, quota ledger or the set of touched leases changed: forget what was
        derived from the old state."""
        for forget in self._forget:
            forget()

    def queue(self, lease: LeaseView, blocked: Blocked) -> None:
        if self.s.explain:
            self.queued.append(Queue(lease.id, blocked.code, blocked.detail))

    def decisions(self, wake_at: float | None) -> Decisions:
        return Decisions(
            admit=tuple(self.admits),
            queue=tuple(self.queued),
            reject=tuple(self.rejects),
            preempt=tuple(self.preempts),
            resize=tuple(self.resizes),
            wake_at=wake_at,
        )


@dataclass
class _RunningFlags:
    incoming: list[LeaseView] = field(default_factory=list)
    min_priority: dict[str, int] = field(default_factory=dict)
    elastic_over_min: int = 0
    #: Tenant -> GPUs of its non-preemptible leases reclaim cannot take back.
    fixed: dict[str, int] = field(default_factory=dict)


def index_snapshot(snap: Snapshot, settings: FairShareSettings) -> CycleState:
    """1. Free maps, quota ledgers and running leases per GPU type."""
    state = CycleState(snap, settings)
    free: dict[str, dict[str, int]] = {}
    totals: dict[str, dict[str, int]] = {}
    for node in snap.nodes:
        if not node.alive:
            continue
        free.setdefault(node.gpu_type, {})[node.node_id] = node.free_gpus
        totals.setdefault(node.gpu_type, {})[node.node_id] = node.total_gpus
    index = snap.running_index
    flags: dict[str, _RunningFlags] = {}
    if index is not None:
        for gpu_type, leases in index.by_type.items():
            fl = flags[gpu_type] = _RunningFlags()
            if index.incoming.get(gpu_type):
                fl.incoming = [r for r in leases.values() if r.preempt_at is not None]
            fl.min_priority = {
                t: min(prios) for t, prios in index.preemptible.get(gpu_type, {}).items()
            }
            fl.elastic_over_min = index.elastic_over_min.get(gpu_type, 0)
            fixed = index.fixed_min if settings.elastic else index.fixed_held
            fl.fixed = fixed.get(gpu_type, {})
        state.held.update(index.held)
        used = index.used
        by_type = {t: list(leases.values()) for t, leases in index.by_type.items()}
    else:
        used, by_type, flags = _sum_running(snap, settings, state.held)
    tenant_items = list(snap.tenants.items())
    for gpu_type in set(free) | set(used):
        tfree = free.get(gpu_type, {})
        ttot = totals.get(gpu_type, {})
        top = max(ttot.values(), default=0)
        quotas = {name: tv.quotas[gpu_type] for name, tv in tenant_items if gpu_type in tv.quotas}
        pool = FreePool(tfree, top)
        fl = flags.get(gpu_type) or _RunningFlags()
        state.types[gpu_type] = TypeState(
            pool=pool,
            start_pool=pool.copy(),
            totals=FreePool(ttot, top),
            ledger=QuotaLedger(
                sum(ttot.values()),
                quotas,
                used.get(gpu_type, {}),
                borrowing=settings.borrowing,
                fixed=fl.fixed,
            ),
            running=by_type.get(gpu_type, []),
            incoming=fl.incoming,
            min_preemptible_priority=fl.min_priority,
            preemptible_owners=set(fl.min_priority),
            elastic_over_min=fl.elastic_over_min,
        )
    return state


def _sum_running(
    snap: Snapshot, settings: FairShareSettings, held: dict[str, int]
) -> tuple[dict[str, dict[str, int]], dict[str, list[LeaseView]], dict[str, _RunningFlags]]:
    """Step 1 without a caller's :class:`RunningIndex`: the same sums, in one pass (adding
    each tenant's GPUs to ``held``)."""
    # One pass over running leases (the hot loop of a cycle: keep it lean).
    used: dict[str, dict[str, int]] = {}
    by_type: dict[str, list[LeaseView]] = {}
    flags: dict[str, _RunningFlags] = {}
    elastic = settings.elastic
    for lease in snap.running:
        g = sum(lease.placement.values())
        tenant = lease.tenant
        gpu_type = lease.gpu_type
        held[tenant] = held.get(tenant, 0) + g
        u = used.get(gpu_type)
        if u is None:
            u = used[gpu_type] = {}
            by_type[gpu_type] = []
            flags[gpu_type] = _RunningFlags()
        u[tenant] = u.get(tenant, 0) + g
        by_type[gpu_type].append(lease)
        if lease.preempt_at is not None:
            flags[gpu_type].incoming.append(lease)
            continue
        f = flags[gpu_type]
        if lease.preemptible:
            low = f.min_priority.get(tenant)
            if low is None or lease.priority < low:
                f.min_priority[tenant] = lease.priority
        else:
            fixed = f.fixed
            fixed[tenant] = fixed.get(tenant, 0) + (min(g, lease.min_gpus) if elastic else g)
        if g > lease.min_gpus:
            flags[gpu_type].elastic_over_min += 1
    return used, by_type, flags
