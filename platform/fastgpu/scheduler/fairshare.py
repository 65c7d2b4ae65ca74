"""Fair-share scheduling policy: quotas with borrowing and lending, preemption, gang placement,
backfill, budgets and elastic leases. Pure: a :class:`Snapshot` in, :class:`Decisions` out.

Responsibility: decide, for one scheduling cycle, which pending leases start (and where), which
wait (and why), which running leases are preempted or resized. The design note
``docs/design/scheduler.md`` states the rule; the numbered steps of :meth:`_Cycle.run` follow it.

Vocabulary: *tenant queue* (a tenant's pending leases, lease priority then submit order);
*head* (the next lease of a tenant queue to try); *borrowing* (holding more than nominal);
*score* (fair-share rank, lower goes first: ``(held GPUs + decayed usage as GPUs) / weight``);
*make room* (shrink elastic leases, reclaim borrowed GPUs, preempt lower priority).

Invariants of every answer (property-tested):

* no node is ever asked for more GPUs than it has free (admissions and growth together);
* no tenant is taken above ``nominal + borrowing_limit`` (``nominal`` with borrowing off);
* borrowed never exceeds lendable supply (see :mod:`fastgpu.scheduler.quota`);
* a running lease is preempted only if preemptible and past ``min_runtime_s`` (doubled for
  each earlier preemption of its workload, up to ``min_runtime_backoff`` times; time limits
  aside), shrunk never below ``min_gpus``, and never gets two decisions in one cycle;
* every pending lease gets exactly one of admit, queue (with a reason) or reject (when
  ``explain`` is on; with it off, queue decisions are left out to save time in the simulator).
"""

from __future__ import annotations

import gc
import heapq
import math
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from fastgpu.domain.lease import PendingReason
from fastgpu.scheduler.backfill import Reservation, reserve
from fastgpu.scheduler.decisions import Admit, Decisions, Preempt, Queue, Reject, Resize
from fastgpu.scheduler.index import PendingIndex
from fastgpu.scheduler.pool import FreePool
from fastgpu.scheduler.preemption import (
    INCOMING,
    PREEMPT,
    SHRINK,
    Candidate,
    select,
    shrink_frees,
)
from fastgpu.scheduler.quota import QuotaLedger
from fastgpu.scheduler.snapshot import LeaseView, Snapshot, TenantView

LN2 = math.log(2.0)
_GPU_TYPE = attrgetter("gpu_type")
_MIN_GPUS = attrgetter("min_gpus")
_PREEMPTIBLE = attrgetter("preemptible")
PRIORITY = PendingReason.PRIORITY.value
_NO_CAPACITY_REASON = PendingReason.NO_CAPACITY.value
_FAIR_SHARE_REASON = PendingReason.FAIR_SHARE.value
_OVER_QUOTA_REASON = PendingReason.OVER_QUOTA.value


class _Victims:
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


class PreemptReason:
    """``Preempt.reason`` values (stable strings)."""

    RECLAIM = "reclaim"  # a tenant below nominal takes back GPUs a borrower holds
    PRIORITY = "priority"  # a higher-priority lease of the same tenant needs the GPUs
    TIME_LIMIT = "time_limit"  # the lease reached started_at + duration_s


class ResizeReason:
    """``Resize.reason`` values (stable strings)."""

    GROW = "grow"  # idle capacity: an elastic lease grows toward its maximum
    SHRINK = "shrink"  # a blocked request needs the GPUs: shrink toward min_gpus


@dataclass(frozen=True)
class FairShareSettings:
    """Parameters of :class:`FairSharePolicy`; every combination is valid."""

    #: Half-life of the decayed usage that ranks tenants (seconds). Slurm's default is 7 days;
    #: shorter forgets history faster. Used by :func:`fair_share_score`; the caller decays.
    usage_half_life_s: float = 7 * 24 * 3600.0
    #: A running lease may not be preempted before it has run this long (seconds), so that a
    #: restart can make progress; time limits ignore it.
    min_runtime_s: float = 300.0
    #: A lease whose workload was preempted k times before (``LeaseView.restarts``) is
    #: protected for ``min_runtime_s * 2**min(k, min_runtime_backoff)``, or until it reports a
    #: checkpoint, whichever comes first: a workload chosen again and again (the cheapest
    #: victim is the one that just restarted) still reaches a checkpoint. 0 turns it off.
    min_runtime_backoff: int = 5
    #: Seconds between announcing a preemption (``Preempt.grace_s``) and taking the GPUs, for a
    #: last checkpoint.
    grace_s: float = 30.0
    #: Let smaller requests start while a blocked head waits, if they do not delay its
    #: earliest start (estimated from requested durations).
    backfill: bool = True
    #: Let tenants use idle GPUs beyond nominal (up to borrowing_limit, within others'
    #: lending_limit). Off: hard quotas, i.e. static partitioning.
    borrowing: bool = True
    #: Preempt leases to reclaim nominal or for a higher-priority lease of the same tenant.
    preemption: bool = True
    #: Admit elastic leases at less than their maximum, grow them on idle capacity and shrink
    #: them before preempting anyone. Off: elastic leases are admitted at their maximum only.
    elastic: bool = True
    #: Preempt running leases that outlived ``started_at + duration_s`` (reason time_limit,
    #: no grace). Off when the caller ends leases itself (the simulator).
    enforce_time_limits: bool = True
    #: A tenant whose period budget is spent: reject new requests (True) or queue them (False).
    reject_over_budget: bool = False
    #: Emit a ``Queue`` decision with a reason for every waiting request. The simulator turns
    #: it off to save time; the live controller needs it.
    explain: bool = True
    #: At most this many make-room attempts (what-if preemption searches) per cycle, a bound
    #: on cycle time under long queues; the rest wait for the next cycle.
    max_preemption_attempts: int = 16
    #: Let non-preemptible leases borrow GPUs backed by other tenants' nominal. Reclaim cannot
    #: take those back, so a tenant below nominal may wait until such a lease ends. Off (the
    #: default): non-preemptible leases hold at most nominal plus unowned capacity.
    borrow_non_preemptible: bool = False

    def __post_init__(self) -> None:
        if not self.usage_half_life_s > 0:
            raise ValueError(f"Got {self.usage_half_life_s} for usage_half_life_s; expected > 0")
        for name in ("min_runtime_s", "grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Got {getattr(self, name)} for {name}; expected >= 0")
        if not 0 <= self.min_runtime_backoff <= 20:
            raise ValueError(
                f"Got {self.min_runtime_backoff} for min_runtime_backoff; expected 0..20"
            )
        if self.max_preemption_attempts < 0:
            raise ValueError(
                f"Got {self.max_preemption_attempts} for max_preemption_attempts; expected >= 0"
            )


def decay_usage(prev_gpu_s: float, held_gpus: float, dt_s: float, half_life_s: float) -> float:
    """Decayed usage after ``dt_s`` seconds holding ``held_gpus``: the exact integral of
    exponentially decayed GPU-seconds, so the result does not depend on how often it is called
    (two steps of dt equal one step of 2 dt)."""
    if dt_s <= 0:
        return prev_gpu_s
    keep = 2.0 ** (-dt_s / half_life_s)
    return prev_gpu_s * keep + held_gpus * (half_life_s / LN2) * (1.0 - keep)


def fair_share_score(
    held_gpus: float, decayed_usage_gpu_s: float, weight: float, half_life_s: float
) -> float:
    """Lower ranks first. Decayed usage converts to GPUs: holding g GPUs forever decays to
    ``g * half_life / ln 2`` GPU-seconds, so ``decayed * ln2 / half_life`` is that g."""
    return (held_gpus + decayed_usage_gpu_s * LN2 / half_life_s) / max(weight, 1e-9)


def _budget_spent(tenant: TenantView) -> str | None:
    b = tenant.budget
    if b is None:
        return None
    if b.gpu_hours is not None and tenant.period_gpu_hours >= b.gpu_hours:
        return (
            f"tenant {tenant.name} used {tenant.period_gpu_hours:.1f} of {b.gpu_hours:g} "
            f"GPU-hours this {b.period}"
        )
    if b.money is not None and tenant.period_money >= b.money:
        return (
            f"tenant {tenant.name} spent {tenant.period_money:.2f} of {b.money:g} this {b.period}"
        )
    return None


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
            return _Cycle(snapshot, self.settings).run()
        finally:
            if enabled:
                gc.enable()


@dataclass
class _Blocked:
    reason: str
    detail: str


_NO_CAPACITY = _Blocked(PendingReason.NO_CAPACITY.value, "")


def _remember_fail(
    table: dict[tuple[str, str], tuple[int, _Blocked]],
    key: tuple[str, str],
    k: int,
    blocked: _Blocked,
) -> None:
    """Record that ``k`` GPUs were refused for ``key`` (within a cycle, >= k is refused too)."""
    hit = table.get(key)
    if hit is None or hit[0] > k:
        table[key] = (k, blocked)


@dataclass
class _RunningFlags:
    incoming: list[LeaseView] = field(default_factory=list)
    min_priority: dict[str, int] = field(default_factory=dict)
    elastic_over_min: int = 0
    #: Tenant -> GPUs of its non-preemptible leases reclaim cannot take back.
    fixed: dict[str, int] = field(default_factory=dict)


@dataclass
class _TypeState:
    """Per GPU type state of one cycle."""

    pool: FreePool
    start_pool: FreePool
    totals: FreePool
    ledger: QuotaLedger
    incoming: list[LeaseView] = field(default_factory=list)
    running: list[LeaseView] = field(default_factory=list)
    ends: list[tuple[float, str, Mapping[str, int]]] = field(default_factory=list)
    reservation: Reservation | None = None
    reservation_borrows: bool = False
    reservation_tenant: str = ""
    capacity_blocked: bool = False
    #: Tenant -> highest lease priority admitted this cycle (to tell lower_priority apart).
    admitted_priority: dict[str, int] = field(default_factory=dict)
    #: Preemptible leases past their minimum runtime, cheapest victim first, as (lost work,
    #: id, lease, tenant, priority); built on the first make-room search.
    victims: _Victims | None = None
    #: Tenant -> lowest priority among its preemptible running leases (priority preemption).
    min_preemptible_priority: dict[str, int] = field(default_factory=dict)
    #: Tenants holding preemptible leases (reclaim candidates when they borrow).
    preemptible_owners: set[str] = field(default_factory=set)
    elastic_over_min: int = 0


class _Cycle:
    """One scheduling cycle; mutable scratch state, discarded after :meth:`run`."""

    def __init__(self, snap: Snapshot, settings: FairShareSettings) -> None:
        self.snap = snap
        self.s = settings
        self.now = snap.now
        self.admits: list[Admit] = []
        self.queued: list[Queue] = []
        self.rejects: list[Reject] = []
        self.preempts: list[Preempt] = []
        self.resizes: list[Resize] = []
        self.types: dict[str, _TypeState] = {}
        self.held: dict[str, int] = {}
        self.touched: set[str] = set()
        self.claimed: set[str] = set()
        self.attempts = 0
        #: Earliest time a candidate skipped for its minimum runtime becomes eligible.
        self.young_until: float | None = None
        #: Within one cycle the free map only shrinks and a tenant's quota room only falls, so
        #: a failure for k GPUs means failure for >= k: (tenant, type) -> smallest k refused
        #: by quota; (type, strategy) -> smallest k that found no placement nor room.
        self.quota_fail: dict[tuple[str, str], tuple[int, _Blocked]] = {}
        #: The same for non-preemptible requests refused by the fixed-borrowing rule.
        self.fixed_fail: dict[tuple[str, str], tuple[int, _Blocked]] = {}
        #: Non-preemptible leases borrow only unowned capacity (see the design note).
        self.fixed_rule = (
            settings.preemption and settings.borrowing and not settings.borrow_non_preemptible
        )
        self.place_fail: dict[tuple[str, str], tuple[int, _Blocked]] = {}
        self.scores: dict[str, float] = {}
        self.max_pending_priority = 0
        self.views: dict[str, TenantView] = {}
        #: Reasons of known-blocked requests, by what they depend on; valid until the next
        #: change of a free map or quota ledger (cleared there), so a long run of blocked
        #: requests of one shape costs one explanation.
        self.reasons: dict[tuple[object, ...], _Blocked] = {}
        #: Quota reasons by what their text depends on (see :meth:`_quota_reason`).
        self.quota_reasons: dict[tuple[str, str, int, int, int], _Blocked] = {}
        #: Make-room searches that found nothing, by what they depend on (requester shape);
        #: the same search in the same state finds nothing again. Cleared with ``reasons``.
        self.room_fail: set[tuple[str, str, int, int, str, int]] = set()
        #: (type, strategy) -> the largest request an empty cluster can place: the largest
        #: node for STRICT_PACK, all GPUs of the type otherwise (``FreePool.could_place``).
        self.caps: dict[tuple[str, str], int] = {}
        #: The pending index whose queues are the tenant queues (None when gatekeeping
        #: filtered them): lets the admission loop jump over runs of known-blocked requests.
        self.index: PendingIndex | None = None

    # -- helpers -------------------------------------------------------------------------
    def _changed(self) -> None:
        """A free map, quota ledger or the set of touched leases changed: forget what was
        derived from the old state."""
        self.reasons.clear()
        self.room_fail.clear()

    def tenant(self, name: str) -> TenantView:
        tv = self.views.get(name)
        if tv is None:
            tv = self.snap.tenants.get(name) or TenantView(name=name)
            self.views[name] = tv
        return tv

    def score(self, name: str) -> float:
        sc = self.scores.get(name)
        if sc is None:
            tv = self.tenant(name)
            sc = self.scores[name] = fair_share_score(
                self.held.get(name, 0),
                tv.decayed_usage_gpu_s,
                tv.weight,
                self.s.usage_half_life_s,
            )
        return sc

    def queue(self, lease: LeaseView, reason: str, detail: str) -> None:
        if self.s.explain:
            self.queued.append(Queue(lease.id, reason, detail))

    def type_state(self, gpu_type: str) -> _TypeState:
        ts = self.types.get(gpu_type)
        if ts is None:  # a type no node offers: empty pools, nothing fits
            empty = FreePool({})
            ts = self.types[gpu_type] = _TypeState(
                empty, empty.copy(), empty.copy(), QuotaLedger(0, {}, {}, borrowing=False)
            )
        return ts

    # -- the pipeline --------------------------------------------------------------------
    def run(self) -> Decisions:
        self._index()  # 1
        if self.s.enforce_time_limits:
            self._time_limits()  # 2
        queues = self._gatekeep()  # 3
        self._admit_in_fair_share_order(queues)  # 4-7
        if self.s.elastic:
            self._grow()  # 8
        return Decisions(  # 9
            admit=tuple(self.admits),
            queue=tuple(self.queued),
            reject=tuple(self.rejects),
            preempt=tuple(self.preempts),
            resize=tuple(self.resizes),
            wake_at=self._wake_at(),
        )

    def _index(self) -> None:
        """1. Free maps, quota ledgers and running leases per GPU type."""
        free: dict[str, dict[str, int]] = {}
        totals: dict[str, dict[str, int]] = {}
        for node in self.snap.nodes:
            if not node.alive:
                continue
            free.setdefault(node.gpu_type, {})[node.node_id] = node.free_gpus
            totals.setdefault(node.gpu_type, {})[node.node_id] = node.total_gpus
        index = self.snap.running_index
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
                fixed = index.fixed_min if self.s.elastic else index.fixed_held
                fl.fixed = fixed.get(gpu_type, {})
            self.held.update(index.held)
            used = index.used
            by_type = {t: list(leases.values()) for t, leases in index.by_type.items()}
        else:
            used, by_type, flags = self._index_running()
        tenant_items = list(self.snap.tenants.items())
        for gpu_type in set(free) | set(used):
            tfree = free.get(gpu_type, {})
            ttot = totals.get(gpu_type, {})
            top = max(ttot.values(), default=0)
            quotas = {
                name: tv.quotas[gpu_type] for name, tv in tenant_items if gpu_type in tv.quotas
            }
            pool = FreePool(tfree, top)
            fl = flags.get(gpu_type) or _RunningFlags()
            self.types[gpu_type] = _TypeState(
                pool=pool,
                start_pool=pool.copy(),
                totals=FreePool(ttot, top),
                ledger=QuotaLedger(
                    sum(ttot.values()),
                    quotas,
                    used.get(gpu_type, {}),
                    borrowing=self.s.borrowing,
                    fixed=fl.fixed,
                ),
                running=by_type.get(gpu_type, []),
                incoming=fl.incoming,
                min_preemptible_priority=fl.min_priority,
                preemptible_owners=set(fl.min_priority),
                elastic_over_min=fl.elastic_over_min,
            )

    def _index_running(
        self,
    ) -> tuple[dict[str, dict[str, int]], dict[str, list[LeaseView]], dict[str, _RunningFlags]]:
        """Step 1 without a caller's :class:`RunningIndex`: the same sums, in one pass."""
        # One pass over running leases (the hot loop of a cycle: keep it lean).
        used: dict[str, dict[str, int]] = {}
        by_type: dict[str, list[LeaseView]] = {}
        flags: dict[str, _RunningFlags] = {}
        held = self.held
        elastic = self.s.elastic
        for lease in self.snap.running:
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

    def _time_limits(self) -> None:
        """2. Running leases past their duration lose their GPUs now."""
        for lease in self.snap.running:
            if lease.preempt_at is not None or lease.started_at is None:
                continue
            if self.now >= lease.started_at + lease.duration_s:
                self.preempts.append(
                    Preempt(
                        lease.id,
                        PreemptReason.TIME_LIMIT,
                        f"ran {self.now - lease.started_at:.0f} s of {lease.duration_s:.0f} s",
                        0.0,
                    )
                )
                self.touched.add(lease.id)

    def _gatekeep(self) -> dict[str, list[LeaseView]]:
        """3. Reject what can never run, hold back spent budgets; build tenant queues.

        The verdict depends only on a request's shape, so it is taken once per shape of the
        pending index; when every shape may queue (the common case), the index's queues are
        the tenant queues as they are, and the cycle neither scans nor sorts them."""
        index = self.snap.pending_index
        if index is None:
            index = PendingIndex.build(self.snap.pending)
        # Per (tenant, type, min GPUs, strategy, preemptible): None (may queue) or the
        # reject/budget verdict.
        verdicts: dict[tuple[str, str, int, str, bool], tuple[str, str, bool] | None] = {}
        clean = True
        fixed_rule = self.fixed_rule
        # A caller's index keeps one lease per shape (few per tenant): read those; a fresh
        # one, the queues themselves (building representatives would cost more).
        kept = self.snap.pending_index is not None
        for tenant, q in index.queues.items():
            leases = index.representatives(tenant).values() if kept else q
            # What _verdict reads per tenant (budget) and per tenant and type (ceiling), once:
            # a shape that fits an empty cluster and the ceiling of a tenant without a budget
            # may queue; anything else takes the full verdict.
            no_budget = self.tenant(tenant).budget is None
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
                        ledger = self.type_state(gpu_type).ledger
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
            self.index = index
            queues = index.queues
            self.max_pending_priority = max(
                (q[0].priority for q in queues.values() if q), default=0
            )
            return queues
        # Some requests are rejected or held back: queues without them, decisions in the
        # snapshot's order.
        queues = {}
        for lease in self.snap.pending:
            fixed = self.fixed_rule and not lease.preemptible
            key = (lease.tenant, lease.gpu_type, lease.min_gpus, lease.strategy, fixed)
            verdict = verdicts.get(key)
            if verdict is None:
                tq = queues.get(lease.tenant)
                if tq is None:
                    tq = queues[lease.tenant] = []
                tq.append(lease)
            elif verdict[2]:
                self.rejects.append(Reject(lease.id, verdict[0], verdict[1]))
            else:
                self.queue(lease, verdict[0], verdict[1])
        for q in queues.values():
            q.sort(key=lambda lv: (-lv.priority, lv.submitted_at, lv.id))
        self.max_pending_priority = max(
            (p.priority for q in queues.values() for p in q[:1]), default=0
        )
        return queues

    def _all_may_queue(self, tenant: str, leases: Collection[LeaseView]) -> bool:
        """Whether every pending lease of a tenant without a budget may queue, decided per
        tenant with C-level passes (the per-lease loop of :meth:`_gatekeep` is the exact
        answer; this is a sufficient test for the common case of one GPU type)."""
        types = set(map(_GPU_TYPE, leases))
        if len(types) != 1:
            return False
        (gpu_type,) = types
        ts = self.type_state(gpu_type)
        ledger = ts.ledger
        fixed = self.fixed_rule and not all(map(_PREEMPTIBLE, leases))
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
        cap = self.caps.get((gpu_type, strategy))
        if cap is None:
            totals = self.type_state(gpu_type).totals
            cap = totals.max_free if strategy == "STRICT_PACK" else totals.total
            self.caps[gpu_type, strategy] = cap
        return cap

    def _verdict(self, lease: LeaseView) -> tuple[str, str, bool] | None:
        """(reason, detail, reject?) for a request that may not queue normally, else None."""
        ts = self.type_state(lease.gpu_type)
        if lease.min_gpus > self._empty_cap(lease.gpu_type, lease.strategy):
            return (
                PendingReason.INFEASIBLE.value,
                f"{lease.min_gpus} {lease.gpu_type} GPUs ({lease.strategy}) never fit: "
                f"{ts.totals.total} GPUs in the cluster, at most {ts.totals.max_free} per node",
                True,
            )
        ceiling = ts.ledger.ceiling(lease.tenant)
        if lease.min_gpus > ceiling:
            return (
                PendingReason.INFEASIBLE.value,
                f"{lease.min_gpus} {lease.gpu_type} GPUs exceed tenant {lease.tenant}'s "
                f"limit of {ceiling} (nominal + borrowing limit)",
                True,
            )
        if self.fixed_rule and not lease.preemptible:
            fixed_ceiling = ts.ledger.fixed_ceiling(lease.tenant)
            if lease.min_gpus > fixed_ceiling:
                return (
                    PendingReason.INFEASIBLE.value,
                    f"{lease.min_gpus} {lease.gpu_type} GPUs exceed what a non-preemptible "
                    f"lease of tenant {lease.tenant} may hold: {fixed_ceiling} (nominal "
                    f"{ts.ledger.nominal(lease.tenant)} + {ts.ledger.unowned} unowned); "
                    "mark it preemptible to borrow beyond that",
                    True,
                )
        spent = _budget_spent(self.tenant(lease.tenant))
        if spent is not None:
            return (PendingReason.BUDGET.value, spent, self.s.reject_over_budget)
        return None

    def _key(self, name: str, head: LeaseView) -> tuple[int, int, float, str]:
        """Heap key of a tenant whose next request is ``head``; lowest goes first.

        Requests within nominal go first, in submit order: each is owed its GPUs whatever the
        ranks, and submit order is stable across cycles, so the request that made room (its
        victims' GPUs are coming free) is still first when they do, and a later guaranteed
        request cannot take them and make it wait for a second grace period. Borrowing
        requests follow, by tenant priority then fair-share score."""
        ledger = self.type_state(head.gpu_type).ledger
        if ledger.within_nominal(name, head.min_gpus):
            return (0, 0, head.submitted_at, name)
        return (1, -self.tenant(name).priority, self.score(name), name)

    def _admit_in_fair_share_order(self, queues: dict[str, list[LeaseView]]) -> None:
        """4. Tenants in fair-share order, each offering its head; 5-7 per head.

        A tenant stays at the front while its next key still ranks first, and heads already
        known to be blocked (see ``quota_fail`` / ``place_fail``) are passed over without a
        heap operation: long hopeless queues cost a few dictionary lookups per request."""
        cursor = dict.fromkeys(queues, 0)
        explain = self.s.explain
        skip = not explain and self.index is not None
        heap = [(self._key(name, q[0]), name) for name, q in queues.items() if q]
        heapq.heapify(heap)
        while heap:
            if not self.s.explain and heap[0][0][0] and self._nothing_more_fits():
                break  # only borrowers left, no free GPU, nothing to shrink or reclaim
            _, name = heapq.heappop(heap)
            q = queues[name]
            i = cursor[name]
            known: _Blocked | None = None  # q[i] known to be blocked (tested just before)
            strict = self.tenant(name).queueing == "strict_fifo"
            while i < len(q):
                lease = q[i]
                i += 1
                blocked = known if known is not None else self._known_blocked(lease)
                known = None
                if blocked is None:
                    blocked = self._try(lease)
                if blocked is not None:
                    if explain:
                        self.queued.append(Queue(lease.id, blocked.reason, blocked.detail))
                    if strict:
                        if explain:
                            behind = f"behind {lease.id} (strict_fifo)"
                            prio = lease.priority
                            append = self.queued.append
                            for rest in q[i:]:
                                reason = PRIORITY if rest.priority < prio else blocked.reason
                                append(Queue(rest.id, reason, behind))
                        i = len(q)
                        break
                    if i < len(q):
                        known = self._known_blocked(q[i])
                        if known is not None:
                            if not skip:
                                continue  # a known failure: no heap traffic
                            # Known failures only emit nothing: jump to the first request
                            # that is not one (state cannot change before it is tried).
                            known = None
                            i = self._next_unblocked(name, q, i)
                            if i >= len(q):
                                break
                if i < len(q):
                    key = self._key(name, q[i])
                    if heap and heap[0][0] < key:
                        heapq.heappush(heap, (key, name))
                        break
            cursor[name] = i

    def _next_unblocked(self, name: str, q: list[LeaseView], i: int) -> int:
        """The first position ``>= i`` of tenant ``name``'s queue whose request is not known
        to be blocked now (``len(q)`` if none), looking once at each shape, not each request."""
        assert self.index is not None
        keys = self.index.tenant_keys(name)
        start = keys[i]
        best: tuple[int, float, str] | None = None
        reps = self.index.representatives(name)
        for shape, skeys in self.index.shape_keys(name).items():
            j = bisect_left(skeys, start)
            if j == len(skeys) or (best is not None and skeys[j] >= best):
                continue
            if self._known_blocked(reps[shape]) is None:
                best = skeys[j]
        if best is None:
            return len(q)
        return bisect_left(keys, best, i)

    def _nothing_more_fits(self) -> bool:
        """No GPU free in any type and no way to make room for a borrowing request (borrowers
        never reclaim; priority preemption needs a lower-priority lease of the same tenant)."""
        for ts in self.types.values():
            if ts.pool.total > 0 or len(ts.incoming) > len(self.claimed):
                return False
            if self.s.elastic and ts.elastic_over_min:
                return False
            if (
                self.s.preemption
                and ts.min_preemptible_priority
                and self.max_pending_priority > min(ts.min_preemptible_priority.values())
            ):
                return False
        return True

    def _known_blocked(self, lease: LeaseView) -> _Blocked | None:
        lo = lease.min_gpus
        if self.fixed_fail and not lease.preemptible:
            hit = self.fixed_fail.get((lease.tenant, lease.gpu_type))
            if hit is not None and lo >= hit[0]:
                return hit[1]
        hit = self.quota_fail.get((lease.tenant, lease.gpu_type))
        if hit is not None and lo >= hit[0]:
            if self.s.explain:
                return self._fixed_reason(lease, lo) or self._quota_reason(
                    lease, self.type_state(lease.gpu_type), lo
                )
            return hit[1]
        hit = self.place_fail.get((lease.gpu_type, lease.strategy))
        if hit is not None and lo >= hit[0]:
            ts = self.type_state(lease.gpu_type)
            if not self._may_make_room(lease, ts, lo):
                if self.s.explain:
                    key = (
                        lease.tenant,
                        lease.gpu_type,
                        lo,
                        lease.priority,
                        lease.strategy,
                        lease.preemptible,
                    )
                    why = self.reasons.get(key)
                    if why is None:
                        why = self._fixed_reason(lease, lo)
                        if why is None:
                            why = self._capacity_reason(lease, ts, lo)
                        self.reasons[key] = why
                    return why
                return hit[1]
        return None

    def _fixed_reason(self, lease: LeaseView, lo: int) -> _Blocked | None:
        """The fixed-borrowing refusal of a non-preemptible request, if it applies: checked
        first by :meth:`_try`, so a known-blocked request gets the same reason."""
        if not self.fixed_rule or lease.preemptible:
            return None
        ts = self.type_state(lease.gpu_type)
        if ts.ledger.fixed_fits(lease.tenant, lo):
            return None
        return self._blocked_by_fixed(lease, ts, lo)

    def _try(self, lease: LeaseView) -> _Blocked | None:
        """5. Admit ``lease`` if quota and placement allow; else 6 (make room), 7 (backfill)."""
        ts = self.type_state(lease.gpu_type)
        name = lease.tenant
        want = lease.gpus if self.s.elastic else max(lease.gpus, lease.min_gpus)
        lo = lease.min_gpus if self.s.elastic else want
        fixed = self.fixed_rule and not lease.preemptible
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
            if not res.allows(self.now, lease.duration_s, placement, force=force):
                ts.capacity_blocked = True
                return _Blocked(
                    PendingReason.BACKFILL.value,
                    f"would delay {res.lease_id}, expected to start at "
                    f"{res.shadow_time:.0f} (in {res.shadow_time - self.now:.0f} s)",
                )
        k = sum(placement.values())
        pool.take(placement)
        ts.ledger.add(name, k)
        if fixed:
            ts.ledger.add_fixed(name, lo)
        self._changed()
        self.held[name] = self.held.get(name, 0) + k
        self.scores.pop(name, None)
        ts.ends.append((self.now + lease.duration_s, lease.id, placement))
        top = ts.admitted_priority.get(name, lease.priority)
        ts.admitted_priority[name] = max(top, lease.priority)
        self.admits.append(Admit(lease.id, placement))
        return None

    def _blocked_by_fixed(self, lease: LeaseView, ts: _TypeState, k: int) -> _Blocked:
        """A non-preemptible request whose minimum would borrow beyond the unowned GPUs: no
        preemption helps (what blocks it cannot be preempted), so no make-room search."""
        ledger = ts.ledger
        name = lease.tenant
        blocked = _Blocked(
            PendingReason.OVER_QUOTA.value,
            f"a non-preemptible lease may borrow only unowned {lease.gpu_type} GPUs: tenant "
            f"{name} holds {ledger.fixed.get(name, 0)} in non-preemptible leases (nominal "
            f"{ledger.nominal(name)}), non-preemptible borrowers hold {ledger.fixed_borrowed} "
            f"of {ledger.unowned} unowned; {k} more do not fit (mark it preemptible to borrow)",
        )
        _remember_fail(self.fixed_fail, (name, lease.gpu_type), k, blocked)
        return blocked

    def _blocked_by_quota(self, lease: LeaseView, ts: _TypeState, k: int) -> _Blocked:
        name = lease.tenant
        if ts.ledger.within_nominal(name, k):
            # Within nominal, yet others hold our lendable GPUs (or the unlendable part of
            # someone else's): take them back.
            made = self._make_room(lease, ts, k)
            if made:
                return _Blocked(PendingReason.NO_CAPACITY.value, made)
            blocked = self._quota_reason(lease, ts, k)  # "the rest are borrowed"
            if self.attempts >= self.s.max_preemption_attempts:
                # No make-room search is left in this cycle and quota room only falls: this
                # tenant's requests of >= k GPUs are blocked the same way.
                _remember_fail(self.quota_fail, (name, lease.gpu_type), k, blocked)
            return blocked
        made = self._make_room(lease, ts, k) if self._has_lower_priority(lease, ts) else None
        if made:
            return _Blocked(PendingReason.OVER_QUOTA.value, made)
        blocked = self._quota_reason(lease, ts, k)
        _remember_fail(self.quota_fail, (name, lease.gpu_type), k, blocked)
        return blocked

    def _quota_reason(self, lease: LeaseView, ts: _TypeState, k: int) -> _Blocked:
        """Why a request of ``k`` GPUs is refused by quota now. The text does not depend on
        ``k``, only on which case applies and on what it quotes (the tenant's GPUs, the
        lendable GPUs), so one answer per (tenant, type, case, quoted numbers) serves a whole
        queue, across state changes (``quota_reasons`` is never cleared)."""
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
        lendable = ledger.supply - ledger.borrowed if case == 4 else 0
        key = (name, lease.gpu_type, case, used, lendable)
        why = self.quota_reasons.get(key)
        if why is not None:
            return why
        gpu_type = lease.gpu_type
        if case == 0:
            why = _Blocked(
                _NO_CAPACITY_REASON,
                f"tenant {name} holds {used} of its {nominal} nominal {gpu_type} GPUs; "
                "the rest are borrowed by leases that cannot be preempted yet",
            )
        elif case == 1:
            why = _Blocked(PRIORITY, f"higher-priority leases of tenant {name} took its quota room")
        elif case == 2:
            why = _Blocked(
                _FAIR_SHARE_REASON,
                f"tenants ranked higher by fair share took the lendable {gpu_type} GPUs",
            )
        elif case == 3:
            why = _Blocked(
                _OVER_QUOTA_REASON,
                f"tenant {name} holds {used} {gpu_type} GPUs; the request would exceed its "
                f"limit of {ledger.ceiling(name)} (nominal {nominal} + borrowing limit)",
            )
        else:
            why = _Blocked(
                _OVER_QUOTA_REASON,
                f"tenant {name} holds {used} of its {nominal} nominal {gpu_type} GPUs; "
                f"borrowing the request exceeds what others lend ({lendable} lendable now)",
            )
        self.quota_reasons[key] = why
        return why

    def _has_lower_priority(self, lease: LeaseView, ts: _TypeState) -> bool:
        low = ts.min_preemptible_priority.get(lease.tenant)
        return self.s.preemption and low is not None and low < lease.priority

    def _may_make_room(self, lease: LeaseView, ts: _TypeState, k: int) -> bool:
        """O(1) pre-check, so that long queues of hopeless requests stay cheap."""
        if self.attempts >= self.s.max_preemption_attempts:
            return False
        if len(ts.incoming) > len(self.claimed):
            return True
        if self.s.elastic and ts.elastic_over_min:
            return True
        if not self.s.preemption:
            return False
        if self._has_lower_priority(lease, ts):
            return True
        ledger = ts.ledger
        return ledger.within_nominal(lease.tenant, k) and any(
            ledger.used.get(o, 0) > ledger.nominal(o)
            for o in ts.preemptible_owners
            if o != lease.tenant
        )

    def _blocked_by_capacity(self, lease: LeaseView, ts: _TypeState, k: int) -> _Blocked:
        made = self._make_room(lease, ts, k)
        if made:
            return _Blocked(PendingReason.NO_CAPACITY.value, made)
        ts.capacity_blocked = True
        if self.s.backfill and ts.reservation is None:
            ts.reservation = reserve(lease.id, k, lease.strategy, ts.pool, self._ends(ts))
            ts.reservation_borrows = not ts.ledger.within_nominal(lease.tenant, k)
            ts.reservation_tenant = lease.tenant
        blocked = self._capacity_reason(lease, ts, k)
        _remember_fail(self.place_fail, (lease.gpu_type, lease.strategy), k, blocked)
        return blocked

    def _ends(self, ts: _TypeState) -> list[tuple[float, str, Mapping[str, int]]]:
        """Expected (end, id, placement) of every lease holding GPUs of this type."""
        out = list(ts.ends)  # admitted in this cycle
        for lease in ts.running:
            if lease.id in self.touched and lease.preempt_at is None:
                continue  # being preempted or resized now: its end is not known here
            if lease.preempt_at is not None:
                end = lease.preempt_at
            else:
                start = lease.started_at if lease.started_at is not None else self.now
                end = start + lease.duration_s
            out.append((max(self.now, end), lease.id, lease.placement))
        return out

    def _capacity_reason(self, lease: LeaseView, ts: _TypeState, k: int) -> _Blocked:
        if not self.s.explain:
            return _NO_CAPACITY
        pool = ts.pool
        if ts.start_pool.place(k, lease.strategy) is not None:
            top = ts.admitted_priority.get(lease.tenant)
            if top is not None and top > lease.priority:
                return _Blocked(
                    PendingReason.PRIORITY.value,
                    f"higher-priority leases of tenant {lease.tenant} took the free GPUs",
                )
            return _Blocked(
                PendingReason.FAIR_SHARE.value,
                f"tenants ranked higher by fair share took the free {lease.gpu_type} GPUs",
            )
        if pool.total >= k:
            return _Blocked(
                PendingReason.FRAGMENTATION.value,
                f"{pool.total} {lease.gpu_type} GPUs are free but not on nodes {lease.strategy} "
                f"can use for {k} (largest free block {pool.max_free})",
            )
        return _Blocked(
            PendingReason.NO_CAPACITY.value,
            f"{k} {lease.gpu_type} GPUs wanted, {pool.total} free",
        )

    # -- 6. make room ----------------------------------------------------------------------
    def _make_room(self, lease: LeaseView, ts: _TypeState, k: int) -> str | None:
        """Shrink, reclaim or preempt (what-if, then commit); a detail string if done."""
        if not self._may_make_room(lease, ts, k):
            return None
        self.attempts += 1
        memo = (lease.tenant, lease.gpu_type, k, lease.min_gpus, lease.strategy, lease.priority)
        if memo in self.room_fail:
            return None  # the same search in the same state: nothing again
        chosen = select(
            self._candidates(lease, ts), ts.pool, k, lease.strategy, ts.ledger, lease.tenant
        )
        if chosen is None:
            self.room_fail.add(memo)
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
        if self.fixed_rule and not lease.preemptible:
            ledger.add_fixed(lease.tenant, k)
        self._changed()
        parts: list[str] = []
        # A lease chosen both to shrink and to go: going frees all of it, so it only goes.
        going = {c.lease.id for c in chosen if c.kind == PREEMPT}
        chosen = [c for c in chosen if not (c.kind == SHRINK and c.lease.id in going)]
        for cand in chosen:
            victim = cand.lease
            if cand.kind == INCOMING:
                self.claimed.add(victim.id)
                parts.append(f"{victim.id} (already leaving)")
                continue
            self.touched.add(victim.id)
            if cand.kind == SHRINK:
                new = dict(victim.placement)
                for node, n in cand.frees.items():
                    new[node] -= n
                    if not new[node]:
                        del new[node]
                self.resizes.append(Resize(victim.id, new, ResizeReason.SHRINK))
                parts.append(f"shrinking {victim.id} by {cand.gpus}")
            else:
                reason = (
                    PreemptReason.PRIORITY
                    if victim.tenant == lease.tenant
                    else PreemptReason.RECLAIM
                )
                self.preempts.append(
                    Preempt(
                        victim.id,
                        reason,
                        f"{reason} for {lease.id} of tenant {lease.tenant}",
                        self.s.grace_s,
                    )
                )
                parts.append(f"preempting {victim.id}")
        ts.capacity_blocked = True
        return "making room: " + ", ".join(parts) + f" (grace {self.s.grace_s:g} s)"

    def _candidates(self, lease: LeaseView, ts: _TypeState) -> Iterator[Candidate]:
        """Incoming first, then shrinks, then victims by lost work and size; lazily, so a
        search that fits after a few victims does not build the rest."""
        claimed = self.claimed
        for v in ts.incoming:
            if v.id not in claimed:
                yield Candidate(v, INCOMING, v.placement, (0.0,))
        ledger = ts.ledger
        name = lease.tenant
        if self.s.elastic and ts.elastic_over_min:
            shrinks: list[Candidate] = []
            for r in ts.running:
                if r.id in self.touched or r.preempt_at is not None:
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
        touched = self.touched
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

    def _sort_victims(self, ts: _TypeState) -> _Victims:
        """Preemptible leases of a type past their minimum runtime, least lost work
        (GPU-seconds since the last checkpoint, else the start) first, then fewest GPUs, then
        id; once per cycle, with what the candidate scan reads of each. The earliest time a
        younger one becomes eligible goes to ``young_until`` (the caller wakes then)."""
        now = self.now
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
        return _Victims(keyed)

    # -- 8. grow -----------------------------------------------------------------------------
    def _grow(self) -> None:
        """Elastic leases take idle GPUs, lowest fair-share score first."""
        for gpu_type in sorted(self.types):
            ts = self.types[gpu_type]
            if ts.capacity_blocked or ts.pool.total <= 0:
                continue
            growable = [
                r
                for r in ts.running
                if r.held_gpus < r.gpus and r.id not in self.touched and r.preempt_at is None
            ]
            growable.sort(key=lambda r: (self.score(r.tenant), r.submitted_at, r.id))
            for r in growable:
                pool = ts.pool
                if pool.total <= 0:
                    break
                room = ts.ledger.room(r.tenant, min(r.gpus - r.held_gpus, pool.total))
                if room <= 0:
                    continue
                extra = self._grow_placement(r, pool, room)
                if not extra:
                    continue
                pool.take(extra)
                got = sum(extra.values())
                ts.ledger.add(r.tenant, got)
                self._changed()
                self.held[r.tenant] = self.held.get(r.tenant, 0) + got
                self.scores.pop(r.tenant, None)
                new = dict(r.placement)
                for node, n in extra.items():
                    new[node] = new.get(node, 0) + n
                self.resizes.append(Resize(r.id, new, ResizeReason.GROW))
                self.touched.add(r.id)

    @staticmethod
    def _grow_placement(r: LeaseView, pool: FreePool, room: int) -> dict[str, int]:
        out: dict[str, int] = {}
        left = room
        # Own nodes first: growing in place keeps the gang local.
        for node in sorted(r.placement, key=lambda n: (-pool.free.get(n, 0), n)):
            take = min(left, pool.free.get(node, 0))
            if take:
                out[node] = take
                left -= take
        if left and r.strategy != "STRICT_PACK":
            trial = pool.copy()
            trial.take(out)
            more = trial.place(min(left, trial.total), "PACK" if r.strategy == "PACK" else "SPREAD")
            for node, n in (more or {}).items():
                out[node] = out.get(node, 0) + n
        return out

    def _wake_at(self) -> float | None:
        times: list[float] = []
        if self.young_until is not None:
            times.append(self.young_until)
        if self.s.enforce_time_limits:
            times.extend(
                r.started_at + r.duration_s
                for r in self.snap.running
                if r.started_at is not None and r.id not in self.touched
            )
        future = [t for t in times if t > self.now]
        return min(future) if future else None
