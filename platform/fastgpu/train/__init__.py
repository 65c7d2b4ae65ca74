"""Elastic mixed-precision training on Ray Train V2, with checkpoints in the tenant's storage.

Public surface (everything else in the subpackage is an implementation detail):

- :func:`run_on_lease`: the Python driver entry point on a platform lease (request, bind,
  train on the lease's raylets, release); :func:`acquire_lease` does the first half.
- :func:`run` / :class:`TrainSpec` / :class:`TrainOutcome`: train on given nodes/workers.
- :func:`build_trainer`: the same ``TorchTrainer`` without starting it.
- :func:`placement_for_lease` / :class:`Placement`: how a lease's nodes and GPUs become worker
  placement (``label_selector`` on ``ray.io/node-id``, capped worker range).
- :class:`TrainLoop`: the per-worker helper (precision, checkpoints, preemption, resume).
- :class:`Precision`, :func:`mixed_precision`: autocast and GradScaler policy.
- :class:`CheckpointStore`, :func:`run_dir`: checkpoint layout and keep-last-K.
"""

from fastgpu.train.checkpoints import CheckpointInfo, CheckpointStore, run_dir
from fastgpu.train.lease import LeaseBinding, LeaseRun, acquire_lease, run_on_lease
from fastgpu.train.loop import Resumed, TrainLoop
from fastgpu.train.precision import MixedPrecision, Precision, mixed_precision
from fastgpu.train.trainer import (
    Placement,
    TrainOutcome,
    TrainSpec,
    build_trainer,
    placement_for_lease,
    run,
)

__all__ = [
    "CheckpointInfo",
    "CheckpointStore",
    "LeaseBinding",
    "LeaseRun",
    "MixedPrecision",
    "Placement",
    "Precision",
    "Resumed",
    "TrainLoop",
    "TrainOutcome",
    "TrainSpec",
    "acquire_lease",
    "build_trainer",
    "mixed_precision",
    "placement_for_lease",
    "run",
    "run_dir",
    "run_on_lease",
]
