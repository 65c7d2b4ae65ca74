"""Lease lifecycle on a real local Ray cluster (8 logical A100s) with a real SQLite store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from fastgpu.errors import InvalidRequest, NotFound
from tests.integration.platform_fixtures import (
    Platform,
    local_platform,
    wait_until,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from local_platform(tmp_path_factory)


def _group_state(name: str) -> str | None:
    for info in placement_group_table().values():
        if info["name"] == name and info["state"] != "REMOVED":
            return str(info["state"])
    return None


def _free_gpu_probe(n: int) -> bool:
    """Whether Ray itself can reserve n GPUs right now (outside the platform)."""
    pg = placement_group([{"GPU": 1}] * n)
    try:
        return bool(pg.wait(timeout_seconds=1.0))
    finally:
        remove_placement_group(pg)


def test_lease_holds_gpus_and_releases(platform: Platform) -> None:
    token = platform.tenant("life", A100=8)
    lease = platform.client.call(
        "request_lease", token, {"gpus": 6, "gpu_type": "A100", "duration": "10m"}, wait_s=30
    )
    assert lease["state"] == "RESERVED"
    assert lease["tenant"] == "life"
    assert lease["placement_group"] == f"fastgpu-lease-{lease['id']}"
    assert _group_state(lease["placement_group"]) == "CREATED"
    # The reservation really holds the GPUs: Ray cannot give 3 more of 8 to anyone else.
    assert not _free_gpu_probe(3)
    assert _free_gpu_probe(2)

    released = platform.client.call("release_lease", token, lease["id"])
    assert released["state"] == "RELEASED"
    assert released["ended_at"] is not None
    wait_until(lambda: _group_state(lease["placement_group"]) is None)
    wait_until(lambda: _free_gpu_probe(8))
    # Releasing again is a no-op that answers the same lease.
    again = platform.client.call("release_lease", token, lease["id"])
    assert again["state"] == "RELEASED"
    assert again["ended_at"] == released["ended_at"]

    usage = platform.client.call("usage", token)
    (row,) = [r for r in usage if r["gpu_type"] == "A100"]
    assert row["tenant"] == "life"
    assert row["gpu_seconds"] > 0
    assert row["cost"] == pytest.approx(row["gpu_seconds"] / 3600 * 3.6, rel=1e-6)


def test_lease_expires_and_gpus_come_back(platform: Platform) -> None:
    token = platform.tenant("brief", A100=8)
    lease = platform.client.call(
        "request_lease", token, {"gpus": 8, "gpu_type": "A100", "duration": "2s"}, wait_s=30
    )
    assert lease["state"] == "RESERVED"
    reserved = time.monotonic()
    ended = wait_until(
        lambda: (
            (got := platform.client.call("get_lease", token, lease["id"]))["state"] == "EXPIRED"
            and got
        ),
        timeout=10,
    )
    # Expired within 2 s of its end (2 s duration + 2 s slack).
    assert time.monotonic() - reserved < 4.5
    assert ended["ended_at"] is not None
    wait_until(lambda: _group_state(lease["placement_group"]) is None)
    wait_until(lambda: _free_gpu_probe(8))
    (row,) = platform.client.call("usage", token)
    assert 8 * 1.5 < row["gpu_seconds"] < 8 * 4.5


def test_quota_capacity_and_infeasible_reasons(platform: Platform) -> None:
    small = platform.tenant("small", borrowing_limit=0, A100=2)
    big = platform.tenant("big", A100=8)
    first = platform.client.call("request_lease", small, {"gpus": 2, "duration": "5m"}, wait_s=30)
    assert first["state"] == "RESERVED"
    over = platform.client.call("request_lease", small, {"gpus": 1, "duration": "5m"})
    assert over["state"] == "PENDING"
    assert over["reason"] == "over_quota"

    hog = platform.client.call("request_lease", big, {"gpus": 5, "duration": "5m"}, wait_s=30)
    assert hog["state"] == "RESERVED"
    starved = platform.client.call("request_lease", big, {"gpus": 3, "duration": "5m"})
    assert starved["state"] == "PENDING"
    assert starved["reason"] == "no_capacity"

    never = platform.client.call("request_lease", big, {"gpus": 9, "duration": "5m"})
    assert never["state"] == "REJECTED"
    assert never["reason"] == "infeasible"

    # Freeing capacity admits the queued lease; freeing quota admits the other.
    platform.client.call("release_lease", big, hog["id"])
    got = platform.client.call("wait_lease", big, starved["id"], 30)
    assert got["state"] == "RESERVED"
    platform.client.call("release_lease", small, first["id"])
    got = platform.client.call("wait_lease", small, over["id"], 30)
    assert got["state"] == "RESERVED"
    for tok, lid in ((big, starved["id"]), (small, over["id"])):
        platform.client.call("release_lease", tok, lid)


def test_idempotent_request_and_bad_input_store_nothing(platform: Platform) -> None:
    token = platform.tenant("idem", A100=4)
    body = {"gpus": 1, "duration": "1m", "request_id": "req-1"}
    a = platform.client.call("request_lease", token, body, wait_s=30)
    b = platform.client.call("request_lease", token, body, wait_s=30)
    assert a["id"] == b["id"]
    before = platform.client.call("list_leases", token)
    for bad in (
        {"gpus": 0},
        {"gpus": -1},
        {"gpus": 1, "gpu_type": "V100"},
        {"gpus": 1, "duration": "soon"},
        {"gpus": 1, "colour": "red"},
        {"gpus": 10**9},
        {"gpus": 1, "duration": "400d"},
    ):
        with pytest.raises(InvalidRequest):
            platform.client.call("request_lease", token, bad)
    assert platform.client.call("list_leases", token) == before
    with pytest.raises(NotFound):
        platform.client.call("get_lease", token, "nope")
    platform.client.call("release_lease", token, a["id"])


def test_store_is_a_real_sqlite_file(platform: Platform) -> None:
    db = Path(platform.config.resolved_state_dir()) / "fastgpu.db"
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("select count(*) from leases").fetchone()
        hashes = [h for (h,) in conn.execute("select token_hash from tokens")]
    assert n > 0
    assert platform.admin not in hashes
    assert all(len(h) == 64 for h in hashes)


def test_a_ray_driver_cannot_escalate_through_the_actor(platform: Platform) -> None:
    from fastgpu.auth import hash_token, new_token
    from fastgpu.errors import AuthenticationError

    handle = platform.handle
    mine = new_token()
    # Only the allow-listed, token-checked methods are reachable through `call`...
    for method, args in (
        ("register_admin_hash", (hash_token(mine),)),
        ("bootstrap_admin", (mine,)),
        ("reconcile", ()),
    ):
        with pytest.raises(InvalidRequest, match="unknown controller method"):
            platform.client.call(method, *args)
    # ...no actor method registers tokens, and an unknown token is refused everywhere.
    assert not hasattr(handle, "bootstrap_admin")
    with pytest.raises(AuthenticationError):
        platform.client.call("create_tenant", mine, "mallory", {})
