"""A mutable free-GPU map of one GPU type with fast gang placement, for use inside one cycle.

Responsibility: answer "where would N GPUs go now" in time independent of the node count for
the common strategies, so that a cycle over thousands of nodes and requests stays cheap.

Invariants:

* ``place`` returns exactly what :func:`fastgpu.scheduler.placement.place` returns for the same
  free map (best fit, ties on node id); a property test holds the two together. SPREAD, rare and
  order-sensitive, simply delegates to ``placement.place``.
* ``free[n]`` is always in ``0..capacity of n`` and ``total`` is the sum of ``free``.

Nodes are bucketed by their free count; each bucket is a sorted list of node ids, so best fit is
"the first node of the smallest bucket >= N".
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping

from fastgpu.scheduler.placement import place as reference_place


class FreePool:
    __slots__ = ("_buckets", "free", "total")

    def __init__(self, free_by_node: Mapping[str, int], max_per_node: int | None = None) -> None:
        self.free: dict[str, int] = {n: f for n, f in free_by_node.items() if f > 0}
        top = max([*self.free.values(), max_per_node or 0, 0])
        self._buckets: list[list[str]] = [[] for _ in range(top + 1)]
        for node, f in sorted(self.free.items()):
            self._buckets[f].append(node)
        self.total = sum(self.free.values())

    def copy(self) -> FreePool:
        clone = FreePool.__new__(FreePool)
        clone.free = dict(self.free)
        clone._buckets = [list(b) for b in self._buckets]
        clone.total = self.total
        return clone

    @property
    def max_free(self) -> int:
        for f in range(len(self._buckets) - 1, 0, -1):
            if self._buckets[f]:
                return f
        return 0

    def _move(self, node: str, old: int, new: int) -> None:
        if old > 0:
            bucket = self._buckets[old]
            del bucket[bisect_left(bucket, node)]
        if new > 0:
            if new >= len(self._buckets):
                self._buckets.extend([] for _ in range(new + 1 - len(self._buckets)))
            insort(self._buckets[new], node)
            self.free[node] = new
        else:
            self.free.pop(node, None)
        self.total += new - old

    def take(self, placement: Mapping[str, int]) -> None:
        for node, n in placement.items():
            if n:
                old = self.free.get(node, 0)
                if n > old:
                    raise ValueError(f"node {node} has {old} free GPUs; cannot take {n}")
                self._move(node, old, old - n)

    def give(self, placement: Mapping[str, int]) -> None:
        for node, n in placement.items():
            if n:
                old = self.free.get(node, 0)
                self._move(node, old, old + n)

    def could_place(self, gpus: int, strategy: str) -> bool:
        """Whether :meth:`place` would find a placement, without building it (exact: PACK
        and SPREAD place whenever enough GPUs are free, STRICT_PACK needs one node)."""
        if gpus > self.total:
            return False
        if strategy == "STRICT_PACK":
            return self.max_free >= gpus
        return True

    def place(self, gpus: int, strategy: str) -> dict[str, int] | None:
        if gpus <= 0 or gpus > self.total:
            return None
        if strategy == "SPREAD":
            return reference_place(gpus, strategy, self.free)
        for f in range(gpus, len(self._buckets)):
            if self._buckets[f]:
                return {self._buckets[f][0]: gpus}
        if strategy == "STRICT_PACK":
            return None
        out: dict[str, int] = {}
        remaining = gpus
        for f in range(len(self._buckets) - 1, 0, -1):
            for node in self._buckets[f]:
                take = min(f, remaining)
                out[node] = take
                remaining -= take
                if not remaining:
                    return out
        return None  # unreachable: total >= gpus
