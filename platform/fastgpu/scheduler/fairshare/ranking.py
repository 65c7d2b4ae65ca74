"""Fair-share rank of tenants: the order of step 4 (and of growth, step 8).

Responsibility: the *score* of a tenant (lower goes first) and the heap key under which its
next request competes with other tenants' heads.

Vocabulary: *score* ``(held GPUs + decayed usage as GPUs) / weight``, where decayed usage
converts to GPUs with ``ln 2 / half_life`` (see :mod:`fastgpu.domain.usage`); *head* (the
next request of a tenant queue to try).

Vocabulary: *owed since* (the ``now`` of the first cycle that saw a request within its
tenant's nominal; its guarantee runs from then, so its deadline is that time plus the grace
period).

Invariants: scores are cached per tenant and forgotten whenever the tenant's held GPUs change
(:meth:`Ranking.add_held`), so a key always reflects the GPUs held now; requests within nominal
always rank before borrowing ones, earliest owed first (then submit order).
"""

from __future__ import annotations

from fastgpu.domain.usage import LN2
from fastgpu.scheduler.fairshare.ledgers import CycleState
from fastgpu.scheduler.snapshot import LeaseView, TenantView


def fair_share_score(
    held_gpus: float, decayed_usage_gpu_s: float, weight: float, half_life_s: float
) -> float:
    """Lower ranks first. Decayed usage converts to GPUs: holding g GPUs forever decays to
    ``g * half_life / ln 2`` GPU-seconds, so ``decayed * ln2 / half_life`` is that g."""
    return (held_gpus + decayed_usage_gpu_s * LN2 / half_life_s) / max(weight, 1e-9)


class Ranking:
    """Tenant views and fair-share scores of one cycle."""

    def __init__(self, state: CycleState, owed: dict[str, float] | None = None) -> None:
        self.state = state
        self._type_state = state.type_state
        self._views: dict[str, TenantView] = {}
        self._scores: dict[str, float] = {}
        #: Lease id -> owed since, kept by the policy between cycles (:meth:`settle`).
        self.owed: dict[str, float] = {} if owed is None else owed
        #: Ids this cycle saw within nominal.
        self._seen: set[str] = set()

    def tenant(self, name: str) -> TenantView:
        """The tenant's view (a default one for a tenant the snapshot does not list)."""
        tv = self._views.get(name)
        if tv is None:
            tv = self.state.snap.tenants.get(name) or TenantView(name=name)
            self._views[name] = tv
        return tv

    def score(self, name: str) -> float:
        sc = self._scores.get(name)
        if sc is None:
            tv = self.tenant(name)
            sc = self._scores[name] = fair_share_score(
                self.state.held.get(name, 0),
                tv.decayed_usage_gpu_s,
                tv.weight,
                self.state.s.usage_half_life_s,
            )
        return sc

    def add_held(self, name: str, gpus: int) -> None:
        """The tenant holds ``gpus`` more GPUs (admitted or grown): its score changes."""
        held = self.state.held
        held[name] = held.get(name, 0) + gpus
        self._scores.pop(name, None)

    def key(self, name: str, head: LeaseView) -> tuple[int, int, float, float, str]:
        """Heap key of a tenant whose next request is ``head``; lowest goes first.

        Requests within nominal go first, earliest owed first, then in submit order: each is
        owed its GPUs whatever the ranks, from the first cycle that saw it within nominal, and
        that order is stable across cycles, so the request that made room (its victims' GPUs
        are coming free) is still first when they do, and a request owed later cannot take
        them and make it wait for a second grace period, even one submitted earlier (it
        became owed only when its tenant's own lease ended or was preempted). Borrowing
        requests follow, by tenant priority then fair-share score."""
        ledger = self._type_state(head.gpu_type).ledger
        if ledger.within_nominal(name, head.min_gpus):
            since = self.owed.get(head.id)
            if since is None:
                since = self.owed[head.id] = self.state.now
            self._seen.add(head.id)
            return (0, 0, since, head.submitted_at, name)
        if self.owed:
            self.owed.pop(head.id, None)  # no longer owed: its clock restarts when it is again
        return (1, -self.tenant(name).priority, self.score(name), 0.0, name)

    def settle(self) -> None:
        """End of cycle: forget admitted and rejected requests, and any other that is no
        longer pending (cancelled), so the memory holds only requests still waiting."""
        owed = self.owed
        if not owed:
            return
        state = self.state
        for a in state.admits:
            owed.pop(a.lease_id, None)
        for r in state.rejects:
            owed.pop(r.lease_id, None)
        seen = self._seen
        if any(i not in seen for i in owed):  # rare: only then look at the whole queue
            pending = {p.id for p in state.snap.pending}
            for i in [i for i in owed if i not in pending]:
                del owed[i]
