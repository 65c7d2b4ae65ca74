"""Step 8 of a cycle: elastic leases grow on idle capacity.

Responsibility: give the GPUs still free after admission to running elastic leases below their
maximum, and to elastic requests admitted this cycle at their nominal part only (step 4 held
their borrowing back while another tenant's request within nominal waited), lowest fair-share
score first, within quota (ceiling and ``B <= S``) and placement: own nodes first (growing in
place keeps the gang local), then the strategy's usual placement (never beyond one node for
STRICT_PACK).

Invariants: no growth for a GPU type where a request was left waiting for capacity this cycle
(or room is being made: idle GPUs there are spoken for); a lease touched this cycle, or
announced for preemption, does not grow; a grown lease is touched; a request admitted this
cycle grows by a larger ``Admit``, never a ``Resize`` (it is not running yet).
"""

from __future__ import annotations

from dataclasses import replace

from fastgpu.scheduler.decisions import Admit, Resize, ResizeReason
from fastgpu.scheduler.fairshare.ledgers import CycleState
from fastgpu.scheduler.fairshare.ranking import Ranking
from fastgpu.scheduler.pool import FreePool
from fastgpu.scheduler.snapshot import LeaseView


def grow(state: CycleState, ranking: Ranking) -> None:
    """8. Elastic leases take idle GPUs, lowest fair-share score first."""
    touched = state.touched
    for gpu_type in sorted(state.types):
        ts = state.types[gpu_type]
        if ts.capacity_blocked or ts.pool.total <= 0:
            continue
        growable = [
            r
            for r in ts.running
            if r.held_gpus < r.gpus and r.id not in touched and r.preempt_at is None
        ]
        # Requests admitted at their nominal part: as if running where they were admitted.
        admitted: dict[str, int] = {}
        for i, lease in ts.capped:
            admitted[lease.id] = i
            growable.append(replace(lease, placement=state.admits[i].placement))
        growable.sort(key=lambda r: (ranking.score(r.tenant), r.submitted_at, r.id))
        for r in growable:
            pool = ts.pool
            if pool.total <= 0:
                break
            room = ts.ledger.room(r.tenant, min(r.gpus - r.held_gpus, pool.total))
            if room <= 0:
                continue
            extra = _grow_placement(r, pool, room)
            if not extra:
                continue
            pool.take(extra)
            got = sum(extra.values())
            ts.ledger.add(r.tenant, got)
            state.changed()
            ranking.add_held(r.tenant, got)
            new = dict(r.placement)
            for node, n in extra.items():
                new[node] = new.get(node, 0) + n
            at = admitted.get(r.id)
            if at is not None:
                state.admits[at] = Admit(r.id, new)
                continue
            state.resizes.append(Resize(r.id, new, ResizeReason.GROW))
            touched.add(r.id)


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
