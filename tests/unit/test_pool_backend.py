"""The pool backend's own rules, with tenants' clusters replaced by an in-memory stand-in (the
real ones run in tests/integration/test_pool_server.py): devices are never given twice,
readiness and failure reach the controller, a release during a start leaks no raylet, and a
waiter that gives up does not cancel the reservation."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fastgpu.config import PlatformConfig
from fastgpu.controller.pool_backend import PoolBackend
from fastgpu.errors import Conflict, FastGPUError
from fastgpu.pool.hosts import Host

HOSTS = [Host("host-0", "A100", (0, 1, 2, 3)), Host("host-1", "A100", (4, 5))]
BUNDLE = {"GPU": 1.0}


class FakeCluster:
    def __init__(self, tenant: str) -> None:
        self.spec = SimpleNamespace(tenant_id=tenant)
        self.started: list[tuple[str, str, tuple[int, ...]]] = []
        self.stopped: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: str | None = None

    def start_head(self) -> None:
        pass

    def add_raylet(self, lease: str, host: Host, ids: tuple[int, ...], cpus: int = 0) -> None:
        assert self.gate.wait(10)
        if self.fail:
            raise FastGPUError(self.fail)
        self.started.append((lease, host.name, ids))

    def remove_raylet(self, lease: str, host: str, grace_s: float = 5.0) -> int:
        self.stopped.append((lease, host))
        return 1

    def raylets(self) -> dict[tuple[str, str], tuple[int, ...]]:
        return {(lease, h): ids for lease, h, ids in self.started if (lease, h) not in self.stopped}

    def call(self, op: str, **args: Any) -> Any:
        return {"create_group": f"gid-{args.get('name')}", "ready": True}.get(op, True)

    def running(self) -> bool:
        return True


class FakeClusters:
    platform = "unit-no-such-platform"
    isolation = "os_users"

    def __init__(self) -> None:
        self.clusters: dict[str, FakeCluster] = {}

    def prepare(self) -> None:
        pass

    def get(self, tenant: str, name: str = "") -> FakeCluster:
        return self.clusters.setdefault(tenant, FakeCluster(tenant))

    ensure = get

    def known(self) -> dict[str, FakeCluster]:
        return dict(self.clusters)

    def running_tenants(self) -> set[str]:
        return set()

    def running_raylets(self) -> dict[tuple[str, str, str], tuple[int, ...]]:
        return {
            (tenant, lease, host): ids
            for tenant, cluster in self.clusters.items()
            for (lease, host), ids in cluster.raylets().items()
        }


@pytest.fixture
def backend() -> tuple[PoolBackend, FakeClusters]:
    config = PlatformConfig.model_validate(
        {
            "gpu_types": {"A100": {"price_per_hour": 1.0}},
            "pool": {
                "hosts": [
                    {"name": h.name, "gpu_type": "A100", "devices": list(h.devices)} for h in HOSTS
                ]
            },
        }
    )
    clusters = FakeClusters()
    return PoolBackend(config, HOSTS, clusters=clusters), clusters  # type: ignore[arg-type]


def wait_ready(b: PoolBackend, name: str) -> bool:
    return name in b.ready([name], timeout_s=5)


def test_leases_get_disjoint_devices_and_a_full_host_is_a_conflict(backend: Any) -> None:
    b, clusters = backend
    b.create_group("fastgpu-lease-a", BUNDLE, ["host-0", "host-0"], "PACK", tenant="t1")
    b.create_group("fastgpu-lease-b", BUNDLE, ["host-0", "host-1"], "PACK", tenant="t2")
    assert wait_ready(b, "fastgpu-lease-a")
    assert wait_ready(b, "fastgpu-lease-b")
    a = clusters.get("t1").started
    bb = clusters.get("t2").started
    assert a == [("a", "host-0", (0, 1))]
    assert sorted(bb) == [("b", "host-0", (2,)), ("b", "host-1", (4,))]
    with pytest.raises(Conflict, match="host-0 has 1 free GPUs; 2 asked"):
        b.create_group("fastgpu-lease-c", BUNDLE, ["host-0", "host-0"], "PACK", tenant="t1")
    # Releasing frees the devices for the next lease.
    b.remove_group("fastgpu-lease-a")
    b.create_group("fastgpu-lease-c", BUNDLE, ["host-0", "host-0"], "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-c")
    assert ("c", "host-0", (0, 1)) in clusters.get("t1").started
    groups = b.groups()
    assert groups["fastgpu-lease-b"].state == "CREATED"
    assert groups["fastgpu-lease-b"].bundle_nodes == ("host-0", "host-1")
    assert b.group_id("fastgpu-lease-c") == "gid-fastgpu-lease-c"


def test_a_reservation_whose_raylet_died_is_reported_lost(backend: Any) -> None:
    b, clusters = backend
    b.create_group("fastgpu-lease-d", BUNDLE, ["host-0", "host-1"], "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-d")
    assert b.groups()["fastgpu-lease-d"].state == "CREATED"
    cluster = clusters.get("t1")
    cluster.started = [x for x in cluster.started if x[1] != "host-1"]  # its raylet died
    lost = b.groups()["fastgpu-lease-d"]
    assert lost.state == "RESCHEDULING"
    assert lost.detail == "its raylet on host-1 stopped"


def test_a_failed_start_is_reported_with_its_error(backend: Any) -> None:
    b, clusters = backend
    clusters.get("t1").fail = "raylet did not start"
    b.create_group("fastgpu-lease-x", BUNDLE, ["host-1"], "PACK", tenant="t1")
    assert not wait_ready(b, "fastgpu-lease-x")
    assert b.failures(["fastgpu-lease-x"]) == {"fastgpu-lease-x": "raylet did not start"}
    assert b.groups()["fastgpu-lease-x"].state == "FAILED"


def test_a_release_during_the_start_leaks_no_raylet(backend: Any) -> None:
    b, clusters = backend
    cluster = clusters.get("t1")
    cluster.gate.clear()  # the raylet is "starting"
    b.create_group("fastgpu-lease-r", BUNDLE, ["host-1", "host-1"], "PACK", tenant="t1")
    time.sleep(0.1)
    b.remove_group("fastgpu-lease-r")
    cluster.gate.set()  # the start finishes after the release
    deadline = time.monotonic() + 5
    while cluster.raylets() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cluster.raylets() == {}
    assert ("r", "host-1") in cluster.stopped
    assert "fastgpu-lease-r" not in b.groups()


def test_a_waiter_that_gives_up_does_not_cancel_the_reservation(backend: Any) -> None:
    b, clusters = backend
    cluster = clusters.get("t1")
    cluster.gate.clear()
    b.create_group("fastgpu-lease-w", BUNDLE, ["host-0"], "PACK", tenant="t1")
    first = b.ready_future("fastgpu-lease-w")
    assert first is not None
    assert first.cancel()  # e.g. asyncio.wait_for timed out on it
    second = b.ready_future("fastgpu-lease-w")
    cluster.gate.set()
    assert second is not None
    assert second.result(timeout=5) is True
    assert wait_ready(b, "fastgpu-lease-w")
