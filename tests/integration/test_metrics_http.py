"""``GET /metrics`` of a real ``fastgpu server`` process over real HTTP on 127.0.0.1: the
admin token reads it, the scrape parses as Prometheus' text format, and its numbers are the
ones ``GET /api/v1/status`` and the leases this test made say; no token is 401, a tenant's
token 403. (Who may read it and ``api.metrics_public`` are also covered in-process by
tests/unit/test_metrics.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.platform_fixtures import Platform, pool_platform
from tests.unit.test_metrics import parse, value

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FOUR_A100 = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1, 2, 3]}]}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from pool_platform(tmp_path_factory, FOUR_A100)


def scrape(platform: Platform, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{platform.url}/metrics", headers=headers, timeout=30, trust_env=False)


def test_scrape_matches_status_and_the_leases_made(platform: Platform) -> None:
    admin = platform.client()
    token = str(admin.create_tenant("meter", {"A100": 2}, budget={"gpu_hours": 100})["token"])
    tenant = platform.client(token)
    held = tenant.request_lease(2, "A100", "30m", wait=True, timeout=60)
    assert held.state == "RESERVED"
    # Its own lease holds 2 of the 4 GPUs: 4 more must wait (they fit once it ends).
    waiting = tenant.request_lease(4, "A100", "30m")
    assert waiting.state == "PENDING"
    try:
        r = scrape(platform, platform.admin)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        s = parse(r.text)
        status = admin.status()

        a100 = next(t for t in status["gpu_types"] if t["gpu_type"] == "A100")
        assert value(s, "fastgpu_gpus_capacity", gpu_type="A100") == a100["total"] == 4
        row = next(
            t for t in status["tenants"] if (t["tenant"], t["gpu_type"]) == ("meter", "A100")
        )
        assert (
            value(s, "fastgpu_gpus_allocated", tenant="meter", gpu_type="A100")
            == (row["allocated"])
        )
        assert row["allocated"] == 2
        assert value(s, "fastgpu_gpus_guaranteed", tenant="meter", gpu_type="A100") == 2
        assert value(s, "fastgpu_leases", state="RESERVED") == 1
        assert value(s, "fastgpu_leases", state="PENDING") == 1
        pending = {k[1]: v for k, v in s.items() if k[0] == "fastgpu_pending_leases"}
        assert sum(pending.values()) == 1
        assert value(s, "fastgpu_lease_grant_seconds_count", gpu_type="A100") == 1
        assert value(s, "fastgpu_lease_queue_wait_seconds_count", gpu_type="A100") == 1
        spent = value(s, "fastgpu_budget_spent", tenant="meter", unit="gpu_hours")
        left = value(s, "fastgpu_budget_remaining", tenant="meter", unit="gpu_hours")
        assert spent >= 0
        assert spent + left == pytest.approx(100)
    finally:
        tenant.release_lease(waiting.id)
        tenant.release_lease(held.id)
    s = parse(scrape(platform, platform.admin).text)
    assert value(s, "fastgpu_leases_ended_total", state="CANCELLED") == 1
    assert value(s, "fastgpu_leases_ended_total", state="RELEASED") == 1
    assert value(s, "fastgpu_gpus_allocated", tenant="meter", gpu_type="A100") == 0


def test_scrape_needs_the_admin_token(platform: Platform) -> None:
    r = scrape(platform, None)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    assert scrape(platform, "not-a-token").status_code == 401
    token = str(platform.client().create_tenant("nosy", {"A100": 1})["token"])
    r = scrape(platform, token)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
