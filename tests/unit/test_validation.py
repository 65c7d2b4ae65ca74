from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgpu.errors import InvalidRequest
from fastgpu.validation import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("45", 45),
        (12.5, 12.5),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "soon", "10 minutes", "-5m", "0", "0s", "31d", "5mm", "h", True, -1]
)
def test_bad_durations(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=30 * 86400))
def test_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
