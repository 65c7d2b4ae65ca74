"""Kill the controller actor's process during a burst of concurrent lease requests.

Afterwards: every request got exactly one lease (retries with the same request id return it),
every holding lease in the store has its placement group in Ray and every platform group in
Ray belongs to a holding lease, and metered usage from before the crash is intact.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.util.placement_group import placement_group_table

from fastgpu.controller.backend import GROUP_PREFIX
from tests.integration.platform_fixtures import (
    Platform,
    local_platform,
    wait_until,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from local_platform(tmp_path_factory)


def _platform_groups() -> dict[str, str]:
    return {
        info["name"]: info["state"]
        for info in placement_group_table().values()
        if info["name"].startswith(GROUP_PREFIX) and info["state"] != "REMOVED"
    }


def test_kill_controller_mid_burst(platform: Platform) -> None:
    client = platform.client
    token = platform.tenant("burst", A100=8)
    # Usage recorded before the crash must survive it.
    done = client.call("request_lease", token, {"gpus": 2, "duration": "10m"}, wait_s=30)
    time.sleep(0.3)
    client.call("release_lease", token, done["id"])
    usage_before = client.call("usage", token)
    assert usage_before[0]["gpu_seconds"] > 0

    pid = ray.get(platform.handle.pid.remote())
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            body = {"gpus": 1, "duration": "10m", "request_id": f"burst-{i}"}
            results[i] = client.call("request_lease", token, body, wait_s=5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for i, th in enumerate(threads):
        th.start()
        if i == 5:
            time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert len(results) == 12

    new_pid = ray.get(platform.handle.pid.remote())
    assert new_pid != pid

    # Retrying every request returns the same lease: nothing was booked twice.
    for i, lease in results.items():
        again = client.call(
            "request_lease", token, {"gpus": 1, "duration": "10m", "request_id": f"burst-{i}"}
        )
        assert again["id"] == lease["id"]
    leases = client.call("list_leases", token, None, False)
    burst = [x for x in leases if (x["request_id"] or "").startswith("burst-")]
    assert len(burst) == 12
    assert len({x["request_id"] for x in burst}) == 12

    # 12 one-GPU requests on 8 GPUs with quota 8: 8 hold GPUs, 4 wait over quota.
    def settled() -> list[dict[str, Any]] | None:
        rows = [
            x
            for x in client.call("list_leases", token, None, False)
            if x["request_id"] and x["request_id"].startswith("burst-")
        ]
        states = sorted(x["state"] for x in rows)
        return rows if states.count("RESERVED") == 8 and states.count("PENDING") == 4 else None

    rows = wait_until(settled, timeout=30)
    assert all(x["reason"] == "over_quota" for x in rows if x["state"] == "PENDING")

    # Store and Ray agree, both ways.
    ray.get(platform.handle.reconcile.remote())
    holding = {x["placement_group"] for x in rows if x["state"] in ("ADMITTED", "RESERVED")}
    wait_until(lambda: set(_platform_groups()) == holding, timeout=15)
    assert all(state == "CREATED" for state in _platform_groups().values())

    usage_after = client.call("usage", token, None, done["ended_at"])
    # The pre-crash lease ended before `since`; its record is still there in full usage.
    full = client.call("usage", token)
    assert full[0]["gpu_seconds"] >= usage_before[0]["gpu_seconds"]
    assert usage_after[0]["gpu_seconds"] < full[0]["gpu_seconds"]
    for x in rows:
        client.call("release_lease", token, x["id"])
    wait_until(lambda: not _platform_groups(), timeout=15)


def test_reconcile_removes_orphans_and_recreates_missing(platform: Platform) -> None:
    from ray.util.placement_group import placement_group, remove_placement_group

    token = platform.tenant("recon", A100=4)
    lease = platform.client.call("request_lease", token, {"gpus": 2, "duration": "10m"}, wait_s=30)
    # An orphan: a platform-named group no lease accounts for (e.g. created just before a crash).
    orphan = placement_group([{"GPU": 1}], name=GROUP_PREFIX + "orphan", lifetime="detached")
    ray.get(orphan.ready())
    # A missing group: Ray lost the lease's reservation.
    remove_placement_group(ray.util.get_placement_group(lease["placement_group"]))
    wait_until(lambda: lease["placement_group"] not in _platform_groups())
    did = ray.get(platform.handle.reconcile.remote())
    assert did["orphans_removed"] >= 1
    assert did["groups_recreated"] == 1
    wait_until(lambda: set(_platform_groups()) == {lease["placement_group"]}, timeout=15)
    got = platform.client.call("wait_lease", token, lease["id"], 30)
    assert got["state"] == "RESERVED"
    platform.client.call("release_lease", token, lease["id"])
