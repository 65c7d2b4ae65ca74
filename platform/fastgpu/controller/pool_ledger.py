"""The pool backend's book of devices: which lease holds which, and which are being handed back.

A *reservation* is a lease's devices per host and the state of its start. A *drain* is devices
leaving a lease (released, preempted, shrunk): their raylets run until the drain ends (at once
for a release; after the grace, or the workload's next checkpoint, for a shrink). Drained
devices are free to the policy at once, but a start that is given one waits for its drain to
end, so a device never has two raylets (two tenants' processes on one GPU).

Invariants: no device is in two reservations; a start never begins on a device in a drain that
has not ended; every method takes the book's lock (``lock``), which the backend shares for its
own conditions.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastgpu.controller.backend import GROUP_PREFIX
from fastgpu.errors import Conflict
from fastgpu.pool.hosts import Host, pick_devices


@dataclass
class Reservation:
    lease_id: str
    tenant_id: str
    devices: dict[str, tuple[int, ...]]
    gpu_type: str
    state: str = "starting"  # starting | ready | failed | adopted
    group_id: str = ""
    error: str = ""
    cancelled: bool = False
    done: cf.Future[bool] = field(default_factory=cf.Future)
    #: (host, device) whose raylet is being started by a resize: not missing meanwhile.
    starting: set[tuple[str, int]] = field(default_factory=set)
    #: Drains whose devices this reservation's start was given: it waits for them.
    waits: list[Drain] = field(default_factory=list)

    @property
    def name(self) -> str:
        return GROUP_PREFIX + self.lease_id

    @property
    def gpus(self) -> int:
        return sum(len(ids) for ids in self.devices.values())


@dataclass
class Drain:
    lease_id: str
    tenant_id: str
    devices: dict[str, tuple[int, ...]]
    #: time.monotonic() when the raylets stop at the latest.
    deadline: float
    #: Whether the tenant pays for the drain (a shrink: its workload still runs there; not a
    #: release, which the tenant ended).
    metered: bool = False
    #: time.time() when the drain began.
    began: float = field(default_factory=time.time)
    #: Set when the raylets may stop before the deadline (a checkpoint, the lease ended).
    early: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def wait_due(self) -> None:
        self.early.wait(max(0.0, self.deadline - time.monotonic()))

    @property
    def gpus(self) -> int:
        return sum(len(ids) for ids in self.devices.values())

    def covers(self, devices: Mapping[str, tuple[int, ...]]) -> bool:
        return any(set(ids) & set(self.devices.get(h, ())) for h, ids in devices.items())


class DeviceLedger:
    def __init__(self, hosts: Mapping[str, Host]) -> None:
        self.hosts = hosts
        self.lock = threading.Lock()
        self.reservations: dict[str, Reservation] = {}
        self._drains: list[Drain] = []
        #: Metered drains that ended: (lease, GPUs, began, ended), wall clock.
        self._held_after: list[tuple[str, int, float, float]] = []

    @staticmethod
    def _devices(groups: list[dict[str, tuple[int, ...]]]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for devices in groups:
            for host, ids in devices.items():
                out.setdefault(host, set()).update(ids)
        return out

    def pick(
        self, counts: Mapping[str, int], exclude: str = ""
    ) -> tuple[dict[str, tuple[int, ...]], list[Drain]]:
        """Free devices for ``counts`` (host -> GPUs), preferring devices no drain holds; with
        the drains a start on them must wait for. Raises Conflict when a host has too few.
        Call with ``lock`` held."""
        held = [r.devices for r in self.reservations.values() if r.lease_id != exclude]
        taken = self._devices(held)
        draining = self._devices([d.devices for d in self._drains])
        busy = {h: taken.get(h, set()) | draining.get(h, set()) for h in set(taken) | set(draining)}
        try:
            return pick_devices(self.hosts, counts, busy), []
        except Conflict:
            devices = pick_devices(self.hosts, counts, taken)
            return devices, [d for d in self._drains if d.covers(devices)]

    def drain(
        self,
        lease_id: str,
        tenant_id: str,
        devices: Mapping[str, tuple[int, ...]],
        grace_s: float,
        metered: bool = False,
    ) -> Drain:
        """Record devices leaving a lease; their raylets stop within ``grace_s``. Call with
        ``lock`` held."""
        drain = Drain(
            lease_id,
            tenant_id,
            {h: tuple(ids) for h, ids in devices.items() if ids},
            time.monotonic() + grace_s,
            metered,
        )
        self._drains.append(drain)
        return drain

    def drained(self, drain: Drain) -> None:
        """The drain's raylets have stopped: its devices may start for someone else."""
        with self.lock:
            if drain in self._drains:
                self._drains.remove(drain)
                if drain.metered and drain.gpus:
                    self._held_after.append((drain.lease_id, drain.gpus, drain.began, time.time()))
        drain.early.set()
        drain.finished.set()

    def draining(self, devices: Mapping[str, tuple[int, ...]]) -> list[Drain]:
        """The drains holding any of ``devices``: a raylet started for them waits until those
        have stopped theirs. Call with ``lock`` held."""
        return [d for d in self._drains if d.covers(devices)]

    def hurry(self, lease_id: str) -> int:
        """End the grace of the lease's drains now (the workload checkpointed, or the lease
        ended); how many there were."""
        with self.lock:
            mine = [d for d in self._drains if d.lease_id == lease_id]
        for d in mine:
            d.early.set()
        return len(mine)

    def take_held_after(self) -> list[tuple[str, int, float, float]]:
        """Metered drains that ended since the last call (the controller records them)."""
        with self.lock:
            out, self._held_after = self._held_after, []
        return out
