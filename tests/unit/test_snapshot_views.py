"""The scheduling pass's memo of lease views (``LeaseViews``): a view is reused only while
every field ``lease_view`` reads is unchanged, so a pass sees exactly what a fresh build would."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgpu.controller.snapshot import VIEW_FIELDS, LeaseViews, lease_view, placement_of
from fastgpu.domain.lease import Lease, LeaseState
from tests.unit.test_store import _lease as _stored


def _lease(state: LeaseState = LeaseState.RESERVED) -> Lease:
    """A lease holding 3 GPUs on two nodes (as ``state``), elastic down to 2."""
    return dataclasses.replace(
        _stored("l1"),
        state=state,
        gpus=4,
        min_gpus=2,
        preemptible=True,
        admitted_at=11.0,
        reserved_at=12.0,
        nodes=["n1", "n1", "n2"],
    )


class _Recorder:
    """A lease that records which attributes are read."""

    def __init__(self, lease: Lease) -> None:
        object.__setattr__(self, "_lease", lease)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self._lease, name)


def test_the_key_covers_every_field_lease_view_reads() -> None:
    for state in (LeaseState.PENDING, LeaseState.RESERVED, LeaseState.BOUND):
        rec = _Recorder(_lease(state))
        lease_view(rec, {})  # type: ignore[arg-type]
        assert rec.read <= set(VIEW_FIELDS) | {"nodes"}, rec.read - set(VIEW_FIELDS)


_CHANGES: dict[str, Any] = {
    "state": LeaseState.BOUND,
    "gpus": 8,
    "min_gpus": 1,
    "strategy": "SPREAD",
    "preemptible": False,
    "priority": 5,
    "duration_s": 900.0,
    "reserved_at": 99.0,
    "admitted_at": 98.0,
    "last_checkpoint_at": 50.0,
    "restarts": 3,
    "preempt_at": 70.0,
    "nodes": ["n1"],
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(_CHANGES)), min_size=1, max_size=4))
def test_a_memoised_view_equals_a_fresh_one_after_any_change(fields: list[str]) -> None:
    views = LeaseViews()
    lease = _lease()
    first = views(lease)
    assert views(lease) is first  # nothing changed: the same object
    for name in fields:
        value = _CHANGES[name]
        if name == "nodes":
            lease.nodes.clear()  # in place, as writers do
            lease.nodes.extend(value)
        else:
            setattr(lease, name, value)
        fresh = lease_view(lease, placement_of(lease))
        assert dataclasses.asdict(views(lease)) == dataclasses.asdict(fresh)


def test_ended_leases_are_forgotten() -> None:
    views = LeaseViews()
    leases = [dataclasses.replace(_lease(), id=f"l{i}") for i in range(200)]
    for lease in leases:
        views(lease)
    views.keep_only(leases[:10])
    assert set(views._memo) == {f"l{i}" for i in range(10)}


def test_a_view_places_held_gpus_per_node_and_a_waiting_lease_nowhere() -> None:
    assert LeaseViews()(_lease()).placement == {"n1": 2, "n2": 1}
    assert placement_of(_lease(LeaseState.BOUND)) == {"n1": 2, "n2": 1}
    assert LeaseViews()(_lease(LeaseState.PENDING)).placement == {}
