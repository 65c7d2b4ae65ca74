"""The controller's window on Ray: nodes and placement groups, behind a small interface.

The server is an ordinary Ray driver outside the cluster's workers; these calls go to the GCS.

:class:`RayBackend` is the real one; tests of controller logic may pass any object with the
same methods (the seam), but integration tests always run the real one on a local cluster.
Placement groups are named ``fastgpu-lease-<lease id>``, detached, one bundle per GPU, each
bundle pinned to the node the policy chose (``bundle_label_selector`` on ``ray.io/node-id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastgpu.config import GpuTypeSpec
from fastgpu.domain.lease import GPU_TYPE_LABEL

GROUP_PREFIX = "fastgpu-lease-"
NODE_ID_LABEL = "ray.io/node-id"


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
    #: Ray's state: PENDING, CREATED, REMOVED or RESCHEDULING; FAILED: it could not be made
    #: (the pool's backend: a raylet did not start; RESCHEDULING there: a raylet died).
    state: str
    #: INFEASIBLE, NO_RESOURCES, ... while pending.
    scheduling_state: str
    bundle_nodes: tuple[str, ...]
    #: Why it is FAILED or RESCHEDULING, in words (the pool's backend says; Ray does not).
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
    def remove_group(
        self, name: str, group_id: str | None = None, handed_over: bool = False
    ) -> None: ...
    def hand_over(self, name: str, group_id: str | None = None) -> None: ...
    def resize(self, name: str, nodes: list[str]) -> None: ...
    def checkpointed(self, name: str) -> None: ...
    def groups(self) -> dict[str, GroupInfo]: ...
    def ready(self, names: list[str], timeout_s: float = 0.0) -> set[str]: ...


class RayBackend:
    """Talks to the Ray cluster this process is connected to."""

    def __init__(self) -> None:
        self._ready_refs: dict[str, Any] = {}
        self._ids: dict[str, str] = {}

    def group_id(self, name: str) -> str | None:
        """The id of a group this backend created or found (None if unknown)."""
        known = self._ids.get(name)
        if known is None:
            pg = self._lookup(name)
            if pg is not None:
                known = self._ids[name] = str(pg.id.hex())
        return known

    def nodes(self) -> list[NodeInfo]:
        import ray

        out = []
        for n in ray.nodes():
            labels = n.get("Labels") or {}
            resources = n.get("Resources") or {}
            gpus = int(resources.get("GPU", 0))
            gpu_type = labels.get(GPU_TYPE_LABEL)
            if gpu_type is None:
                accel = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
                gpu_type = accel[0] if accel else None
            out.append(NodeInfo(n["NodeID"], gpu_type, gpus, bool(n.get("Alive"))))
        return out

    def create_group(
        self,
        name: str,
        bundle: dict[str, float],
        node_ids: list[str],
        strategy: str,
        may_exist: bool = True,
        tenant: str = "",
    ) -> str:
        """Create the named group unless it exists already (idempotent); return its id.
        (``tenant`` is unused: one shared cluster.)

        ``may_exist=False`` skips the look-up (two GCS round trips) for a lease admitted just
        now, whose group cannot exist yet; reconcile passes True.
        """
        from ray.util.placement_group import placement_group

        if may_exist:
            existing = self._lookup(name)
            if existing is not None:
                return str(existing.id.hex())
        pg = placement_group(
            [dict(bundle) for _ in node_ids],
            strategy=strategy,
            name=name,
            lifetime="detached",
            bundle_label_selector=[{NODE_ID_LABEL: n} for n in node_ids],
        )
        self._ready_refs[name] = pg.ready()
        self._ids[name] = str(pg.id.hex())
        return self._ids[name]

    @staticmethod
    def _lookup(name: str) -> Any:
        from ray.util import get_placement_group
        from ray.util.placement_group import placement_group_table

        try:
            pg = get_placement_group(name)
        except ValueError:
            return None
        info = placement_group_table(pg)
        if not info or info.get("state") == "REMOVED":
            return None
        return pg

    def remove_group(
        self, name: str, group_id: str | None = None, handed_over: bool = False
    ) -> None:
        """Remove the group (no-op if gone or ``handed_over``: a workload's own groups are its
        business). With its id known, skip the look-up by name."""
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        self._ready_refs.pop(name, None)
        if handed_over:
            return
        group_id = group_id or self._ids.get(name)
        self._ids.pop(name, None)
        pg = (
            PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))
            if group_id
            else self._lookup(name)
        )
        if pg is not None:
            remove_placement_group(pg)

    def hand_over(self, name: str, group_id: str | None = None) -> None:
        """A workload takes the lease's GPUs: remove the group so it can make its own there."""
        self.remove_group(name, group_id)

    def resize(self, name: str, nodes: list[str]) -> None:
        """A bound lease changed size: nothing to do in a shared cluster (its group was handed
        over; the workload follows the lease and Ray frees what it stops using)."""

    def checkpointed(self, name: str) -> None:
        """The lease's workload saved a checkpoint: nothing waits for it here."""

    def groups(self) -> dict[str, GroupInfo]:
        from ray.util.placement_group import placement_group_table

        out: dict[str, GroupInfo] = {}
        for gid, info in placement_group_table().items():
            name = info.get("name") or ""
            if not name.startswith(GROUP_PREFIX) or info.get("state") == "REMOVED":
                continue
            nodes = info.get("bundles_to_node_id") or {}
            out[name] = GroupInfo(
                name=name,
                group_id=gid,
                state=info.get("state", ""),
                scheduling_state=(info.get("stats") or {}).get("scheduling_state", ""),
                bundle_nodes=tuple(nodes[k] for k in sorted(nodes)),
            )
        return out

    def ready_future(self, name: str) -> Any:
        """A ``concurrent.futures.Future`` done when the named group is ready (None if the
        group is unknown): an async waiter awaits it without holding a thread."""
        ref = self._ready_refs.get(name)
        if ref is None:
            pg = self._lookup(name)
            if pg is None:
                return None
            ref = self._ready_refs[name] = pg.ready()
        return ref.future()

    def ready(self, names: list[str], timeout_s: float = 0.0) -> set[str]:
        """Which of the named groups are ready, waiting up to ``timeout_s`` for all of them."""
        import ray

        refs = {}
        for name in names:
            ref = self._ready_refs.get(name)
            if ref is None:
                pg = self._lookup(name)
                if pg is None:
                    continue
                ref = self._ready_refs[name] = pg.ready()
            refs[ref] = name
        if not refs:
            return set()
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in done:
            self._ready_refs.pop(refs[ref], None)
        return {refs[r] for r in done}
