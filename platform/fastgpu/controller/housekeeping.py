"""The controller's periodic housekeeping, apart from scheduling: purging what has outlived its
retention, and metering the GPUs a shrunk lease keeps until its workload has checkpointed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

log = logging.getLogger(__name__)


def purge(ctl: Controller, now: float) -> dict[str, int]:
    """Forget ended leases past the retention period (usage records stay for billing),
    expired tokens and old idempotency keys; then what the purge hooks forget (a service's
    own files, such as old uploads)."""
    retention = ctl.config.controller.lease_retention_s
    done = {
        "leases": ctl.store.purge_ended(now - retention),
        "tokens": ctl.store.purge_tokens(now),
        "requests": ctl.store.purge_requests(now - retention),
    }
    for name, hook in ctl.purge_hooks.items():
        try:
            done[name] = hook()
        except OSError:
            log.exception("purging %s failed", name)
    if any(done.values()):
        log.info("purged %s", done)
    return done


def meter_held_after(ctl: Controller) -> None:
    """The pool's shrunk leases keep the GPUs they give back until their workload has
    checkpointed (or the grace ends): those GPU-seconds are the tenant's too."""
    take = getattr(ctl.backend, "held_after", None)
    for lease_id, gpus, start, end in take() if take else ():
        lease = ctl.store.get_lease(lease_id)
        if lease is not None:
            ctl.store.add_usage(lease, gpus, start, end)
