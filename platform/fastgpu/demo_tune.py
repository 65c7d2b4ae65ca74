"""The demo's sweep and endpoint (``make demo``, on the tenant-cluster platform of
:mod:`.demo_isolation`): vision tunes the example classifier with ``jobs/tune_classifier.py`` as a
sweep on a 2-GPU lease (4 trials, Optuna + ASHA), the best checkpoint is registered as
``vision/digits:v1`` (nlp cannot see it), then deployed as an authenticated endpoint that
scales from zero, and called with curl (the token in a 0600 header file, never on a command
line)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def finished_job(console: Console, client: Any, job_id: str, timeout_s: float, what: str) -> str:
    """Wait for a job to end; its logs if it SUCCEEDED, else print their end and raise."""
    deadline = time.monotonic() + timeout_s
    while (status := client.job_status(job_id))["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish in {timeout_s:.0f} s")
        time.sleep(1)
    logs = str(client.job_logs(job_id))
    if status["status"] != "SUCCEEDED":
        console.print(logs[-3000:])
        raise RuntimeError(f"{what} {status['status']}")
    return logs


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
    logs = finished_job(console, vision, job["id"], 600, "the sweep's job")
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


def serve(console: Console, vision: Any, model: dict[str, Any]) -> None:
    """Deploy the registered model as endpoint ``digits`` (0..1 replicas) and call it with curl:
    with its token (retried while it starts from zero replicas), then without one (401)."""
    import os
    import subprocess
    import tempfile

    from sklearn.datasets import load_digits

    t0 = time.monotonic()
    ep = vision.deploy(model["ref"], "digits", gpus_per_replica=1, min_replicas=0, max_replicas=1)
    console.print(
        f"deployed {model['ref']} as {ep['url']} (scales from zero; its token was shown once "
        "and is stored hashed)"
    )
    digits = load_digits()
    with tempfile.TemporaryDirectory() as tmp:
        header = Path(tmp) / "auth"
        fd = os.open(header, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, f"Authorization: Bearer {ep['token']}\n".encode())
        os.close(fd)
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"inputs": digits.data[:3].tolist()}))
        out = Path(tmp) / "answer.json"
        base = ["curl", "-s", "-H", "content-type: application/json", "--data", f"@{body}",
                "-o", str(out), "-w", "%{http_code}", "--max-time", "60"]  # fmt: skip

        def curl(*extra: str) -> str:
            done = subprocess.run(
                [*base, *extra, ep["url"]], capture_output=True, text=True, check=False
            )
            return done.stdout.strip()

        deadline = time.monotonic() + 240
        while (code := curl("-H", f"@{header}")) != "200":  # 503 while it starts from zero
            if time.monotonic() > deadline:
                said = out.read_text() if out.exists() else ""
                console.print(f"[bold red]the endpoint answered[/] {code}: {said}")
                raise RuntimeError("the endpoint did not answer")
            time.sleep(2)
        outputs = json.loads(out.read_text())["outputs"]
        first_s = time.monotonic() - t0
        bare = curl()
    console.print(
        f"curl with the endpoint's token: {outputs} for digits "
        f"{[int(y) for y in digits.target[:3]]} (first answer {first_s:.0f} s after deploy, "
        f"from zero replicas); without a token: HTTP {bare}"
    )
    vision.endpoint("digits", "delete")
