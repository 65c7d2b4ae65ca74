"""The controller's window on the GPUs it leases: nodes and leases' groups, behind a small
interface (:class:`Backend`).

:class:`~fastgpu.controller.pool_backend.PoolBackend` is the real one: a node is a host of the
pool, and a lease's group (named ``fastgpu-lease-<lease id>``, one bundle per GPU, each on the
node the policy chose) is raylets in its tenant's own Ray cluster. Tests of controller logic
pass any object with the same methods (the seam: ``tests/unit/fakes.py``); integration tests
run the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastgpu.config import GpuTypeSpec

GROUP_PREFIX = "fastgpu-lease-"


def group_name(lease_id: str) -> str:
    return GROUP_PREFIX + lease_id


def gpu_bundle(spec: GpuTypeSpec | None) -> dict[str, float]:
    """One GPU's bundle of a lease's group: the GPU, plus the CPUs and memory its type
    reserves beside it."""
    bundle: dict[str, float] = {"GPU": 1.0}
    if spec is not None and spec.cpus_per_gpu:
        bundle["CPU"] = spec.cpus_per_gpu
    if spec is not None and spec.memory_per_gpu_gb:
        bundle["memory"] = spec.memory_per_gpu_gb * 1024**3
    return bundle


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    gpu_type: str | None
    total_gpus: int
    alive: bool


@dataclass(frozen=True)
class GroupInfo:
    name: str
    group_id: str
    #: Named as Ray names a placement group's states: PENDING (its raylets are starting),
    #: CREATED (ready), RESCHEDULING (some of its raylets stopped) or FAILED (a raylet did not
    #: start).
    state: str
    #: Why it is still pending, where the backend knows (the pool's says nothing: "").
    scheduling_state: str
    bundle_nodes: tuple[str, ...]
    #: Why it is FAILED or RESCHEDULING, in words.
    detail: str = ""


class Backend(Protocol):
    def nodes(self) -> list[NodeInfo]: ...
    def create_group(
        self,
        name: str,
        bundle: dict[str, float],
        node_ids: list[str],
        strategy: str,
        may_exist: bool = True,
        tenant: str = "",
    ) -> str: ...
    def remove_group(self, name: str, group_id: str | None = None) -> None: ...
    def hand_over(self, name: str, group_id: str | None = None) -> None: ...
    def resize(self, name: str, nodes: list[str]) -> None: ...
    def checkpointed(self, name: str) -> None: ...
    def groups(self) -> dict[str, GroupInfo]: ...
    def ready(self, names: list[str], timeout_s: float = 0.0) -> set[str]: ...
