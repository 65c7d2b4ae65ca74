"""Driver side of a FastGPU training run: a validated spec in, a Ray Train V2 ``TorchTrainer`` out.

:func:`run` is the Python driver entry point; :func:`build_trainer` is the same without ``fit()``
(for benchmarks and tests); :func:`placement_for_lease` is the seam where a lease becomes worker
placement. The lease itself (request, bind, release) is the SDK's business, not this module's:
the SDK calls :func:`run` with ``label_selector`` (the lease's raylets, by the label
``fastgpu.io/lease``) and ``max_gpus`` taken from the bound lease.

How a spec maps onto Ray Train:

==========================  ===============================================================
spec                        Ray Train
==========================  ===============================================================
workers ``(min, max)``      ``ScalingConfig(num_workers=(min, max))`` (elastic), int: fixed;
                            0: local mode, in this process, no cluster
node_ids ``[a, b]``         ``label_selector={"ray.io/node-id": "in(a,b)"}``
max_gpus                    caps ``max`` at ``max_gpus // gpus_per_worker`` (unset with
                            node_ids: the GPUs those nodes hold; see :func:`_gpus_on_nodes`)
tenant, run_name            ``RunConfig(name=run_name, storage_path=<root>/<tenant>/runs)``
keep                        ``CheckpointConfig(num_to_keep=keep)``
max_failures                ``FailureConfig(max_failures=...)``; preemptions are not counted
stop_at                     the loop checkpoints and returns before it (lease expiry)
backend ``auto``            ``nccl`` when workers get real CUDA GPUs, else ``gloo``
==========================  ===============================================================

Resubmitting a spec with the same tenant and run name resumes: Ray Train finds its checkpoint
snapshot in the run directory, and the loop falls back to the newest complete checkpoint on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fastgpu.errors import InvalidRequest
from fastgpu.train.checkpoints import CheckpointStore, run_dir
from fastgpu.train.loop import CONFIG_KEY, LoopSettings
from fastgpu.validation import NAME_PATTERN, invalid_from

logger = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"
#: Ray Train's setting (read by its controller, which gets it from the driver's environment).
REPORT_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

TrainFn = Callable[[dict[str, Any]], Any]


class TrainSpec(BaseModel):
    """Everything :func:`run` needs besides the train function and its own config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(pattern=NAME_PATTERN, description="Tenant that owns the run and storage.")
    run_name: str = Field(
        pattern=NAME_PATTERN,
        description="Run name; resubmitting the same name resumes from its latest checkpoint.",
    )
    storage_root: str = Field(
        min_length=1,
        description="Shared directory every node can reach; runs live in "
        "<storage_root>/<tenant>/runs/<run_name>/.",
    )
    workers: int | tuple[int, int] = Field(
        default=1,
        description="Worker count: N (fixed), (min, max) (elastic: starts with what fits, at "
        "least min, grows up to max), or 0 (local mode: in this process, no cluster).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="Forward-pass precision; fp16 adds a GradScaler."
    )
    checkpoint_every: int = Field(default=100, ge=1, description="Checkpoint every N steps.")
    report_every: int = Field(
        default=10,
        ge=1,
        description="Report metrics and poll for preemption every N steps; bounds the steps "
        "lost to a preemption announcement.",
    )
    keep: int = Field(default=3, ge=1, description="Keep the last K checkpoints of the run.")
    use_gpu: bool = Field(default=True, description="Each worker requests GPUs from Ray.")
    gpus_per_worker: float = Field(default=1, gt=0, description="GPUs per worker if use_gpu.")
    cpus_per_worker: float = Field(default=1, ge=0, description="CPUs per worker.")
    node_ids: list[str] | None = Field(
        default=None,
        description="Ray node ids the workers may run on (a lease's nodes); unset: anywhere.",
    )
    max_gpus: int | None = Field(
        default=None,
        ge=1,
        description="GPUs the run may use in total (a lease's GPUs); caps the worker count. "
        "Unset: no cap beyond `workers`.",
    )
    label_selector: dict[str, str] | None = Field(
        default=None,
        description="Extra Ray node-label selector for every worker; merged with node_ids.",
    )
    max_failures: int = Field(
        default=3, ge=-1, description="Worker failures to recover from; -1: unlimited."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto",
        description="torch.distributed backend; auto: nccl on real CUDA GPUs, gloo otherwise.",
    )
    stop_at: float | None = Field(
        default=None,
        description="Unix time by which the run must have stopped (the lease's expiry); the "
        "loop checkpoints and returns stop_margin_s before it. Unset: no deadline.",
    )
    stop_margin_s: float = Field(
        default=60.0, ge=0, description="How long before stop_at to checkpoint and stop."
    )
    elastic_resize_monitor_interval_s: float = Field(
        default=60.0, ge=0, description="How often an elastic run looks for room to grow."
    )
    report_poll_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description=(
            "How often Ray Train's controller takes the workers' reports (its health-check "
            "interval; Ray's default is 2 s). A report waits until the previous one was taken, "
            "so a run makes at most report_every steps per interval: with Ray's default, a "
            "run of 10 ms steps reporting every 10 made 5.5 steps/s (41 at 0.25 s). Lower "
            "means more polls of every worker by Train's controller."
        ),
    )

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("an integer >= 0 or a pair (min, max) with 1 <= min <= max")
            return value
        low, high = value
        if not 1 <= low <= high:
            raise ValueError("a pair (min, max) with 1 <= min <= max")
        return value

    @property
    def run_dir(self) -> Path:
        return run_dir(self.storage_root, self.tenant, self.run_name)


@dataclass(frozen=True)
class Placement:
    """Worker count and node selector of a run; what a lease turns into."""

    num_workers: int | tuple[int, int]
    label_selector: dict[str, str] | None


def node_selector(node_ids: list[str]) -> dict[str, str]:
    """``["a"]`` -> ``{"ray.io/node-id": "a"}``; ``["a", "b"]`` -> ``"in(a,b)"``."""
    if not node_ids:
        raise InvalidRequest("node_ids: got an empty list; expected at least one Ray node id")
    for node in node_ids:
        if not node or any(c in node for c in ",() "):
            raise InvalidRequest(f"node_ids: got {node!r}; expected a Ray node id (hex)")
    unique = sorted(set(node_ids))
    value = unique[0] if len(unique) == 1 else f"in({','.join(unique)})"
    return {NODE_ID_LABEL: value}


def placement_for_lease(
    workers: int | tuple[int, int],
    *,
    node_ids: list[str] | None = None,
    max_gpus: int | None = None,
    gpus_per_worker: float = 1,
    label_selector: Mapping[str, str] | None = None,
) -> Placement:
    """Pure: the worker range capped by the lease's GPUs and the selector pinning its nodes.

    ``workers=(2, 8)`` on a 4-GPU lease gives ``(2, 4)``; a fixed count above the lease is capped
    to what fits. A lease smaller than ``min`` is refused (InvalidRequest): the run could never
    start.
    """
    selector = dict(label_selector or {})
    if node_ids is not None:
        if NODE_ID_LABEL in selector:
            raise InvalidRequest(
                f"label_selector: {NODE_ID_LABEL} is set by node_ids; pass only one of them"
            )
        selector.update(node_selector(node_ids))
    num: int | tuple[int, int] = workers
    if max_gpus is not None and workers != 0:
        fit = int(max_gpus // gpus_per_worker)
        low, high = (workers, workers) if isinstance(workers, int) else workers
        if isinstance(workers, tuple) and fit < low:
            raise InvalidRequest(
                f"workers: min {low} needs {low * gpus_per_worker:g} GPUs; the lease has "
                f"{max_gpus}. Lower min or request a larger lease"
            )
        if fit < 1:
            raise InvalidRequest(f"max_gpus: {max_gpus} GPUs fit no worker of {gpus_per_worker:g}")
        num = min(high, fit) if isinstance(workers, int) else (low, min(high, fit))
    return Placement(num_workers=num, label_selector=selector or None)


def _has_real_gpus() -> bool:
    """True when GPUs Ray schedules are real CUDA devices (not logical ones on a CPU host).

    Real GPU nodes advertise an ``accelerator_type:<model>`` resource; ``ray.init(num_gpus=N)``
    on a CPU machine does not.
    """
    if torch.cuda.is_available():
        return True
    import ray

    if not ray.is_initialized():
        return False
    return any(key.startswith("accelerator_type:") for key in ray.cluster_resources())


def _gpus_on_nodes(node_ids: list[str]) -> int:
    """Total GPUs of the given live nodes.

    Ray Train 2.60's elastic policy sizes the worker group from ready resources cluster-wide,
    ignoring ``label_selector``: pinned to a 2-GPU node with ``(1, 4)`` workers while 4 GPUs are
    free elsewhere, it asks for 4 workers and times out forever. The range must therefore be capped
    to what the selected nodes hold.
    """
    import ray

    wanted = set(node_ids)
    total = sum(
        node.get("Resources", {}).get("GPU", 0)
        for node in ray.nodes()
        if node.get("Alive") and node.get("NodeID") in wanted
    )
    if total < 1:
        raise InvalidRequest(f"node_ids: got {sorted(wanted)}; none of them is alive with GPUs")
    return int(total)


def build_trainer(
    train_fn: TrainFn,
    spec: TrainSpec,
    config: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """A ``TorchTrainer`` for ``spec`` (not started); ``config`` reaches ``train_fn`` merged with
    the loop settings under ``config["_fastgpu"]``; ``callbacks`` are Ray Train user callbacks
    (a sweep's trial passes Tune's report callback)."""
    from ray.train.torch import TorchConfig
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    directory = spec.run_dir
    max_gpus = spec.max_gpus
    if max_gpus is None and spec.node_ids and spec.use_gpu and spec.workers != 0:
        max_gpus = _gpus_on_nodes(spec.node_ids)
    placement = placement_for_lease(
        spec.workers,
        node_ids=spec.node_ids,
        max_gpus=max_gpus,
        gpus_per_worker=spec.gpus_per_worker,
        label_selector=spec.label_selector,
    )
    local = placement.num_workers == 0
    settings = LoopSettings(
        run_dir=str(directory),
        precision=spec.precision,
        checkpoint_every=spec.checkpoint_every,
        report_every=spec.report_every,
        keep=spec.keep,
        local=local,
        stop_at=spec.stop_at,
        stop_margin_s=spec.stop_margin_s,
    )
    resources: dict[str, float] = {"CPU": spec.cpus_per_worker}
    if spec.use_gpu:
        resources["GPU"] = spec.gpus_per_worker
    scaling = ScalingConfig(
        num_workers=placement.num_workers,
        use_gpu=spec.use_gpu and not local,
        resources_per_worker=None if local else resources,
        label_selector=None if local else placement.label_selector,
        elastic_resize_monitor_interval_s=spec.elastic_resize_monitor_interval_s,
    )
    backend = spec.backend
    if backend == "auto":
        backend = "nccl" if spec.use_gpu and not local and _has_real_gpus() else "gloo"
    CheckpointStore(directory, keep=spec.keep).clean_partial()
    return TorchTrainer(
        train_fn,
        train_loop_config={**dict(config or {}), CONFIG_KEY: settings.to_dict()},
        torch_config=TorchConfig(backend=backend),
        scaling_config=scaling,
        run_config=RunConfig(
            name=spec.run_name,
            storage_path=str(directory.parent),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            callbacks=list(callbacks) or None,
        ),
    )


@contextlib.contextmanager
def _report_poll(seconds: float) -> Iterator[None]:
    """Ray Train's controller takes the setting from the driver's environment when ``fit()``
    starts it: set it for the run, then put back what was there."""
    before = os.environ.get(REPORT_POLL_ENV)
    os.environ[REPORT_POLL_ENV] = str(seconds)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(REPORT_POLL_ENV, None)
        else:
            os.environ[REPORT_POLL_ENV] = before


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished run left: its directory, last metrics and newest complete checkpoint."""

    run_dir: Path
    metrics: dict[str, Any]
    checkpoint: Path | None
    result: Any
    """Ray Train's ``Result`` (``None`` never; kept for callers that want Ray's view)."""


def _resolve_builtin(train_fn: TrainFn | str) -> TrainFn:
    if callable(train_fn):
        return train_fn
    from fastgpu.train import classifier

    builtins: dict[str, TrainFn] = {"digits-classifier": classifier.train_fn}
    if train_fn not in builtins:
        raise InvalidRequest(
            f"train_fn: got {train_fn!r}; expected a callable or one of {sorted(builtins)}"
        )
    return builtins[train_fn]


def run(
    train_fn: TrainFn | str,
    *,
    config: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    **spec_fields: Any,
) -> TrainOutcome:
    """Train ``train_fn`` (a Ray Train per-worker function taking ``config``, or the name of a
    built-in such as ``"digits-classifier"``) as described by :class:`TrainSpec` fields.

    Raises :class:`~fastgpu.errors.InvalidRequest` for a bad spec and Ray Train's
    ``TrainingFailedError`` when the run fails beyond ``max_failures``. Needs ``ray.init()``
    (or a reachable cluster) unless ``workers=0``.
    """
    try:
        spec = TrainSpec(**spec_fields)
    except ValidationError as exc:
        raise invalid_from(exc) from None
    trainer = build_trainer(_resolve_builtin(train_fn), spec, config, callbacks)
    with _report_poll(spec.report_poll_s):
        result = trainer.fit()
    latest = CheckpointStore(spec.run_dir, keep=spec.keep).latest()
    return TrainOutcome(
        run_dir=spec.run_dir,
        metrics=dict(result.metrics or {}),
        checkpoint=latest.path if latest is not None else None,
        result=result,
    )
