"""Reference policies the simulator runs next to :class:`FairSharePolicy`.

* :class:`FifoPolicy`: one global queue in submit order, no quotas, no preemption; the head
  blocks everyone behind it (strict FIFO), gangs placed best fit.
* :class:`SrtfOraclePolicy`: preemptive shortest-remaining-time-first with perfect knowledge of
  remaining work and free (lossless) preemption: a reference point, not a deployable policy.

Both implement the :class:`fastgpu.scheduler.Policy` protocol and, like the real policy, are
pure. Static partitioning is not here: it is ``FairSharePolicy`` with borrowing and preemption
off, so the comparison isolates what borrowing and preemption buy.
"""

from __future__ import annotations

from fastgpu.domain.lease import PendingReason
from fastgpu.scheduler.decisions import Admit, Decisions, Preempt, Queue, Reject
from fastgpu.scheduler.pool import FreePool
from fastgpu.scheduler.preemption import PREEMPT, Candidate, select
from fastgpu.scheduler.snapshot import LeaseView, Snapshot


def _pools(snap: Snapshot) -> tuple[dict[str, FreePool], dict[str, FreePool]]:
    free: dict[str, dict[str, int]] = {}
    total: dict[str, dict[str, int]] = {}
    for n in snap.nodes:
        if n.alive:
            free.setdefault(n.gpu_type, {})[n.node_id] = n.free_gpus
            total.setdefault(n.gpu_type, {})[n.node_id] = n.total_gpus
    return (
        {t: FreePool(f) for t, f in free.items()},
        {t: FreePool(f) for t, f in total.items()},
    )


def _infeasible(totals: dict[str, FreePool], lease: LeaseView) -> Reject | None:
    pool = totals.get(lease.gpu_type)
    if pool is None or pool.place(lease.gpus, lease.strategy) is None:
        return Reject(lease.id, PendingReason.INFEASIBLE.value, "never fits this cluster")
    return None


class FifoPolicy:
    """Global strict FIFO without quotas."""

    def __init__(self, explain: bool = False) -> None:
        self.explain = explain

    def schedule(self, snapshot: Snapshot) -> Decisions:
        pools, totals = _pools(snapshot)
        admits: list[Admit] = []
        queued: list[Queue] = []
        rejects: list[Reject] = []
        head: str | None = None
        for lease in sorted(snapshot.pending, key=lambda lv: (lv.submitted_at, lv.id)):
            if head is None:
                bad = _infeasible(totals, lease)
                if bad:
                    rejects.append(bad)
                    continue
                pool = pools.get(lease.gpu_type)
                placement = pool.place(lease.gpus, lease.strategy) if pool else None
                if placement is not None and pool is not None:
                    pool.take(placement)
                    admits.append(Admit(lease.id, placement))
                    continue
                head = lease.id
                if not self.explain:
                    break
                queued.append(Queue(lease.id, PendingReason.NO_CAPACITY.value, "FIFO head"))
            else:
                queued.append(Queue(lease.id, PendingReason.PRIORITY.value, f"behind {head}"))
        return Decisions(admit=tuple(admits), queue=tuple(queued), reject=tuple(rejects))


class SrtfOraclePolicy:
    """Preemptive shortest remaining time first; ``duration_s`` is taken as the truth.

    Remaining time: pending ``duration_s``; running ``started_at + duration_s - now``. A waiting
    job shorter than running ones preempts the longest of them (grace 0) when that makes it fit.
    """

    def __init__(self, max_preemptions_per_cycle: int = 64) -> None:
        self.max_preemptions_per_cycle = max_preemptions_per_cycle

    def schedule(self, snapshot: Snapshot) -> Decisions:
        now = snapshot.now
        pools, totals = _pools(snapshot)
        admits: list[Admit] = []
        rejects: list[Reject] = []
        preempts: list[Preempt] = []
        victims: dict[str, list[tuple[float, LeaseView]]] = {}
        for r in snapshot.running:
            if r.preempt_at is None and r.started_at is not None:
                left = r.started_at + r.duration_s - now
                victims.setdefault(r.gpu_type, []).append((left, r))
        for vs in victims.values():
            vs.sort(key=lambda e: (-e[0], e[1].id))  # longest remaining first
        taken: set[str] = set()
        budget = self.max_preemptions_per_cycle
        for lease in sorted(snapshot.pending, key=lambda lv: (lv.duration_s, lv.submitted_at)):
            bad = _infeasible(totals, lease)
            if bad:
                rejects.append(bad)
                continue
            pool = pools[lease.gpu_type]
            placement = pool.place(lease.gpus, lease.strategy)
            if placement is not None:
                pool.take(placement)
                admits.append(Admit(lease.id, placement))
                continue
            longer = [
                Candidate(r, PREEMPT, r.placement, (-left,))
                for left, r in victims.get(lease.gpu_type, [])
                if left > lease.duration_s and r.id not in taken
            ]
            if budget <= 0 or not longer:
                continue
            chosen = select(longer, pool, lease.gpus, lease.strategy)
            if chosen is None:
                continue
            for cand in chosen:
                taken.add(cand.lease.id)
                preempts.append(Preempt(cand.lease.id, "srtf", f"shorter {lease.id} waits", 0.0))
                budget -= 1
            # The freed GPUs are this lease's: keep others off them in this cycle.
            what_if = pool.copy()
            for cand in chosen:
                what_if.give(cand.frees)
            spot = what_if.place(lease.gpus, lease.strategy)
            if spot is not None:
                pool.take({n: min(g, pool.free.get(n, 0)) for n, g in spot.items()})
        return Decisions(admit=tuple(admits), reject=tuple(rejects), preempt=tuple(preempts))
