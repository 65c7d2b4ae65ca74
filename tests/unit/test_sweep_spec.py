"""What a sweep is, checked at the boundary: the spec's fields, the job that carries it (a
lease is required and must fit a trial), and how the job's environment hands it over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fastgpu.domain.sweep import ENV, SweepSpec, from_env
from fastgpu.errors import InvalidRequest
from fastgpu.service.models import JobCreate

from .test_services import _world


def test_defaults_and_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SweepSpec(name="digits")
    assert (spec.search, spec.scheduler, spec.metric, spec.mode) == (
        "optuna",
        "asha",
        "val_loss",
        "min",
    )
    monkeypatch.setenv(ENV, SweepSpec(name="s", trials=4, register_as="m").to_env())
    got = from_env(trials=6, metric=None)
    assert (got.name, got.trials, got.register_as, got.metric) == ("s", 6, "m", "val_loss")


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"trials": 0}, "trials"),
        ({"trials": True}, "trials"),
        ({"gpus_per_trial": 0}, "gpus_per_trial"),
        ({"mode": "up"}, "mode"),
        ({"search": "bayes"}, "search"),
        ({"scheduler": "pbt"}, "scheduler"),
        ({"register_as": "x y"}, "register_as"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        SweepSpec.model_validate({"name": "s", **fields})
    assert bad in str(err.value)


def test_from_env_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "{not json")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        from_env()
    monkeypatch.setenv(ENV, json.dumps({"name": "s", "trials": -1}))
    with pytest.raises(InvalidRequest, match=r"sweep\.trials"):
        from_env()


def test_a_sweep_job_needs_a_lease_that_fits_a_trial(tmp_path: Path) -> None:
    w = _world(tmp_path)
    p = w.tenant("acme")
    no_lease = JobCreate.model_validate({"entrypoint": "python t.py", "sweep": {"name": "s"}})
    with pytest.raises(InvalidRequest, match="a sweep runs on a lease"):
        w.svc.jobs.submit(p, no_lease)
    too_big = JobCreate.model_validate(
        {
            "entrypoint": "python t.py",
            "lease": {"gpus": 2, "gpu_type": "A100"},
            "sweep": {"name": "s", "gpus_per_trial": 4},
        }
    )
    with pytest.raises(InvalidRequest, match="gpus_per_trial"):
        w.svc.jobs.submit(p, too_big)
    with pytest.raises(ValidationError, match="sweep"):
        JobCreate.model_validate({"entrypoint": "x", "sweep": {"name": "s", "trials": "many"}})


def test_a_trials_bundle_holds_the_leases_units_and_its_gpus_unless_train_runs_them() -> None:
    from fastgpu.tune.runner import _bundle

    plain = _bundle(SweepSpec(name="s", gpus_per_trial=2, cpus_per_trial=0.5), "L1")
    assert plain == [{"CPU": 0.5, "GPU": 2.0, "fastgpu_lease_L1": 2.0}]
    train = _bundle(SweepSpec(name="s", gpus_per_trial=2, train_trials=True), "L1")
    assert train == [{"CPU": 0.5, "fastgpu_lease_L1": 2.0}]  # its Train workers take the GPUs
