"""Lease lifecycle on tenant clusters (a pool of 8 logical A100s on this machine: each lease
is raylets in its tenant's own Ray cluster) with a real server process and a real SQLite store,
driven through the SDK over HTTP."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgpu.errors import AuthenticationError, InvalidRequest, LeaseRejected, NotFound
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


def ask(client: Client, gpus: int, **kw: Any) -> dict[str, Any]:
    """Request without waiting; return the lease as stored, whatever its state (a REJECTED
    lease makes the SDK raise; it is then found by its request id)."""
    rid = kw.pop("request_id", None) or f"t-{uuid.uuid4().hex}"
    try:
        return client.request_lease(gpus, request_id=rid, **kw).data
    except LeaseRejected:
        (row,) = [x.data for x in client.list_leases() if x.data["request_id"] == rid]
        return row


def test_lease_holds_gpus_and_releases(platform: Platform) -> None:
    client = platform.client(platform.tenant("life", A100=8))
    lease = client.request_lease(6, "A100", "10m", wait=True, timeout=60).data
    assert lease["state"] == "RESERVED"
    assert lease["tenant"] == "life"
    assert lease["held_gpus"] == 6
    # The GPUs are raylets of the tenant's cluster, on six distinct devices.
    held = lease_devices(platform)
    assert list(held) == [lease["id"]]
    assert len(set(held[lease["id"]])) == 6
    # The reservation really holds them: another tenant gets 2 of the 8, not 3.
    other = platform.client(platform.tenant("other", A100=8))
    three = ask(other, 3, duration="5m")
    assert three["state"] == "PENDING"
    assert three["reason"] == "no_capacity"
    other.release_lease(three["id"])
    two = other.request_lease(2, "A100", "5m", wait=True, timeout=60).data
    assert two["state"] == "RESERVED"
    held = lease_devices(platform)
    assert len(held[two["id"]]) == 2
    assert not set(held[two["id"]]) & set(held[lease["id"]])
    other.release_lease(two["id"])

    released = client.release_lease(lease["id"]).data
    assert released["state"] == "RELEASED"
    assert released["ended_at"] is not None
    wait_until(lambda: not lease_devices(platform), timeout=30)
    # Releasing again is a no-op that answers the same lease.
    again = client.release_lease(lease["id"]).data
    assert again["state"] == "RELEASED"
    assert again["ended_at"] == released["ended_at"]

    (row,) = [r for r in client.usage() if r["gpu_type"] == "A100"]
    assert row["tenant"] == "life"
    assert row["gpu_seconds"] > 0
    assert row["cost"] == pytest.approx(row["gpu_seconds"] / 3600 * 3.6, rel=1e-6)


def test_lease_expires_and_gpus_come_back(platform: Platform) -> None:
    client = platform.client(platform.tenant("brief", A100=8))
    lease = client.request_lease(8, "A100", "2s", wait=True, timeout=60).data
    assert lease["state"] == "RESERVED"
    reserved = time.monotonic()
    ended = wait_until(
        lambda: (got := client.get_lease(lease["id"]).data)["state"] == "EXPIRED" and got,
        timeout=10,
    )
    # Expired within 2 s of its end (2 s duration + 2 s slack).
    assert time.monotonic() - reserved < 4.5
    assert ended["ended_at"] is not None
    wait_until(lambda: not lease_devices(platform), timeout=30)
    (row,) = client.usage()
    assert 8 * 1.5 < row["gpu_seconds"] < 8 * 4.5


def test_quota_capacity_and_infeasible_reasons(platform: Platform) -> None:
    small = platform.client(platform.tenant("small", borrowing_limit=0, A100=2))
    big = platform.client(platform.tenant("big", A100=8))
    first = small.request_lease(2, duration="5m", wait=True, timeout=60).data
    assert first["state"] == "RESERVED"
    over = ask(small, 1, duration="5m")
    assert over["state"] == "PENDING"
    assert over["reason"] == "over_quota"

    hog = big.request_lease(5, duration="5m", wait=True, timeout=60).data
    assert hog["state"] == "RESERVED"
    starved = ask(big, 3, duration="5m")
    assert starved["state"] == "PENDING"
    assert starved["reason"] == "no_capacity"

    with pytest.raises(LeaseRejected, match="infeasible"):
        big.request_lease(9, duration="5m", request_id="never-9")
    (never,) = [x.data for x in big.list_leases() if x.data["request_id"] == "never-9"]
    assert never["state"] == "REJECTED"
    assert never["reason"] == "infeasible"
    with pytest.raises(LeaseRejected):  # waiting for it says so too
        big.request_lease(9, duration="5m", wait=True, timeout=5)

    # Freeing capacity admits the queued lease; freeing quota admits the other.
    big.release_lease(hog["id"])
    assert big.get_lease(starved["id"], wait=60).state == "RESERVED"
    small.release_lease(first["id"])
    assert small.get_lease(over["id"], wait=60).state == "RESERVED"
    big.release_lease(starved["id"])
    small.release_lease(over["id"])


def test_idempotent_request_and_bad_input_store_nothing(platform: Platform) -> None:
    token = platform.tenant("idem", A100=4)
    client = platform.client(token)
    a = client.request_lease(1, duration="1m", request_id="req-1", wait=True, timeout=60)
    b = client.request_lease(1, duration="1m", request_id="req-1", wait=True, timeout=60)
    assert a.id == b.id
    before = [x.data for x in client.list_leases()]
    bad_bodies: list[dict[str, Any]] = [
        {"gpus": 0},
        {"gpus": -1},
        {"gpus": 1, "gpu_type": "V100"},
        {"gpus": 1, "duration": "soon"},
        {"gpus": 1, "colour": "red"},
        {"gpus": 10**9},
        {"gpus": 1, "duration": "400d"},
    ]
    # The server refuses each (sent raw, past the SDK's own checks)...
    for bad in bad_bodies:
        r = httpx.post(
            f"{platform.url}/api/v1/leases",
            json=bad,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        )
        assert r.status_code in (400, 422), (bad, r.status_code, r.text)
        assert r.json()["error"]["code"] == InvalidRequest.code, (bad, r.text)
    # ...and so does the SDK, for every one it can express.
    for bad in bad_bodies:
        if "colour" in bad:
            continue
        kw = {k: v for k, v in bad.items() if k != "gpus"}
        with pytest.raises(InvalidRequest):
            client.request_lease(bad["gpus"], **kw)
    assert [x.data for x in client.list_leases()] == before
    with pytest.raises(NotFound):
        client.get_lease("nope")
    client.release_lease(a.id)


def test_store_is_a_real_sqlite_file(platform: Platform) -> None:
    db = Path(platform.config.resolved_state_dir()) / "fastgpu.db"
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("select count(*) from leases").fetchone()
        hashes = [h for (h,) in conn.execute("select token_hash from tokens")]
    assert n > 0
    assert platform.admin not in hashes
    assert all(len(h) == 64 for h in hashes)


def test_unknown_tokens_are_refused(platform: Platform) -> None:
    from fastgpu.auth import new_token

    # The control plane's only door is the API (it is no Ray actor: a tenant's job finds
    # nothing to call into, test_pool_server.py), and an unknown token is refused there, for
    # reads and writes.
    mallory = platform.client(new_token(), retries=0)
    for attempt in (
        lambda: mallory.create_tenant("mallory", {}),
        lambda: mallory.whoami(),
        lambda: mallory.list_leases(),
        lambda: mallory.request_lease(1, duration="1m"),
    ):
        with pytest.raises(AuthenticationError):
            attempt()
    assert "mallory" not in {t["name"] for t in platform.client().list_tenants()}
