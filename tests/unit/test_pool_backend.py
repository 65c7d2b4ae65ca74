"""The pool backend's own rules, with tenants' clusters replaced by an in-memory stand-in (the
real ones run in tests/integration/test_pool_server.py): devices are never given twice,
readiness and failure reach the controller, a release during a start leaks no raylet, a
waiter that gives up does not cancel the reservation, and an elastic lease's raylets follow its
resizes (grow at once; shrink after the grace or a checkpoint, stopping the raylets where none
of the workload's actors runs first; a start waits for the devices it was given to be
drained)."""

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
        self.stopped: list[tuple[str, str, int]] = []
        self.live: dict[tuple[str, str, int], tuple[int, ...]] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.fail: str | None = None
        #: What the keeper reports: live actors per raylet key (none: idle).
        self.actors: dict[tuple[str, str, int], list[str]] = {}
        self.keeper = threading.Event()  # cleared: the keeper is stuck in a long call
        self.keeper.set()
        #: The raylets the keeper marked as draining in Ray: (lease, host, part, deadline_s).
        self.drained: list[tuple[str, str, int, float]] = []
        self.drain_fails = False
        #: Ray stops a raylet marked draining once nothing runs there.
        self.drain_stops_idle = False

    def start_head(self) -> None:
        pass

    def add_raylet(self, lease: str, host: Host, ids: tuple[int, ...], cpus: int = 0) -> None:
        assert self.gate.wait(10)
        if self.fail:
            raise FastGPUError(self.fail)
        self.started.append((lease, host.name, ids))
        self.live[(lease, host.name, min(ids))] = ids

    def remove_raylet(self, key: tuple[str, str, int], grace_s: float = 5.0) -> int:
        self.stopped.append(key)
        return 1 if self.live.pop(key, None) else 0

    def raylets(self) -> dict[tuple[str, str, int], tuple[int, ...]]:
        return dict(self.live)

    def call(self, op: str, **args: Any) -> Any:
        assert self.keeper.wait(10)
        if op == "drain":
            if self.drain_fails:
                raise FastGPUError("keeper: drain_node refused")
            key = (args["lease"], args["host"], args["part"])
            assert key in self.live  # marked before it stops
            self.drained.append((*key, args["deadline_s"]))
            if self.drain_stops_idle and not self.actors.get(key):
                del self.live[key]
            return [f"n{args['part']}"]
        if op == "actors":
            return [
                {
                    "node_id": f"n{part}",
                    "host": host,
                    "part": part,
                    "actors": self.actors.get(key, []),
                }
                for key in self.live
                for lease, host, part in [key]
                if lease == args["lease"]
            ]
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

    def running_raylets(self) -> dict[tuple[str, tuple[str, str, int]], tuple[int, ...]]:
        return {
            (tenant, key): ids
            for tenant, cluster in self.clusters.items()
            for key, ids in cluster.raylets().items()
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


def growing(backend: Any, name: str, held: list[str], grown: list[str]) -> Any:
    """Lease ``name`` of tenant t1 reserved on ``held``, then resized to ``grown`` while the
    raylets that adds are still starting (the fake cluster's gate is closed); its cluster."""
    b, clusters = backend
    b.create_group(name, BUNDLE, held, "PACK", tenant="t1")
    assert wait_ready(b, name)
    cluster = clusters.get("t1")
    cluster.gate.clear()
    b.resize(name, grown)
    return cluster


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
    del cluster.live[("d", "host-1", 4)]  # its raylet died
    lost = b.groups()["fastgpu-lease-d"]
    assert lost.state == "RESCHEDULING"
    assert lost.detail == "its raylet on host-1 stopped (1 of 2 GPUs)"
    assert lost.bundle_nodes == ("host-0",)  # what survives: an elastic lease shrinks to it


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
    assert wait_for(lambda: ("r", "host-1", 4) in cluster.stopped)
    assert cluster.raylets() == {}
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


def wait_for(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_growing_adds_a_raylet_and_leaves_the_running_one_alone(backend: Any) -> None:
    b, _ = backend
    grown = ["host-0", "host-0", "host-0", "host-1"]
    cluster = growing(backend, "fastgpu-lease-g", ["host-0", "host-0"], grown)
    # Starting is not missing: the lease is not reported lost meanwhile.
    assert b.groups()["fastgpu-lease-g"].state == "CREATED"
    cluster.gate.set()
    assert wait_for(lambda: len(cluster.live) == 3)
    assert cluster.live == {
        ("g", "host-0", 0): (0, 1),
        ("g", "host-0", 2): (2,),
        ("g", "host-1", 4): (4,),
    }
    assert cluster.stopped == []
    group = b.groups()["fastgpu-lease-g"]
    assert (group.state, group.bundle_nodes) == ("CREATED", ("host-0",) * 3 + ("host-1",))


def test_a_raylet_that_ends_its_start_while_groups_looks_is_not_taken_for_a_dead_one(
    backend: Any,
) -> None:
    b, clusters = backend
    cluster = growing(backend, "fastgpu-lease-h", ["host-0"], ["host-0"] * 2)
    scan = clusters.running_raylets

    def start_ends_after_the_scan() -> Any:
        found = scan()  # the new raylet is not running yet when the processes are scanned...
        cluster.gate.set()  # ...and its start ends before the reservation is looked at
        assert wait_for(lambda: ("h", "host-0", 1) in cluster.live)
        time.sleep(0.1)  # its devices are no longer starting
        return found

    clusters.running_raylets = start_ends_after_the_scan  # type: ignore[method-assign]
    group = b.groups()["fastgpu-lease-h"]
    assert (group.state, group.bundle_nodes) == ("CREATED", ("host-0", "host-0"))


def test_shrinking_keeps_the_raylets_until_a_checkpoint_and_a_new_start_waits(
    backend: Any,
) -> None:
    b, clusters = backend
    b.elastic.grace_s = 60.0
    b.create_group("fastgpu-lease-s", BUNDLE, ["host-0", "host-0"], "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-s")
    b.resize("fastgpu-lease-s", ["host-0"] * 4)
    alpha = clusters.get("t1")
    assert wait_for(lambda: ("s", "host-0", 2) in alpha.live)
    b.resize("fastgpu-lease-s", ["host-0", "host-0"])  # back to the first part
    assert b.groups()["fastgpu-lease-s"].bundle_nodes == ("host-0", "host-0")
    # The policy gives devices 2 and 3 to tenant t2 at once; its raylet waits for the drain.
    b.create_group("fastgpu-lease-n", BUNDLE, ["host-0", "host-0"], "PACK", tenant="t2")
    time.sleep(0.3)
    assert ("s", "host-0", 2) in alpha.live  # in its grace: the workload checkpoints
    assert clusters.get("t2").started == []
    b.checkpointed("fastgpu-lease-s")  # the work is saved: the GPUs go now
    assert wait_ready(b, "fastgpu-lease-n")
    assert alpha.live == {("s", "host-0", 0): (0, 1)}
    assert clusters.get("t2").started == [("n", "host-0", (2, 3))]
    # The 2 GPUs it gave back were the tenant's until they stopped: metered, once.
    ((lease, gpus, began, ended),) = b.held_after()
    assert (lease, gpus) == ("s", 2)
    assert 0.3 <= ended - began < 5
    assert b.held_after() == []


def test_a_shrink_that_splits_a_raylet_restarts_the_kept_devices_after_the_grace(
    backend: Any,
) -> None:
    b, clusters = backend
    b.elastic.grace_s = 0.2
    b.create_group("fastgpu-lease-p", BUNDLE, ["host-0"] * 4, "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-p")
    b.resize("fastgpu-lease-p", ["host-0"] * 3)
    cluster = clusters.get("t1")
    assert b.groups()["fastgpu-lease-p"].state == "CREATED"  # never reported lost
    assert wait_for(lambda: ("p", "host-0", 0) in cluster.stopped)
    assert wait_for(lambda: cluster.live == {("p", "host-0", 0): (0, 1, 2)})
    assert b.groups()["fastgpu-lease-p"].state == "CREATED"


def test_a_release_ends_a_shrinks_grace(backend: Any) -> None:
    b, clusters = backend
    b.elastic.grace_s = 60.0
    b.create_group("fastgpu-lease-e", BUNDLE, ["host-1", "host-1"], "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-e")
    b.resize("fastgpu-lease-e", ["host-1"])
    b.remove_group("fastgpu-lease-e")
    cluster = clusters.get("t1")
    assert wait_for(lambda: cluster.live == {})
    b.create_group("fastgpu-lease-f", BUNDLE, ["host-1", "host-1"], "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-f")


def three_parts(b: PoolBackend, clusters: FakeClusters, name: str) -> FakeCluster:
    """An elastic lease grown to three one-GPU raylets on host-0 (parts 0, 1, 2)."""
    b.create_group(f"fastgpu-lease-{name}", BUNDLE, ["host-0"], "PACK", tenant="t1")
    assert wait_ready(b, f"fastgpu-lease-{name}")
    cluster = clusters.get("t1")
    for n in (2, 3):
        b.resize(f"fastgpu-lease-{name}", ["host-0"] * n)
        assert wait_for(lambda n=n: len(cluster.live) == n)
    return cluster


def test_a_shrink_stops_the_raylets_without_the_workload_first(backend: Any) -> None:
    b, clusters = backend
    b.elastic.grace_s = 0.1
    cluster = three_parts(b, clusters, "w")
    cluster.actors = {("w", "host-0", 2): ["replica-kept"]}
    b.resize("fastgpu-lease-w", ["host-0"])
    assert wait_for(lambda: len(cluster.live) == 1)
    assert cluster.live == {("w", "host-0", 2): (2,)}  # the kept replica's raylet stayed
    assert sorted(cluster.stopped) == [("w", "host-0", 0), ("w", "host-0", 1)]


def test_a_shrink_marks_the_raylets_it_gives_back_as_draining_in_ray_before_the_grace(
    backend: Any,
) -> None:
    """Ray then places nothing new there during the grace (a replica Serve started there
    would get requests and die with the raylet) and Serve moves what runs there."""
    b, clusters = backend
    b.elastic.grace_s = 60.0
    cluster = three_parts(b, clusters, "m")
    cluster.actors = {("m", "host-0", 2): ["replica-kept"]}
    b.resize("fastgpu-lease-m", ["host-0"])
    assert wait_for(lambda: len(cluster.drained) == 2)
    assert sorted(d[:3] for d in cluster.drained) == [("m", "host-0", 0), ("m", "host-0", 1)]
    assert all(50 < d[3] <= 60 for d in cluster.drained)  # Ray is told when they stop
    assert len(cluster.live) == 3  # in the grace: still running
    b.checkpointed("fastgpu-lease-m")
    assert wait_for(lambda: cluster.live == {("m", "host-0", 2): (2,)})


def test_raylets_ray_stopped_once_drained_give_their_devices_back_before_the_grace(
    backend: Any,
) -> None:
    b, clusters = backend
    b.elastic.grace_s = 60.0
    cluster = three_parts(b, clusters, "q")
    cluster.drain_stops_idle = True
    cluster.actors = {("q", "host-0", 2): ["replica-kept"]}
    b.resize("fastgpu-lease-q", ["host-0"])
    assert wait_for(lambda: cluster.live == {("q", "host-0", 2): (2,)})
    # devices 0 and 1 go to another lease long before the 60 s grace
    b.create_group("fastgpu-lease-o", BUNDLE, ["host-0"] * 3, "PACK", tenant="t2")
    assert wait_ready(b, "fastgpu-lease-o")
    assert clusters.get("t2").started == [("o", "host-0", (0, 1, 3))]
    assert cluster.live == {("q", "host-0", 2): (2,)}


def test_a_shrink_that_drains_two_raylets_of_a_host_holds_the_devices_of_both(
    backend: Any,
) -> None:
    """Until both have stopped, no start is given their devices: not another lease (two
    raylets on one GPU), not the lease's own grow (it found the draining raylet under its key
    and took it for its new one, which the drain then stopped)."""
    b, clusters = backend
    b.elastic.grace_s = 60.0
    cluster = three_parts(b, clusters, "two")
    cluster.actors = {("two", "host-0", 2): ["replica-kept"]}
    b.resize("fastgpu-lease-two", ["host-0"])
    assert wait_for(lambda: len(cluster.drained) == 2)
    b.create_group("fastgpu-lease-n", BUNDLE, ["host-0", "host-0"], "PACK", tenant="t2")
    time.sleep(0.3)
    assert clusters.get("t2").started == []  # devices 0 and 1 are still drained
    b.checkpointed("fastgpu-lease-two")
    assert wait_ready(b, "fastgpu-lease-n")
    assert cluster.live == {("two", "host-0", 2): (2,)}
    (started,) = clusters.get("t2").started
    assert set(started[2]) & {0, 1}  # one of them, once its raylet stopped


def test_a_drain_ray_refuses_to_mark_still_stops_the_raylets(backend: Any) -> None:
    b, clusters = backend
    b.elastic.grace_s = 0.1
    cluster = three_parts(b, clusters, "x")
    cluster.drain_fails = True
    b.resize("fastgpu-lease-x", ["host-0"])
    assert wait_for(lambda: len(cluster.live) == 1)
    assert cluster.drained == []


def test_actors_the_workload_is_stopping_leave_their_raylet_idle(backend: Any) -> None:
    b, clusters = backend
    b.elastic.grace_s = 0.1
    cluster = three_parts(b, clusters, "v")
    # Serve stops the replicas on parts 0 and 1; they live on for their graceful shutdown
    cluster.actors = {
        ("v", "host-0", 0): ["old-0"],
        ("v", "host-0", 1): ["old-1"],
        ("v", "host-0", 2): ["kept"],
    }
    b.elastic.stopping.append(lambda tenant: {"old-0", "old-1"} if tenant == "t1" else set())
    b.resize("fastgpu-lease-v", ["host-0"])
    assert wait_for(lambda: len(cluster.live) == 1)
    assert cluster.live == {("v", "host-0", 2): (2,)}


def test_a_keeper_that_does_not_answer_in_time_leaves_the_order_to_pick(backend: Any) -> None:
    b, clusters = backend
    b.elastic.grace_s = 0.1
    b.elastic.busy_timeout_s = 0.1
    cluster = three_parts(b, clusters, "k")
    cluster.actors = {("k", "host-0", 2): ["replica-kept"]}
    cluster.keeper.clear()  # busy with a long call (a group's readiness)
    t0 = time.monotonic()
    b.resize("fastgpu-lease-k", ["host-0"])
    assert time.monotonic() - t0 < 2  # the controller's lock is not held for long
    assert wait_for(lambda: len(cluster.live) == 1)
    assert cluster.live == {("k", "host-0", 0): (0,)}
    cluster.keeper.set()


def test_a_resize_while_a_raylet_starts_does_not_start_it_twice(backend: Any) -> None:
    b, _ = backend
    cluster = growing(backend, "fastgpu-lease-t", ["host-0"], ["host-0"] * 2)
    b.resize("fastgpu-lease-t", ["host-0"] * 2)  # the same placement again (a maximum raised)
    cluster.gate.set()
    assert wait_for(lambda: len(cluster.live) == 2)
    time.sleep(0.2)
    assert cluster.started == [("t", "host-0", (0,)), ("t", "host-0", (1,))]


def test_a_shrink_stops_a_raylet_still_starting_first(backend: Any) -> None:
    """A raylet being started is a part of the lease (idle: no actor yet): a shrink meanwhile
    stops it, rather than the busy one, and never leaves it running outside the lease."""
    b, clusters = backend
    b.elastic.grace_s = 0.5
    b.create_group("fastgpu-lease-r", BUNDLE, ["host-0"], "PACK", tenant="t1")
    assert wait_ready(b, "fastgpu-lease-r")
    cluster = clusters.get("t1")
    cluster.actors = {("r", "host-0", 0): ["replica"]}
    cluster.gate.clear()  # the grown raylet is starting
    b.resize("fastgpu-lease-r", ["host-0"] * 2)
    b.resize("fastgpu-lease-r", ["host-0"])
    cluster.gate.set()
    assert wait_for(lambda: ("r", "host-0", 1) in cluster.stopped)
    assert wait_for(lambda: cluster.live == {("r", "host-0", 0): (0,)})
    assert b.groups()["fastgpu-lease-r"].bundle_nodes == ("host-0",)


def test_a_restarted_server_takes_the_devices_of_raylets_still_starting(
    backend: tuple[PoolBackend, FakeClusters],
) -> None:
    """What runs includes a raylet its predecessor's `ray start` is still starting (see
    ``running_raylets``): the restarted server adopts it, and the next lease gets another
    device rather than the one being started."""
    b, clusters = backend
    clusters.get("t1").live[("old", "host-0", 0)] = (0,)  # reported by its `ray start`
    assert "fastgpu-lease-old" in b.groups()
    b.create_group("fastgpu-lease-new", {"GPU": 1}, ["host-0"], "PACK", tenant="t2")
    assert wait_ready(b, "fastgpu-lease-new")
    assert ("new", "host-0", (1,)) in clusters.get("t2").started  # not device 0
