"""Small builders for scheduler tests: ``lease("a", gpus=4).tenant("acme").priority(2)``.

A snapshot built with :func:`snap` derives each node's free GPUs from the running leases'
placements, so a test states only what matters to it.
"""

from __future__ import annotations

from dataclasses import replace

from fastgpu.config import BudgetSpec, QuotaSpec
from fastgpu.scheduler import LeaseView, NodeView, Snapshot, TenantView

GPU = "A100"


class LeaseBuilder:
    def __init__(self, lease_id: str, gpus: int) -> None:
        self.view = LeaseView(
            id=lease_id, tenant="acme", gpu_type=GPU, gpus=gpus, min_gpus=gpus, duration_s=86400
        )

    def _set(self, **kw: object) -> LeaseBuilder:
        self.view = replace(self.view, **kw)  # type: ignore[arg-type]
        return self

    def tenant(self, name: str) -> LeaseBuilder:
        return self._set(tenant=name)

    def priority(self, p: int) -> LeaseBuilder:
        return self._set(priority=p)

    def min(self, m: int) -> LeaseBuilder:
        return self._set(min_gpus=m)

    def strategy(self, s: str) -> LeaseBuilder:
        return self._set(strategy=s)

    def preemptible(self, yes: bool = True) -> LeaseBuilder:
        return self._set(preemptible=yes)

    def submitted(self, t: float) -> LeaseBuilder:
        return self._set(submitted_at=t)

    def duration(self, d: float) -> LeaseBuilder:
        return self._set(duration_s=d)

    def gpu_type(self, g: str) -> LeaseBuilder:
        return self._set(gpu_type=g)

    def on(self, placement: dict[str, int], started: float = -3600.0) -> LeaseBuilder:
        """Running on ``placement`` since ``started``."""
        return self._set(placement=placement, started_at=started)

    def checkpoint(self, at: float) -> LeaseBuilder:
        return self._set(last_checkpoint_at=at)

    def restarted(self, times: int) -> LeaseBuilder:
        """Its workload was preempted ``times`` times before."""
        return self._set(restarts=times)

    def leaving(self, at: float) -> LeaseBuilder:
        return self._set(preempt_at=at)

    def build(self) -> LeaseView:
        return self.view


def lease(lease_id: str, gpus: int = 1) -> LeaseBuilder:
    return LeaseBuilder(lease_id, gpus)


def tenant(
    name: str,
    nominal: int = 0,
    *,
    borrowing_limit: int | None = None,
    lending_limit: int | None = None,
    weight: float = 1.0,
    queueing: str = "best_effort_fifo",
    usage: float = 0.0,
    budget_gpu_hours: float | None = None,
    spent_gpu_hours: float = 0.0,
) -> TenantView:
    return TenantView(
        name=name,
        quotas={
            GPU: QuotaSpec(
                nominal=nominal, borrowing_limit=borrowing_limit, lending_limit=lending_limit
            )
        },
        weight=weight,
        queueing=queueing,
        decayed_usage_gpu_s=usage,
        budget=BudgetSpec(gpu_hours=budget_gpu_hours) if budget_gpu_hours else None,
        period_gpu_hours=spent_gpu_hours,
    )


def nodes(count: int, gpus: int = 8, gpu_type: str = GPU) -> list[NodeView]:
    return [NodeView(f"n{i}", gpu_type, gpus, gpus) for i in range(count)]


def snap(
    node_list: list[NodeView],
    tenants: list[TenantView],
    running: list[LeaseBuilder | LeaseView] = (),  # type: ignore[assignment]
    pending: list[LeaseBuilder | LeaseView] = (),  # type: ignore[assignment]
    now: float = 0.0,
) -> Snapshot:
    run = [r.build() if isinstance(r, LeaseBuilder) else r for r in running]
    pend = [p.build() if isinstance(p, LeaseBuilder) else p for p in pending]
    taken: dict[str, int] = {}
    for r in run:
        for n, g in r.placement.items():
            taken[n] = taken.get(n, 0) + g
    views = tuple(replace(n, free_gpus=n.total_gpus - taken.get(n.node_id, 0)) for n in node_list)
    return Snapshot(
        now=now,
        gpu_types={},
        nodes=views,
        tenants={t.name: t for t in tenants},
        running=tuple(run),
        pending=tuple(pend),
    )
