"""Reconcile: make Ray match the store after crashes, restarts and node loss.

Drops orphan placement groups (no live lease names them), re-creates missing ones (a lease
ADMITTED or RESERVED whose group vanished), shrinks an elastic bound lease that lost nodes (or,
on the pool, raylets) but keeps its minimum, and fails leases whose nodes died. A bound lease
whose reservation holds other GPUs than the store says (a server restarted during a resize) is
brought back to the store's placement. Runs at start-up (before serving) and
every ``controller.reconcile_interval_s``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from fastgpu.domain.lease import HOLDING_STATES, LeaseState, PendingReason

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

log = logging.getLogger(__name__)


def reconcile(ctl: Controller) -> dict[str, int]:
    """Returns counts of what it did."""
    with ctl.lock:
        groups = ctl.backend.groups()
        alive = {n.node_id for n in ctl.cluster_nodes(force=True) if n.alive}
        wanted: set[str] = set()
        done = {"orphans_removed": 0, "groups_recreated": 0, "leases_failed": 0, "leases_shrunk": 0}
        for lease in ctl.store.live_leases():
            if lease.state not in HOLDING_STATES:
                continue
            lost = sorted({n for n in lease.nodes if n not in alive})
            group = groups.get(lease.placement_group or "")
            survivors = [n for n in lease.nodes if n in alive]
            if lost and lease.state == LeaseState.BOUND and len(survivors) >= lease.min_gpus:
                # An elastic workload survives on the rest: shrink instead of failing (what the
                # backend still holds for it, the pool's raylets, is wanted).
                wanted.add(lease.placement_group or "")
                ctl.resize(
                    lease,
                    survivors,
                    f"node_lost: shrunk {lease.held_gpus} -> {len(survivors)} GPUs "
                    f"(lost {', '.join(lost)})",
                )
                done["leases_shrunk"] += 1
                continue
            if (
                group is not None
                and group.state == "RESCHEDULING"
                and lease.state == LeaseState.BOUND
                and lease.min_gpus <= len(group.bundle_nodes) < lease.held_gpus
            ):
                # The pool: some of its raylets stopped; the workload goes on with the rest.
                wanted.add(lease.placement_group or "")
                ctl.resize(
                    lease,
                    list(group.bundle_nodes),
                    f"node_lost: shrunk {lease.held_gpus} -> {len(group.bundle_nodes)} GPUs "
                    f"({group.detail})",
                )
                done["leases_shrunk"] += 1
                continue
            if group is not None and group.state == "FAILED":
                lease.reason = "reservation_failed"
                lease.reason_detail = group.detail or "its raylets did not start"
                ctl.end(lease, LeaseState.FAILED, lease.reason_detail)
                done["leases_failed"] += 1
                continue
            if lost or (group is not None and group.state == "RESCHEDULING"):
                lease.reason = "node_lost"
                lease.reason_detail = (group.detail if group and not lost else "") or (
                    f"node(s) {', '.join(lost) or '?'} died"
                )
                ctl.end(lease, LeaseState.FAILED, lease.reason_detail)
                done["leases_failed"] += 1
                continue
            if lease.state == LeaseState.BOUND:
                if group is None:
                    # The backend reports a bound lease's raylets: none left means all died.
                    lease.reason = "node_lost"
                    lease.reason_detail = "its raylets stopped"
                    ctl.end(lease, LeaseState.FAILED, lease.reason_detail)
                    done["leases_failed"] += 1
                    continue
                # Its group was handed over; its raylets, which the backend still reports,
                # are wanted, at the size the store says.
                wanted.add(lease.placement_group or "")
                if group is not None and Counter(group.bundle_nodes) != Counter(lease.nodes):
                    ctl.backend.resize(lease.placement_group or "", list(lease.nodes))
                continue
            assert lease.placement_group is not None
            wanted.add(lease.placement_group)
            if group is None:
                if lease.state == LeaseState.RESERVED:
                    lease.reason = PendingReason.RESERVING.value
                    lease.reason_detail = "placement group was missing; re-created"
                    ctl.transition(lease, LeaseState.ADMITTED, "group missing; re-creating")
                ctl.create_group(lease)
                done["groups_recreated"] += 1
        for name in groups:
            if name not in wanted:
                ctl.backend.remove_group(name, groups[name].group_id)
                done["orphans_removed"] += 1
        # Leases were read from the store here: the controller reloads its live set.
        ctl.forget_live()
        if any(done.values()):
            log.warning("reconcile: %s", done)
        return done
