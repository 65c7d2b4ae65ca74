"""Agent-run hosts as the controller keeps them: tokens, registration, loss, drain.

* ``fastgpu host add NAME`` makes a token, shown once; the store keeps its SHA-256 only. An
  agent proves it is host NAME with that token (register, heartbeat).
* Loss: each pass asks the pool which hosts were silent for ``pool.agents.lost_after_s``
  (:meth:`RemotePool.expire`) and, when one was just lost, reconciles at once: the lease
  policy of :mod:`fastgpu.controller.reconcile` decides (a bound elastic lease shrinks to its
  surviving raylets; any other fails ``node_lost``, which a job's retry policy may re-queue).
* Drain: the store keeps it (it survives the host's loss and the server's restart). Each pass
  tells the leases still on a draining host to leave: a bound elastic lease that keeps its
  minimum elsewhere shrinks off it (its workload checkpoints, then the raylets there stop);
  any other is announced for preemption with ``scheduler.grace_s`` (capped by the drain's
  deadline). When nothing of a lease is left there, the host is DRAINED (``drained_at``).

Runs with the controller's lock held (a tick hook); the agents' calls take it only to read.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

from fastgpu.auth import hash_token, new_token
from fastgpu.config import PlatformConfig
from fastgpu.controller.apply import announce_preemption
from fastgpu.controller.clusters import platform_of
from fastgpu.domain.agent_protocol import Heartbeat, HeartbeatReply, Register, Registered
from fastgpu.domain.host import HostRecord, HostState
from fastgpu.domain.lease import HOLDING_STATES, LeaseState
from fastgpu.errors import AuthenticationError, NotFound
from fastgpu.pool.hosts import hosts_from_spec
from fastgpu.pool.remote import RemotePool
from fastgpu.pool.seam import LocalPool, Pool

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller
    from fastgpu.domain.lease import Lease

log = logging.getLogger(__name__)


class HostController:
    def __init__(self, ctl: Controller, pool: RemotePool) -> None:
        self.ctl = ctl
        self.pool = pool
        #: host -> token hash, read once from the store (heartbeats cost no store read).
        self._hashes: dict[str, str] = {}
        #: (wall time, host, previous state, new state) of every change, newest last.
        self.events: list[tuple[float, str, str, str]] = []
        pool.on_change = self._changed
        ctl.tick_hooks.append(self.tick)

    def _changed(self, host: str, prev: HostState, new: HostState) -> None:
        self.events.append((time.time(), host, prev.value, new.value))
        self.ctl.nodes_changed()
        del self.events[:-1000]

    # -- tokens --------------------------------------------------------------------------------
    def add(self, name: str) -> str:
        """Declare a host an agent may register as; its token, to show once."""
        token = new_token()
        self.ctl.store.add_host(HostRecord(name, hash_token(token), time.time()))
        return token

    def _check(self, name: str, token: str) -> HostRecord | None:
        want = self._hashes.get(name)
        rec = None
        if want is None:
            rec = self.ctl.store.get_host(name)
            want = rec.token_hash if rec else ""
        if not want or not hmac.compare_digest(want, hash_token(token)):
            raise AuthenticationError(
                f"not host {name}'s token: use the token `fastgpu host add {name}` printed"
            )
        self._hashes[name] = want
        return rec

    # -- agents' calls ----------------------------------------------------------------------------
    def register(self, token: str, req: Register) -> Registered:
        self._check(req.host, token)
        rec = self.ctl.store.get_host(req.host)
        drain = bool(rec and rec.drain)
        with self.ctl.lock:  # a pass reads the hosts; a registration changes them
            return self.pool.register(req, drain)

    def heartbeat(self, token: str, req: Heartbeat) -> HeartbeatReply:
        self._check(req.host, token)
        return self.pool.heartbeat(req)

    # -- the pass -------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        from fastgpu.controller.reconcile import reconcile

        if self.pool.expire():
            reconcile(self.ctl)  # the lease policy decides now, not at the next interval
        draining = [
            n for n, s in self.pool.states.items() if s in (HostState.DRAINING, HostState.DRAINED)
        ]
        if not draining:
            return
        records = {r.name: r for r in self.ctl.store.list_hosts()}
        for name in draining:
            rec = records.get(name)
            if rec is not None and rec.drain:
                self._drain_step(rec, now)

    def leases_on(self, host: str) -> list[Lease]:
        return [
            lease
            for lease in self.ctl.live()
            if lease.state in HOLDING_STATES and host in lease.nodes
        ]

    def _drain_step(self, rec: HostRecord, now: float) -> None:
        host = rec.name
        deadline = float(rec.drain.get("requested_at", now)) + float(
            rec.drain.get("deadline_s") or 1e12
        )
        grace = max(0.0, min(self.ctl.config.scheduler.grace_s, deadline - time.time()))
        on = self.leases_on(host)
        for lease in on:
            if lease.preempt_at is not None:
                continue  # already told
            rest = [n for n in lease.nodes if n != host]
            if lease.state == LeaseState.BOUND and rest and len(rest) >= lease.min_gpus:
                self.ctl.resize(lease, rest, f"host {host} is draining: shrunk off it")
            else:
                announce_preemption(
                    self.ctl, lease, "drain", f"host {host} is draining", grace, now
                )
        empty = not on and not self.pool.report(host)
        self.pool.drained(host, empty)
        if empty and not rec.drain.get("drained_at"):
            self.ctl.store.set_host_drain(host, {**rec.drain, "drained_at": time.time()})
            log.info("host %s is drained: nothing of any lease is left on it", host)

    # -- the operator's calls -------------------------------------------------------------------
    def drain(self, name: str, deadline_s: float | None) -> HostState:
        if self.ctl.store.get_host(name) is None:
            raise NotFound(f"host {name!r} not found; `fastgpu host add {name}` declares it")
        drain = {"requested_at": time.time(), "deadline_s": deadline_s, "drained_at": None}
        self.ctl.store.set_host_drain(name, drain)
        with self.ctl.lock:
            return self.pool.drain(name, True) if name in self.pool.states else HostState.PENDING

    def undrain(self, name: str) -> HostState:
        if self.ctl.store.get_host(name) is None:
            raise NotFound(f"host {name!r} not found")
        self.ctl.store.set_host_drain(name, {})
        with self.ctl.lock:
            return self.pool.drain(name, False) if name in self.pool.states else HostState.PENDING

    def views(self) -> list[dict[str, Any]]:
        """Every host: declared (cluster.yaml), added (store) or joined; with its state."""
        records = {r.name: r for r in self.ctl.store.list_hosts()}
        with self.ctl.lock:
            names = sorted(set(records) | set(self.pool.hosts))
            live = {n: self.leases_on(n) for n in names}
            out = []
            for name in names:
                host = self.pool.hosts.get(name)
                link = self.pool.links.get(name)
                rec = records.get(name)
                out.append(
                    {
                        "name": name,
                        "state": self.pool.states.get(name, HostState.PENDING).value,
                        "gpu_type": host.gpu_type if host else None,
                        "devices": list(host.devices) if host else [],
                        "token_issued": rec is not None,
                        "agent_url": link.url if link else None,
                        "cpus": link.cpus if link else None,
                        "memory_bytes": link.memory_bytes if link else None,
                        "last_heartbeat_s_ago": (
                            round(self.pool.clock() - link.last_seen, 2) if link else None
                        ),
                        "raylets": len(self.pool.report(name)),
                        "leases": sorted(lease.id for lease in live[name]),
                        "drain": dict(rec.drain) if rec else {},
                    }
                )
        return out


def make_pool(config: PlatformConfig) -> Pool:
    """The pool ``config`` describes: agents' hosts (``pool.agents`` set) or this machine's."""
    spec = config.pool
    assert spec is not None
    if spec.agents is None:
        return LocalPool(hosts_from_spec(spec))
    return RemotePool(
        hosts_from_spec(spec),
        heartbeat_s=spec.agents.heartbeat_s,
        lost_after_s=spec.agents.lost_after_s,
        platform_id=platform_of(config),
    )


def host_controller(ctl: Controller) -> HostController | None:
    """The controller of agent-run hosts, made once, when the backend's pool is agents'."""
    pool = getattr(ctl.backend, "pool", None)
    if not isinstance(pool, RemotePool):
        return None
    existing = getattr(ctl, "_host_controller", None)
    if existing is None:
        existing = HostController(ctl, pool)
        ctl._host_controller = existing  # type: ignore[attr-defined]
    return existing
