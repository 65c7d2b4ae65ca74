"""How an elastic lease's raylets follow a resize: which to keep, which to stop, what to start.

A raylet's GPUs are fixed when it starts (``--num-gpus``, ``CUDA_VISIBLE_DEVICES``), so a lease
on the pool is a set of *parts*: raylets, each named by (host, first device). Growing adds a
part for the new devices and leaves the running ones alone; shrinking stops whole parts, after a
grace for the workload's checkpoint (the devices are *drained*). When no set of whole parts
adds up to what the lease keeps on a host, one part is *split*: it is drained too, and a new
part with the devices the lease keeps starts once it has stopped.

Devices whose raylet died are dropped first (they hold nothing); a lease told to keep more than
what runs restarts them.

Pure: no processes, no locks. :func:`plan_resize` says what to do; the pool backend does it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

#: host -> device ids
Devices = dict[str, tuple[int, ...]]


@dataclass
class ResizePlan:
    #: What the lease holds once the plan is done, apart from ``grow`` (devices it still has to
    #: be given): host -> devices.
    keep: Devices = field(default_factory=dict)
    #: New devices wanted per host (the backend picks free ones).
    grow: dict[str, int] = field(default_factory=dict)
    #: Parts (host, part) to stop after the grace: their devices leave the lease, apart from
    #: those in ``restart``.
    drain: list[tuple[str, int]] = field(default_factory=list)
    #: Devices the lease keeps that need a raylet started for them: after ``drain`` (a split
    #: part's kept devices) or at once (their raylet died).
    restart: Devices = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.grow or self.drain or self.restart)


def _subset_with_sum(parts: list[tuple[int, int]], total: int) -> list[int] | None:
    """Indexes of parts (part, size) whose sizes add up to ``total``, fewest parts first."""
    for n in range(len(parts) + 1):
        for combo in combinations(range(len(parts)), n):
            if sum(parts[i][1] for i in combo) == total:
                return list(combo)
    return None


def plan_resize(
    have: Mapping[str, tuple[int, ...]],
    parts: Mapping[tuple[str, int], tuple[int, ...]],
    want: Mapping[str, int],
) -> ResizePlan:
    """``have``: the lease's devices per host; ``parts``: its live raylets (host, part) ->
    devices; ``want``: GPUs per host after the resize (the policy's placement)."""
    plan = ResizePlan()
    for host in sorted(set(have) | set(want)):
        held = tuple(sorted(have.get(host, ())))
        k = want.get(host, 0)
        mine = [
            (part, len(ids))
            for (h, part), ids in sorted(parts.items())
            if h == host and set(ids) <= set(held)
        ]
        live = {d for (h, part), ids in parts.items() if h == host for d in ids} & set(held)
        dead = [d for d in held if d not in live]
        if k >= len(held):
            if held:
                plan.keep[host] = held
            if k > len(held):
                plan.grow[host] = k - len(held)
            if dead:
                plan.restart[host] = tuple(dead)
            continue
        if k >= len(live):  # dropping dead devices is enough; restart the rest of them
            kept_dead = tuple(dead[: k - len(live)])
            if k:
                plan.keep[host] = tuple(sorted(live | set(kept_dead)))
            if kept_dead:
                plan.restart[host] = kept_dead
            continue
        by_part = {part: parts[(host, part)] for part, _ in mine}
        chosen = _subset_with_sum(mine, k)
        if chosen is not None:
            kept = [mine[i][0] for i in chosen]
            plan.drain += [(host, part) for part, _ in mine if part not in kept]
            if k:
                plan.keep[host] = tuple(sorted(d for p in kept for d in by_part[p]))
            continue
        # No whole parts add up to k: keep the largest parts that fit, split the next one.
        kept, total = [], 0
        for part, size in sorted(mine, key=lambda ps: (-ps[1], ps[0])):
            if total + size <= k:
                kept.append(part)
                total += size
        split = next(p for p, _ in sorted(mine, key=lambda ps: ps[0]) if p not in kept)
        restarted = tuple(sorted(by_part[split])[: k - total])
        plan.drain += [(host, part) for part, _ in mine if part not in kept]
        plan.restart[host] = restarted
        plan.keep[host] = tuple(sorted([d for p in kept for d in by_part[p]] + list(restarted)))
    return plan
