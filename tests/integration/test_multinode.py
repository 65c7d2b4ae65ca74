"""Gang placement across hosts on tenant clusters: a pool of two hosts of four logical A100s
each on this machine, a real server process, the SDK over HTTP. A lease's GPUs are raylets on
the devices the pool assigned (host-0: devices 0-3, host-1: devices 4-7), so where a lease
landed is read off its raylets. Losing a host or a raylet: test_agents.py, test_pool_server.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fastgpu.errors import LeaseRejected
from fastgpu.sdk import Client
from tests.integration.platform_fixtures import (
    Platform,
    lease_devices,
    pool_platform,
    wait_until,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from pool_platform(
        tmp_path_factory, controller={"min_duration_s": 1.0, "tick_interval_s": 0.25}
    )


def _ask(client: Client, gpus: int, **kw: Any) -> dict[str, Any]:
    """Request without waiting; the lease as stored, REJECTED ones included."""
    rid = f"t-{uuid.uuid4().hex}"
    try:
        return client.request_lease(gpus, request_id=rid, **kw).data
    except LeaseRejected:
        (row,) = [x.data for x in client.list_leases() if x.data["request_id"] == rid]
        return row


def _hosts(platform: Platform, lease_id: str) -> list[int]:
    """How many of the lease's devices are on host-0 and on host-1."""
    devices = [int(d) for d in lease_devices(platform)[lease_id]]
    return [sum(d < 4 for d in devices), sum(d >= 4 for d in devices)]


def test_gang_placement_and_fragmentation(platform: Platform) -> None:
    client = platform.client(platform.tenant("multi", A100=8))

    never = _ask(client, 5, strategy="STRICT_PACK", duration="5m")
    assert never["state"] == "REJECTED"
    assert never["reason"] == "infeasible"
    assert "4 per node" in never["reason_detail"]

    spread = client.request_lease(2, strategy="SPREAD", duration="5m", wait=True, timeout=60)
    assert spread.state == "RESERVED"
    assert _hosts(platform, spread.id) == [1, 1]  # one GPU on each host

    # 3 + 3 GPUs are free: STRICT_PACK of 4 is blocked by fragmentation, not capacity.
    frag = _ask(client, 4, strategy="STRICT_PACK", duration="5m")
    assert frag["state"] == "PENDING"
    assert frag["reason"] == "fragmentation"
    client.release_lease(frag["id"])

    packed = client.request_lease(4, duration="5m", wait=True, timeout=60)
    assert packed.state == "RESERVED"
    assert 0 not in _hosts(platform, packed.id)  # no host had 4 free: PACK spans both
    # No device is held twice.
    held = lease_devices(platform)
    devices = [d for ds in held.values() for d in ds]
    assert len(devices) == len(set(devices)) == 6, held

    # Freeing one host whole lets a STRICT_PACK of 4 in, on one host.
    client.release_lease(spread.id)
    client.release_lease(packed.id)
    wait_until(lambda: not lease_devices(platform), timeout=60)
    whole = client.request_lease(4, strategy="STRICT_PACK", duration="5m", wait=True, timeout=60)
    assert whole.state == "RESERVED"
    assert sorted(_hosts(platform, whole.id)) == [0, 4]
    whole.release()
