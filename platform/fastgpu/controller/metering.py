"""Metering: a transaction hook that keeps usage records in step with lease states.

A lease is metered while it holds reserved GPUs (RESERVED or BOUND): entering that set opens a
usage record (tenant id, GPU type, GPUs, price, workload), leaving it closes the record, and a
resize or a bind (RESERVED -> BOUND names the workload) closes the record and opens one at the
new size or for the new workload: one record per stretch of a fixed size and holder. The price
is the lease's, fixed at admission, so a later price change never rewrites a record. The hook
runs inside the state change's transaction (:meth:`fastgpu.store.Store.transition`), so
metering and state never disagree, whatever crashes when.
"""

from __future__ import annotations

from fastgpu.domain.lease import Lease, LeaseState
from fastgpu.store import StoreTx

METERED_STATES = frozenset({LeaseState.RESERVED, LeaseState.BOUND})


def meter(tx: StoreTx, lease: Lease, prev: LeaseState, new: LeaseState, now: float) -> None:
    before, after = prev in METERED_STATES, new in METERED_STATES
    if before and after:  # a resize (prev == new) or a bind: a new stretch
        tx.close_usage(lease.id, now)
        tx.open_usage(lease, now)
    elif after and not before:
        tx.open_usage(lease, now)
    elif before and not after:
        tx.close_usage(lease.id, now)
