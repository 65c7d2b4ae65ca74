"""Which raylets an elastic lease keeps, stops or starts when it is resized (pure plans)."""

from __future__ import annotations

import pytest

from fastgpu.controller.pool_resize import plan_resize

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
