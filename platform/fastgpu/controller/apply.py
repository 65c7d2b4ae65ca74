"""Applying the policy's decisions: the only code that turns a :class:`Decisions` value into
state changes and Ray calls.

Each decision is re-checked against the lease as read at the start of the pass (the lock is
held, so the read is current): a decision about a lease that is no longer in the state the
policy saw is dropped, never forced.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastgpu.domain.lease import HOLDING_STATES, Lease, LeaseState
from fastgpu.scheduler import Decisions

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

log = logging.getLogger(__name__)


def _nodes(placement: dict[str, int]) -> list[str]:
    return [n for n, count in sorted(placement.items()) for _ in range(count)]


def apply_decisions(ctl: Controller, decisions: Decisions, by_id: dict[str, Lease]) -> None:
    for rej in decisions.reject:
        lease = by_id.get(rej.lease_id)
        if lease is None or lease.state != LeaseState.PENDING:
            continue
        lease.reason, lease.reason_detail = rej.reason, rej.detail
        ctl.end(lease, LeaseState.REJECTED, rej.detail)
    # Waiting leases whose reason changed: one transaction for all of them (a pass over a
    # busy queue changes several: "N free" moves with every admission and release).
    waiting = []
    for q in decisions.queue:
        lease = by_id.get(q.lease_id)
        if lease is None or lease.state != LeaseState.PENDING:
            continue
        if (lease.reason, lease.reason_detail) != (q.reason, q.detail):
            lease.reason, lease.reason_detail = q.reason, q.detail
            waiting.append(lease)
    ctl.store.save_wait_reasons(waiting)
    for adm in decisions.admit:
        lease = by_id.get(adm.lease_id)
        if lease is None or lease.state != LeaseState.PENDING:
            continue
        ctl.admit(lease, _nodes(dict(adm.placement)))
    now = ctl.clock()
    for pre in decisions.preempt:
        announce_preemption(ctl, by_id.get(pre.lease_id), pre.reason, pre.detail, pre.grace_s, now)
    for rsz in decisions.resize:
        resize(ctl, by_id.get(rsz.lease_id), dict(rsz.placement), rsz.reason)


def announce_preemption(
    ctl: Controller, lease: Lease | None, why: str, detail: str, grace_s: float, now: float
) -> None:
    """Tell the workload (``preempt_at`` on the lease) and take the GPUs at that time."""
    if lease is None or lease.state not in HOLDING_STATES or lease.preempt_at is not None:
        return
    lease.preempt_at = now + grace_s
    lease.reason = "preempting"
    lease.reason_detail = f"{why}: {detail}" if detail else why
    ctl.store.save_lease(lease, lease.state)
    ctl.watch.notify([lease.id])
    log.info("lease %s preempted (%s); GPUs taken in %.0f s", lease.id, why, grace_s)
    if grace_s <= 0:
        ctl.end(lease, LeaseState.PREEMPTED, lease.reason_detail)


def resize(ctl: Controller, lease: Lease | None, placement: dict[str, Any], why: str) -> None:
    """Grow or shrink a BOUND lease: its workload owns the GPUs and follows the lease.

    Reserved (not bound) leases are presented to the policy as fixed-size, so they never get
    here: a placement group cannot change size under running tasks.
    """
    if lease is None or lease.state != LeaseState.BOUND:
        return
    nodes = _nodes(placement)
    if not lease.min_gpus <= len(nodes) <= lease.gpus:
        log.error("policy resized lease %s to %d GPUs, outside its range", lease.id, len(nodes))
        return
    before = lease.held_gpus
    ctl.resize(lease, nodes, f"{why}: {before} -> {len(nodes)} GPUs")
    log.info("lease %s resized %d -> %d GPUs (%s)", lease.id, before, len(nodes), why)
