"""Two ``fastgpu server`` processes on one PostgreSQL store and one pool (tenant clusters on
logical GPUs of this machine), each with its own state dir: a leader and a standby. The standby
serves nothing (its API port refuses connections) while the leader holds the leader lock;
SIGKILL the leader during lease requests and the standby takes over within
``TAKEOVER_LIMIT_S``, with every lease made before the kill still there exactly once, the
raylets the leader started adopted (the platform's id comes from its store, not a state dir),
and the raylets matching the store.

Skips when no PostgreSQL server binaries are installed (:mod:`tests.integration.pg_fixtures`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fastgpu.auth import new_token, write_secret
from fastgpu.controller.clusters import TenantClusters
from fastgpu.pool.runtime import remove_platform_users
from fastgpu.sdk import Client
from tests.integration.pg_fixtures import private_postgres
from tests.integration.platform_fixtures import (
    Platform,
    lease_devices,
    make_config,
    stop_marked,
    wait_until,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GPUS = 4
POOL = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": list(range(GPUS))}]}

TAKEOVER_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from private_postgres()


def _platform(state_dir: Path, store_url: str, admin: str, storage: Path) -> Platform:
    """A server's config and state dir: its own API port and state dir; the shared store,
    pool, storage root and admin token."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(
        state_dir,
        store_url=store_url,
        pool=POOL,
        storage_root=str(storage),
        tenant_clusters={"enabled": True, "idle_timeout_s": 600},
        controller={"min_duration_s": 1.0, "tick_interval_s": 0.25},
    )
    (state_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    write_secret(state_dir / "admin_token", admin)
    return Platform(config, admin, state_dir, None)


@pytest.fixture(scope="module")
def pair(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Platform, Platform]]:
    base = Path(os.environ["RAY_TMPDIR"])
    base.chmod(0o711)  # tenants pass through the test's temp dir to their own dirs
    storage = base / "ha-storage"
    admin = new_token()
    first = _platform(tmp_path_factory.mktemp("first"), postgres_url, admin, storage)
    second = _platform(tmp_path_factory.mktemp("second"), postgres_url, admin, storage)
    assert first.config.api.port != second.config.api.port
    platform = TenantClusters(first.config).platform
    assert TenantClusters(second.config).platform == platform  # one platform: one store
    try:
        yield first, second
    finally:
        for p in (first, second):
            p.stop_server()
        stop_marked(f"{platform}/")
        remove_platform_users(platform)


def _refused(platform: Platform) -> bool:
    """Whether the server's API port refuses connections (nothing listens there)."""
    try:
        httpx.get(f"{platform.url}/api/v1/healthz", timeout=2, trust_env=False)
    except httpx.ConnectError:
        return True
    return False


def _health(platform: Platform) -> dict[str, Any]:
    r = httpx.get(
        f"{platform.url}/api/v1/healthz",
        headers={"Authorization": f"Bearer {platform.admin}"},
        timeout=2,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _by_request(client: Client, prefix: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for x in client.list_leases():
        rid = x.data["request_id"] or ""
        if rid.startswith(prefix):
            out.setdefault(rid, []).append(x.data)
    return out


def test_standby_takes_over_after_the_leader_is_killed(pair: tuple[Platform, Platform]) -> None:
    first, second = pair
    first.start_server()
    assert _health(first)["leader"] is True
    # The second server waits for the leader lock and serves nothing meanwhile.
    with pytest.raises(AssertionError, match="did not come up"):
        second.start_server(timeout=4)
    assert second.proc is not None
    assert second.proc.poll() is None
    assert _refused(second)
    assert "standby" in second.log()

    token = first.tenant("ha", A100=GPUS)
    on_first = first.client(token)
    before: dict[str, str] = {}
    for i in range(2):
        lease = on_first.request_lease(
            1, duration="10m", request_id=f"pre-{i}", wait=True, timeout=90
        )
        assert lease.state == "RESERVED"
        before[f"pre-{i}"] = lease.id
    assert len(set(before.values())) == 2
    adopted = lease_devices(first)
    assert set(adopted) == set(before.values())

    # Lease requests in flight against the leader while it is killed; each caller gives up on
    # the dead address and retries the same request id against the new leader.
    outcome: dict[str, str] = {}
    stop = threading.Event()

    def requester(n: int) -> None:
        mine = first.client(token, retries=0)
        i = 0
        while not stop.is_set() and i < 20:
            rid = f"during-{n}-{i}"
            try:
                outcome[rid] = mine.request_lease(1, duration="10m", request_id=rid).id
            except Exception as exc:  # the leader died under this one
                outcome[rid] = f"error: {type(exc).__name__}"
                return
            i += 1
            time.sleep(0.1)

    threads = [threading.Thread(target=requester, args=(n,)) for n in range(3)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    assert second.proc.poll() is None
    assert _refused(second)  # still standby while the leader serves
    killed = time.monotonic()
    first.kill_server()
    second.wait_healthy(timeout=TAKEOVER_LIMIT_S + 20)
    took = time.monotonic() - killed
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert took <= TAKEOVER_LIMIT_S, f"takeover took {took:.1f} s:\n{second.log()}"
    assert _health(second)["leader"] is True
    assert _refused(first)
    assert any(v.startswith("error") for v in outcome.values()), outcome  # the kill hit one

    on_second = second.client(token)
    # Every request, finished or cut off, maps to exactly one lease once retried on the new
    # leader; the finished ones keep the id the old leader gave them.
    for rid, got in outcome.items():
        again = on_second.request_lease(1, duration="10m", request_id=rid)
        if not got.startswith("error"):
            assert again.id == got
    rows = _by_request(on_second, "")
    assert all(len(v) == 1 for v in rows.values()), rows
    for rid, lease_id in before.items():
        (row,) = rows[rid]
        assert row["id"] == lease_id
        assert row["state"] == "RESERVED"
    assert set(outcome) <= set(rows)

    # The raylets the leader started for the leases made before the kill are still there, on
    # the same devices (adopted, not failed), and store and raylets agree both ways: every
    # RESERVED lease has its raylet, no raylet is left without one, no device is doubled.
    for lease_id, devices in adopted.items():
        assert lease_devices(second)[lease_id] == devices

    def agree() -> bool:
        live = [x.data for x in on_second.list_leases(live=True)]
        reserved = {x["id"] for x in live if x["state"] == "RESERVED"}
        held = lease_devices(second)
        devices = [d for ds in held.values() for d in ds]
        return (
            set(held) == reserved
            and len(devices) == len(set(devices))
            and len(devices) == sum(x["held_gpus"] for x in live if x["state"] == "RESERVED")
        )

    def allocated() -> int:
        status = second.client().status()
        (a100,) = [t for t in status["gpu_types"] if t["gpu_type"] == "A100"]
        return int(a100["allocated"])

    # One GPU per lease, 4 GPUs: nothing doubled, nothing lost.
    try:
        wait_until(lambda: allocated() == min(GPUS, len(rows)) and agree(), timeout=90)
    except AssertionError:
        live = [
            (x.data["id"], x.data["state"], x.data["held_gpus"], x.data["reason"])
            for x in on_second.list_leases(live=True)
        ]
        raise AssertionError(
            f"allocated {allocated()} of {min(GPUS, len(rows))}; live leases {live}; "
            f"raylets {lease_devices(second)}\n{second.log()}"
        ) from None
    for rows_of in rows.values():
        on_second.release_lease(rows_of[0]["id"])
    wait_until(lambda: not lease_devices(second), timeout=60)
