"""Time helpers: the controller keeps epoch seconds (float, UTC) and shows ISO 8601."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime, timezone

from fastgpu.errors import InvalidRequest

Clock = Callable[[], float]


def wall_clock() -> float:
    return time.time()


@functools.lru_cache(maxsize=8192)
def iso(ts: float | None) -> str | None:
    """ISO 8601 (UTC, milliseconds) of epoch seconds; memoised: a page of leases shows the
    same stored times call after call."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def parse_iso(value: str, field: str = "since") -> float:
    """Epoch seconds of an ISO 8601 time; a time without zone is taken as UTC."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise InvalidRequest(
            f"{field}: got {value!r}; expected an ISO 8601 time such as 2026-01-31T12:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
