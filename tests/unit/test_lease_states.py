from __future__ import annotations

import pytest

from fastgpu.domain.lease import TERMINAL_STATES, TRANSITIONS, LeaseState, check_transition
from fastgpu.errors import Conflict


def test_every_state_has_a_row_and_terminals_are_final() -> None:
    assert set(TRANSITIONS) == set(LeaseState)
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
        assert state.is_terminal


@pytest.mark.parametrize(
    ("prev", "new"),
    [
        (LeaseState.PENDING, LeaseState.RESERVED),  # must be admitted first
        (LeaseState.PENDING, LeaseState.RELEASED),  # a pending lease is cancelled, not released
        (LeaseState.RELEASED, LeaseState.RESERVED),
        (LeaseState.EXPIRED, LeaseState.PENDING),
        (LeaseState.BOUND, LeaseState.PENDING),
    ],
)
def test_illegal_transitions_raise(prev: LeaseState, new: LeaseState) -> None:
    with pytest.raises(Conflict, match=f"{prev.value}; it cannot become {new.value}"):
        check_transition("x", prev, new)


def test_every_holding_state_can_end() -> None:
    for state in (LeaseState.ADMITTED, LeaseState.RESERVED, LeaseState.BOUND):
        for end in (
            LeaseState.RELEASED,
            LeaseState.EXPIRED,
            LeaseState.PREEMPTED,
            LeaseState.FAILED,
        ):
            check_transition("x", state, end)
