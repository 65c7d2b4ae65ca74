"""The fair-share policy running live in the server's controller on tenant clusters (a pool of
8 logical GPUs on this machine): borrowing, reclaim-preemption of a borrower's lease after the
announced grace period, and elastic grow/shrink of a bound lease. Driven through the SDK over
HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastgpu.config import SchedulerSettings
from fastgpu.sdk import Client
from fastgpu.timeutil import parse_iso
from tests.integration.platform_fixtures import (
    Platform,
    pool_platform,
    wait_until,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GRACE_S = 2.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = SchedulerSettings(grace_s=GRACE_S, min_runtime_s=0, usage_refresh_s=0.5)
    yield from pool_platform(
        tmp_path_factory,
        scheduler=settings,
        controller={"min_duration_s": 1.0, "tick_interval_s": 0.25},
    )


def _get(client: Client, lease_id: str) -> dict[str, Any]:
    return dict(client.get_lease(lease_id).data)


def test_borrow_then_reclaim_with_grace(platform: Platform) -> None:
    lender = platform.client(platform.tenant("lender", A100=4))
    borrower = platform.client(platform.tenant("borrower", borrowing_limit=4, A100=4))

    own = borrower.request_lease(4, duration="10m", wait=True, timeout=60).data
    extra = borrower.request_lease(4, duration="10m", preemptible=True, wait=True, timeout=60).data
    assert own["state"] == extra["state"] == "RESERVED"  # 4 nominal + 4 borrowed: all 8 GPUs

    asked = time.monotonic()
    back = lender.request_lease(4, duration="10m").data
    assert back["state"] == "PENDING"
    # The borrowed lease is told first (preempt_at set, GPUs still held for the grace period).
    announced = wait_until(
        lambda: (x := _get(borrower, extra["id"]))["preempt_at"] and x, timeout=30
    )
    assert announced["state"] == "RESERVED"
    assert announced["reason"] == "preempting"
    assert "reclaim" in announced["reason_detail"]
    assert _get(borrower, own["id"])["preempt_at"] is None  # nominal is never taken
    # After the grace period the GPUs go back to the lender.
    try:
        got = lender.get_lease(back["id"], wait=60).data
        waited = time.monotonic() - asked
        assert got["state"] == "RESERVED"
        # Not before the grace; the borrowed lease ended at its announced deadline (then its
        # raylet stops and the lender's starts: seconds on tenant clusters).
        assert waited >= GRACE_S - 0.5
        ended = _get(borrower, extra["id"])
        assert ended["state"] == "PREEMPTED"
        assert ended["reason"] == "preempting"
        late = parse_iso(ended["ended_at"]) - parse_iso(announced["preempt_at"])
        assert -0.1 <= late <= 1.5, late
    finally:
        borrower.release_lease(own["id"])
        lender.release_lease(back["id"])


def test_elastic_lease_grows_and_shrinks(platform: Platform) -> None:
    other = platform.client(platform.tenant("steady", A100=4))
    elastic = platform.client(platform.tenant("stretchy", borrowing_limit=4, A100=4))

    busy = other.request_lease(4, duration="10m", wait=True, timeout=60).data
    # min 2, max 8: only 4 GPUs are free, so it starts below its maximum.
    lease = elastic.request_lease(
        8, min_gpus=2, duration="10m", preemptible=True, wait=True, timeout=60
    ).data
    assert lease["state"] == "RESERVED"
    assert 2 <= lease["held_gpus"] <= 4
    bound = elastic.bind_lease(lease["id"], "train:elastic-demo").data
    assert bound["state"] == "BOUND"

    # Capacity frees up: the bound lease grows toward its maximum.
    other.release_lease(busy["id"])
    grown = wait_until(
        lambda: (x := _get(elastic, lease["id"]))["held_gpus"] == 8 and x, timeout=60
    )
    assert "grow" in grown["reason_detail"]

    # The other tenant wants its nominal back: the elastic lease shrinks instead of dying.
    again = other.request_lease(4, duration="10m").data
    got = other.get_lease(again["id"], wait=60).data
    assert got["state"] == "RESERVED"
    shrunk = _get(elastic, lease["id"])
    assert shrunk["state"] == "BOUND"
    assert 2 <= shrunk["held_gpus"] <= 4
    # Metering followed the size: one usage record per stretch at a fixed size.
    usage = elastic.usage()
    assert usage[0]["gpu_seconds"] > 0
    other.release_lease(again["id"])
    elastic.release_lease(lease["id"])
