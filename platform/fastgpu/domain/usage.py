"""Usage maths: exponentially decayed GPU-seconds, and the start of a budget period.

Responsibility: the one definition of decayed usage, the fair-share input that forgets the
past with a half-life. Two ways to compute it, which agree (property-tested in
``tests/unit/test_usage_maths.py``):

* incrementally, by a caller that keeps a running value and knows what is held between
  events (the simulator, every event): :func:`decay_step` gives the factors of one step,
  :func:`decay_usage` applies them;
* exactly, from usage intervals (the store, from its usage records, with no state kept
  between calls): :func:`decayed_gpu_seconds`.

Vocabulary: *decayed usage* at time ``now`` is ``sum over GPU-seconds used at time t of
2 ** -((now - t) / half_life)``. Holding g GPUs forever decays to ``g * half_life / ln 2``
GPU-seconds, so ``decayed * ln 2 / half_life`` reads as GPUs (the fair-share score's unit).
A *budget period* is a calendar day, ISO week (Monday) or month, in UTC.

Invariant: the incremental form is an exact integral, so its result does not depend on how
often it is called (two steps of dt equal one step of 2 dt, up to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

LN2 = math.log(2.0)


def decay_step(dt_s: float, half_life_s: float) -> tuple[float, float]:
    """``(keep, gain)`` of one step of ``dt_s > 0`` seconds: decayed usage ``u`` holding ``g``
    GPUs through the step becomes ``u * keep + g * gain``. A caller decaying many tenants
    over the same step computes the factors once."""
    keep = 2.0 ** (-dt_s / half_life_s)
    return keep, (half_life_s / LN2) * (1.0 - keep)


def decay_usage(prev_gpu_s: float, held_gpus: float, dt_s: float, half_life_s: float) -> float:
    """Decayed usage after ``dt_s`` seconds holding ``held_gpus``: the exact integral of
    exponentially decayed GPU-seconds, so the result does not depend on how often it is called
    (two steps of dt equal one step of 2 dt)."""
    if dt_s <= 0:
        return prev_gpu_s
    keep, gain = decay_step(dt_s, half_life_s)
    return prev_gpu_s * keep + held_gpus * gain


def decayed_gpu_seconds(
    intervals: Iterable[tuple[float, float, float | None]], now: float, half_life_s: float
) -> float:
    """Decayed usage at ``now`` of usage intervals ``(gpus, start, end)`` (end None: still
    held), each second weighted by ``2 ** -(age / half_life)``: the exact integral, so it
    needs no state between calls. The parts of intervals after ``now`` do not count."""
    k = LN2 / half_life_s
    total = 0.0
    for gpus, start, end in intervals:
        stop = now if end is None else min(end, now)
        if stop > start:
            total += gpus * (math.exp(-k * (now - stop)) - math.exp(-k * (now - start))) / k
    return total


def period_start(now: float, period: str) -> float:
    """Start (UTC) of the calendar day, ISO week or month holding ``now``."""
    dt = datetime.fromtimestamp(now, tz=timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if period == "week":
        dt -= timedelta(days=dt.weekday())
    elif period == "month":
        dt = dt.replace(day=1)
    return dt.timestamp()
