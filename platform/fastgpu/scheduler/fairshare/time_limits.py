"""Steps 2 and 9 of a cycle: time limits, and when to wake up without any event.

Responsibility: preempt running leases past ``started_at + duration_s`` (reason
``time_limit``, no grace; only with ``enforce_time_limits``), and compute
``Decisions.wake_at``: the earliest future time at which the answer may change although
nothing happened (a lease reaches its time limit, or a victim candidate its minimum runtime).

Invariant: a lease preempted here is *touched*: no later step of the cycle decides on it again.
"""

from __future__ import annotations

from fastgpu.scheduler.decisions import Preempt, PreemptReason
from fastgpu.scheduler.fairshare.ledgers import CycleState


def expire(state: CycleState) -> None:
    """2. Running leases past their duration lose their GPUs now."""
    now = state.now
    for lease in state.snap.running:
        if lease.preempt_at is not None or lease.started_at is None:
            continue
        if now >= lease.started_at + lease.duration_s:
            state.preempts.append(
                Preempt(
                    lease.id,
                    PreemptReason.TIME_LIMIT,
                    f"ran {now - lease.started_at:.0f} s of {lease.duration_s:.0f} s",
                    0.0,
                )
            )
            state.touched.add(lease.id)


def wake_at(state: CycleState, young_until: float | None) -> float | None:
    """9. The earliest future time the answer may change without an event: a victim
    candidate skipped for its minimum runtime becomes eligible (``young_until``), or, with
    time limits on, a running lease reaches its end."""
    times: list[float] = []
    if young_until is not None:
        times.append(young_until)
    if state.s.enforce_time_limits:
        times.extend(
            r.started_at + r.duration_s
            for r in state.snap.running
            if r.started_at is not None and r.id not in state.touched
        )
    future = [t for t in times if t > state.now]
    return min(future) if future else None
