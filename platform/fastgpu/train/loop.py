"""The per-worker side of a FastGPU training run: precision, checkpoints, preemption, resume.

A train function passed to :func:`fastgpu.train.run` builds a :class:`TrainLoop` from its config
and lets it handle what every run needs the same way::

    def train_fn(config):
        loop = TrainLoop.from_config(config)
        model = loop.prepare_model(MyModel())
        optimizer = torch.optim.AdamW(model.parameters())
        resumed = loop.restore(model=model, optimizer=optimizer)   # step 0 on a fresh run
        for step in range(resumed.step + 1, total + 1):
            with loop.autocast():
                loss = loss_fn(model(x), y)
            loop.backward_and_step(loss, optimizer)
            if loop.end_step(step, {"loss": loss.item()}, state=lambda: {...}):
                break   # only when asked to stop (never today; kept for lease expiry)

Invariants:

- Every rank calls :meth:`end_step` for every step (``ray.train.report`` and
  ``ray.train.get_preemption_info`` are barriers across ranks); only rank 0 writes a checkpoint.
- A checkpoint is published atomically into ``<run dir>/step-<step>/``
  (:mod:`fastgpu.train.checkpoints`): through Ray Train's ``checkpoint_upload_fn`` when
  distributed, straight into the run directory in local mode (``num_workers=0``), where Ray Train
  does not persist checkpoints itself.
- Resume from the newest complete checkpoint (:func:`newest_checkpoint`): the one Ray Train
  hands back (``ray.train.get_checkpoint()``: after a worker failure or when a run of the same
  name is resubmitted) or a newer one on disk in the run directory, else a fresh start at step
  0. Ray Train records a checkpoint only once its controller has collected every rank's report
  (a poll every 0.5 s): a worker that dies just after rank 0 published one leaves it on disk
  but unrecorded, and resuming from Ray's record alone would redo those steps.
- Cooperative preemption: every ``report_every`` steps the loop asks
  ``ray.train.get_preemption_info()``; on the first announcement of a drain it takes a
  just-in-time checkpoint (reason ``preemption``), so the steps lost are those since that call.
- Deadline (a lease's expiry): every ``report_every`` steps rank 0 decides whether
  ``stop_at - stop_margin_s`` has passed and broadcasts the decision (clocks of different nodes
  may disagree; the ranks must not). When it has, the loop writes a checkpoint (reason ``stop``)
  and :meth:`end_step` returns True: the train function should return. Resubmitting the run
  continues from there.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastgpu.train.checkpoints import (
    CheckpointInfo,
    CheckpointStore,
    checkpoint_dir_name,
    is_complete,
    load_state,
    publish,
    read_manifest,
    write_checkpoint_files,
)
from fastgpu.train.precision import MixedPrecision, mixed_precision

CONFIG_KEY = "_fastgpu"
STOP_FILE = "STOP"
"""Created in the run folder by the driver to make every worker checkpoint and return."""
"""Key under which :func:`fastgpu.train.run` passes loop settings inside ``train_loop_config``."""


@dataclass(frozen=True)
class LoopSettings:
    """What :func:`fastgpu.train.run` tells every worker (a plain dict on the wire)."""

    run_dir: str
    precision: str = "fp32"
    checkpoint_every: int = 100
    report_every: int = 10
    keep: int = 3
    local: bool = False
    stop_at: float | None = None
    """Unix time by which the run must have stopped (a lease's expiry); None: no limit."""
    stop_margin_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoopSettings:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Resumed:
    """Where a run continues: ``step`` 0 and no path on a fresh start."""

    step: int = 0
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """What the train function put under ``"extra"`` in its state (epoch, data position, ...)."""


def _atomic_upload(checkpoint: Any, dir_name: str) -> Any:
    """Ray Train ``checkpoint_upload_fn``: publish into the run directory by rename."""
    import ray.train

    run_dir = Path(ray.train.get_context().get_storage().experiment_fs_path)
    final = publish(Path(checkpoint.path), run_dir, dir_name)
    return ray.train.Checkpoint(path=str(final))


class TrainLoop:
    """Per-worker helper; build it with :meth:`from_config` inside the train function."""

    def __init__(self, settings: LoopSettings, device: torch.device | None = None) -> None:
        import ray.train

        self.settings = settings
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = device if device is not None else _worker_device(settings.local)
        self.precision: MixedPrecision = mixed_precision(settings.precision, self.device)
        self.scaler = self.precision.grad_scaler()
        self.store = CheckpointStore(Path(settings.run_dir), keep=settings.keep)
        self.preempted = False
        self.last_checkpoint_step: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> TrainLoop:
        if not config or CONFIG_KEY not in config:
            raise KeyError(
                f"train config has no {CONFIG_KEY!r}: start the function with fastgpu.train.run()"
            )
        return cls(LoopSettings.from_dict(config[CONFIG_KEY]))

    # -- model and data ---------------------------------------------------------------------

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the worker's device and wrap in DDP when there is more than one worker."""
        if self.settings.local or self.world_size == 1:
            return model.to(self.device)
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=self.device.type == "cuda")

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        """The module inside a DDP wrapper (what a checkpoint should hold)."""
        return getattr(model, "module", model)

    # -- one step ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with self.precision.autocast():
            yield

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        *,
        max_grad_norm: float | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        """Backward (loss-scaled for fp16), optional clipping, optimizer step, zero grads."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if max_grad_norm is not None and model is not None:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if max_grad_norm is not None and model is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- checkpoints ------------------------------------------------------------------------

    def restore(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Resumed:
        """Load the checkpoint to resume from into ``model``/``optimizer``/scaler (see module
        docstring for the order); return the step it holds and its ``extra`` dict."""
        path = self._resume_path()
        if path is None:
            return Resumed()
        state = load_state(path, map_location=self.device)
        self.unwrap(model).load_state_dict(state["model"])
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        step = int(read_manifest(path)["step"])
        self.last_checkpoint_step = step
        return Resumed(step=step, path=path, extra=dict(state.get("extra", {})))

    def _resume_path(self) -> Path | None:
        import ray.train

        reported = ray.train.get_checkpoint()
        return newest_checkpoint(
            Path(reported.path) if reported is not None else None, self.store.latest()
        )

    def state_dict(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The standard checkpoint state: model, optimizer, scaler and ``extra``."""
        return {
            "model": self.unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "extra": dict(extra or {}),
        }

    def end_step(
        self,
        step: int,
        metrics: Mapping[str, Any],
        *,
        state: Callable[[], Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> bool:
        """Report, checkpoint when due (every N steps, on preemption, at the end); call on every
        rank after every optimizer step. ``state`` is called only when a checkpoint is written.

        Returns True when the run must stop now (its deadline is near); a checkpoint of this step
        has then been written, and the train function should return without further steps.
        """
        settings = self.settings
        reason: str | None = None
        stop = False
        if final:
            reason = "final"
        elif step % settings.checkpoint_every == 0:
            reason = "periodic"
        if step % settings.report_every == 0 and not final:
            stop = self._deadline_passed()
            if stop:
                reason = "stop"
            elif not self.preempted:
                import ray.train

                if ray.train.get_preemption_info() is not None:
                    self.preempted = True
                    reason = reason or "preemption"
        if reason is not None and self.last_checkpoint_step != step:
            self.save(step, metrics, state=state, reason=reason, metadata=metadata)
        elif final or step % settings.report_every == 0:
            self._report(step, metrics, checkpoint=None)
        return stop

    def _deadline_passed(self) -> bool:
        """Whether to checkpoint and stop now: the deadline is near, or the driver asked
        (a ``STOP`` file in the run folder: the lease was resized or its preemption announced)."""
        passed = (Path(self.settings.run_dir) / STOP_FILE).exists()
        if self.settings.stop_at is not None:
            passed = passed or time.time() >= self.settings.stop_at - self.settings.stop_margin_s
        if self.settings.local or self.world_size == 1:
            return passed
        import ray.train.collective

        return bool(ray.train.collective.broadcast_from_rank_zero(passed))

    def save(
        self,
        step: int,
        metrics: Mapping[str, Any],
        *,
        state: Callable[[], Mapping[str, Any]],
        reason: str = "periodic",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a checkpoint for ``step`` (rank 0) and report it (every rank)."""
        import ray.train

        name = checkpoint_dir_name(step)
        tagged = {**metrics, "step": step, "checkpoint_reason": reason}
        if self.settings.local:
            path = self.store.save(step, state(), reason=reason, metrics=tagged, metadata=metadata)
            self._report(step, tagged, checkpoint=ray.train.Checkpoint(path=str(path)))
        elif self.rank == 0:
            with tempfile.TemporaryDirectory(prefix="fgckpt") as tmp:
                write_checkpoint_files(
                    Path(tmp), step=step, state=state(), reason=reason, metrics=tagged,
                    metadata=metadata,
                )  # fmt: skip
                self._report(
                    step, tagged, checkpoint=ray.train.Checkpoint.from_directory(tmp), name=name
                )
        else:
            self._report(step, tagged, checkpoint=None, name=name)
        self.last_checkpoint_step = step

    def _report(
        self, step: int, metrics: Mapping[str, Any], *, checkpoint: Any, name: str | None = None
    ) -> None:
        import ray.train

        payload = {**metrics, "step": step, "world_size": self.world_size}
        if self.settings.local:
            ray.train.report(payload, checkpoint=checkpoint)
            return
        ray.train.report(
            payload,
            checkpoint=checkpoint,
            checkpoint_dir_name=name,
            checkpoint_upload_fn=_atomic_upload if checkpoint is not None else None,
        )


def _worker_device(local: bool) -> torch.device:
    """CUDA when this worker sees a real GPU, else CPU (logical GPUs have no CUDA)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local:
        return torch.device("cuda", 0)
    import ray.train.torch

    return ray.train.torch.get_device()


def newest_checkpoint(reported: Path | None, on_disk: CheckpointInfo | None) -> Path | None:
    """The checkpoint to resume from: Ray Train's (``reported``, if complete) or the newest
    complete one on disk, whichever holds the later step (Ray's on a tie)."""
    if reported is not None and not is_complete(reported):
        reported = None
    if on_disk is None:
        return reported
    if reported is None or on_disk.step > int(read_manifest(reported)["step"]):
        return on_disk.path
    return reported
