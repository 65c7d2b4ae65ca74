"""Usage maths (fastgpu.domain.usage): the incremental decay and the exact integral agree."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgpu.domain.usage import (
    LN2,
    decay_step,
    decay_usage,
    decayed_gpu_seconds,
    period_start,
)

HOUR = 3600.0
DAY = 24 * HOUR


def test_decay_step_factors() -> None:
    keep, gain = decay_step(HOUR, HOUR)
    assert keep == 0.5
    assert gain == pytest.approx(HOUR / LN2 * 0.5)


def test_decay_usage_halves_idle_usage_and_ignores_non_positive_steps() -> None:
    assert decay_usage(1000.0, 0, HOUR, HOUR) == pytest.approx(500.0)
    assert decay_usage(1000.0, 8, 0.0, HOUR) == 1000.0
    assert decay_usage(1000.0, 8, -5.0, HOUR) == 1000.0


def test_holding_forever_converges_to_gpus_times_half_life_over_ln2() -> None:
    assert decay_usage(0.0, 4, 1e9, HOUR) == pytest.approx(4 * HOUR / LN2)
    assert decayed_gpu_seconds([(4, 0.0, None)], 1e9, HOUR) == pytest.approx(4 * HOUR / LN2)


@pytest.mark.parametrize(
    ("intervals", "now", "expected"),
    [
        ([], 100.0, 0.0),
        ([(2, 0.0, 10.0)], 10.0, pytest.approx(20.0, rel=1e-3)),  # fresh: barely decayed
        ([(2, 0.0, 10.0)], 5.0, pytest.approx(10.0, rel=1e-3)),  # only up to now counts
        ([(2, 50.0, None)], 10.0, 0.0),  # starts after now
        ([(2, 10.0, 10.0)], 20.0, 0.0),  # empty interval
    ],
)
def test_decayed_gpu_seconds_cases(
    intervals: list[tuple[float, float, float | None]], now: float, expected: object
) -> None:
    assert decayed_gpu_seconds(intervals, now, 7 * DAY) == expected


def test_decayed_gpu_seconds_halves_after_a_half_life() -> None:
    fresh = decayed_gpu_seconds([(4, 0.0, 10.0)], 10.0, HOUR)
    assert decayed_gpu_seconds([(4, 0.0, 10.0)], 10.0 + HOUR, HOUR) == pytest.approx(fresh / 2)


def test_decayed_gpu_seconds_is_the_stores_formula() -> None:
    """The same expression the store computed inline, so switching to it changes nothing."""
    half_life, now = 7 * DAY, 1_000_000.0
    rows = [(4, 10_000.0, 50_000.0), (2, 900_000.0, None), (1, 999_000.0, 2_000_000.0)]
    k = math.log(2.0) / half_life
    inline = 0.0
    for gpus, start, end in rows:
        stop = now if end is None else min(end, now)
        if stop > start:
            inline += gpus * (math.exp(-k * (now - stop)) - math.exp(-k * (now - start))) / k
    assert decayed_gpu_seconds(rows, now, half_life) == inline


@settings(max_examples=200, deadline=None)
@given(
    gpus=st.integers(min_value=0, max_value=512),
    steps=st.lists(st.floats(min_value=1.0, max_value=5 * DAY), min_size=1, max_size=40),
    half_life=st.floats(min_value=60.0, max_value=30 * DAY),
)
def test_incremental_decay_agrees_with_the_exact_integral(
    gpus: int, steps: list[float], half_life: float
) -> None:
    """Holding a constant number of GPUs from time 0, decaying step by step (any steps) gives
    the exact integral of the one usage interval [0, now)."""
    usage, now = 0.0, 0.0
    for dt in steps:
        usage = decay_usage(usage, gpus, dt, half_life)
        now += dt
    exact = decayed_gpu_seconds([(gpus, 0.0, None)], now, half_life)
    assert usage == pytest.approx(exact, rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(
        st.tuples(st.integers(min_value=0, max_value=64), st.floats(min_value=1.0, max_value=DAY)),
        min_size=1,
        max_size=20,
    ),
    half_life=st.floats(min_value=600.0, max_value=14 * DAY),
)
def test_piecewise_holdings_agree_with_their_intervals(
    segments: list[tuple[int, float]], half_life: float
) -> None:
    """A holding that changes between steps is a sum of intervals (as the store records it)."""
    usage, now = 0.0, 0.0
    intervals: list[tuple[float, float, float | None]] = []
    for gpus, dt in segments:
        keep, gain = decay_step(dt, half_life)
        usage = usage * keep + gpus * gain  # the simulator's form: factors once per step
        intervals.append((gpus, now, now + dt))
        now += dt
    exact = decayed_gpu_seconds(intervals, now, half_life)
    assert usage == pytest.approx(exact, rel=1e-9, abs=1e-6)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("now", "period", "start"),
    [
        ("2024-05-15 13:45:10", "day", "2024-05-15 00:00:00"),
        ("2024-05-15 13:45:10", "week", "2024-05-13 00:00:00"),  # a Wednesday: Monday
        ("2024-05-13 00:00:00", "week", "2024-05-13 00:00:00"),
        ("2024-05-15 13:45:10", "month", "2024-05-01 00:00:00"),
        ("2024-03-01 00:00:00", "month", "2024-03-01 00:00:00"),
    ],
)
def test_period_start(now: str, period: str, start: str) -> None:
    assert period_start(_ts(now), period) == _ts(start)
