"""The fair-share policy running live in the controller on a real local cluster (8 GPUs):
borrowing, reclaim-preemption of a borrower's lease after the announced grace period, and
elastic grow/shrink of a bound lease."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastgpu.config import SchedulerSettings
from tests.integration.platform_fixtures import (
    Platform,
    local_platform,
    wait_until,
)

pytestmark = pytest.mark.ray

GRACE_S = 2.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = SchedulerSettings(grace_s=GRACE_S, min_runtime_s=0, usage_refresh_s=0.5)
    yield from local_platform(tmp_path_factory, scheduler=settings)


def _get(platform: Platform, token: str, lease_id: str) -> dict[str, Any]:
    return dict(platform.client.call("get_lease", token, lease_id))


def test_borrow_then_reclaim_with_grace(platform: Platform) -> None:
    call = platform.client.call
    lender = platform.tenant("lender", A100=4)
    borrower = platform.tenant("borrower", borrowing_limit=4, A100=4)

    own = call("request_lease", borrower, {"gpus": 4, "duration": "10m"}, wait_s=30)
    extra = call(
        "request_lease", borrower, {"gpus": 4, "duration": "10m", "preemptible": True}, wait_s=30
    )
    assert own["state"] == extra["state"] == "RESERVED"  # 4 nominal + 4 borrowed: all 8 GPUs

    asked = time.monotonic()
    back = call("request_lease", lender, {"gpus": 4, "duration": "10m"})
    assert back["state"] == "PENDING"
    # The borrowed lease is told first (preempt_at set, GPUs still held for the grace period).
    announced = wait_until(lambda: (x := _get(platform, borrower, extra["id"]))["preempt_at"] and x)
    assert announced["state"] == "RESERVED"
    assert announced["reason"] == "preempting"
    assert "reclaim" in announced["reason_detail"]
    assert _get(platform, borrower, own["id"])["preempt_at"] is None  # nominal is never taken
    # After the grace period the GPUs go back to the lender.
    got = call("wait_lease", lender, back["id"], 30)
    waited = time.monotonic() - asked
    assert got["state"] == "RESERVED"
    assert GRACE_S - 0.5 <= waited <= GRACE_S + 3
    ended = _get(platform, borrower, extra["id"])
    assert ended["state"] == "PREEMPTED"
    assert ended["reason"] == "preempting"
    for token, lid in ((borrower, own["id"]), (lender, back["id"])):
        call("release_lease", token, lid)


def test_elastic_lease_grows_and_shrinks(platform: Platform) -> None:
    call = platform.client.call
    other = platform.tenant("steady", A100=4)
    elastic = platform.tenant("stretchy", borrowing_limit=4, A100=4)

    busy = call("request_lease", other, {"gpus": 4, "duration": "10m"}, wait_s=30)
    # min 2, max 8: only 4 GPUs are free, so it starts below its maximum.
    lease = call(
        "request_lease",
        elastic,
        {"gpus": 8, "min_gpus": 2, "duration": "10m", "preemptible": True},
        wait_s=30,
    )
    assert lease["state"] == "RESERVED"
    assert 2 <= lease["held_gpus"] <= 4
    bound = call("bind_lease", elastic, lease["id"], "train:elastic-demo")
    assert bound["state"] == "BOUND"

    # Capacity frees up: the bound lease grows toward its maximum.
    call("release_lease", other, busy["id"])
    grown = wait_until(lambda: (x := _get(platform, elastic, lease["id"]))["held_gpus"] == 8 and x)
    assert "grow" in grown["reason_detail"]

    # The other tenant wants its nominal back: the elastic lease shrinks instead of dying.
    again = call("request_lease", other, {"gpus": 4, "duration": "10m"})
    got = call("wait_lease", other, again["id"], 30)
    assert got["state"] == "RESERVED"
    shrunk = _get(platform, elastic, lease["id"])
    assert shrunk["state"] == "BOUND"
    assert 2 <= shrunk["held_gpus"] <= 4
    # Metering followed the size: one usage record per stretch at a fixed size.
    usage = call("usage", elastic)
    assert usage[0]["gpu_seconds"] > 0
    for token, lid in ((other, again["id"]), (elastic, lease["id"])):
        call("release_lease", token, lid)
