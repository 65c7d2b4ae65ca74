"""The controller: the one place that changes leases and drives Ray.

Responsibilities: admit pending leases through the policy seam over an immutable snapshot;
reserve admitted leases as placement groups; notice readiness, expiry, release and preemption
deadlines; resize elastic leases; purge ended leases past their retention. Services
(:mod:`fastgpu.service`) call its write methods; it authorizes nothing itself.

Invariants:
* the store is the source of truth; Ray is made to match it (never the other way round);
* a state change is committed before Ray is touched, so a crash at any point leaves either an
  orphan group (removed by reconcile) or a lease whose group is missing (re-created by
  reconcile), never a lease that is half-written or a group nobody accounts for;
* every state change goes through :meth:`Controller.transition`, which runs the transaction
  hooks (metering) inside the store's transaction and then the after-commit hooks (waking
  long-polls);
* one lock (``_mu``) orders every state change, so a scheduling pass sees a consistent store;
* the controller keeps the live leases in memory (``_live``), loaded from the store once and
  updated after every committed write it makes (it is the only writer of leases while it
  leads); any failed write drops the copy, which is then reloaded. Readers outside the
  controller (the services' reads) always read the store;
* new requests and releases are committed first, then *join* a scheduling pass: a pass that
  started after a write was committed covers it, so N concurrent requests cost one pass, not N
  (like a database's group commit), and each caller still answers with the lease as a pass
  that saw it left it. Under a stream of writes, passes are paced (``controller.pass_share``)
  so that more writes join each one and reads get the interpreter between them
  (:mod:`fastgpu.controller.group_commit`).

The clock, store, backend and policy are injected, so tests can step :meth:`Controller.tick`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from fastgpu.config import PlatformConfig
from fastgpu.controller.backend import Backend, NodeInfo, gpu_bundle, group_name
from fastgpu.controller.budgets import BudgetPass
from fastgpu.controller.group_commit import GroupCommit
from fastgpu.controller.housekeeping import meter_held_after
from fastgpu.controller.housekeeping import purge as purge_retained
from fastgpu.controller.metering import meter
from fastgpu.controller.snapshot import LeaseViews, UsageStats, build_snapshot
from fastgpu.controller.watch import LeaseWatch
from fastgpu.domain.lease import HOLDING_STATES, Lease, LeaseState, PendingReason
from fastgpu.errors import Conflict, NotFound
from fastgpu.scheduler import (
    FairSharePolicy,
    FairShareSettings,
    Policy,
    QuotaCapacityPolicy,
    Snapshot,
)
from fastgpu.store import Store, TenantRecord, TxHook
from fastgpu.timeutil import Clock, wall_clock

log = logging.getLogger(__name__)

_NODE_CACHE_S = 1.0
#: Preemptions of a workload older than this do not lengthen its minimum runtime.
RESTART_WINDOW_S = 24 * 3600.0


def new_lease_id() -> str:
    return uuid.uuid4().hex[:16]


def make_policy(config: PlatformConfig) -> Policy:
    """The policy the config names, with its settings."""
    if config.scheduler.policy == "quota":
        return QuotaCapacityPolicy()
    # The controller ends leases at expires_at itself (state EXPIRED); reasons are shown.
    return FairSharePolicy(
        FairShareSettings.from_config(config.scheduler, enforce_time_limits=False, explain=True)
    )


class Controller:
    def __init__(
        self,
        config: PlatformConfig,
        store: Store,
        backend: Backend,
        clock: Clock = wall_clock,
        policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.backend = backend
        self.clock = clock
        self.policy: Policy = policy or make_policy(config)
        self.watch = LeaseWatch()
        #: Run inside each state change's transaction.
        self.tx_hooks: list[TxHook] = [meter]
        #: Run after each state change committed: ``hook(lease)``.
        self.after_hooks: list[Callable[[Lease], None]] = [
            lambda lease: self.watch.notify([lease.id])
        ]
        #: Run by each purge pass: ``name -> hook()`` returning how many things it removed.
        self.purge_hooks: dict[str, Callable[[], int]] = {}
        #: Run by each pass with the lock held, after budgets: ``hook(now)`` (hosts' loss, drains).
        self.tick_hooks: list[Callable[[float], None]] = []
        self._mu = threading.RLock()
        #: Numbers writes and paces the passes they join.
        self.passes = GroupCommit(config.controller.pass_share)
        self._nodes: list[NodeInfo] = []
        self._nodes_at = -1e18
        self._last_reconcile = -1e18
        self._last_purge = -1e18
        self._tenant_cache: list[TenantRecord] | None = None
        self._live: dict[str, Lease] | None = None
        self._stats = UsageStats(store, config)
        self._views = LeaseViews()
        self.budgets = BudgetPass(self)

    @property
    def lock(self) -> threading.RLock:
        return self._mu

    # ==== tenants (read-through cache of rows only the services write) ========================
    def tenants(self) -> list[TenantRecord]:
        cached = self._tenant_cache
        if cached is None:
            cached = self._tenant_cache = self.store.list_tenants()
        return cached

    def tenant(self, name: str) -> TenantRecord | None:
        for rec in self.tenants():
            if rec.name == name:
                return rec
        return None

    def tenants_changed(self) -> None:
        """A tenant was created, changed or deleted: drop caches and schedule again."""
        with self._mu:
            self._tenant_cache = None
            self._stats = UsageStats(self.store, self.config)
            self.schedule()

    # ==== the live leases in memory ==========================================================
    def live(self) -> list[Lease]:
        """The live leases, oldest first (caller holds the lock)."""
        self._sync_live()
        assert self._live is not None
        return sorted(self._live.values(), key=lambda lease: (lease.created_at, lease.id))

    def _sync_live(self) -> int:
        """Bring the new inserts into the live set; return the number of the last write they
        include (caller holds the lock)."""
        seq, inbox = self.passes.take()
        if self._live is None:
            # Committed before ``seq`` was read: the store has every one of them.
            self._live = {lease.id: lease for lease in self.store.live_leases()}
        else:
            for lease in inbox:
                self._live.setdefault(lease.id, lease)
        return seq

    def _track(self, lease: Lease) -> None:
        """Record a committed write of ``lease`` in the in-memory live set."""
        if self._live is None:
            return
        if lease.state.is_terminal:
            self._live.pop(lease.id, None)
        else:
            self._live[lease.id] = lease

    def forget_live(self) -> None:
        """Drop the in-memory live set (reloaded from the store at the next use)."""
        self._live = None

    # ==== lease writes (the services authorize; these act) =====================================
    def _join_pass(self, mine: int) -> dict[str, Lease]:
        """Schedule unless a pass that started after write ``mine`` already ran (caller holds
        no lock: a paced write naps without it)."""
        while True:
            with self._mu:
                if self.passes.covered(mine):
                    return {}
                wait = self.passes.room_wait()
                if wait <= 0:
                    return self.schedule()
            self.passes.nap(wait)

    def submit(self, lease: Lease, max_live: int | None = None) -> tuple[Lease, bool]:
        """Store a new PENDING lease (or find the one with its request id) and schedule."""
        stored, created = self.store.insert_lease(lease, max_live)
        mine = self.passes.wrote(stored) if created else 0
        seen = self._join_pass(mine) if created else {}
        with self._mu:
            # The pass read (and updated in place) every live lease: no second read needed.
            fresh = seen.get(stored.id) or self.store.get_lease(stored.id)
            assert fresh is not None
            return fresh, created

    def _lookup(self, lease_id: str) -> Lease | None:
        """The lease as the controller knows it: the live set's object (the one every later
        write must change), else the store's row of an ended lease (caller holds the lock)."""
        self._sync_live()
        assert self._live is not None
        return self._live.get(lease_id) or self.store.get_lease(lease_id)

    def _current(self, lease_id: str) -> Lease:
        lease = self._lookup(lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id!r} not found")
        return lease

    def release(self, lease_id: str) -> Lease:
        """End a lease at its holder's request (idempotent on an ended lease)."""
        with self._mu:
            lease = self._current(lease_id)
            if lease.state.is_terminal:
                return lease
            if lease.state == LeaseState.PENDING:
                self.end(lease, LeaseState.CANCELLED, "released while pending")
            else:
                self.end(lease, LeaseState.RELEASED, "released by tenant")
        self._join_pass(self.passes.wrote())
        return lease

    def bind(self, lease_id: str, workload: str) -> Lease:
        """Hand a reserved lease's GPUs over to a library workload (Train, Tune, Serve).

        The placement group is removed so the workload can create its own on the same nodes;
        the GPUs stay assigned to the lease in the ledger, so nothing else is admitted there.
        """
        with self._mu:
            lease = self._current(lease_id)
            if lease.state == LeaseState.BOUND:
                return lease
            if lease.state != LeaseState.RESERVED:
                raise Conflict(
                    f"lease {lease_id} is {lease.state.value}; only a RESERVED lease can be bound"
                )
            now = self.clock()
            lease.workload = workload
            # A workload preempted before (it resumes from a checkpoint on this lease) gets a
            # longer minimum runtime, doubled per recent preemption (the policy's backoff).
            lease.restarts = self.store.count_preempted(
                lease.tenant_id or "", workload, now - RESTART_WINDOW_S
            )
            self.transition(lease, LeaseState.BOUND, f"bound to {workload}")
            if lease.placement_group:
                self.backend.hand_over(lease.placement_group, lease.placement_group_id)
            return lease

    def checkpoint(self, lease_id: str) -> Lease:
        """The workload saved a checkpoint now: preemption prefers leases that lose least."""
        with self._mu:
            lease = self._current(lease_id)
            if lease.state not in HOLDING_STATES:
                raise Conflict(f"lease {lease_id} is {lease.state.value}; it holds no GPUs")
            lease.last_checkpoint_at = self.clock()
            self.store.save_lease(lease, lease.state)
            self._track(lease)
        if lease.placement_group:
            # GPUs the lease is giving back (a shrink) may go now: the work on them is saved.
            self.backend.checkpointed(lease.placement_group)
        return lease

    def mark_ready(self, lease_id: str) -> Lease | None:
        """A waiter saw the lease's group ready before the loop did: record it now."""
        with self._mu:
            lease = self._lookup(lease_id)
            if lease is not None and lease.state == LeaseState.ADMITTED:
                self._mark_reserved(lease)
            return lease

    # ==== one state change, its hooks ==========================================================
    def transition(self, lease: Lease, new: LeaseState, why: str) -> None:
        self._written(
            lease, lambda: self.store.transition(lease, new, self.clock(), why, self.tx_hooks)
        )

    def _written(self, lease: Lease, write: Callable[[], object]) -> None:
        """Run a store write of ``lease``; then track it in memory and run the after-hooks (a
        failed write drops the in-memory live set instead: the lease may be half-changed)."""
        try:
            write()
        except BaseException:
            self.forget_live()
            raise
        self._track(lease)
        for hook in self.after_hooks:
            hook(lease)

    def end(self, lease: Lease, state: LeaseState, why: str) -> None:
        """Move a lease to a terminal state; commit first, then free its group."""
        lease.ended_at = self.clock()
        if state not in (LeaseState.REJECTED, LeaseState.FAILED, LeaseState.PREEMPTED):
            lease.reason = None
            lease.reason_detail = None
        holding = lease.state in HOLDING_STATES
        self.transition(lease, state, why)
        if lease.placement_group and holding:
            # A bound lease's group was handed over, but its raylets are still the lease's:
            # this stops them too.
            self.backend.remove_group(lease.placement_group, lease.placement_group_id)

    def resize(self, lease: Lease, nodes: list[str], detail: str) -> None:
        """Commit a bound lease's new size, then let the backend follow (the pool's adds
        raylets, or stops some after the grace)."""
        lease.nodes = nodes
        lease.reason_detail = detail
        self._written(lease, lambda: self.store.resize(lease, self.clock(), self.tx_hooks))
        if lease.placement_group:
            self.backend.resize(lease.placement_group, list(nodes))

    def _mark_reserved(self, lease: Lease) -> None:
        if lease.placement_group and not lease.placement_group_id:
            known = getattr(self.backend, "group_id", None)
            lease.placement_group_id = known(lease.placement_group) if known else None
        now = self.clock()
        lease.reserved_at = now
        lease.expires_at = now + lease.duration_s
        lease.reason = None
        lease.reason_detail = None
        self.transition(lease, LeaseState.RESERVED, "placement group ready")

    # ==== the loop =============================================================================
    def tick(self) -> None:
        """One pass: readiness, expiry, preemption deadlines, budgets (warnings; stops at the
        cap), reconcile and purge when due, scheduling."""
        from fastgpu.controller.reconcile import reconcile

        with self._mu:
            now = self.clock()
            self.poll_ready(timeout_s=0.0)
            holding = [lease for lease in self.live() if lease.state in HOLDING_STATES]
            for lease in holding:
                if lease.expires_at is not None and lease.expires_at <= now:
                    self.end(
                        lease, LeaseState.EXPIRED, f"duration of {lease.duration_s:g} s is over"
                    )
                elif lease.preempt_at is not None and lease.preempt_at <= now:
                    self.end(lease, LeaseState.PREEMPTED, lease.reason_detail or "preempted")
            self.budgets.run(now)
            for hook in self.tick_hooks:
                hook(now)
            if now - self._last_reconcile >= self.config.controller.reconcile_interval_s:
                self._last_reconcile = now
                reconcile(self)
            if now - self._last_purge >= self.config.controller.purge_interval_s:
                self._last_purge = now
                self.purge(now)
            self.schedule()
            meter_held_after(self)
        housekeeping = getattr(self.backend, "housekeeping", None)
        if housekeeping is not None:
            housekeeping()

    def poll_ready(self, timeout_s: float) -> None:
        admitted = [lease for lease in self.live() if lease.state == LeaseState.ADMITTED]
        names = [lease.placement_group for lease in admitted if lease.placement_group]
        if not names:
            return
        ready = self.backend.ready(names, timeout_s)
        for lease in admitted:
            if lease.placement_group in ready:
                self._mark_reserved(lease)
        failures = getattr(self.backend, "failures", None)
        for name, error in (failures(names) if failures else {}).items():
            failed = next((x for x in admitted if x.placement_group == name), None)
            if failed is not None and failed.state == LeaseState.ADMITTED:
                failed.reason, failed.reason_detail = "reservation_failed", error
                self.end(failed, LeaseState.FAILED, f"reserving failed: {error}")

    def purge(self, now: float) -> dict[str, int]:
        """See :func:`fastgpu.controller.housekeeping.purge`."""
        return purge_retained(self, now)

    # ==== scheduling ===========================================================================
    def nodes_changed(self) -> None:
        """A host joined, left or was drained: the next read asks the backend again."""
        self._nodes_at = -1e18

    def cluster_nodes(self, force: bool = False) -> list[NodeInfo]:
        now = time.monotonic()
        if force or now - self._nodes_at > _NODE_CACHE_S:
            self._nodes = self.backend.nodes()
            self._nodes_at = now
        return self._nodes

    def snapshot(self, live: list[Lease] | None = None) -> Snapshot:
        with self._mu:
            now = self.clock()
            tenants = self.tenants()
            return build_snapshot(
                now,
                self.config,
                self.cluster_nodes(),
                tenants,
                self._stats.get(tenants, now),
                self.live() if live is None else live,
                self._views,
            )

    def schedule(self) -> dict[str, Lease]:
        """Run the policy over a snapshot and apply its decisions (caller may hold the lock).

        Returns the live leases the pass read, as they are after it (keyed by id)."""
        with self._mu, self.passes.timed():
            return self._schedule()

    def _schedule(self) -> dict[str, Lease]:
        from fastgpu.controller.apply import apply_decisions

        started_at = self._sync_live()
        live = self.live()
        self.passes.cover(started_at)
        by_id = {lease.id: lease for lease in live}
        snap = self.snapshot(live)
        if not snap.pending and not any(v.held_gpus < v.gpus for v in snap.running):
            return by_id  # nothing waits and nothing can grow: no decision to make
        decisions = self.policy.schedule(snap)
        try:
            apply_decisions(self, decisions, by_id)
        except BaseException:
            self.forget_live()  # a lease may be half-changed in memory: reload
            raise
        return by_id

    def create_group(self, lease: Lease, may_exist: bool = True) -> None:
        assert lease.placement_group is not None
        bundle = gpu_bundle(self.config.gpu_types[lease.gpu_type])
        group_id = self.backend.create_group(
            lease.placement_group,
            bundle,
            list(lease.nodes),
            lease.strategy,
            may_exist,
            tenant=lease.tenant_id or "",
        )
        if lease.placement_group_id != group_id:
            lease.placement_group_id = group_id
            if may_exist:
                self.store.save_lease(lease, lease.state)
            # A fresh admission's group id is stored with its next state change (RESERVED;
            # see _mark_reserved), saving a transaction on the grant's path; until then the
            # group is found by its name.

    def admit(self, lease: Lease, nodes: list[str]) -> None:
        lease.nodes = nodes
        lease.placement_group = group_name(lease.id)
        lease.admitted_at = self.clock()
        lease.reason = PendingReason.RESERVING.value
        lease.reason_detail = "placement group created; waiting for Ray to reserve it"
        self.transition(lease, LeaseState.ADMITTED, "admitted")
        self.create_group(lease, may_exist=False)
