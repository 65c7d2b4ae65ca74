"""Gang placement of N GPUs over nodes' free GPUs, per Ray placement strategy.

``place`` returns node id -> GPUs (summing to exactly N) or None when it does not fit now.
Best fit keeps large holes open for large requests; ties break on node id for determinism.
"""

from __future__ import annotations

from collections.abc import Mapping


def place(gpus: int, strategy: str, free_by_node: Mapping[str, int]) -> dict[str, int] | None:
    free = {n: f for n, f in free_by_node.items() if f > 0}
    if sum(free.values()) < gpus:
        return None
    fitting = sorted((f, n) for n, f in free.items() if f >= gpus)
    if strategy == "STRICT_PACK":
        return {fitting[0][1]: gpus} if fitting else None
    if strategy == "SPREAD":
        out: dict[str, int] = {}
        left = dict(free)
        remaining = gpus
        while remaining:
            # One GPU per node per round, largest free first.
            for node in sorted(left, key=lambda n: (-left[n], n)):
                if not remaining:
                    break
                if left[node] > 0:
                    out[node] = out.get(node, 0) + 1
                    left[node] -= 1
                    remaining -= 1
        return out
    # PACK: one node if any fits, else fill the emptiest nodes first.
    if fitting:
        return {fitting[0][1]: gpus}
    out = {}
    remaining = gpus
    for node in sorted(free, key=lambda n: (-free[n], n)):
        take = min(free[node], remaining)
        out[node] = take
        remaining -= take
        if not remaining:
            break
    return out


def could_ever_fit(gpus: int, strategy: str, total_by_node: Mapping[str, int]) -> bool:
    """Whether an empty cluster could hold the request (else it is infeasible)."""
    return place(gpus, strategy, total_by_node) is not None
