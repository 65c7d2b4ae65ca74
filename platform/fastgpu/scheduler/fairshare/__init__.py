"""Fair-share scheduling policy: quotas with borrowing and lending, preemption, gang placement,
backfill, budgets and elastic leases. Pure: a :class:`Snapshot` in, :class:`Decisions` out.

Responsibility: decide, for one scheduling cycle, which pending leases start (and where), which
wait (and why), which running leases are preempted or resized. The design note
``docs/design/scheduler.md`` states the rule; :meth:`cycle.Cycle.run` runs its numbered steps,
one module each:

============== ===========================================================================
``settings``   :class:`FairShareSettings` (and :meth:`FairShareSettings.from_config`)
``policy``     :class:`FairSharePolicy`: one :class:`~cycle.Cycle` per ``schedule`` call
``cycle``      the pipeline, steps 1-9
``ledgers``    1. free maps, quota ledgers, running leases per GPU type; the shared state
``time_limits`` 2. time limits; 9. wake-up time
``gatekeeping`` 3. infeasible and over-budget requests; the tenant queues
``admission``  4. tenants in fair-share order, each offering its head
``ranking``    fair-share score and heap key (4, 8)
``fit``        5. fixed-borrowing, quota, capacity and fragmentation tests; 7. backfill test
``make_room``  6. shrink, reclaim, priority preemption (what-if, then commit)
``grow``       8. elastic leases grow on idle capacity
``reasons``    the one producer of wait reasons (:class:`~reasons.Blocked`)
============== ===========================================================================

Vocabulary: *tenant queue* (a tenant's pending leases, lease priority then submit order);
*head* (the next lease of a tenant queue to try); *borrowing* (holding more than nominal);
*score* (fair-share rank, lower goes first: ``(held GPUs + decayed usage as GPUs) / weight``);
*make room* (shrink elastic leases, reclaim borrowed GPUs, preempt lower priority).

Invariants of every answer (property-tested):

* no node is ever asked for more GPUs than it has free (admissions and growth together);
* no tenant is taken above ``nominal + borrowing_limit`` (``nominal`` with borrowing off);
* borrowed never exceeds lendable supply (see :mod:`fastgpu.scheduler.quota`);
* a running lease is preempted only if preemptible and past ``min_runtime_s`` (doubled for
  each earlier preemption of its workload, up to ``min_runtime_backoff`` times; time limits
  aside), shrunk never below ``min_gpus``, and never gets two decisions in one cycle;
* every pending lease gets exactly one of admit, queue (with a reason) or reject (when
  ``explain`` is on; with it off, queue decisions are left out to save time in the simulator).
"""

from fastgpu.domain.usage import decay_usage
from fastgpu.scheduler.decisions import PreemptReason, ResizeReason
from fastgpu.scheduler.fairshare.policy import FairSharePolicy
from fastgpu.scheduler.fairshare.ranking import fair_share_score
from fastgpu.scheduler.fairshare.settings import FairShareSettings

__all__ = [
    "FairSharePolicy",
    "FairShareSettings",
    "PreemptReason",
    "ResizeReason",
    "decay_usage",
    "fair_share_score",
]
