"""Parameters of the fair-share policy, and how they come from the platform config.

Responsibility: one frozen value that every step of a cycle reads; nothing here decides.
:meth:`FairShareSettings.from_config` is the only place a config's ``scheduler`` section
becomes settings: the live controller and the simulator call it, each overriding what it does
itself (time limits) or does not need (reasons).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgpu.config import SchedulerSettings

#: Fields taken from ``SchedulerSettings`` by name; the float ones are normalised to float (a
#: config's defaults are ints), so settings from a config equal settings written by hand.
_FROM_CONFIG_FLOAT = ("usage_half_life_s", "min_runtime_s", "grace_s")
_FROM_CONFIG = (
    "min_runtime_backoff",
    "backfill",
    "borrowing",
    "preemption",
    "elastic",
    "borrow_non_preemptible",
    "reject_over_budget",
)


@dataclass(frozen=True)
class FairShareSettings:
    """Parameters of :class:`~fastgpu.scheduler.FairSharePolicy`; every combination is valid."""

    #: Half-life of the decayed usage that ranks tenants (seconds). Slurm's default is 7 days;
    #: shorter forgets history faster. Used by :func:`fair_share_score`; the caller decays.
    usage_half_life_s: float = 7 * 24 * 3600.0
    #: A running lease may not be preempted before it has run this long (seconds), so that a
    #: restart can make progress; time limits ignore it.
    min_runtime_s: float = 300.0
    #: A lease whose workload was preempted k times before (``LeaseView.restarts``) is
    #: protected for ``min_runtime_s * 2**min(k, min_runtime_backoff)``, or until it reports a
    #: checkpoint, whichever comes first: a workload chosen again and again (the cheapest
    #: victim is the one that just restarted) still reaches a checkpoint. 0 turns it off.
    min_runtime_backoff: int = 5
    #: Seconds between announcing a preemption (``Preempt.grace_s``) and taking the GPUs, for a
    #: last checkpoint.
    grace_s: float = 30.0
    #: Let smaller requests start while a blocked head waits, if they do not delay its
    #: earliest start (estimated from requested durations).
    backfill: bool = True
    #: Let tenants use idle GPUs beyond nominal (up to borrowing_limit, within others'
    #: lending_limit). Off: hard quotas, i.e. static partitioning.
    borrowing: bool = True
    #: Preempt leases to reclaim nominal or for a higher-priority lease of the same tenant.
    preemption: bool = True
    #: Admit elastic leases at less than their maximum, grow them on idle capacity and shrink
    #: them before preempting anyone. Off: elastic leases are admitted at their maximum only.
    elastic: bool = True
    #: Preempt running leases that outlived ``started_at + duration_s`` (reason time_limit,
    #: no grace). Off when the caller ends leases itself (the simulator, the live controller).
    enforce_time_limits: bool = True
    #: A tenant whose period budget is spent: reject new requests (True) or queue them (False).
    reject_over_budget: bool = False
    #: Emit a ``Queue`` decision with a reason for every waiting request. The simulator turns
    #: it off to save time; the live controller needs it.
    explain: bool = True
    #: At most this many make-room attempts (what-if preemption searches) per cycle, a bound
    #: on cycle time under long queues; the rest wait for the next cycle.
    max_preemption_attempts: int = 16
    #: Let non-preemptible leases borrow GPUs backed by other tenants' nominal. Reclaim cannot
    #: take those back, so a tenant below nominal may wait until such a lease ends. Off (the
    #: default): non-preemptible leases hold at most nominal plus unowned capacity.
    borrow_non_preemptible: bool = False

    def __post_init__(self) -> None:
        if not self.usage_half_life_s > 0:
            raise ValueError(f"Got {self.usage_half_life_s} for usage_half_life_s; expected > 0")
        for name in ("min_runtime_s", "grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Got {getattr(self, name)} for {name}; expected >= 0")
        if not 0 <= self.min_runtime_backoff <= 20:
            raise ValueError(
                f"Got {self.min_runtime_backoff} for min_runtime_backoff; expected 0..20"
            )
        if self.max_preemption_attempts < 0:
            raise ValueError(
                f"Got {self.max_preemption_attempts} for max_preemption_attempts; expected >= 0"
            )

    @classmethod
    def from_config(cls, settings: SchedulerSettings, **overrides: Any) -> FairShareSettings:
        """Settings from a config's ``scheduler`` section (every field of the same name), then
        ``overrides`` (e.g. ``enforce_time_limits=False`` where the caller expires leases
        itself, ``explain=False`` where nobody reads reasons).

        >>> FairShareSettings.from_config(SchedulerSettings(), explain=False)  # doctest: +SKIP
        """
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(
                f"Got unknown settings {sorted(unknown)}; expected fields of FairShareSettings"
            )
        values: dict[str, Any] = {
            name: float(getattr(settings, name)) for name in _FROM_CONFIG_FLOAT
        }
        values.update((name, getattr(settings, name)) for name in _FROM_CONFIG)
        values.update(overrides)
        return cls(**values)
