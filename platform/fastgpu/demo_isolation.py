"""The demo's second part (``make demo``): tenant clusters (issue 9).

On the demo's platform, two tenants each have their own Ray cluster carved from the pool, each
run as its own system user when this runs as root. vision submits a Ray job to its own cluster
(``fastgpu job submit`` through the SDK); the job takes its lease, runs a task per GPU, then
tries to reach nlp and the platform: nlp's Ray token and storage, the server's state dir and
admin token, nlp's processes. The demo prints what the job saw. Then vision runs a
hyperparameter sweep on a lease and registers the best model, deploys it as an authenticated
endpoint and calls it with curl (:mod:`.demo_tune`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

JOB = """
import json, os, signal, ray
import fastgpu as fgpu

def attempt(fn):
    try:
        fn()
        return "ALLOWED"
    except OSError as exc:
        return "denied (" + type(exc).__name__ + ")"

def read(path):
    if os.path.isdir(path):
        return os.listdir(path)
    with open(path) as f:
        return f.read()

ray.init()
client = fgpu.Client()  # its token is a 0600 file of vision's user, never in the environment
lease = client.request_lease(2, "A100", "5m", request_id=os.environ["FASTGPU_LEASE_REQUEST_ID"],
                             wait=True, timeout=240)

@ray.remote(num_gpus=1, num_cpus=0)
def where():
    return os.environ["CUDA_VISIBLE_DEVICES"]

seen = ray.get([where.options(scheduling_strategy=lease.scheduling_strategy(i)).remote()
                for i in range(lease.gpus)])
targets = json.loads(os.environ["TARGETS"])
out = {"devices": sorted(seen), "cluster_gpus": ray.cluster_resources().get("GPU", 0),
       "uid": os.getuid()}
out["probes"] = {name: attempt(lambda p=path: read(p)) for name, path in targets["paths"].items()}
out["probes"]["signal nlp's Ray head"] = attempt(lambda: os.kill(targets["pid"], signal.SIGTERM))
print(json.dumps(out))
lease.release()
"""


def run(console: Console, clusters: Any, state: Path, vision: Any, nlp: Any) -> None:
    """On the demo's running platform (``state``; ``clusters`` its tenant clusters' manager):
    nlp holds a lease in its own cluster while vision's job attacks it; then vision's sweep
    and endpoint."""
    from fastgpu.pool import processes

    held = nlp.request_lease(2, "A100", "5m", wait=True, timeout=240)
    nlp_id = nlp.whoami()["tenant_id"]
    spec = clusters.spec(nlp_id)
    head = processes.marked(f"{clusters.platform}/{nlp_id}/head")
    console.print(
        f"nlp holds lease {held.id} ({held.state}) in its own cluster {nlp.cluster()['address']}"
    )
    targets: dict[str, Any] = {
        "paths": {
            "the server's state dir": str(state),
            "the admin token": str(state / "admin_token"),
            "the store": str(state / "fastgpu.db"),
            "nlp's Ray token": str(spec.home / "ray_token"),
            "nlp's storage": str(spec.storage),
        },
        "pid": next(iter(head.values()))[0].pid,
    }
    with tempfile.TemporaryDirectory() as wd:
        (Path(wd) / "job.py").write_text(JOB)
        job = vision.submit_job(
            "python job.py",
            gpus=2,
            gpu_type="A100",
            duration="5m",
            working_dir=wd,
            env={"TARGETS": json.dumps(targets)},
        )
    console.print(f"vision's job {job['id']} runs in vision's own cluster ...")
    from fastgpu.demo_tune import finished_job

    logs = finished_job(console, vision, job["id"], 300, "vision's job")
    out = json.loads(next(x for x in reversed(logs.splitlines()) if x.startswith("{")))
    console.print(
        f"the job ran as uid {out['uid']} on GPUs {out['devices']} "
        f"(its Ray sees {out['cluster_gpus']:g} GPUs: its lease, nothing more)"
    )
    t = Table(title="vision's job tries to reach what is not vision's")
    t.add_column("target")
    t.add_column("result")
    for name, result in out["probes"].items():
        t.add_row(name, result if result != "ALLOWED" else f"[bold red]{result}[/]")
    console.print(t)
    try:
        nlp.job_status(job["id"])
    except Exception as exc:  # the job is vision's: nlp gets 404
        console.print(f"nlp asks for vision's job: {exc}")
    nlp.release_lease(held.id)

    from fastgpu.demo_tune import run as sweep
    from fastgpu.demo_tune import serve

    model = sweep(console, vision, nlp)
    if model is not None:
        serve(console, vision, model)
