"""The list's read path (stored rows -> the API's JSON) shows each lease exactly as
``LeaseOut.of`` does: one shape, two ways to build it."""

from __future__ import annotations

import json

import pydantic_core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgpu.domain.lease import Lease, LeaseState
from fastgpu.service.models import LEASE_COLUMNS, LeaseOut, lease_items
from fastgpu.store import open_store

times = st.one_of(st.none(), st.floats(min_value=0, max_value=4e9, allow_nan=False))
names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12)


@st.composite
def leases(draw: st.DrawFn) -> Lease:
    gpus = draw(st.integers(1, 64))
    return Lease(
        id=draw(names),
        tenant=draw(names),
        tenant_id="tid",
        state=draw(st.sampled_from(list(LeaseState))),
        gpus=gpus,
        min_gpus=draw(st.integers(1, gpus)),
        gpu_type=draw(st.sampled_from(["A100", "H100"])),
        strategy=draw(st.sampled_from(["PACK", "SPREAD"])),
        duration_s=draw(st.floats(1, 1e7)),
        preemptible=draw(st.booleans()),
        price_per_hour=draw(st.floats(0, 100)),
        created_at=draw(st.floats(0, 4e9)),
        request_id=draw(st.one_of(st.none(), names)),
        reason=draw(st.one_of(st.none(), st.text(max_size=20))),
        reason_detail=draw(st.one_of(st.none(), st.text(max_size=40))),
        placement_group=draw(st.one_of(st.none(), names)),
        placement_group_id=draw(st.one_of(st.none(), names)),
        nodes=draw(st.lists(names, max_size=gpus)),
        admitted_at=draw(times),
        reserved_at=draw(times),
        ended_at=draw(times),
        expires_at=draw(times),
        workload=draw(st.one_of(st.none(), names)),
        preempt_at=draw(times),
        priority=draw(st.integers(-10, 10)),
        last_checkpoint_at=draw(times),
        restarts=draw(st.integers(0, 5)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(leases(), min_size=1, max_size=6, unique_by=lambda x: x.id))
def test_rows_give_what_the_model_gives(batch: list[Lease]) -> None:
    store = open_store("sqlite://")
    try:
        for lease in batch:
            store.insert_lease(lease)
        rows = store.lease_rows(LEASE_COLUMNS, tenant_id="tid")
        by_rows = pydantic_core.to_json(lease_items(rows))
        by_model = [LeaseOut.of(x).model_dump() for x in store.list_leases(tenant_id="tid")]
        # Same JSON, byte for byte (same keys in the same order, same numbers and times).
        assert by_rows == pydantic_core.to_json(by_model)
        assert [LeaseOut.model_validate(x) for x in json.loads(by_rows)]  # valid LeaseOut
    finally:
        store.close()
