"""Run a Ray Tune sweep on a platform lease, inside the tenant's own Ray cluster.

How the rules of a sweep are kept:

* **Only on the lease, never more than it holds.** Each trial's placement group asks for the
  lease's custom resource (``fastgpu_lease_<id>``, one unit per leased GPU, advertised only by
  the lease's raylets) as well as its GPUs. Ray cannot place a trial elsewhere, nor more trials
  than the lease has GPUs for; no ``max_concurrent_trials`` arithmetic can overshoot (the
  overshoot measured on Ray 2.60 came from placement groups created ahead of need, which here
  wait for resources that are not there).
* **Elastic.** When the lease grows, its new raylets bring more of the resource and pending
  trials start. When a shrink, a preemption or the expiry is announced, the sweep stops Tune the
  way Ctrl-C does (SIGUSR1 to this process: Tune saves the experiment), reports the checkpoint
  (the platform then takes the GPUs back), and, if the lease lives on, restores the experiment
  with ``Tuner.restore``: unfinished trials continue from their last reported checkpoint, the
  searcher and ASHA keep their state. Trials restored onto a different lease (a resubmission)
  are re-pointed at the new lease's resource before they start (:class:`LeaseCallback`).
* **Resume.** The experiment lives in ``<storage>/<tenant>/sweeps/<name>/``; a sweep that finds
  it there (killed driver, preempted lease, restarted server) restores it: finished trials stay
  finished.
* **Registry.** At the end the best trial's best checkpoint (by the sweep's metric) is
  registered as the next version of ``register_as``, with its config, metrics and lineage.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastgpu.domain.lease import lease_resource
from fastgpu.domain.sweep import SweepSpec, from_env
from fastgpu.errors import FastGPUError
from fastgpu.sdk import Client
from fastgpu.train.lease import LeaseBinding, acquire_lease, await_lease_gpus, lease_change

#: Samples of (time, GPUs held by running trials, GPUs the lease holds), one JSON per line.
OCCUPANCY_FILE = "fastgpu_occupancy.jsonl"


@dataclass
class SweepRun:
    """What a sweep did: per segment (GPUs, reason it ended), trial counts, the best trial and
    the registered model (if any). ``state`` is ``finished`` or ``paused`` (resubmit to
    continue)."""

    state: str
    segments: list[tuple[int, str]] = field(default_factory=list)
    trials: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    path: str = ""
    #: Seconds inside Tune (all segments), and the leased GPU-seconds over them.
    tune_s: float = 0.0
    gpu_s: float = 0.0


# The lease the sweep runs on now, read by the callback (Tune pickles callbacks with the
# experiment; they find the current lease here, in this driver process).
_CURRENT: dict[str, Any] = {}


def _bundle(spec: SweepSpec, lease_id: str) -> list[dict[str, float]]:
    """A trial's placement group: the lease's units and its GPUs; for a Ray Train trial the
    units only (its Train workers take the GPUs on the lease's raylets, by label)."""
    g = float(spec.gpus_per_trial)
    bundle = {"CPU": float(spec.cpus_per_trial), lease_resource(lease_id): g}
    return [bundle if spec.train_trials else {**bundle, "GPU": g}]


def _callback_base() -> type:
    from ray.tune import Callback

    return Callback


class LeaseCallback(_callback_base()):  # type: ignore[misc]
    """Keeps pending trials on the current lease and samples occupancy."""

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _forget_train_groups(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _forget_train_groups(trial)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        lease_id = _CURRENT.get("lease_id")
        spec: SweepSpec | None = _CURRENT.get("spec")
        if lease_id is None or spec is None:
            return
        _sweep_train_groups()
        want = lease_resource(lease_id)
        for trial in trials:
            if trial.status == "PENDING":
                pgf = trial.placement_group_factory
                if pgf is None or want not in (pgf.bundles[0] if pgf.bundles else {}):
                    trial.update_resources(PlacementGroupFactory(_bundle(spec, lease_id)))
        now = time.time()
        if now - _CURRENT.get("sampled", 0.0) >= 0.5:
            _CURRENT["sampled"] = now
            running = sum(1 for t in trials if t.status == "RUNNING")
            line = {"t": now, "used": running * spec.gpus_per_trial, "held": _lease_gpus()}
            with open(_CURRENT["occupancy"], "a") as f:
                f.write(json.dumps(line) + "\n")


#: How long after a Train trial ended its folder is still swept for worker groups: its Train
#: controller may start another group (its own retry) before Tune's stop reaches it.
SWEEP_AFTER_S = 60.0


def _forget_train_groups(trial: Any) -> None:
    """A Train trial is over: remove its worker groups' placement groups (ray#54305), now and,
    until :data:`SWEEP_AFTER_S` later, at every Tune step (see :func:`_sweep_train_groups`)."""
    spec: SweepSpec | None = _CURRENT.get("spec")
    if spec is not None and spec.train_trials and trial.path:
        _CURRENT.setdefault("ended", {})[trial.path] = time.monotonic() + SWEEP_AFTER_S
        _sweep_train_groups(force=True)


def _sweep_train_groups(force: bool = False) -> None:
    from fastgpu.tune.train_trial import remove_recorded_groups

    ended: dict[str, float] = _CURRENT.get("ended", {})
    now = time.monotonic()
    if not ended or (not force and now - _CURRENT.get("swept", 0.0) < 0.5):
        return
    _CURRENT["swept"] = now
    for path, until in list(ended.items()):
        remove_recorded_groups(path)
        if now > until:
            del ended[path]


def _lease_gpus() -> float:
    """What the cluster holds for the current lease now (its raylets' resource), the true cap:
    a shrink's raylets stay until the sweep's checkpoint, so the lease's own count leads it."""
    import ray

    return float(ray.cluster_resources().get(lease_resource(_CURRENT["lease_id"]), 0.0))


class _Watcher(threading.Thread):
    """Polls the lease. A grow needs nothing (the new raylets' resource starts pending
    trials); a shrink, a preemption or the lease's end stops Tune as Ctrl-C would (SIGUSR1 to
    this process)."""

    def __init__(self, binding: LeaseBinding, poll_s: float) -> None:
        super().__init__(daemon=True, name="fastgpu-sweep-watch")
        self._binding, self._poll_s = binding, poll_s
        self._stop = threading.Event()
        self.reason: str | None = None
        #: The most GPUs the lease held while this segment ran.
        self.gpus = binding.gpus

    def run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                lease = self._binding.lease.refresh()
            except FastGPUError:
                continue
            if lease.held and not lease.preempt_at and lease.held_gpus >= self.gpus:
                self.gpus = lease.held_gpus
                continue
            self.reason = lease_change(self._binding, lease) or "lease shrinking"
            os.kill(os.getpid(), signal.SIGUSR1)
            return

    def stop(self) -> None:
        self._stop.set()


def _tune_config(spec: SweepSpec, max_concurrent: int) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search: Any = OptunaSearch(seed=spec.seed)
    else:
        search = BasicVariantGenerator(random_state=spec.seed)
    scheduler: Any = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=spec.max_t,
            grace_period=min(spec.grace_period, spec.max_t),
            reduction_factor=2,
        )
        if spec.scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=search,
        scheduler=scheduler,
        num_samples=1 if spec.search == "grid" else spec.trials,
        max_concurrent_trials=max(1, max_concurrent),
        # A finished trial's actor (and its placement group) runs the next; Tune cannot reset an
        # actor that ran a Ray Train run.
        reuse_actors=not spec.train_trials,
    )


def _tuner(
    trainable: Any,
    param_space: Mapping[str, Any],
    spec: SweepSpec,
    binding: LeaseBinding,
    folder: Path,
    max_gpus: int,
) -> Any:
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    wrapped = tune.with_resources(trainable, PlacementGroupFactory(_bundle(spec, binding.lease.id)))
    if tune.Tuner.can_restore(str(folder)):
        return tune.Tuner.restore(
            str(folder),
            wrapped,
            resume_unfinished=True,
            resume_errored=True,
            param_space=dict(param_space),
        )
    return tune.Tuner(
        wrapped,
        param_space=dict(param_space),
        tune_config=_tune_config(spec, max_gpus // spec.gpus_per_trial),
        run_config=RunConfig(
            name=spec.name,
            storage_path=str(folder.parent),
            callbacks=[LeaseCallback()],
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.mode,
            ),
            verbose=1,
        ),
    )


def run_on_lease(
    trainable: Callable[[dict[str, Any]], Any],
    param_space: Mapping[str, Any],
    *,
    gpus: int | tuple[int, int] | None = None,
    gpu_type: str | None = None,
    duration: str | float | None = "1h",
    client: Client | None = None,
    request_id: str | None = None,
    poll_s: float = 1.0,
    sweep: SweepSpec | None = None,
    **overrides: Any,
) -> SweepRun:
    """Run a sweep of ``trainable`` (a Tune function trainable that reports ``spec.metric``
    with a checkpoint) over ``param_space`` on a lease of ``gpus`` (N or (MIN, MAX)).

    Inside a job submitted with ``fastgpu sweep submit``, ``gpus``, ``gpu_type``, ``duration``,
    the request id and the sweep come from the job's environment; ``overrides`` change fields
    of the sweep (:class:`~fastgpu.tune.SweepSpec`)."""
    spec = sweep or from_env(**overrides)
    client = client or Client()
    if gpus is None:
        low, _, high = os.environ.get("FASTGPU_GPUS", "").partition(":")
        if not low:
            raise FastGPUError("gpus: give gpus=N or (MIN, MAX), or submit with --gpus")
        gpus = (int(low), int(high or low))
    gpu_type = gpu_type or os.environ.get("FASTGPU_GPU_TYPE")
    if "FASTGPU_DURATION" in os.environ and duration == "1h":
        duration = float(os.environ["FASTGPU_DURATION"])
    request_id = request_id or os.environ.get("FASTGPU_LEASE_REQUEST_ID")
    max_gpus = gpus[1] if isinstance(gpus, tuple) else gpus
    binding = acquire_lease(
        gpus,
        gpu_type,
        duration,
        spec.name,
        client=client,
        request_id=request_id,
        workload=f"sweep:{spec.name}",
    )
    folder = Path(binding.storage_root) / binding.tenant / "sweeps" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    # The job's working_dir copy can vanish under the driver: on one machine every raylet of
    # the cluster shares the session folder, and a raylet's runtime-env agent removes the
    # package when its own workers are done with it. Tune resolves paths against the current
    # folder, so run from the sweep's own.
    os.chdir(folder)
    run = SweepRun(state="running", path=str(folder))
    try:
        while True:
            _CURRENT.update(
                lease_id=binding.lease.id,
                spec=spec,
                occupancy=str(folder / OCCUPANCY_FILE),
            )
            watcher = _Watcher(binding, poll_s)
            watcher.start()
            began = time.monotonic()
            try:
                results = _tuner(trainable, param_space, spec, binding, folder, max_gpus).fit()
            finally:
                watcher.stop()
                spent = time.monotonic() - began
                run.tune_s += spent
                run.gpu_s += spent * watcher.gpus
            if spec.train_trials:  # no trial runs now: whatever a Train trial left, goes
                from fastgpu.tune.train_trial import remove_recorded_groups

                for trial_dir in folder.iterdir():
                    remove_recorded_groups(trial_dir)
            lease = binding.lease.refresh()
            run.segments.append((watcher.gpus, watcher.reason or "finished"))
            if watcher.reason is None:
                return _finish(run, results, spec, client, binding)
            try:
                lease.report_checkpoint()  # trials' checkpoints are saved: the GPUs may go
            except FastGPUError:
                lease = lease.refresh()  # it ended meanwhile (expired, a raylet lost)
            if not lease.held or lease.preempt_at:
                run.state = "paused"
                return run
            await_lease_gpus(lease.id, lease.held_gpus)
            binding = replace(
                binding, lease=lease, gpus=lease.held_gpus, node_ids=list(lease.nodes)
            )
    finally:
        _CURRENT.clear()
        binding.release()


def _finish(
    run: SweepRun, results: Any, spec: SweepSpec, client: Client, binding: LeaseBinding
) -> SweepRun:
    run.state = "finished"
    counts: dict[str, int] = {}
    for r in results:
        key = "error" if r.error else "done"
        counts[key] = counts.get(key, 0) + 1
    run.trials = counts
    try:
        best = results.get_best_result(spec.metric, spec.mode, scope="all")
    except (RuntimeError, ValueError, KeyError):
        return run  # no trial reported the metric
    try:
        found = best.get_best_checkpoint(spec.metric, spec.mode) or best.checkpoint
    except RuntimeError:  # no Tune checkpoint: a Ray Train trial reports its run's own
        found = None
    ckpt_path = found.path if found is not None else (best.metrics or {}).get("checkpoint_path")
    metrics = {k: v for k, v in (best.metrics or {}).items() if isinstance(v, int | float | str)}
    trial_id = str(metrics.get("trial_id", ""))
    run.best = {"config": best.config, "metrics": metrics, "trial": trial_id}
    if spec.register_as and ckpt_path:
        run.model = client.register_model(
            spec.register_as,
            ckpt_path,
            config={k: v for k, v in best.config.items() if _plain(v)},
            metrics={k: metrics[k] for k in (spec.metric, "training_iteration") if k in metrics},
            lineage={
                "sweep": spec.name,
                "trial": trial_id,
                "job": os.environ.get("FASTGPU_JOB_ID"),
                "lease": binding.lease.id,
            },
            request_id=f"sweep-{spec.name}-{trial_id}-{Path(ckpt_path).name}",
        )
    return run


def _plain(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
