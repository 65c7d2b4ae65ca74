"""Budgets that stop spend, end to end: a real ``fastgpu server`` process with tenant clusters
on a pool of logical GPUs, a real SQLite store, HTTP through the SDK and the CLI.

A tenant with a tiny money budget and ``action: stop`` holds a preemptible and a
non-preemptible lease; its spend crosses the cap in seconds. The preemptible lease gets its
preemption announced (within a controller tick of the crossing, give or take the loaded
box's scheduling) and ends PREEMPTED after the grace; the non-preemptible one keeps running and
is reported; each warning appears once; another tenant gets 404.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fastgpu.errors import NotFound
from fastgpu.sdk import Client
from fastgpu.timeutil import parse_iso
from tests.integration.platform_fixtures import Platform, pool_platform, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PRICE = 3.6  # A100 per GPU-hour in the test config
GRACE_S = 2.0
TICK_S = 0.25


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from pool_platform(
        tmp_path_factory,
        {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1, 2, 3]}]},
        scheduler={"grace_s": GRACE_S, "min_runtime_s": 0, "usage_refresh_s": 1.0},
        controller={"tick_interval_s": TICK_S},
    )


def crossing_time(leases: list[Any], limit: float) -> float:
    """When the spend of leases reserved at their times reached ``limit`` (all still held)."""
    # Closed form: sum g_i * price * (T - s_i) / 3600 = limit.
    starts = [(parse_iso(x.data["reserved_at"]), x.data["gpus"]) for x in leases]
    g = sum(n for _, n in starts)
    weighted = sum(n * s for s, n in starts)
    return (limit * 3600.0 / PRICE + weighted) / g


def test_stop_preempts_preemptible_keeps_the_other_and_warns_once(platform: Platform) -> None:
    admin = platform.client()
    limit = 0.03  # 2 GPUs x 3.6/h = 7.2/h: about 15 s of spend
    token = admin.create_tenant(
        "spender",
        {"A100": 4},
        budget={"money": limit, "action": "stop", "warn_at": [50, 80, 100], "period": "day"},
    )["token"]
    other = admin.create_tenant("bystander", {"A100": 0})["token"]
    me = platform.client(token)
    pre = me.request_lease(1, "A100", "10m", preemptible=True, wait=True, timeout=120)
    keep = me.request_lease(1, "A100", "10m", preemptible=False, wait=True, timeout=120)
    assert pre.state == keep.state == "RESERVED"
    early = me.budget()
    assert early["action"] == "stop"
    assert early["limit"]["money"] == limit
    assert early["burn"]["gpus_held"] == 2
    assert early["burn"]["money_per_hour"] == pytest.approx(2 * PRICE)
    assert early["runs_out_at"] is not None

    announced = wait_until(lambda: pre.refresh().preempt_at, timeout=90, interval=0.05)
    cross = crossing_time([pre, keep], limit)
    announced_at = parse_iso(announced) - GRACE_S
    lag = announced_at - cross
    # Within one tick of the crossing (plus this 2-core box's scheduling slack).
    assert -0.05 <= lag <= TICK_S + 1.0, f"announced {lag:.3f} s after the crossing"
    assert keep.refresh().preempt_at is None

    wait_until(lambda: pre.refresh().state == "PREEMPTED", timeout=30)
    assert keep.refresh().state == "RESERVED"
    time.sleep(1.0)  # more ticks past the cap: nothing recorded twice

    shown = me.budget()
    assert shown["state"] == "exhausted"
    assert shown["remaining"]["money"] < 0.01
    assert all(t["crossed"] and t["crossed_at"] for t in shown["thresholds"])
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds.count("warning") == 3
    assert kinds.count("cap") == 1
    assert [e["lease_id"] for e in shown["events"] if e["kind"] == "stop"] == [pre.id]
    assert [e["lease_id"] for e in shown["events"] if e["kind"] == "kept"] == [keep.id]
    assert shown["burn"]["gpus_held"] == 1

    # The admin sees the same; another tenant gets 404; the admin's overview flags it.
    assert admin.budget("spender")["events"] == shown["events"]
    with pytest.raises(NotFound):
        Client(token=other, address=platform.url).budget("spender")
    with httpx.Client(base_url=platform.url, trust_env=False, timeout=30) as http:
        r = http.get("/api/v1/tenants/spender/budget", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 404
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {platform.admin}"}).text
    assert 'fastgpu_budget_state{tenant="spender"} 2.0' in metrics
    assert 'fastgpu_budget_warnings_total{tenant="spender",threshold="80"} 1.0' in metrics
    overview = {b["tenant"]: b for b in admin.budgets()}
    assert overview["spender"]["state"] == "exhausted"

    # The CLI reads the same numbers.
    env = {**os.environ, "FASTGPU_TOKEN": token, "FASTGPU_ADDRESS": platform.url}
    out = subprocess.run(
        [sys.executable, "-m", "fastgpu.cli.main", "budget", "show", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert json.loads(out)["state"] == "exhausted"
    keep.release()
