"""In-memory stand-ins for the controller's seams (backend, clock) for stepping tests.

Integration tests run the real backend (the pool's); these make the controller's decisions
deterministic and instant so tests can step ``tick()`` and assert on state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastgpu.controller.backend import GroupInfo, NodeInfo


@dataclass
class FakeClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeBackend:
    node_list: list[NodeInfo] = field(default_factory=list)
    group_table: dict[str, GroupInfo] = field(default_factory=dict)
    #: Groups that become ready on the next ``ready`` call (all, unless ``hold`` is set).
    hold: bool = False
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    handed_over: list[str] = field(default_factory=list)
    fail_next_create: bool = False
    resized: list[tuple[str, list[str]]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    #: What ``held_after`` reports next (GPUs held past a shrink).
    held: list[tuple[str, int, float, float]] = field(default_factory=list)

    def nodes(self) -> list[NodeInfo]:
        return list(self.node_list)

    def create_group(
        self,
        name: str,
        bundle: dict[str, float],
        node_ids: list[str],
        strategy: str,
        may_exist: bool = True,
        tenant: str = "",
    ) -> str:
        if self.fail_next_create:
            self.fail_next_create = False
            raise RuntimeError("simulated crash between commit and create")
        if name not in self.group_table:
            self.group_table[name] = GroupInfo(name, f"id-{name}", "PENDING", "", tuple(node_ids))
            self.created.append(name)
        return self.group_table[name].group_id

    def remove_group(self, name: str, group_id: str | None = None) -> None:
        if self.group_table.pop(name, None) is not None:
            self.removed.append(name)

    def hand_over(self, name: str, group_id: str | None = None) -> None:
        """As the pool's: the workload takes the lease, whose GPUs stay in the table."""
        self.handed_over.append(name)

    def resize(self, name: str, nodes: list[str]) -> None:
        self.resized.append((name, list(nodes)))

    def checkpointed(self, name: str) -> None:
        self.checkpoints.append(name)

    def held_after(self) -> list[tuple[str, int, float, float]]:
        out, self.held = self.held, []
        return out

    def groups(self) -> dict[str, GroupInfo]:
        return dict(self.group_table)

    def ready(self, names: list[str], timeout_s: float = 0.0) -> set[str]:
        if self.hold:
            return set()
        out = set()
        for name in names:
            g = self.group_table.get(name)
            if g is not None:
                self.group_table[name] = GroupInfo(
                    g.name, g.group_id, "CREATED", "", g.bundle_nodes
                )
                out.add(name)
        return out
