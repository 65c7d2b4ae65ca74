"""The demo's sweep (``make demo``, on the tenant-cluster platform of :mod:`.demo_isolation`):
vision tunes the example classifier with ``jobs/tune_classifier.py`` as a sweep on a 2-GPU lease
(4 trials, Optuna + ASHA), the best checkpoint is registered as ``vision/digits:v1``, and nlp
cannot see it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def run(console: Console, vision: Any, nlp: Any) -> dict[str, Any] | None:
    """Run the sweep; return the registered model (None if the job did not succeed)."""
    if not (JOBS / "tune_classifier.py").is_file():
        console.print("[bold yellow]skipped[/]: jobs/tune_classifier.py is not in this checkout")
        return None
    t0 = time.monotonic()
    job = vision.submit_job(
        "python tune_classifier.py",
        gpus=2,
        gpu_type="A100",
        duration="10m",
        working_dir=JOBS,
        env={"EPOCHS": "3"},
        sweep={
            "name": "demo",
            "trials": 4,
            "cpus_per_trial": 0.25,
            "max_t": 3,
            "grace_period": 1,
            "register_as": "digits",
        },
    )
    console.print(f"vision's sweep 'demo' runs as job {job['id']} on a 2-GPU lease ...")
    deadline = time.monotonic() + 600
    while (status := vision.job_status(job["id"]))["status"] not in (
        "SUCCEEDED",
        "FAILED",
        "STOPPED",
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("the sweep did not finish in 600 s")
        time.sleep(1)
    logs = vision.job_logs(job["id"])
    if status["status"] != "SUCCEEDED":
        console.print(logs[-3000:])
        raise RuntimeError(f"the sweep's job {status['status']}")
    line = next(x for x in reversed(logs.splitlines()) if x.startswith("SWEEP "))
    summary = json.loads(line[len("SWEEP ") :])
    model = vision.get_model("digits:latest")
    t = Table(title=f"sweep 'demo': {sum(summary['trials'].values())} trials in "
              f"{time.monotonic() - t0:.0f} s; the best, registered")  # fmt: skip
    t.add_column("field")
    t.add_column("value")
    cfg = model["config"]
    for field, value in (
        ("model", model["ref"]),
        ("val_loss", f"{model['metrics']['val_loss']:.4f}"),
        ("lr", f"{cfg['lr']:.2e}"),
        ("width", str(cfg["width"])),
        ("weight_decay", f"{cfg['weight_decay']:.1e}"),
        ("precision", str(cfg["precision"])),
        ("files", f"{model['path']} (sha256 {model['content_hash'][:12]}...)"),
    ):
        t.add_row(field, value)
    console.print(t)
    try:
        nlp.get_model("vision/digits:v1")
    except Exception as exc:  # another tenant's model: 404, as if absent
        console.print(f"nlp asks for vision/digits:v1: {exc}")
    return dict(model)
