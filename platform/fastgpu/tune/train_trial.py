"""A sweep trial that is itself a Ray Train run (data-parallel, mixed precision).

The trial's placement group holds ``gpus_per_trial`` units of its lease's resource and no GPU
(``SweepSpec.train_trials``); :func:`run_train_trial`, called inside the trial, reads which
lease that is from the resources Ray assigned to the trial, and starts ``fastgpu.train.run``
with that many workers on the lease's raylets (label ``fastgpu.io/lease``), each holding a GPU.
So the trials' Train workers together never hold more GPUs than the lease, and a trial restored
onto a new lease finds the new one. Metrics reach Tune through Ray Train's
``TuneReportCallback``; the run is named after the sweep and the trial, so a paused trial's
Train run resumes from its own last checkpoint.

Measured on Ray 2.60 in a tenant cluster: a finished Train-in-Tune trial left its Train worker
group's placement group CREATED (the trial's actor goes before the Train controller removes
it; Ray's own cleaner did not either), so the next trial's workers waited for GPUs that were no
longer used (ray#54305). So each trial records its worker groups' placement groups in its
trial folder (a Ray Train worker-group callback, the documented way to hook its internals), and
the sweep's driver removes them when the trial completes, errs or is stopped
(:func:`remove_recorded_groups`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastgpu.domain.lease import LEASE_LABEL, LEASE_RESOURCE_PREFIX
from fastgpu.errors import FastGPUError
from fastgpu.sdk import Client
from fastgpu.train.trainer import TrainOutcome, run

GROUPS_FILE = "fastgpu_train_groups.txt"


def _recorder_base() -> type:
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    return WorkerGroupCallback


class GroupRecorder(_recorder_base()):  # type: ignore[misc]
    """Runs in the Train controller: appends each worker group's placement group id to a file
    in the trial's folder."""

    def __init__(self, path: str) -> None:
        self._path = path

    def after_worker_group_start(self, worker_group: Any) -> None:
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        with open(self._path, "a") as f:
            f.write(pg.id.hex() + "\n")


def remove_recorded_groups(trial_dir: str | Path) -> int:
    """Remove the placement groups a trial's Train runs recorded (those not removed yet); how
    many. Called by the sweep's driver when the trial is over."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    path = Path(trial_dir) / GROUPS_FILE
    try:
        ids = path.read_text().split()
    except OSError:
        return 0
    # The file stays: a group its Train controller starts later is appended and found on the
    # next sweep; one already removed is skipped.
    removed = 0
    for hex_id in ids:
        try:
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id)))
            if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                remove_placement_group(pg)
                removed += 1
        except (ValueError, TypeError):
            continue
    return removed


def trial_lease() -> tuple[str, int]:
    """(lease id, GPUs) of the sweep trial this worker runs."""
    import ray

    for name, amount in ray.get_runtime_context().get_assigned_resources().items():
        if name.startswith(LEASE_RESOURCE_PREFIX):
            return name[len(LEASE_RESOURCE_PREFIX) :], int(amount)
    raise FastGPUError(
        "run_train_trial runs inside a trial of a sweep with train_trials=true "
        "(fastgpu.tune.run_on_lease)"
    )


def run_train_trial(
    train_fn: Callable[[dict[str, Any]], Any] | str,
    config: dict[str, Any],
    **spec: Any,
) -> TrainOutcome:
    """Train ``train_fn`` (as :func:`fastgpu.train.run`) on this trial's share of the lease;
    ``spec`` takes the other TrainSpec fields (precision, checkpoint_every, ...)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    lease_id, gpus = trial_lease()
    me = Client().whoami()
    ctx = tune.get_context()
    record = GroupRecorder(str(Path(ctx.get_trial_dir()) / GROUPS_FILE))
    name = re.sub(r"[^a-z0-9-]", "-", f"{ctx.get_experiment_name()}-{ctx.get_trial_id()}".lower())
    return run(
        train_fn,
        config=config,
        workers=gpus,
        label_selector={LEASE_LABEL: lease_id},
        max_gpus=gpus,
        tenant=str(me["storage_key"]),
        storage_root=str(me["storage_root"]),
        run_name=name[:63].strip("-"),
        callbacks=[TuneReportCallback(), record],
        **spec,
    )
