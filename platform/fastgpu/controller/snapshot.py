"""The policy's picture of the world: store rows and Ray's nodes -> an immutable Snapshot.

Tenants are keyed by name in the snapshot (names are unique among existing tenants, and a
deleted tenant has no live lease); usage statistics are read by tenant id. Decayed usage and
budget spend are recomputed from the usage records every ``scheduler.usage_refresh_s``: they
move slowly and a full read per pass would dominate the 4 Hz loop.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def build_snapshot(
    now: float,
    config: PlatformConfig,
    nodes: list[NodeInfo],
    tenants: list[TenantRecord],
    stats: dict[str, TenantStats],
    live: list[Lease],
) -> Snapshot:
    held: dict[str, int] = {}
    running: list[LeaseView] = []
    pending: list[LeaseView] = []
    for lease in live:
        if lease.state in HOLDING_STATES:
            placement: dict[str, int] = {}
            for n in lease.nodes:
                placement[n] = placement.get(n, 0) + 1
                held[n] = held.get(n, 0) + 1
            running.append(lease_view(lease, placement))
        elif lease.state == LeaseState.PENDING:
            pending.append(lease_view(lease, {}))
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
