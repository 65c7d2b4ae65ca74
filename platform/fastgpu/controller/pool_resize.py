"""How an elastic lease's raylets follow a resize: which to keep, which to stop, what to start.

A raylet's GPUs are fixed when it starts (``--num-gpus``, ``CUDA_VISIBLE_DEVICES``), so a lease
on the pool is a set of *parts*: raylets, each named by (host, first device). Growing adds a
part for the new devices and leaves the running ones alone; shrinking stops whole parts, after a
grace for the workload's checkpoint (the devices are *drained*). When no set of whole parts
adds up to what the lease keeps on a host, one part is *split*: it is drained too, and a new
part with the devices the lease keeps starts once it has stopped.

Devices whose raylet died are dropped first (they hold nothing); a lease told to keep more than
what runs restarts them. Among live parts, a shrink keeps the *busy* ones (a live actor of the
workload runs there: a Serve replica, a Train worker) and stops idle ones first, so that what
the workload kept keeps running, even at the cost of splitting an idle part; when that keeps
no more busy parts, whole parts win (the fewest, then the lowest device ids), as with no busy
part at all.

Pure: no processes, no locks. :func:`plan_resize` says what to do; the pool backend does it
(:func:`busy_parts` reads which parts are busy from what the tenant's keeper reports).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

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


def _subset_with_sum(
    parts: list[tuple[int, int]], total: int, busy: Collection[int] = ()
) -> list[int] | None:
    """Indexes of parts (part, size) whose sizes add up to ``total``: the most busy parts
    first, then the fewest parts, then the first in order."""
    best: tuple[tuple[int, int], list[int]] | None = None
    for n in range(len(parts) + 1):
        for combo in combinations(range(len(parts)), n):
            if sum(parts[i][1] for i in combo) == total:
                rank = (-sum(1 for i in combo if parts[i][0] in busy), n)
                if best is None or rank < best[0]:
                    best = (rank, list(combo))
    return None if best is None else best[1]


def _fill(parts: list[tuple[int, int]], total: int, busy: Collection[int]) -> tuple[list[int], int]:
    """The parts (part, size) a split keeps whole, and their GPUs (at most ``total``): the busy
    parts that fit, the small first (as many as fit), then the largest idle ones. Every part
    left out is larger than what is still missing, so splitting any of them makes up
    ``total``."""

    def order(ps: tuple[int, int]) -> tuple[bool, int, int]:
        part, size = ps
        return (part not in busy, size if part in busy else -size, part)

    kept, got = [], 0
    for part, size in sorted(parts, key=order):
        if got + size <= total:
            kept.append(part)
            got += size
    return kept, got


def plan_resize(
    have: Mapping[str, tuple[int, ...]],
    parts: Mapping[tuple[str, int], tuple[int, ...]],
    want: Mapping[str, int],
    busy: Collection[tuple[str, int]] = (),
) -> ResizePlan:
    """``have``: the lease's devices per host; ``parts``: its live raylets (host, part) ->
    devices; ``want``: GPUs per host after the resize (the policy's placement); ``busy``: the
    parts (host, part) where the workload runs now (kept rather than idle ones; empty: not
    known, the order alone decides)."""
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
        on_host = {part for h, part in busy if h == host}
        kept, total = _fill(mine, k, on_host)
        # Whole parts that add up to k need no restart: they win unless they keep fewer busy
        # parts than a split does.
        chosen = _subset_with_sum(mine, k, on_host)
        if chosen is not None and len(on_host & {mine[i][0] for i in chosen}) >= len(
            on_host & set(kept)
        ):
            whole = [mine[i][0] for i in chosen]
            plan.drain += [(host, part) for part, _ in mine if part not in whole]
            if k:
                plan.keep[host] = tuple(sorted(d for p in whole for d in by_part[p]))
            continue
        # Split the first part left out: it stops like the others; its kept devices start again.
        split = next(p for p, _ in sorted(mine, key=lambda ps: ps[0]) if p not in kept)
        restarted = tuple(sorted(by_part[split])[: k - total])
        plan.drain += [(host, part) for part, _ in mine if part not in kept]
        plan.restart[host] = restarted
        plan.keep[host] = tuple(sorted([d for p in kept for d in by_part[p]] + list(restarted)))
    return plan


def busy_parts(
    nodes: list[dict[str, Any]],
    parts: Mapping[tuple[str, int], tuple[int, ...]],
    stopping: Collection[str] = (),
) -> set[tuple[str, int]]:
    """The parts (host, part) among ``parts`` where the workload runs: the keeper's ``actors``
    answer (the lease's raylets, each with its live actors), less the actors the workload is
    stopping already (``stopping``: they hold nothing it keeps). A raylet without its part
    label (started by an older server) is its host's part when the lease has one there."""
    out: set[tuple[str, int]] = set()
    for node in nodes:
        host, part = node.get("host"), node.get("part")
        if not host or not set(node.get("actors") or ()) - set(stopping):
            continue
        if part is None:
            on_host = [p for h, p in parts if h == host]
            part = on_host[0] if len(on_host) == 1 else None
        if part is not None and (host, part) in parts:
            out.add((host, part))
    return out
