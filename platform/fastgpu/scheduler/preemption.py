"""Making room for a blocked request: shrink elastic leases, reclaim, priority preemption.

Responsibility: given a blocked request and an ordered list of *candidates* (GPUs that could be
made free), pick the cheapest sufficient subset, as a what-if on a copy of the free map
(simulate, then the caller commits or discards). Nothing here decides *who may* be a victim;
:mod:`fastgpu.scheduler.fairshare.make_room` builds the candidate list by the rules of the
design note.

Vocabulary:

* *incoming*: a lease already announced for preemption (``LeaseView.preempt_at``); its GPUs
  come free at no further cost, so they are always used first.
* *shrink*: an elastic lease above ``min_gpus`` gives back part of its GPUs (it keeps running).
* *preempt*: a preemptible lease past its minimum runtime loses its GPUs after a grace period.

Invariants: victims are only added until the request fits (placement and quota), then every
victim not needed for the fit is dropped again, most expensive first, so the answer is minimal
with respect to single removals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice

from fastgpu.scheduler.pool import FreePool
from fastgpu.scheduler.quota import QuotaLedger, QuotaTrial
from fastgpu.scheduler.snapshot import LeaseView

INCOMING = "incoming"
SHRINK = "shrink"
PREEMPT = "preempt"


def lost_work_gpu_s(lease: LeaseView, now: float) -> float:
    """GPU-seconds of work a lease loses if stopped now: since its last checkpoint, else start."""
    started = lease.started_at if lease.started_at is not None else now
    since = started
    if lease.last_checkpoint_at is not None:
        since = max(started, lease.last_checkpoint_at)
    return lease.held_gpus * max(0.0, now - since)


#: At most this many candidates are considered per request (cheapest first): a bound on the
#: what-if search when thousands of leases run; a request that needs more waits a cycle.
MAX_CANDIDATES = 128


class Candidate:
    """GPUs that could be made free: a lease, how (incoming, shrink, preempt), which GPUs,
    and its sort key within its kind (cheapest first). A plain slotted class: thousands are
    built per cycle under long queues, and a frozen dataclass is several times slower to
    build. Compared by identity."""

    __slots__ = ("cost", "frees", "gpus", "kind", "lease")

    def __init__(
        self, lease: LeaseView, kind: str, frees: Mapping[str, int], cost: tuple[float, ...]
    ) -> None:
        self.lease = lease
        self.kind = kind
        #: Node id -> GPUs this candidate frees.
        self.frees = frees
        #: Sort key within its kind: cheapest first.
        self.cost = cost
        self.gpus: int = sum(frees.values())


def shrink_frees(lease: LeaseView, amount: int) -> dict[str, int]:
    """Which GPUs an elastic lease gives back to shrink by ``amount``: from its smallest parts
    first, so it stays packed on as few nodes as possible."""
    out: dict[str, int] = {}
    left = amount
    for node, n in sorted(lease.placement.items(), key=lambda kv: (kv[1], kv[0])):
        take = min(n, left)
        if take:
            out[node] = take
            left -= take
        if not left:
            break
    return out


class _NoQuota:
    """The quota what-if of a policy without quotas: always fits."""

    def release(self, tenant: str, gpus: int) -> None:
        pass

    def restore(self, tenant: str, gpus: int) -> None:
        pass

    def ok(self) -> bool:
        return True


def select(
    candidates: Iterable[Candidate],
    pool: FreePool,
    gpus: int,
    strategy: str,
    ledger: QuotaLedger | None = None,
    tenant: str = "",
) -> list[Candidate] | None:
    """The cheapest prefix of ``candidates`` (then pruned) after which ``gpus`` GPUs can be
    placed with ``strategy`` and ``ledger.fits(tenant, gpus, released GPUs per tenant)``
    holds (no quota test without a ledger); None if none."""
    # One pass, cheapest first, stopping at the first prefix that fits; a request that no
    # prefix fits costs the same pass (what used to be a separate "does everything fit" test).
    what_if = pool.copy()
    quota = QuotaTrial(ledger, tenant, gpus) if ledger is not None else _NoQuota()

    def fits() -> bool:
        return quota.ok() and what_if.could_place(gpus, strategy)

    chosen: list[Candidate] = []
    for cand in islice(candidates, MAX_CANDIDATES):
        what_if.give(cand.frees)
        chosen.append(cand)
        quota.release(cand.lease.tenant, cand.gpus)
        if fits():
            break
    else:
        return None
    for cand in reversed(list(chosen)):
        if cand.kind == INCOMING:
            continue  # free already: dropping it saves nothing
        what_if.take(cand.frees)
        quota.restore(cand.lease.tenant, cand.gpus)
        if fits():
            chosen.remove(cand)
        else:
            what_if.give(cand.frees)
            quota.release(cand.lease.tenant, cand.gpus)
    return chosen
