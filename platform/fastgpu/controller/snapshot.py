"""The policy's picture of the world: store rows and Ray's nodes -> an immutable Snapshot.

Tenants are keyed by name in the snapshot (names are unique among existing tenants, and a
deleted tenant has no live lease); usage statistics are read by tenant id. Decayed usage and
budget spend are recomputed from the usage records every ``scheduler.usage_refresh_s``: they
move slowly and a full read per pass would dominate the 4 Hz loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from fastgpu.config import PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.domain.lease import HOLDING_STATES, Lease, LeaseState
from fastgpu.domain.usage import period_start
from fastgpu.scheduler import LeaseView, NodeView, Snapshot, TenantView
from fastgpu.store import Store, TenantRecord


@dataclass(frozen=True)
class TenantStats:
    decayed_gpu_s: float = 0.0
    period_gpu_hours: float = 0.0
    period_money: float = 0.0


class UsageStats:
    """Per-tenant decayed usage (one read for all tenants) and this budget period's spend (a
    read per tenant with a budget), refreshed every ``scheduler.usage_refresh_s``."""

    def __init__(self, store: Store, config: PlatformConfig) -> None:
        self._store = store
        self._config = config
        self._stats: dict[str, TenantStats] = {}
        self._at = -1e18

    def get(self, tenants: list[TenantRecord], now: float) -> dict[str, TenantStats]:
        if now - self._at < self._config.scheduler.usage_refresh_s:
            return self._stats
        decayed = self._store.decayed_usage(now, self._config.scheduler.usage_half_life_s)
        out: dict[str, TenantStats] = {}
        for rec in tenants:
            gpu_h, money = 0.0, 0.0
            if rec.spec.budget is not None:
                start = period_start(now, rec.spec.budget.period)
                for row in self._store.usage(now, tenant_id=rec.id, since=start):
                    gpu_h += row.gpu_seconds / 3600
                    money += row.cost
            out[rec.id] = TenantStats(decayed.get(rec.id, 0.0), gpu_h, money)
        self._stats, self._at = out, now
        return out


def lease_view(lease: Lease, placement: dict[str, int]) -> LeaseView:
    """The policy's view of a live lease; ``placement``: its GPUs per node. A lease holding
    GPUs is seen at the size it holds unless bound (only a bound, elastic workload's lease can
    change size), and with its announced preemption (its GPUs are leaving: never a victim
    twice)."""
    gpus, min_gpus, preempt_at = lease.gpus, lease.min_gpus, None
    if lease.state in HOLDING_STATES:
        if lease.state != LeaseState.BOUND:
            gpus = min_gpus = lease.held_gpus
        preempt_at = lease.preempt_at
    return LeaseView(
        id=lease.id,
        tenant=lease.tenant,
        gpu_type=lease.gpu_type,
        gpus=gpus,
        min_gpus=min_gpus,
        strategy=lease.strategy,
        preemptible=lease.preemptible,
        priority=lease.priority,
        submitted_at=lease.created_at,
        duration_s=lease.duration_s,
        started_at=lease.reserved_at or lease.admitted_at,
        placement=placement,
        last_checkpoint_at=lease.last_checkpoint_at,
        restarts=lease.restarts,
        preempt_at=preempt_at,
    )


def placement_of(lease: Lease) -> dict[str, int]:
    """The GPUs a lease holds per node (none unless it holds GPUs)."""
    return dict(Counter(lease.nodes)) if lease.state in HOLDING_STATES else {}


#: Every field of a lease that :func:`lease_view` reads (``nodes`` apart: a list, copied into
#: the key). A test holds this to what ``lease_view`` touches.
VIEW_FIELDS = (
    "id",
    "tenant",
    "gpu_type",
    "state",
    "gpus",
    "min_gpus",
    "held_gpus",
    "strategy",
    "preemptible",
    "priority",
    "created_at",
    "duration_s",
    "reserved_at",
    "admitted_at",
    "last_checkpoint_at",
    "restarts",
    "preempt_at",
)
_view_fields = attrgetter(*VIEW_FIELDS)


class LeaseViews:
    """:func:`lease_view` of each live lease, kept from pass to pass and rebuilt only when a
    field it reads changed. Leases are changed in place by many writers, so the cache is keyed
    by the values themselves, not by a version someone must remember to bump. A pass over 1,000
    live leases built every view anew (frozen dataclasses: ~2 us each, a third of a write's
    time under load)."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[tuple[Any, ...], LeaseView]] = {}

    def __call__(self, lease: Lease) -> LeaseView:
        key = (*_view_fields(lease), tuple(lease.nodes))
        hit = self._memo.get(lease.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        view = lease_view(lease, placement_of(lease))
        self._memo[lease.id] = (key, view)
        return view

    def keep_only(self, live: list[Lease]) -> None:
        """Forget the views of leases no longer live (once the memo has grown past them)."""
        if len(self._memo) > 2 * len(live) + 64:
            ids = {lease.id for lease in live}
            self._memo = {k: v for k, v in self._memo.items() if k in ids}


def build_snapshot(
    now: float,
    config: PlatformConfig,
    nodes: list[NodeInfo],
    tenants: list[TenantRecord],
    stats: dict[str, TenantStats],
    live: list[Lease],
    views: LeaseViews,
) -> Snapshot:
    """``views``: the caller's memo of lease views, kept from pass to pass."""
    held: dict[str, int] = {}
    running: list[LeaseView] = []
    pending: list[LeaseView] = []
    for lease in live:
        if lease.state in HOLDING_STATES:
            v = views(lease)
            for n, count in v.placement.items():
                held[n] = held.get(n, 0) + count
            running.append(v)
        elif lease.state == LeaseState.PENDING:
            pending.append(views(lease))
    views.keep_only(live)
    node_views = tuple(
        NodeView(
            node_id=n.node_id,
            gpu_type=n.gpu_type or "",
            total_gpus=n.total_gpus,
            free_gpus=max(0, n.total_gpus - held.get(n.node_id, 0)),
            alive=n.alive,
        )
        for n in nodes
        if n.gpu_type and n.total_gpus > 0
    )
    none = TenantStats()
    tenant_views = {
        rec.name: TenantView(
            name=rec.name,
            quotas=dict(rec.spec.quotas),
            weight=rec.spec.weight,
            priority=rec.spec.priority,
            queueing=rec.spec.queueing,
            budget=rec.spec.budget,
            decayed_usage_gpu_s=stats.get(rec.id, none).decayed_gpu_s,
            period_gpu_hours=stats.get(rec.id, none).period_gpu_hours,
            period_money=stats.get(rec.id, none).period_money,
        )
        for rec in tenants
    }
    return Snapshot(
        now=now,
        gpu_types=dict(config.gpu_types),
        nodes=node_views,
        tenants=tenant_views,
        running=tuple(running),
        pending=tuple(pending),
    )
