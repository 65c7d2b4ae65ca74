"""Agent-run hosts on the server's side (RemotePool): the state table, registration, loss
within the configured time, rejoin with stale raylets, drain, and signed calls to agents
(through an in-memory transport that checks signatures as an agent does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgpu.domain.agent_protocol import (
    Heartbeat,
    RayletReport,
    Register,
    RunningRaylet,
)
from fastgpu.domain.host import HostState, HostTransitionError, check_transition
from fastgpu.errors import Conflict, Unavailable
from fastgpu.pool.hosts import Host
from fastgpu.pool.remote import RemotePool
from fastgpu.pool.signing import Verifier


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def reg(
    host: str = "h0", devices: tuple[int, ...] = (0, 1), raylets: Any = (), seq: int = 0
) -> Register:
    return Register(
        host=host,
        gpu_type="A100",
        devices=list(devices),
        cpus=8,
        memory_bytes=1 << 30,
        url="http://127.0.0.1:1",
        report=RayletReport(boot="b1", seq=seq, raylets=list(raylets)),
    )


def pool(clock: Clock, transport: httpx.BaseTransport | None = None) -> RemotePool:
    hosts = [Host("h0", "A100", (0, 1)), Host("h1", "A100", (0, 1))]
    return RemotePool(hosts, heartbeat_s=1.0, lost_after_s=3.0, clock=clock, transport=transport)


RAYLET = RunningRaylet(tenant_id="t1", lease_id="l1", part=0, devices=[0])


@pytest.mark.parametrize(
    ("prev", "new", "ok"),
    [
        (HostState.PENDING, HostState.READY, True),
        (HostState.READY, HostState.LOST, True),
        (HostState.LOST, HostState.READY, True),
        (HostState.READY, HostState.DRAINING, True),
        (HostState.DRAINING, HostState.DRAINED, True),
        (HostState.DRAINED, HostState.READY, True),
        (HostState.PENDING, HostState.LOST, False),
        (HostState.READY, HostState.DRAINED, False),
        (HostState.LOST, HostState.DRAINED, False),
    ],
)
def test_the_transition_table(prev: HostState, new: HostState, ok: bool) -> None:
    if ok:
        assert check_transition(prev, new)
    else:
        with pytest.raises(HostTransitionError, match=f"{prev.value} -> {new.value}"):
            check_transition(prev, new)


def test_declared_hosts_wait_for_their_agent_then_are_schedulable() -> None:
    clock = Clock()
    p = pool(clock)
    assert p.state("h0") == HostState.PENDING
    assert not p.hosts["h0"].alive
    got = p.register(reg(), drain_requested=False)
    assert len(got.key) == 64
    assert got.stale == []
    assert p.state("h0") == HostState.READY
    assert p.hosts["h0"].alive
    assert p.hosts["h0"].schedulable


def test_a_registration_that_disagrees_with_cluster_yaml_is_refused() -> None:
    p = pool(Clock())
    with pytest.raises(Conflict, match=r"cluster\.yaml declares A100 devices"):
        p.register(reg(devices=(0, 1, 2)), drain_requested=False)


def test_a_silent_host_is_lost_within_the_configured_time_and_its_raylets_stop_counting() -> None:
    clock = Clock()
    p = pool(clock)
    p.register(reg(raylets=[RAYLET]), drain_requested=False)
    assert p.running_raylets("x") == {("t1", ("l1", "h0", 0)): (0,)}
    clock.t += 2.5
    p.heartbeat(Heartbeat(host="h0", report=RayletReport(boot="b1", seq=1, raylets=[RAYLET])))
    clock.t += 3.0
    assert p.expire() == []  # heard 3.0 s ago: not more than lost_after_s
    clock.t += 0.1
    assert p.expire() == ["h0"]
    assert p.state("h0") == HostState.LOST
    assert not p.hosts["h0"].alive
    assert p.running_raylets("x") == {}
    # A heartbeat after the loss is told to register; registering names the stale raylet.
    beat = p.heartbeat(
        Heartbeat(host="h0", report=RayletReport(boot="b1", seq=1, raylets=[RAYLET]))
    )
    assert beat.reregister
    again = p.register(reg(raylets=[RAYLET], seq=1), drain_requested=False)
    assert again.stale == [RAYLET]
    assert p.state("h0") == HostState.READY
    assert p.running_raylets("x") == {}  # written off: not counted while being stopped


def test_an_older_report_never_replaces_a_newer_one() -> None:
    p = pool(Clock())
    p.register(reg(seq=5, raylets=[RAYLET]), drain_requested=False)
    p.heartbeat(Heartbeat(host="h0", report=RayletReport(boot="b1", seq=4, raylets=[])))
    assert p.report("h0") == [RAYLET]


def test_drain_and_undrain() -> None:
    p = pool(Clock())
    p.register(reg(), drain_requested=False)
    assert p.drain("h0", True) == HostState.DRAINING
    assert p.hosts["h0"].alive
    assert not p.hosts["h0"].schedulable
    p.drained("h0", empty=True)
    assert p.state("h0") == HostState.DRAINED
    assert p.drain("h0", False) == HostState.READY
    # A drain that stands when the agent registers applies at once.
    p.register(reg(host="h1"), drain_requested=True)
    assert p.state("h1") == HostState.DRAINING


class FakeAgent(httpx.BaseTransport):
    """Answers like an agent: checks the signature with the session key."""

    def __init__(self) -> None:
        self.verifier = Verifier()
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        try:
            self.verifier.verify("POST", request.url.path, body, dict(request.headers))
        except Exception as exc:
            return httpx.Response(401, json={"error": str(exc)})
        self.seen.append((request.url.path, json.loads(body)))
        return httpx.Response(200, json={"boot": "b1", "seq": 9, "raylets": [RAYLET.model_dump()]})


class FakeCluster:
    def __init__(self, tmp: Path) -> None:
        self.address = "127.0.0.1:6379"
        self.token_path = tmp / "ray_token"
        self.token_path.write_text("t" * 64)

        class Spec:
            platform_id = "p1"
            tenant_id = "t1"
            storage = tmp / "storage"

        self.spec = Spec()


def test_raylets_start_through_signed_requests(tmp_path: Path) -> None:
    agent = FakeAgent()
    p = pool(Clock(), transport=agent)
    got = p.register(reg(), drain_requested=False)
    agent.verifier.key = got.key
    cluster: Any = FakeCluster(tmp_path)
    p.start_raylet(cluster, "l1", p.hosts["h0"], (0,), 1)
    path, body = agent.seen[-1]
    assert path == "/v1/raylets/start"
    assert body["devices"] == [0]
    assert body["lease_id"] == "l1"
    assert p.running_raylets("p1", "t1") == {("t1", ("l1", "h0", 0)): (0,)}
    assert p.stop_raylet(cluster, ("l1", "h0", 0), 1.0) == 1
    # A key from an older registration (a server that restarted) is refused by the agent.
    agent.verifier.key = "00" * 32
    with pytest.raises(Exception, match="401"):
        p.start_raylet(cluster, "l1", p.hosts["h0"], (0,), 1)


def test_a_lost_host_is_not_called(tmp_path: Path) -> None:
    clock = Clock()
    p = pool(clock, transport=FakeAgent())
    p.register(reg(), drain_requested=False)
    clock.t += 10
    p.expire()
    with pytest.raises(Unavailable, match="no live agent"):
        p.start_raylet(FakeCluster(tmp_path), "l1", p.hosts["h0"], (0,), 1)  # type: ignore[arg-type]
    assert p.stop_raylet(FakeCluster(tmp_path), ("l1", "h0", 0), 1.0) == 0  # type: ignore[arg-type]
