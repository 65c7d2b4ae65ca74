"""What a sweep is: its name, trial count and shape, metric, searcher and early stopping
(:mod:`fastgpu.tune` runs it).

One definition, used by the CLI (``fastgpu sweep submit``), the HTTP API (``JobCreate.sweep``;
the server validates it and hands it to the job as ``FASTGPU_SWEEP``) and the SDK
(:func:`fastgpu.tune.run_on_lease`).
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from fastgpu.errors import InvalidRequest
from fastgpu.validation import NAME_PATTERN, invalid_from

ENV = "FASTGPU_SWEEP"


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(
        pattern=NAME_PATTERN,
        description="The sweep's name: its folder <storage>/<tenant>/sweeps/<name>/; "
        "resubmitting the same name resumes it.",
    )
    trials: StrictInt = Field(default=8, ge=1, le=10_000, description="Trials to sample.")
    gpus_per_trial: StrictInt = Field(default=1, ge=1, le=64, description="GPUs of each trial.")
    cpus_per_trial: StrictFloat | StrictInt = Field(
        default=0.5, gt=0, le=256, description="CPUs of each trial (on the lease's raylets)."
    )
    metric: StrictStr = Field(
        default="val_loss", min_length=1, max_length=64, description="What trials report."
    )
    mode: Literal["min", "max"] = Field(default="min", description="Minimise or maximise it.")
    search: Literal["optuna", "random", "grid"] = Field(
        default="optuna", description="Optuna's TPE, random sampling, or the grid as given."
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="ASHA early stopping, or run every trial to the end."
    )
    max_t: StrictInt = Field(default=20, ge=1, le=1_000_000, description="Reports per trial.")
    grace_period: StrictInt = Field(
        default=2, ge=1, le=1_000_000, description="Reports before ASHA may stop a trial."
    )
    seed: StrictInt = Field(default=0, ge=0, le=2**31 - 1, description="Searcher seed.")
    register_as: StrictStr | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Register the best trial's best checkpoint as this model (next version).",
    )
    train_trials: bool = Field(
        default=False,
        description="Each trial is a Ray Train run of gpus_per_trial workers "
        "(fastgpu.tune.run_train_trial): its Tune actor holds the lease's units, its workers "
        "the GPUs.",
    )
    max_failures: StrictInt = Field(
        default=3, ge=0, le=100, description="Restarts of a failed trial from its checkpoint."
    )

    def to_env(self) -> str:
        return self.model_dump_json()


def from_env(**overrides: object) -> SweepSpec:
    """The sweep a job was submitted with (``FASTGPU_SWEEP``), with ``overrides`` applied."""
    from pydantic import ValidationError

    raw = os.environ.get(ENV)
    base: dict[str, object] = {}
    if raw:
        try:
            base = json.loads(raw)
        except ValueError:
            raise InvalidRequest(f"{ENV}: not valid JSON") from None
    data = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc, "sweep") from None
