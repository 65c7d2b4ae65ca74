"""Hosts run by agents (``fastgpu agent``), as the server sees them: registration, heartbeats,
loss, drain, and raylets started and stopped through signed requests.

The server keeps, per host, its state (:class:`~fastgpu.domain.host.HostState`, changed only
in :meth:`RemotePool._set_state`, which checks the table), its agent's address and session
key (memory only), and its newest :class:`~fastgpu.domain.agent_protocol.RayletReport`. What
runs on a host is what its agent reported last, or answered to the last start or stop,
whichever is newer (``(boot, seq)``). A LOST host's raylets do not count as running: the
leases holding them are shrunk or failed by reconcile, as when a raylet dies, and when the
host registers again everything its agent still runs is stale and stopped.

Invariants: a host's devices are the ones declared for it (cluster.yaml), or, for a host that
joined undeclared, the ones it registered with; they never change while it is registered. A
request reaches an agent only with the session key of its latest registration.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx

from fastgpu.domain.agent_protocol import (
    Heartbeat,
    HeartbeatReply,
    RayletReport,
    Register,
    Registered,
    RunningRaylet,
    StartRaylet,
    StopRaylet,
)
from fastgpu.domain.host import HostState, after_register, check_transition, is_lost
from fastgpu.errors import Conflict, FastGPUError, Unavailable
from fastgpu.pool.hosts import Host
from fastgpu.pool.seam import RayletMap
from fastgpu.pool.signing import new_key, sign

if TYPE_CHECKING:
    from fastgpu.pool.tenant_cluster import RayletKey, TenantCluster

log = logging.getLogger(__name__)

START_TIMEOUT_S = 150.0


@dataclass
class AgentLink:
    """One registered agent: where it listens, its session key, what it last reported."""

    url: str
    key: str
    last_seen: float
    cpus: int
    memory_bytes: int
    report: RayletReport
    since: float = field(default_factory=time.time)


class RemotePool:
    """Every host is an agent's. Thread-safe."""

    def __init__(
        self,
        declared: list[Host],
        heartbeat_s: float = 2.0,
        lost_after_s: float = 6.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        platform_id: str = "fastgpu",
    ) -> None:
        self.platform_id = platform_id
        self.declared = {h.name: h for h in declared}
        self.hosts: dict[str, Host] = {
            h.name: replace(h, alive=False, schedulable=False) for h in declared
        }
        self.states: dict[str, HostState] = {h.name: HostState.PENDING for h in declared}
        self.heartbeat_s = heartbeat_s
        self.lost_after_s = lost_after_s
        self.clock = clock
        self.links: dict[str, AgentLink] = {}
        self._mu = threading.RLock()
        self._http = httpx.Client(transport=transport, timeout=httpx.Timeout(10.0))
        #: Called with (host, previous state, new state) after every change (the controller).
        self.on_change: Callable[[str, HostState, HostState], None] | None = None

    # -- states ----------------------------------------------------------------------------
    def _set_state(self, name: str, new: HostState, why: str) -> None:
        prev = self.states.get(name, HostState.PENDING)
        if prev == new:
            return
        check_transition(prev, new)
        self.states[name] = new
        host = self.hosts[name]
        self.hosts[name] = replace(host, alive=new.alive, schedulable=new.schedulable)
        log.warning("host %s: %s -> %s (%s)", name, prev.value, new.value, why)
        if self.on_change is not None:
            self.on_change(name, prev, new)

    def state(self, name: str) -> HostState:
        with self._mu:
            if name not in self.states:
                raise KeyError(name)
            return self.states[name]

    def owns(self, host: str) -> bool:
        return host in self.hosts

    # -- agents' calls -----------------------------------------------------------------------
    def register(self, req: Register, drain_requested: bool) -> Registered:
        """An agent (its token checked by the caller) announces its host."""
        with self._mu:
            want = self.declared.get(req.host)
            if want is not None and (
                want.gpu_type != req.gpu_type or sorted(want.devices) != sorted(req.devices)
            ):
                raise Conflict(
                    f"host {req.host} registered {req.gpu_type} devices {req.devices}; "
                    f"cluster.yaml declares {want.gpu_type} devices {list(want.devices)}: "
                    "fix the agent's --gpu-type/--devices or the host's entry"
                )
            prev = self.states.get(req.host, HostState.PENDING)
            if req.host not in self.hosts:
                self.hosts[req.host] = Host(
                    req.host, req.gpu_type, tuple(req.devices), alive=False, schedulable=False
                )
                self.states[req.host] = HostState.PENDING
            # Written off while away: whatever it still runs was already given up for.
            stale = list(req.report.raylets) if prev == HostState.LOST else []
            key = new_key()
            self.links[req.host] = AgentLink(
                url=req.url.rstrip("/"),
                key=key,
                last_seen=self.clock(),
                cpus=req.cpus,
                memory_bytes=req.memory_bytes,
                report=RayletReport(boot=req.report.boot, seq=req.report.seq, raylets=[]),
            )
            if not stale:
                self._take_report(req.host, req.report)
            self._set_state(req.host, after_register(prev, drain_requested), "registered")
        return Registered(
            key=key,
            platform_id=self.platform_id,
            heartbeat_s=self.heartbeat_s,
            lost_after_s=self.lost_after_s,
            stale=stale,
        )

    def heartbeat(self, req: Heartbeat) -> HeartbeatReply:
        with self._mu:
            link = self.links.get(req.host)
            state = self.states.get(req.host, HostState.PENDING)
            if link is None or state == HostState.LOST or link.report.boot != req.report.boot:
                # The server restarted, the host was written off, or the agent restarted
                # without registering: its session is gone; it registers (again).
                return HeartbeatReply(state=state.value, reregister=True)
            link.last_seen = self.clock()
            self._take_report(req.host, req.report)
            return HeartbeatReply(state=state.value)

    def _take_report(self, host: str, report: RayletReport) -> None:
        link = self.links[host]
        old = link.report
        if report.boot != old.boot or report.seq >= old.seq:
            link.report = report

    # -- loss and drain ----------------------------------------------------------------------
    def expire(self) -> list[str]:
        """Mark hosts whose agent is silent for ``lost_after_s`` LOST; the ones marked now."""
        now = self.clock()
        out = []
        with self._mu:
            for name, link in list(self.links.items()):
                state = self.states[name]
                if state.alive and is_lost(link.last_seen, now, self.lost_after_s):
                    silent = now - link.last_seen
                    self._set_state(name, HostState.LOST, f"no heartbeat for {silent:.1f} s")
                    out.append(name)
        return out

    def drain(self, name: str, on: bool) -> HostState:
        """Start (``on``) or end a drain; a LOST or PENDING host keeps its state (the drain
        applies when it registers)."""
        with self._mu:
            state = self.states[name]
            if on and state == HostState.READY:
                self._set_state(name, HostState.DRAINING, "drain")
            elif not on and state in (HostState.DRAINING, HostState.DRAINED):
                self._set_state(name, HostState.READY, "undrain")
            return self.states[name]

    def drained(self, name: str, empty: bool) -> None:
        """A draining host found empty (or a drained one found holding a lease again)."""
        with self._mu:
            state = self.states[name]
            if empty and state == HostState.DRAINING:
                self._set_state(name, HostState.DRAINED, "nothing left on it")
            elif not empty and state == HostState.DRAINED:
                self._set_state(name, HostState.DRAINING, "a lease is still on it")

    # -- raylets -----------------------------------------------------------------------------
    def _call(self, host: str, path: str, body: dict[str, Any], timeout: float) -> RayletReport:
        with self._mu:
            link = self.links.get(host)
            state = self.states.get(host)
        if link is None or state is None or not state.alive:
            raise Unavailable(f"host {host} has no live agent (state {state and state.value})")
        data = json.dumps(body).encode()
        headers = {"content-type": "application/json", **sign(link.key, "POST", path, data)}
        try:
            resp = self._http.post(link.url + path, content=data, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise Unavailable(f"agent of host {host} at {link.url}: {exc}") from exc
        if resp.status_code != 200:
            try:
                why = resp.json().get("error", resp.text)
            except ValueError:
                why = resp.text
            raise FastGPUError(f"agent of host {host}: {resp.status_code} {str(why)[:2000]}")
        report = RayletReport.model_validate(resp.json())
        with self._mu:
            if host in self.links and self.links[host] is link:
                self._take_report(host, report)
        return report

    def start_raylet(
        self,
        cluster: TenantCluster,
        lease_id: str,
        host: Host,
        devices: tuple[int, ...],
        cpus: int | None,
    ) -> None:
        spec = cluster.spec
        req = StartRaylet(
            platform_id=spec.platform_id,
            tenant_id=spec.tenant_id,
            lease_id=lease_id,
            gpu_type=host.gpu_type,
            devices=list(devices),
            cpus=cpus if cpus is not None else len(devices),
            address=cluster.address,
            ray_token=cluster.token_path.read_text().strip(),
            storage=str(spec.storage),
        )
        self._call(host.name, "/v1/raylets/start", req.model_dump(), START_TIMEOUT_S)

    def stop_raylet(self, cluster: TenantCluster, key: RayletKey, grace_s: float) -> int:
        lease_id, host, part = key
        req = StopRaylet(
            platform_id=cluster.spec.platform_id,
            tenant_id=cluster.spec.tenant_id,
            lease_id=lease_id,
            part=part,
            grace_s=grace_s,
        )
        try:
            self._call(host, "/v1/raylets/stop", req.model_dump(), grace_s + 30)
        except Unavailable:
            return 0  # a lost host: its raylets are stopped when it comes back
        return 1

    def refresh(self, host: str) -> RayletReport:
        """Ask the agent what runs now (a signed list request)."""
        return self._call(host, "/v1/raylets/list", {}, 10.0)

    def running_raylets(self, platform_id: str, tenant_id: str | None = None) -> RayletMap:
        del platform_id  # an agent runs one platform's raylets
        out: RayletMap = {}
        with self._mu:
            for name, link in self.links.items():
                if not self.states[name].alive:
                    continue
                for r in link.report.raylets:
                    if tenant_id is None or r.tenant_id == tenant_id:
                        key = (r.lease_id, name, r.part)
                        out[(r.tenant_id, key)] = tuple(r.devices)
        return out

    def report(self, name: str) -> list[RunningRaylet]:
        with self._mu:
            link = self.links.get(name)
            return list(link.report.raylets) if link else []

    def close(self) -> None:
        self._http.close()
