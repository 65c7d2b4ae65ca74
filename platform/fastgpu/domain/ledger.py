"""The usage ledger's vocabulary: what a report groups by and its calendar periods.

Periods are calendar buckets in UTC: an hour, a day, an ISO week (from Monday 00:00) or a
month. A report over ``[since, until)`` has the buckets from the calendar start of ``since``'s
bucket; the first and last are clipped to the range, so GPU-seconds before ``since`` or after
``until`` never count. Pure functions: no store, no clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastgpu.errors import InvalidRequest

#: What a usage report may group by, besides a period.
REPORT_GROUPS = ("tenant", "gpu_type", "workload")
#: Report periods: calendar buckets in UTC (weeks are ISO weeks, from Monday 00:00).
PERIODS = ("hour", "day", "week", "month")
#: The most buckets one report may have (a year and a half of hours).
MAX_BUCKETS = 13_000
#: The most month buckets (each is a CASE branch of the report's query).
MAX_MONTHS = 600
#: Seconds of the periods whose buckets are found arithmetically (UTC has no DST).
FIXED_WIDTH = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0}


def period_start(ts: float, period: str) -> float:
    """The start (epoch seconds, UTC) of the ``period`` bucket that holds ``ts``."""
    d = datetime.fromtimestamp(ts, tz=timezone.utc)
    if period == "hour":
        d = d.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        d = d.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "week":
        d = d.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=d.weekday())
    elif period == "month":
        d = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown period {period!r}")
    return d.timestamp()


def next_period(ts: float, period: str) -> float:
    """The start of the bucket after the one starting at ``ts``."""
    if period in FIXED_WIDTH:
        return ts + FIXED_WIDTH[period]
    d = datetime.fromtimestamp(ts, tz=timezone.utc)
    d = d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)
    return d.timestamp()


def period_bounds(since: float, until: float, period: str | None) -> list[float]:
    """Bucket starts from the calendar start of ``since``'s bucket, each under ``until``; one
    bucket at ``since`` without a period."""
    if period is None:
        return [since]
    starts = [period_start(since, period)]
    most = MAX_MONTHS if period == "month" else MAX_BUCKETS
    while (nxt := next_period(starts[-1], period)) < until:
        starts.append(nxt)
        if len(starts) > most:
            raise InvalidRequest(
                f"Got a range of over {most} {period} buckets for since/until; expected a "
                "shorter range or a longer period"
            )
    return starts
