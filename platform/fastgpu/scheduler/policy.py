"""The policy seam and the baseline admission policy.

:class:`QuotaCapacityPolicy` admits by nominal quota and capacity, in priority then submit
order, with gang placement; it never preempts. Richer policies (fair share, borrowing, backfill,
preemption, elastic) implement the same :class:`Policy` protocol.
"""

from __future__ import annotations

from typing import Protocol

from fastgpu.domain.lease import PendingReason
from fastgpu.scheduler.decisions import Admit, Decisions, Queue, Reject
from fastgpu.scheduler.placement import could_ever_fit, place
from fastgpu.scheduler.snapshot import LeaseView, Snapshot


class Policy(Protocol):
    def schedule(self, snapshot: Snapshot) -> Decisions: ...


def infeasible_reason(snapshot: Snapshot, lease: LeaseView) -> str | None:
    """Why no state of this cluster could ever run the lease, or None."""
    totals = snapshot.total_by_node(lease.gpu_type)
    want = lease.min_gpus
    if not totals:
        return f"no node offers GPU type {lease.gpu_type}"
    if not could_ever_fit(want, lease.strategy, totals):
        biggest = max(totals.values())
        if lease.strategy == "STRICT_PACK":
            return (
                f"{want} {lease.gpu_type} GPUs on one node (STRICT_PACK), but the largest node "
                f"has {biggest}"
            )
        return f"{want} {lease.gpu_type} GPUs, but the cluster has {sum(totals.values())}"
    return None


class QuotaCapacityPolicy:
    """Admit a pending lease when it fits its tenant's nominal quota and free capacity."""

    def schedule(self, snapshot: Snapshot) -> Decisions:
        admits: list[Admit] = []
        queued: list[Queue] = []
        rejects: list[Reject] = []
        free: dict[str, dict[str, int]] = {}
        used: dict[tuple[str, str], int] = {}
        for lease in snapshot.running:
            key = (lease.tenant, lease.gpu_type)
            used[key] = used.get(key, 0) + lease.held_gpus

        order = sorted(snapshot.pending, key=lambda lv: (-lv.priority, lv.submitted_at, lv.id))
        for lease in order:
            why = infeasible_reason(snapshot, lease)
            if why:
                rejects.append(Reject(lease.id, PendingReason.INFEASIBLE.value, why))
                continue
            tenant = snapshot.tenants.get(lease.tenant)
            nominal = tenant.quota(lease.gpu_type).nominal if tenant else 0
            have = used.get((lease.tenant, lease.gpu_type), 0)
            if have + lease.gpus > nominal:
                queued.append(
                    Queue(
                        lease.id,
                        PendingReason.OVER_QUOTA.value,
                        f"tenant {lease.tenant} holds {have} of its {nominal} nominal "
                        f"{lease.gpu_type} GPUs; {lease.gpus} more would exceed it",
                    )
                )
                continue
            pool = free.setdefault(lease.gpu_type, snapshot.free_by_node(lease.gpu_type))
            placement = place(lease.gpus, lease.strategy, pool)
            if placement is None:
                total_free = sum(pool.values())
                if total_free >= lease.gpus:
                    queued.append(
                        Queue(
                            lease.id,
                            PendingReason.FRAGMENTATION.value,
                            f"{total_free} {lease.gpu_type} GPUs are free but not on one node "
                            f"as {lease.strategy} needs",
                        )
                    )
                else:
                    queued.append(
                        Queue(
                            lease.id,
                            PendingReason.NO_CAPACITY.value,
                            f"{lease.gpus} {lease.gpu_type} GPUs wanted, {total_free} free",
                        )
                    )
                continue
            for node, n in placement.items():
                pool[node] -= n
            used[(lease.tenant, lease.gpu_type)] = have + lease.gpus
            admits.append(Admit(lease.id, placement))
        return Decisions(admit=tuple(admits), queue=tuple(queued), reject=tuple(rejects))
