"""`fastgpu up` / `down` as a user runs them (real `ray start` processes, two nodes, the CLI),
and jobs submitted through the platform on a tenant's behalf."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPTS = Path(__file__).parent / "job_scripts"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fastgpu(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgpu.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@dataclass
class Up:
    env: dict[str, str]
    home: Path
    user_home: Path
    first: dict[str, Any]
    cfg: Path

    def as_tenant(self, token: str) -> dict[str, str]:
        return {**self.env, "FASTGPU_TOKEN": token}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="u"))
    home = root / "h"
    user_home = root / "user"
    user_home.mkdir()
    cfg = root / "fastgpu.yaml"
    cfg.write_text(
        "gpu_types: {A100: {price_per_hour: 2.5}}\n"
        "tenants: {ops: {quotas: {A100: {nominal: 2}}}, "
        "research: {quotas: {A100: {nominal: 2, borrowing_limit: 0}}}}\n"
        f"api: {{port: {_free_port()}}}\n"
    )
    env = {**os.environ, "FASTGPU_HOME": str(home), "HOME": str(user_home), "RAY_TMPDIR": str(root)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("FASTGPU_TOKEN", None)
    out = _fastgpu(env, "up", "--gpus", "4", "--nodes", "2", "--config", str(cfg), "-o", "json")
    assert out.returncode == 0, out.stderr
    try:
        yield Up(env, home, user_home, json.loads(out.stdout), cfg)
    finally:
        down = _fastgpu(env, "down", "-o", "json")
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout)["stopped_processes"] > 0
        # Nothing written to the user's home (no ~/.ray): Ray's token lives in the state dir.
        assert list(user_home.iterdir()) == []
        assert (home / "fastgpu.db").exists()  # the store survives `down`


def test_up_is_idempotent_and_serves_leases(up: Up) -> None:
    assert up.first["started_ray"] is True
    assert up.first["api"].startswith("http://127.0.0.1:")
    for secret in ("admin_token", "ray_auth_token"):
        mode = stat.S_IMODE((up.home / secret).stat().st_mode)
        assert mode == 0o600, (secret, oct(mode))
    args = ("up", "--gpus", "4", "--nodes", "2", "--config", str(up.cfg), "-o", "json")
    again = json.loads(_fastgpu(up.env, *args).stdout)
    assert again["started_ray"] is False
    assert again["new_tenant_tokens"] == {}  # config tenants are created once

    status = json.loads(_fastgpu(up.env, "status", "-o", "json").stdout)  # local admin token
    (a100,) = status["gpu_types"]
    assert (a100["total"], a100["nodes"]) == (4, 2)

    ops = up.as_tenant(up.first["new_tenant_tokens"]["ops"])
    args = ("lease", "request", "--gpus", "2", "--strategy", "SPREAD", "--wait", "-o", "json")
    lease = json.loads(_fastgpu(ops, *args).stdout)
    assert lease["state"] == "RESERVED"
    assert len(set(lease["nodes"])) == 2
    _fastgpu(ops, "lease", "release", lease["id"])


def _wait_job(env: dict[str, str], job_id: str, want: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        data = json.loads(_fastgpu(env, "job", "status", job_id, "-o", "json").stdout)
        if data["status"] in want:
            return dict(data)
        assert time.monotonic() < deadline, data
        time.sleep(1)


def test_jobs_run_on_the_tenants_lease_and_stay_private(up: Up) -> None:
    ops = up.as_tenant(up.first["new_tenant_tokens"]["ops"])
    research = up.as_tenant(up.first["new_tenant_tokens"]["research"])
    # `fastgpu job submit`: the lease given here reaches the job as its defaults.
    submit = (
        "job", "submit", "--gpus", "1:2", "--duration", "5m", "--working-dir", str(REPO / "jobs"),
        "-o", "json", "--", sys.executable, "train_classifier.py", "--epochs", "1",
        "--run-name", "via-cli", "--cpus-per-worker", "0.25",
    )  # fmt: skip
    out = _fastgpu(ops, *submit)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["tenant"] == "ops"
    done = _wait_job(ops, job["id"], {"SUCCEEDED", "FAILED"})
    logs = _fastgpu(ops, "job", "logs", job["id"]).stdout
    assert done["status"] == "SUCCEEDED", logs[-3000:]
    assert "/ops/runs/via-cli" in logs
    # The job's own lease, found by its request id: bound to the run, released at the end.
    assert done["lease"]["state"] == "RELEASED"
    assert done["lease"]["tenant"] == "ops"
    assert done["lease"]["workload"] == "train:via-cli"
    assert done["lease"]["min_gpus"] == 1

    # Another tenant cannot see, read or stop it.
    assert json.loads(_fastgpu(research, "job", "list", "-o", "json").stdout) == []
    for args in (
        ("job", "status", job["id"]),
        ("job", "logs", job["id"]),
        ("job", "stop", job["id"]),
    ):
        other = _fastgpu(research, *args)
        assert other.returncode == 1
        assert "not found" in other.stderr

    # A job over quota waits, and its status shows why; stopping it works.
    hog = json.loads(
        _fastgpu(research, "lease", "request", "--gpus", "2", "--wait", "-o", "json").stdout
    )
    submit_r = (
        "job", "submit", "--gpus", "2", "--working-dir", str(SCRIPTS), "-o", "json",
        "--", sys.executable, "lease_job.py",
    )  # fmt: skip
    waiting = json.loads(_fastgpu(research, *submit_r).stdout)
    deadline = time.monotonic() + 60
    while True:
        st = json.loads(_fastgpu(research, "job", "status", waiting["id"], "-o", "json").stdout)
        if st["lease"] and st["lease"]["state"] == "PENDING":
            break
        assert time.monotonic() < deadline, st
        time.sleep(1)
    assert st["lease"]["reason"] == "over_quota"
    stopped = _fastgpu(research, "job", "stop", waiting["id"], "-o", "json")
    assert stopped.returncode == 0, stopped.stderr
    _wait_job(research, waiting["id"], {"STOPPED", "FAILED"})
    _fastgpu(research, "lease", "release", hog["id"])
    _fastgpu(research, "lease", "release", st["lease"]["id"])

    # Bad job input is refused before anything runs.
    bad = _fastgpu(ops, "job", "submit", "--gpus", "0", "--", "python", "x.py")
    assert bad.returncode == 2
    bad = _fastgpu(ops, "job", "submit", "--working-dir", str(up.home), "--", "python", "x.py")
    assert bad.returncode == 2
    assert "state folder" in bad.stderr


def test_ray_job_submit_trains_the_example_on_a_lease(up: Up) -> None:
    """The `ray job submit` path: the tenant's FastGPU token in the job's env decides whose
    lease it is; the job trains the digits classifier (bf16) pinned to the lease."""
    token = up.first["new_tenant_tokens"]["ops"]
    env = {
        **up.env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(up.home / "ray_auth_token"),
    }
    runtime_env = {"env_vars": {"FASTGPU_TOKEN": token, "FASTGPU_ADDRESS": up.first["api"]}}
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit",
        "--address", up.first["dashboard"],
        "--working-dir", str(REPO / "jobs"),
        "--runtime-env-json", json.dumps(runtime_env),
        "--", sys.executable, "train_classifier.py", "--gpus", "1:2", "--epochs", "2",
        "--precision", "bf16", "--run-name", "rjs", "--checkpoint-every", "10",
        "--cpus-per-worker", "0.25",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(
        next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{"))
    )
    assert "/ops/runs/rjs" in result["run_dir"]
    assert result["checkpoint"]
    assert result["metrics"]["test_accuracy"] > 0.5
    ops = up.as_tenant(token)
    leases = json.loads(_fastgpu(ops, "lease", "list", "-o", "json").stdout)
    trained = [x for x in leases if x["workload"] == "train:rjs"]
    assert len(trained) == 1
    assert trained[0]["state"] == "RELEASED"
    usage = json.loads(_fastgpu(ops, "usage", "-o", "json").stdout)
    assert usage[0]["gpu_seconds"] > 0
