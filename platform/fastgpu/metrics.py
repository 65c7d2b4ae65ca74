"""Prometheus metrics of the control plane: what the controller holds, and what it did.

Two halves, both in one :class:`PlatformMetrics` with its own ``CollectorRegistry`` (never
the process-wide default: several servers may run in one test process):

* **State, computed at scrape time** by :class:`StateCollector` from the controller's
  snapshot (tenants, quotas, nodes, budget spend as the scheduler sees it) and the store's live
  leases (the rows ``GET /api/v1/status`` counts), so no thread keeps them and a scrape is
  never stale by more than the scheduler's own ``usage_refresh_s`` for budget spend:

  ============================================  =========================================
  ``fastgpu_gpus_capacity{gpu_type}``           GPUs on alive nodes
  ``fastgpu_gpus_allocated{tenant,gpu_type}``   GPUs held (ADMITTED, RESERVED, BOUND)
  ``fastgpu_gpus_guaranteed{tenant,gpu_type}``  nominal quota
  ``fastgpu_leases{state}``                     live leases per state
  ``fastgpu_pending_leases{reason}``            PENDING leases per reason (``none``: not
                                                looked at by the scheduler yet)
  ``fastgpu_budget_spent{tenant,unit}``         spent this budget period, per limit the
  ``fastgpu_budget_remaining{tenant,unit}``     tenant's budget sets (``unit``: ``gpu_hours``
                                                or ``money``); remaining < 0: over budget
  ``fastgpu_budget_state{tenant}``              0 ok, 1 warning, 2 exhausted (the budget
                                                pass's last assessment, at most a tick old)
  ``fastgpu_budget_warnings_total{tenant,       budget warnings recorded (once per period
  threshold}``                                  and threshold; from the store)
  ``fastgpu_tenant_clusters``                   tenants' Ray clusters with a running head
  ``fastgpu_raylets{tenant}``                   live raylets per tenant
  ============================================  =========================================

  The last two exist only when the backend runs tenant clusters (it has ``clusters`` with
  ``known()`` and ``running_raylets()``).

* **Events, counted by an after-commit hook** (:meth:`PlatformMetrics.observe`, appended to
  ``Controller.after_hooks`` by :meth:`PlatformMetrics.install`):

  ============================================  =========================================
  ``fastgpu_lease_queue_wait_seconds``          request (``created_at``) to first admission
                                                (``admitted_at``), per ``gpu_type``
  ``fastgpu_lease_grant_seconds``               request to GPUs reserved (``reserved_at``),
                                                per ``gpu_type``
  ``fastgpu_preemptions_total{tenant,reason}``  leases ended PREEMPTED, by the policy's
                                                reason (``reclaim``, ``priority``, ...)
  ``fastgpu_leases_ended_total{state}``         leases that reached a terminal state
  ============================================  =========================================

Invariants: a lease is observed at most once per histogram in a process's life: its
re-admission after a lost placement group (RESERVED -> ADMITTED -> RESERVED) is not a new
grant. The hook never raises into the controller (the state change is already committed).
Counters start at zero with the process, as Prometheus expects of counters. A workload that
releases its lease within the preemption grace ends RELEASED, not PREEMPTED, and is counted so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from fastgpu.domain.lease import HOLDING_STATES, LIVE_STATES, Lease, LeaseState
from fastgpu.scheduler import PreemptReason

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

log = logging.getLogger(__name__)
Family = GaugeMetricFamily | CounterMetricFamily

#: From 10 ms (a grant on a warm cluster) to a day (a request queued behind a long job).
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
    24 * 3600.0,
)
_PREEMPT_REASONS = frozenset(
    {PreemptReason.RECLAIM, PreemptReason.PRIORITY, PreemptReason.TIME_LIMIT}
)
#: Live leases between a lost group and its re-reservation are few; a bound keeps a bug from
#: growing the set without end.
_MAX_REGRANTS = 100_000


def preemption_reason(lease: Lease) -> str:
    """The policy's reason for a preemption (``reclaim``, ``priority``, ``time_limit``), read
    from the detail the controller wrote (``"<reason>: <detail>"``); ``other`` if none."""
    head = (lease.reason_detail or "").partition(":")[0].strip()
    return head if head in _PREEMPT_REASONS else "other"


class StateCollector(Collector):
    """Gauges of the controller's state, computed on each scrape (no thread, no cache)."""

    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl

    def describe(self) -> Iterator[Family]:
        # Names only: registering must not read the controller (nor Ray, nor the store).
        yield from self._families(with_clusters=True).values()

    def _families(self, with_clusters: bool) -> dict[str, Family]:
        tg = ["tenant", "gpu_type"]
        fams: list[Family] = [
            GaugeMetricFamily(
                "fastgpu_gpus_capacity", "GPUs on alive nodes, per GPU type.", labels=["gpu_type"]
            ),
            GaugeMetricFamily(
                "fastgpu_gpus_allocated",
                "GPUs held by a tenant's leases (ADMITTED, RESERVED or BOUND).",
                labels=tg,
            ),
            GaugeMetricFamily(
                "fastgpu_gpus_guaranteed",
                "GPUs guaranteed to a tenant (its nominal quota).",
                labels=tg,
            ),
            GaugeMetricFamily("fastgpu_leases", "Live leases, per state.", labels=["state"]),
            GaugeMetricFamily(
                "fastgpu_pending_leases",
                "PENDING leases, per reason they wait (none: not scheduled yet).",
                labels=["reason"],
            ),
            GaugeMetricFamily(
                "fastgpu_budget_spent",
                "Spent in the current budget period, per limit the tenant's budget sets.",
                labels=["tenant", "unit"],
            ),
            GaugeMetricFamily(
                "fastgpu_budget_remaining",
                "Left of the budget this period (negative: over budget).",
                labels=["tenant", "unit"],
            ),
        ]
        fams += [
            GaugeMetricFamily(
                "fastgpu_budget_state",
                "Budget state: 0 ok, 1 warning (a threshold crossed), 2 exhausted (cap reached).",
                labels=["tenant"],
            ),
            CounterMetricFamily(
                "fastgpu_budget_warnings",
                "Budget warnings recorded, once per period and threshold (percent).",
                labels=["tenant", "threshold"],
            ),
        ]
        if with_clusters:
            fams += [
                GaugeMetricFamily(
                    "fastgpu_tenant_clusters", "Tenants' Ray clusters with a running head."
                ),
                GaugeMetricFamily(
                    "fastgpu_raylets", "Live raylets of tenants' clusters.", labels=["tenant"]
                ),
            ]
        return {f.name: f for f in fams}

    def collect(self) -> Iterator[Family]:
        ctl = self._ctl
        clusters = getattr(ctl.backend, "clusters", None)
        has_clusters = hasattr(clusters, "known") and hasattr(clusters, "running_raylets")
        fam = self._families(with_clusters=has_clusters)
        snap = ctl.snapshot()
        live = ctl.store.live_leases()  # the rows GET /api/v1/status counts

        gpu_types = list(snap.gpu_types)
        capacity = dict.fromkeys(gpu_types, 0)
        for node in snap.nodes:
            if node.alive and node.gpu_type in capacity:
                capacity[node.gpu_type] += node.total_gpus
        for gpu_type, total in capacity.items():
            fam["fastgpu_gpus_capacity"].add_metric([gpu_type], total)

        # Every (tenant, type) pair gets a sample, so a series reads 0 rather than vanishing.
        allocated = {(t, g): 0 for t in snap.tenants for g in gpu_types}
        states = dict.fromkeys((s.value for s in LeaseState if s in LIVE_STATES), 0)
        reasons: dict[str, int] = {}
        for lease in live:
            states[lease.state.value] = states.get(lease.state.value, 0) + 1
            if lease.state in HOLDING_STATES:
                key = (lease.tenant, lease.gpu_type)
                allocated[key] = allocated.get(key, 0) + lease.held_gpus
            elif lease.state == LeaseState.PENDING:
                reason = lease.reason or "none"
                reasons[reason] = reasons.get(reason, 0) + 1
        for (tenant, gpu_type), gpus in sorted(allocated.items()):
            fam["fastgpu_gpus_allocated"].add_metric([tenant, gpu_type], gpus)
        for state, count in states.items():
            fam["fastgpu_leases"].add_metric([state], count)
        for reason, count in sorted(reasons.items()):
            fam["fastgpu_pending_leases"].add_metric([reason], count)

        for name, view in sorted(snap.tenants.items()):
            for gpu_type in gpu_types:
                fam["fastgpu_gpus_guaranteed"].add_metric(
                    [name, gpu_type], view.quota(gpu_type).nominal
                )
            budget = view.budget
            if budget is None:
                continue
            for unit, limit, spent in (
                ("gpu_hours", budget.gpu_hours, view.period_gpu_hours),
                ("money", budget.money, view.period_money),
            ):
                if limit is not None:
                    fam["fastgpu_budget_spent"].add_metric([name, unit], spent)
                    fam["fastgpu_budget_remaining"].add_metric([name, unit], limit - spent)

        codes = {"ok": 0, "warning": 1, "exhausted": 2}
        for name, tb in sorted(ctl.budgets.latest.items()):
            fam["fastgpu_budget_state"].add_metric([name], codes[tb.verdict.state.value])
        for (name, threshold), count in sorted(ctl.store.budget_warning_counts().items()):
            fam["fastgpu_budget_warnings"].add_metric([name, f"{threshold:g}"], count)

        if has_clusters:
            assert clusters is not None
            heads = sum(1 for c in clusters.known().values() if c.running())
            fam["fastgpu_tenant_clusters"].add_metric([], heads)
            names = {rec.id: rec.name for rec in ctl.tenants()}
            raylets: dict[str, int] = {}
            for tenant_id, _key in clusters.running_raylets():
                name = names.get(tenant_id, tenant_id)
                raylets[name] = raylets.get(name, 0) + 1
            for name, count in sorted(raylets.items()):
                fam["fastgpu_raylets"].add_metric([name], count)
        yield from fam.values()


class PlatformMetrics:
    """The server's metrics: build one per controller, :meth:`install` its hook, serve
    :meth:`render` at ``GET /metrics``."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.registry = CollectorRegistry()
        self.queue_wait = Histogram(
            "fastgpu_lease_queue_wait_seconds",
            "Seconds from a lease request to its first admission.",
            ["gpu_type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grant = Histogram(
            "fastgpu_lease_grant_seconds",
            "Seconds from a lease request to its GPUs reserved (RESERVED).",
            ["gpu_type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.preemptions = Counter(
            "fastgpu_preemptions",
            "Leases ended by preemption, per tenant and the scheduler's reason.",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.ended = Counter(
            "fastgpu_leases_ended",
            "Leases that reached a terminal state, per state.",
            ["state"],
            registry=self.registry,
        )
        self.registry.register(StateCollector(ctl))
        # Leases whose group was lost after they were reserved: their next RESERVED is not a
        # grant. Touched from the controller's threads (writes run in several).
        self._regrants: set[str] = set()
        self._mu = threading.Lock()

    def install(self) -> None:
        """Count the controller's committed state changes from now on."""
        self.ctl.after_hooks.append(self.observe)

    def observe(self, lease: Lease) -> None:
        """After-commit hook: ``lease`` has just entered ``lease.state``."""
        try:
            self._observe(lease)
        except Exception:  # the change is committed: a metric must never undo the caller
            log.exception("metrics: observing lease %s failed", lease.id)

    def _observe(self, lease: Lease) -> None:
        state = lease.state
        if state == LeaseState.ADMITTED:
            if lease.reserved_at is not None:  # a re-creation, not an admission
                with self._mu:
                    if len(self._regrants) < _MAX_REGRANTS:
                        self._regrants.add(lease.id)
            elif lease.admitted_at is not None:
                wait = max(0.0, lease.admitted_at - lease.created_at)
                self.queue_wait.labels(lease.gpu_type).observe(wait)
        elif state == LeaseState.RESERVED:
            with self._mu:
                regrant = lease.id in self._regrants
                self._regrants.discard(lease.id)
            if not regrant and lease.reserved_at is not None:
                grant = max(0.0, lease.reserved_at - lease.created_at)
                self.grant.labels(lease.gpu_type).observe(grant)
        elif state.is_terminal:
            with self._mu:
                self._regrants.discard(lease.id)
            self.ended.labels(state.value).inc()
            if state == LeaseState.PREEMPTED:
                self.preemptions.labels(lease.tenant, preemption_reason(lease)).inc()

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def install_metrics(ctl: Controller) -> PlatformMetrics:
    """Metrics of ``ctl`` with their hook installed (what the server wires)."""
    metrics = PlatformMetrics(ctl)
    metrics.install()
    return metrics


__all__: list[str] = ["LATENCY_BUCKETS", "PlatformMetrics", "StateCollector", "install_metrics"]
