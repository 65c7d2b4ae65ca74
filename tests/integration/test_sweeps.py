"""Sweeps (issue 10) on a server with tenant clusters: Ray Tune trials run only on the sweep's
lease and never hold more GPUs than it has; the best checkpoint lands in the model registry,
where another tenant can neither see nor read it; a stopped sweep resumes by name, keeping its
finished trials."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fastgpu.errors import NotFound
from fastgpu.registry import verify
from fastgpu.sdk import Client
from tests.integration.platform_fixtures import Platform, wait_until
from tests.integration.test_pool_server import pool  # noqa: F401 - the module's server

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="tenants' own OS users need root"),
]

REPO = Path(__file__).resolve().parents[2]
DONE = ("SUCCEEDED", "FAILED", "STOPPED")


def _submit(client: Client, name: str, trials: int, env: dict[str, str], **sweep: Any) -> Any:
    return client.submit_job(
        "python tune_classifier.py",
        gpus=2,
        gpu_type="A100",
        duration="15m",
        working_dir=REPO / "jobs",
        env=env,
        sweep={"name": name, "trials": trials, "cpus_per_trial": 0.25, **sweep},
    )


def _finished(client: Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    return dict(
        wait_until(
            lambda: (s := client.job_status(job_id))["status"] in DONE and s,
            timeout=timeout,
            interval=0.5,
        )
    )


def _summary(logs: str) -> dict[str, Any]:
    line = next(x for x in reversed(logs.splitlines()) if x.startswith("SWEEP "))
    return dict(json.loads(line[len("SWEEP ") :]))


def _trial_dirs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("trainable")}


def test_a_sweep_stays_inside_its_lease_and_registers_its_best_model(
    pool: Platform,  # noqa: F811
) -> None:
    alpha = pool.client(pool.tenant("tuner", A100=2))
    beta = pool.client(pool.tenant("rival", A100=1))
    me = alpha.whoami()
    job = _submit(
        alpha,
        "digits",
        6,
        {"EPOCHS": "4", "EPOCH_SLEEP_S": "0.5"},
        register_as="digits",
        max_t=4,
        grace_period=1,
    )
    assert job["sweep"] == "digits"
    final = _finished(alpha, job["id"])
    logs = alpha.job_logs(job["id"])
    assert final["status"] == "SUCCEEDED", logs[-4000:]
    summary = _summary(logs)
    assert summary["state"] == "finished"
    assert summary["trials"] == {"done": 6}
    assert final["lease"]["workload"] == "sweep:digits"
    assert final["lease"]["state"] == "RELEASED"

    # The cap: sampled while the sweep ran, running trials never held more than the lease.
    folder = Path(me["storage_root"]) / me["storage_key"] / "sweeps" / "digits"
    samples = [json.loads(x) for x in (folder / "fastgpu_occupancy.jsonl").read_text().splitlines()]
    assert samples
    assert all(s["used"] <= s["held"] == 2 for s in samples)
    assert max(s["used"] for s in samples) == 2  # and it used what it had
    assert len(_trial_dirs(folder)) == 6

    # The registry: the best trial's best checkpoint, with lineage; loadable; the tenant's own.
    model = alpha.get_model("digits:latest")
    assert model["ref"] == "tuner/digits:v1"
    assert model["lineage"]["sweep"] == "digits"
    assert model["lineage"]["job"] == job["id"]
    assert model["metrics"]["val_loss"] == pytest.approx(summary["best"]["metrics"]["val_loss"])
    assert set(model["config"]) >= {"lr", "width", "weight_decay", "precision"}
    verify(model["uri"], model["content_hash"])
    import torch

    from fastgpu.train.classifier import load_digits_split, load_for_inference, predict

    net, meta = load_for_inference(model["uri"])
    assert meta["model_config"]["hidden"][0] == model["config"]["width"]
    data = load_digits_split(0)
    pixels = data.x_test * torch.tensor(data.std) + torch.tensor(data.mean)
    right = sum(
        p == str(int(y)) for p, y in zip(predict(net, meta, pixels), data.y_test, strict=True)
    )
    assert right / len(data.y_test) > 0.5
    assert Path(model["uri"]).stat().st_uid != 0  # published by the tenant's own user
    assert alpha.sweep_status("digits")["models"] == ["tuner/digits:v1"]

    # Another tenant: not through the API, not from inside its own job.
    with pytest.raises(NotFound):
        beta.get_model("tuner/digits:v1")
    assert beta.list_models() == []
    probe = beta.submit_job(
        "python -c \"import sys,os; p=sys.argv[1]; print('LIS' + 'TED', os.listdir(p))\" "
        + model["uri"]
    )
    done = _finished(beta, probe["id"], timeout=300)
    out = beta.job_logs(probe["id"])
    assert done["status"] == "FAILED", out[-2000:]
    assert "PermissionError" in out
    assert "LISTED" not in out  # (the command line, echoed in the logs, spells it apart)


def test_a_stopped_sweep_resumes_by_name_keeping_finished_trials(
    pool: Platform,  # noqa: F811
) -> None:
    client = pool.client(pool.tenant("resumer", A100=2))
    me = client.whoami()
    folder = Path(me["storage_root"]) / me["storage_key"] / "sweeps" / "again"
    env = {"EPOCHS": "3", "EPOCH_SLEEP_S": "2"}
    first = _submit(client, "again", 6, env, search="random", scheduler="fifo", max_t=3)

    def some_done() -> bool:
        return len(_trial_dirs(folder)) >= 4 if folder.is_dir() else False

    wait_until(some_done, timeout=400, interval=1.0)
    before = _trial_dirs(folder)
    client.stop_sweep("again")
    assert _finished(client, first["id"], timeout=120)["status"] == "STOPPED"

    second = _submit(client, "again", 6, env, search="random", scheduler="fifo", max_t=3)
    final = _finished(client, second["id"])
    logs = client.job_logs(second["id"])
    assert final["status"] == "SUCCEEDED", logs[-4000:]
    summary = _summary(logs)
    assert summary["trials"] == {"done": 6}  # six in all: none sampled twice
    after = _trial_dirs(folder)
    assert before <= after
    assert len(after) == 6
    assert len(client.sweep_status("again")["submissions"]) == 2


def test_an_elastic_sweep_runs_more_trials_when_its_lease_grows_and_pauses_to_shrink(
    pool: Platform,  # noqa: F811
) -> None:
    """A sweep on an elastic 2..4 lease: when another tenant frees 2 GPUs, the lease grows and
    4 trials run at once without restarting any; when that tenant asks for them back, the sweep
    stops Tune, reports its checkpoint, the raylets go, and it goes on with 2 trials at a time
    from the trials' checkpoints. At every sample the running trials fit in what the lease's
    raylets hold."""
    holder = pool.client(pool.tenant("keeper", A100=2))
    grower = pool.client(pool.tenant("widener", borrowing_limit=2, A100=2))
    held = holder.request_lease(2, "A100", "10m", wait=True, timeout=180)
    me = grower.whoami()
    folder = Path(me["storage_root"]) / me["storage_key"] / "sweeps" / "wide"
    samples_file = folder / "fastgpu_occupancy.jsonl"

    def samples() -> list[dict[str, float]]:
        text = samples_file.read_text() if samples_file.exists() else ""
        return [json.loads(x) for x in text.splitlines() if x.strip()]

    job = grower.submit_job(
        "python tune_classifier.py",
        gpus=4,
        min_gpus=2,
        gpu_type="A100",
        duration="15m",
        working_dir=REPO / "jobs",
        env={"EPOCHS": "6", "EPOCH_SLEEP_S": "1.5"},
        sweep={
            "name": "wide",
            "trials": 10,
            "cpus_per_trial": 0.25,
            "search": "random",
            "scheduler": "fifo",
            "max_t": 6,
        },
    )
    wait_until(lambda: any(s["used"] == 2 for s in samples()), timeout=300, interval=1.0)
    held.release()
    wait_until(lambda: any(s["used"] == 4 for s in samples()), timeout=120, interval=0.5)
    back = holder.request_lease(2, "A100", "10m", wait=False)
    back = back.wait(timeout=240)
    assert back.state == "RESERVED"
    final = _finished(grower, job["id"])
    logs = grower.job_logs(job["id"])
    assert final["status"] == "SUCCEEDED", logs[-4000:]
    summary = _summary(logs)
    assert summary["trials"] == {"done": 10}
    assert [n for n, _ in summary["segments"]] == [4, 2]
    assert "shrink" in summary["segments"][0][1] or "resized" in summary["segments"][0][1]
    got = samples()
    assert all(s["used"] <= s["held"] for s in got), [s for s in got if s["used"] > s["held"]]
    after_shrink = [s for s in got if s["t"] > back_time(back)]
    assert after_shrink
    assert max(s["used"] for s in after_shrink) <= 2
    holder.release_lease(back.id)


def back_time(lease: Any) -> float:
    from fastgpu.timeutil import parse_iso

    return parse_iso(lease.data["reserved_at"], "reserved_at")


def test_trials_that_are_ray_train_runs_share_the_lease(pool: Platform) -> None:  # noqa: F811
    """Each trial is a 2-worker Ray Train run (train_trials): the trial's Tune actor holds the
    lease's units, its Train workers the GPUs on the lease's raylets. ASHA stops trials early;
    the next trial's workers then find the GPUs free (ray#54305), and the sweep finishes."""
    client = pool.client(pool.tenant("trainer", A100=2))
    me = client.whoami()
    job = client.submit_job(
        "python tune_train_job.py",
        gpus=2,
        gpu_type="A100",
        duration="15m",
        working_dir=REPO / "tests" / "integration" / "job_scripts",
        sweep={
            "name": "ddp",
            "trials": 3,
            "gpus_per_trial": 2,
            "cpus_per_trial": 0.25,
            "metric": "loss",
            "train_trials": True,
            "max_t": 8,
            "grace_period": 1,
            "register_as": "ddp-model",
        },
    )
    final = _finished(client, job["id"])
    logs = client.job_logs(job["id"])
    assert final["status"] == "SUCCEEDED", logs[-4000:]
    summary = _summary(logs)
    assert summary["trials"] == {"done": 3}
    assert summary["best"]["metrics"]["world"] == 2  # data-parallel on the lease's 2 GPUs
    runs = Path(me["storage_root"]) / me["storage_key"] / "runs"
    trial_runs = [p for p in runs.iterdir() if p.name.startswith("ddp-")]
    assert len(trial_runs) == 3
    checkpoints = list(runs.glob("ddp-*/step-*/fastgpu_checkpoint.json"))
    assert checkpoints  # each Train run checkpoints in its own folder (resume by trial)
    # ASHA stopped a trial early (fewer steps checkpointed), and a trial still ran after it:
    # the early-stopped trial's Train workers gave their GPUs back.
    steps = sorted(len(list(r.glob("step-*"))) for r in trial_runs)
    assert steps[0] < steps[-1], steps
    occupancy = runs.parent / "sweeps" / "ddp" / "fastgpu_occupancy.jsonl"
    samples = [json.loads(x) for x in occupancy.read_text().splitlines()]
    assert all(s["used"] <= s["held"] == 2 for s in samples)
    model = client.get_model("ddp-model:latest")  # the best trial's Train checkpoint
    assert model["lineage"]["sweep"] == "ddp"
    verify(model["uri"], model["content_hash"])
