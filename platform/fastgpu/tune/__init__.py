"""Hyperparameter sweeps on Ray Tune inside a tenant's lease (issue 10).

``run_on_lease`` runs a sweep on a lease of the tenant's own Ray cluster (:mod:`.runner` has the
rules); :class:`SweepSpec` is what a sweep is (:mod:`.spec`). A sweep is a job submitted with
``fastgpu sweep submit`` (or ``Client.submit_job(..., sweep=...)``) whose entrypoint calls
``run_on_lease``; see docs/tune.md. The runner (Ray Tune, torch) is imported on first use, so
the server, which validates sweeps, never loads it.
"""

from typing import Any

from fastgpu.domain.sweep import SweepSpec, from_env

__all__ = [
    "OCCUPANCY_FILE",
    "SweepRun",
    "SweepSpec",
    "from_env",
    "run_on_lease",
    "run_train_trial",
]


def __getattr__(name: str) -> Any:
    if name in ("OCCUPANCY_FILE", "SweepRun", "run_on_lease"):
        from fastgpu.tune import runner

        return getattr(runner, name)
    if name == "run_train_trial":
        from fastgpu.tune.train_trial import run_train_trial

        return run_train_trial
    raise AttributeError(name)
