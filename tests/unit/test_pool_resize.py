"""Which raylets an elastic lease keeps, stops or starts when it is resized (pure plans)."""

from __future__ import annotations

from typing import Any

import pytest

from fastgpu.controller.pool_resize import busy_parts, plan_resize

H0, H1 = "host-0", "host-1"


@pytest.mark.parametrize(
    ("have", "parts", "want", "keep", "grow", "drain", "restart"),
    [
        # grow on the same host and on another: new parts only
        ({H0: (0, 1)}, {(H0, 0): (0, 1)}, {H0: 3, H1: 1}, {H0: (0, 1)}, {H0: 1, H1: 1}, [], {}),
        # shrink by a whole part
        (
            {H0: (0, 1, 2)},
            {(H0, 0): (0, 1), (H0, 2): (2,)},
            {H0: 2},
            {H0: (0, 1)},
            {},
            [(H0, 2)],
            {},
        ),
        # shrink inside one part: split it (drain it, restart what is kept)
        (
            {H0: (0, 1, 2, 3)},
            {(H0, 0): (0, 1, 2, 3)},
            {H0: 3},
            {H0: (0, 1, 2)},
            {},
            [(H0, 0)],
            {H0: (0, 1, 2)},
        ),
        # shrink to nothing on a host
        (
            {H0: (0,), H1: (4,)},
            {(H0, 0): (0,), (H1, 4): (4,)},
            {H0: 1},
            {H0: (0,)},
            {},
            [(H1, 4)],
            {},
        ),
        # a dead raylet's devices are dropped first, with nothing to drain
        ({H0: (0, 1, 2)}, {(H0, 0): (0, 1)}, {H0: 2}, {H0: (0, 1)}, {}, [], {}),
        # told to keep a dead device: restart it
        ({H0: (0, 1, 2)}, {(H0, 0): (0, 1)}, {H0: 3}, {H0: (0, 1, 2)}, {}, [], {H0: (2,)}),
        # no whole parts add up: keep the biggest that fit, split the next
        (
            {H0: (0, 1, 2, 3, 4)},
            {(H0, 0): (0, 1), (H0, 2): (2, 3, 4)},
            {H0: 4},
            {H0: (0, 2, 3, 4)},
            {},
            [(H0, 0)],
            {H0: (0,)},
        ),
    ],
)
def test_plan(
    have: dict[str, tuple[int, ...]],
    parts: dict[tuple[str, int], tuple[int, ...]],
    want: dict[str, int],
    keep: dict[str, tuple[int, ...]],
    grow: dict[str, int],
    drain: list[tuple[str, int]],
    restart: dict[str, tuple[int, ...]],
) -> None:
    plan = plan_resize(have, parts, want)
    assert (plan.keep, plan.grow, plan.drain, plan.restart) == (keep, grow, drain, restart)
    kept = sum(len(ids) for ids in plan.keep.values()) + sum(plan.grow.values())
    assert kept == sum(want.values())


def test_an_unchanged_placement_changes_nothing() -> None:
    plan = plan_resize({H0: (0, 1)}, {(H0, 0): (0, 1)}, {H0: 2})
    assert not plan.changes
    assert plan.keep == {H0: (0, 1)}


@pytest.mark.parametrize(
    ("parts", "want", "busy", "keep", "drain", "restart"),
    [
        # the issue: Serve kept the replica on the last part; the idle parts stop
        (
            {(H0, 0): (0,), (H0, 1): (1,), (H0, 2): (2,)},
            {H0: 1},
            {(H0, 2)},
            {H0: (2,)},
            [(H0, 0), (H0, 1)],
            {},
        ),
        # busy parts win over fewest parts
        (
            {(H0, 0): (0, 1), (H0, 2): (2,), (H0, 3): (3,)},
            {H0: 2},
            {(H0, 2), (H0, 3)},
            {H0: (2, 3)},
            [(H0, 0)],
            {},
        ),
        # and over whole parts: an idle part is split rather than a busy one stopped
        (
            {(H0, 0): (0,), (H0, 1): (1, 2, 3)},
            {H0: 3},
            {(H0, 0)},
            {H0: (0, 1, 2)},
            [(H0, 1)],
            {H0: (1, 2)},
        ),
        # a split keeps the busy part whole and splits an idle one
        (
            {(H0, 0): (0, 1), (H0, 2): (2, 3, 4)},
            {H0: 4},
            {(H0, 0)},
            {H0: (0, 1, 2, 3)},
            [(H0, 2)],
            {H0: (2, 3)},
        ),
        # as many busy parts as fit: the small first
        (
            {(H0, 0): (0, 1, 2), (H0, 3): (3,), (H0, 4): (4,)},
            {H0: 2},
            {(H0, 0), (H0, 3), (H0, 4)},
            {H0: (3, 4)},
            [(H0, 0)],
            {},
        ),
        # when no plan keeps more busy parts, whole parts win as before (no restart)
        (
            {(H0, 0): (0,), (H0, 1): (1, 2)},
            {H0: 1},
            {(H0, 1)},
            {H0: (0,)},
            [(H0, 1)],
            {},
        ),
        # every part busy: the order decides, as with nothing known
        (
            {(H0, 0): (0,), (H0, 1): (1,)},
            {H0: 1},
            {(H0, 0), (H0, 1)},
            {H0: (0,)},
            [(H0, 1)],
            {},
        ),
        # busy parts of another host do not matter here
        (
            {(H0, 0): (0,), (H0, 1): (1,), (H1, 4): (4,)},
            {H0: 1, H1: 1},
            {(H1, 4)},
            {H0: (0,), H1: (4,)},
            [(H0, 1)],
            {},
        ),
    ],
)
def test_a_shrink_keeps_the_parts_where_the_workload_runs(
    parts: dict[tuple[str, int], tuple[int, ...]],
    want: dict[str, int],
    busy: set[tuple[str, int]],
    keep: dict[str, tuple[int, ...]],
    drain: list[tuple[str, int]],
    restart: dict[str, tuple[int, ...]],
) -> None:
    have: dict[str, tuple[int, ...]] = {}
    for (host, _), ids in parts.items():
        have[host] = tuple(sorted(have.get(host, ()) + ids))
    plan = plan_resize(have, parts, want, busy)
    assert (plan.keep, plan.grow, plan.drain, plan.restart) == (keep, {}, drain, restart)
    assert sum(len(ids) for ids in plan.keep.values()) == sum(want.values())
    # nothing known: the order alone, as before
    blind = plan_resize(have, parts, want)
    assert sum(len(ids) for ids in blind.keep.values()) == sum(want.values())


def test_the_busy_parts_are_read_from_the_keepers_answer() -> None:
    parts = {(H0, 0): (0,), (H0, 1): (1,), (H0, 2): (2,), (H1, 4): (4, 5)}
    nodes: list[dict[str, Any]] = [
        {"node_id": "a", "host": H0, "part": 0, "actors": []},
        {"node_id": "b", "host": H0, "part": 1, "actors": ["stopping"]},
        {"node_id": "c", "host": H0, "part": 2, "actors": ["kept", "stopping-too"]},
        # started before raylets had a part label: its host's only part of the lease
        {"node_id": "d", "host": H1, "part": None, "actors": ["train-worker"]},
        {"node_id": "e", "host": H0, "part": 7, "actors": ["not-in-parts"]},
    ]
    stopping = {"stopping", "stopping-too"}
    assert busy_parts(nodes, parts, stopping) == {(H0, 2), (H1, 4)}
    assert busy_parts(nodes, parts) == {(H0, 1), (H0, 2), (H1, 4)}
    # without a label on a host with several parts of the lease, the node tells nothing
    unlabelled: list[dict[str, Any]] = [{"node_id": "x", "host": H0, "part": None, "actors": ["a"]}]
    assert busy_parts(unlabelled, parts) == set()
