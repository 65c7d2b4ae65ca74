"""The pool's inventory: hosts, their typed GPU devices, and which devices a lease holds.

Vocabulary: a *host* is a machine (or, on one machine, a disjoint set of its devices presented
as a host); a *device* is one GPU on it, named by the id ``CUDA_VISIBLE_DEVICES`` takes. An
*assignment* maps host name -> device ids for one lease. Invariant (checked by
:func:`pick_devices`): no device is in two live assignments.

Pure: no Ray, no processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fastgpu.config import HostSpec, PlatformConfig, PoolSpec
from fastgpu.errors import Conflict

Assignment = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Host:
    name: str
    gpu_type: str
    devices: tuple[int, ...]
    alive: bool = True
    #: False while draining or drained: its raylets run on, but nothing new is placed there.
    schedulable: bool = True

    @property
    def total_gpus(self) -> int:
        return len(self.devices)


def hosts_from_spec(spec: PoolSpec) -> list[Host]:
    return [Host(h.name, h.gpu_type, tuple(h.devices)) for h in spec.hosts]


def default_pool_spec(gpus: int, nodes: int, gpu_type: str) -> PoolSpec:
    """What ``fastgpu up --gpus N --nodes M --gpu-type T`` describes: M hosts of N/M logical
    devices each, with disjoint ids."""
    if nodes < 1 or gpus < nodes or gpus % nodes:
        raise ValueError(f"--gpus {gpus} must be a positive multiple of --nodes {nodes}")
    per = gpus // nodes
    return PoolSpec(
        hosts=[
            HostSpec(
                name=f"host-{i}", gpu_type=gpu_type, devices=list(range(i * per, (i + 1) * per))
            )
            for i in range(nodes)
        ]
    )


def pool_hosts(config: PlatformConfig, gpus: int, nodes: int, gpu_type: str) -> list[Host]:
    return hosts_from_spec(config.pool or default_pool_spec(gpus, nodes, gpu_type))


def taken_devices(assignments: Iterable[Assignment]) -> dict[str, set[int]]:
    taken: dict[str, set[int]] = {}
    for assignment in assignments:
        for host, ids in assignment.items():
            clash = taken.setdefault(host, set()) & set(ids)
            if clash:
                raise Conflict(f"devices {sorted(clash)} of host {host} are in two leases")
            taken[host] |= set(ids)
    return taken


def pick_devices(
    hosts: Mapping[str, Host], counts: Mapping[str, int], taken: Mapping[str, set[int]]
) -> dict[str, tuple[int, ...]]:
    """Free device ids for ``counts`` (host -> GPUs), lowest ids first; raise Conflict when a
    host has fewer free devices than asked (the policy's view and the ledger disagree)."""
    out: dict[str, tuple[int, ...]] = {}
    for name, count in sorted(counts.items()):
        if count <= 0:
            continue
        host = hosts.get(name)
        if host is None or not host.alive:
            raise Conflict(f"host {name} is not in the pool or not alive")
        free = [d for d in host.devices if d not in taken.get(name, set())]
        if len(free) < count:
            raise Conflict(f"host {name} has {len(free)} free GPUs; {count} asked")
        out[name] = tuple(free[:count])
    return out
