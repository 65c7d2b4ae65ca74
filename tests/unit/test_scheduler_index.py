"""The caller-kept indexes (PendingIndex, RunningIndex) are pure speed: kept incrementally they
equal a fresh build, and a cycle decides exactly the same with or without them."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgpu.scheduler import FairSharePolicy, FairShareSettings, LeaseView, Snapshot
from fastgpu.scheduler.index import PendingIndex, RunningIndex
from tests.unit.scheduler_builders import GPU
from tests.unit.test_scheduler_properties import SETTINGS, snapshots


def _pending(i: int, tenant: str, gpus: int, priority: int, submitted: float) -> LeaseView:
    return LeaseView(
        id=f"p{i}",
        tenant=tenant,
        gpu_type=GPU,
        gpus=gpus,
        min_gpus=gpus,
        priority=priority,
        submitted_at=submitted,
    )


def _same_pending(a: PendingIndex, b: PendingIndex) -> None:
    assert {t: a.tenant_keys(t) for t in a.queues} == {t: b.tenant_keys(t) for t in b.queues}
    assert {t: [lv.id for lv in q] for t, q in a.queues.items()} == {
        t: [lv.id for lv in q] for t, q in b.queues.items()
    }
    assert {t: a.shape_keys(t) for t in a.queues} == {t: b.shape_keys(t) for t in b.queues}
    assert {t: set(a.representatives(t)) for t in a.queues} == {
        t: set(b.representatives(t)) for t in b.queues
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from([1, 2, 8]),
            st.integers(0, 2),
            st.floats(0, 100),
        ),
        max_size=20,
    ),
    st.lists(st.integers(0, 19), max_size=20),
)
def test_pending_index_kept_incrementally_equals_a_build(
    rows: list[tuple[str, int, int, float]], drops: list[int]
) -> None:
    leases = [_pending(i, *row) for i, row in enumerate(rows)]
    kept = PendingIndex()
    for lease in leases:
        kept.add(lease)
    gone = {d for d in drops if d < len(leases)}
    for d in sorted(gone):
        kept.remove(leases[d])
    left = [lv for i, lv in enumerate(leases) if i not in gone]
    _same_pending(kept, PendingIndex.build(left))
    assert len(kept) == len(left)


@SETTINGS
@given(snapshots())
def test_running_index_kept_incrementally_equals_a_build(s: Snapshot) -> None:
    kept = RunningIndex()
    for lease in s.running:
        kept.add(lease)
    # Announce a preemption on the first lease (a view replaced in place), drop the last.
    if s.running:
        first = s.running[0]
        kept.replace(first, dataclasses.replace(first, preempt_at=s.now + 30.0))
        kept.remove(s.running[-1])
        running = [dataclasses.replace(first, preempt_at=s.now + 30.0), *s.running[1:]]
        running = running[:-1]
    else:
        running = []
    built = RunningIndex.build(running)
    assert {t: list(d) for t, d in kept.by_type.items()} == {
        t: list(d) for t, d in built.by_type.items()
    }
    assert kept.held == built.held
    assert kept.used == built.used
    assert kept.preemptible == built.preemptible
    assert kept.fixed_min == built.fixed_min
    assert kept.fixed_held == built.fixed_held
    assert {t: n for t, n in kept.incoming.items() if n} == {
        t: n for t, n in built.incoming.items() if n
    }
    assert {t: n for t, n in kept.elastic_over_min.items() if n} == {
        t: n for t, n in built.elastic_over_min.items() if n
    }


@SETTINGS
@given(snapshots(), st.booleans(), st.booleans())
def test_a_cycle_decides_the_same_with_or_without_indexes(
    s: Snapshot, explain: bool, elastic: bool
) -> None:
    policy = FairSharePolicy(FairShareSettings(explain=explain, elastic=elastic))
    indexed = dataclasses.replace(
        s,
        pending_index=PendingIndex.build(s.pending),
        running_index=RunningIndex.build(s.running),
    )
    assert policy.schedule(indexed) == policy.schedule(s)
