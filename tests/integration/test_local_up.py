"""`fastgpu up` / `down` as a user runs them: a real `fastgpu server` process with tenant
clusters on logical GPUs of this machine (each tenant's leases become raylets of its own Ray
cluster), the CLI, an API port chosen free for every test platform, and jobs submitted
through the platform on a tenant's behalf (their working folder uploaded)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fastgpu.controller.clusters import platform_id
from fastgpu.pool import processes
from fastgpu.sdk import Client

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPTS = Path(__file__).parent / "job_scripts"
REPO = Path(__file__).resolve().parents[2]
_TAKEN: set[int] = set()  # ports handed out in this process: two platforms never share one


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


def _ports() -> dict[str, Any]:
    """A config's ``api`` section on a free, non-default port."""
    return {"api": {"port": _free_port()}}


def _platform_processes(home: Path) -> list[int]:
    """Pids of every process of the platform whose state dir is ``home`` (its tenants'
    clusters carry its marker)."""
    return sorted(p.pid for ps in processes.marked(f"{platform_id(home)}/").values() for p in ps)


def _fastgpu(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgpu.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Up:
    env: dict[str, str]
    home: Path
    user_home: Path
    first: dict[str, Any]
    cfg: Path
    ports: dict[str, Any]

    def as_tenant(self, token: str) -> dict[str, str]:
        return {**self.env, "FASTGPU_TOKEN": token}

    def all_ports(self) -> dict[str, int]:
        return {"api.port": int(self.ports["api"]["port"])}

    def up_args(self) -> tuple[str, ...]:
        return ("up", "--gpus", str(self.first["gpus"]), "--nodes", str(self.first["nodes"]),
                "--config", str(self.cfg), "-o", "json")  # fmt: skip


def _platform_env(root: Path) -> tuple[dict[str, str], Path, Path]:
    home = root / "h"
    user_home = root / "user"
    user_home.mkdir(parents=True)
    env = {**os.environ, "FASTGPU_HOME": str(home), "HOME": str(user_home)}
    # Jobs run `python ...` from this venv (Ray's job drivers inherit the raylet's PATH).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("FASTGPU_TOKEN", None)
    env.pop("FASTGPU_ADDRESS", None)
    return env, home, user_home


def _write_config(root: Path, ports: dict[str, Any], tenants: dict[str, Any]) -> Path:
    cfg = root / "fastgpu.yaml"
    data = {"gpu_types": {"A100": {"price_per_hour": 2.5, "perf": 312}}, "tenants": tenants}
    cfg.write_text(yaml.safe_dump(data | ports))
    return cfg


def _start(root: Path, gpus: int, nodes: int, tenants: dict[str, Any]) -> Up:
    # Tenants' users pass through to their storage in the state dir (and run their Python
    # from the cluster root under the test's temp dir).
    Path(os.environ["RAY_TMPDIR"]).chmod(0o711)
    root.chmod(0o711)
    env, home, user_home = _platform_env(root)
    ports = _ports()
    cfg = _write_config(root, ports, tenants)
    args = ("up", "--gpus", str(gpus), "--nodes", str(nodes), "--config", str(cfg), "-o", "json")
    out = _fastgpu(env, *args)
    if out.returncode != 0:
        _fastgpu(env, "down")
        raise AssertionError(f"`fastgpu up` failed:\n{out.stdout}\n{out.stderr}")
    return Up(env, home, user_home, json.loads(out.stdout), cfg, ports)


def _assert_all_down(up: Up) -> None:
    """Nothing listens on the platform's port and no process of its tenants' clusters
    remains."""
    assert _platform_processes(up.home) == []
    held = {name: port for name, port in up.all_ports().items() if _listening(port)}
    assert held == {}, held
    # Each port can be listened on again (SO_REUSEADDR, as servers bind: the port may still
    # have connections in TIME_WAIT from the clients of the stopped processes).
    for name, port in up.all_ports().items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
            except OSError as exc:
                raise AssertionError(f"{name}={port} still taken: {exc}") from None


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    root = Path(tempfile.mkdtemp(prefix="u"))
    tenants = {
        "ops": {"quotas": {"A100": {"nominal": 2}}},
        "research": {"quotas": {"A100": {"nominal": 2, "borrowing_limit": 0}}},
    }
    platform = _start(root, 4, 2, tenants)
    try:
        yield platform
    finally:
        _fastgpu(platform.env, "down", "-o", "json")  # a no-op after test_down_stops_everything


def test_up_is_idempotent_and_serves_leases(up: Up) -> None:
    assert up.first["started_ray"] is False  # no shared Ray: each tenant gets its own
    assert up.first["ray_address"] is None
    assert up.first["tenant_clusters"] is True
    assert up.first["started_server"] is True
    # The API is on the configured (non-default) port.
    assert up.first["api"] == f"http://127.0.0.1:{up.ports['api']['port']}"
    assert _listening(up.all_ports()["api.port"])
    pid_file = up.home / "server.pid"
    assert int(pid_file.read_text()) == up.first["server_pid"]
    assert (up.home / "server.log").exists()
    for secret in ("admin_token", "config.yaml"):
        mode = stat.S_IMODE((up.home / secret).stat().st_mode)
        assert mode == 0o600, (secret, oct(mode))
    args = ("up", "--gpus", "4", "--nodes", "2", "--config", str(up.cfg), "-o", "json")
    again = json.loads(_fastgpu(up.env, *args).stdout)
    assert again["started_ray"] is False
    assert again["started_server"] is False
    assert again["server_pid"] == up.first["server_pid"]
    assert again["api"] == up.first["api"]
    assert again["new_tenant_tokens"] == {}  # config tenants are created once

    status = json.loads(_fastgpu(up.env, "status", "-o", "json").stdout)  # local admin token
    (a100,) = status["gpu_types"]
    assert (a100["total"], a100["nodes"]) == (4, 2)

    ops = up.as_tenant(up.first["new_tenant_tokens"]["ops"])
    args = ("lease", "request", "--gpus", "2", "--strategy", "SPREAD", "--wait", "-o", "json")
    out = _fastgpu(ops, *args)
    assert out.returncode == 0, out.stderr
    lease = json.loads(out.stdout)
    assert lease["state"] == "RESERVED"
    assert len(set(lease["nodes"])) == 2
    assert _platform_processes(up.home)  # the tenant's cluster runs
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
        "-o", "json", "--", "python", "train_classifier.py", "--epochs", "1",
        "--run-name", "via-cli", "--cpus-per-worker", "0.25",
    )  # fmt: skip
    out = _fastgpu(ops, *submit)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["tenant"] == "ops"
    done = _wait_job(ops, job["id"], {"SUCCEEDED", "FAILED"})
    logs = _fastgpu(ops, "job", "logs", job["id"]).stdout
    assert done["status"] == "SUCCEEDED", logs[-3000:]
    assert "/runs/via-cli" in logs
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
        "--", "python", "lease_job.py",
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
    bad = _fastgpu(ops, "job", "submit", "--working-dir", str(up.home / "nope"), "--", "x")
    assert bad.returncode == 2
    assert "not a folder" in bad.stderr


def test_working_dir_is_uploaded_with_the_job(up: Up, tmp_path: Path) -> None:
    """`fastgpu job submit --working-dir DIR` and the SDK's ``submit_job(working_dir=...)``
    zip the folder and upload it: the job runs the script from it and its logs show the
    output."""
    ops_token = up.first["new_tenant_tokens"]["ops"]
    ops = up.as_tenant(ops_token)
    folder = tmp_path / "wd"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "data.txt").write_text("payload-from-the-upload\n")
    (folder / "x.py").write_text(
        "import pathlib\nprint('x.py says', pathlib.Path('pkg/data.txt').read_text().strip())\n"
    )
    (folder / "hello.py").write_text("print('hello from the SDK upload')\n")

    out = _fastgpu(ops, "job", "submit", "--working-dir", str(folder), "-o", "json",
                   "--", "python", "x.py")  # fmt: skip
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    done = _wait_job(ops, job["id"], {"SUCCEEDED", "FAILED", "STOPPED"})
    logs = _fastgpu(ops, "job", "logs", job["id"]).stdout
    assert done["status"] == "SUCCEEDED", logs[-3000:]
    assert "x.py says payload-from-the-upload" in logs

    with Client(token=ops_token, address=up.first["api"]) as client:
        sub = client.submit_job("python hello.py", working_dir=folder)
        deadline = time.monotonic() + 120
        while (st := client.job_status(sub["id"]))["status"] not in {"SUCCEEDED", "FAILED"}:
            assert time.monotonic() < deadline, st
            time.sleep(1)
        logs = client.job_logs(sub["id"])
        assert st["status"] == "SUCCEEDED", logs[-3000:]
        assert "hello from the SDK upload" in logs


def test_two_platforms_run_side_by_side(up: Up) -> None:
    """A second platform (own state dir, own ports) beside the first: each serves its own
    cluster and tokens, and taking one down leaves the other running."""
    root = Path(tempfile.mkdtemp(prefix="v"))
    other = _start(root, 2, 1, {"solo": {"quotas": {"A100": {"nominal": 1}}}})
    try:
        assert other.first["started_server"] is True
        assert set(other.all_ports().values()).isdisjoint(up.all_ports().values())
        mine = json.loads(_fastgpu(up.env, "status", "-o", "json").stdout)
        theirs = json.loads(_fastgpu(other.env, "status", "-o", "json").stdout)
        assert [(g["total"], g["nodes"]) for g in mine["gpu_types"]] == [(4, 2)]
        assert [(g["total"], g["nodes"]) for g in theirs["gpu_types"]] == [(2, 1)]
        # One platform's tokens mean nothing to the other.
        first_admin = (up.home / "admin_token").read_text().strip()
        cross = _fastgpu({**other.env, "FASTGPU_TOKEN": first_admin}, "status")
        assert cross.returncode == 1
        solo = other.as_tenant(other.first["new_tenant_tokens"]["solo"])
        lease = json.loads(_fastgpu(solo, "lease", "request", "--gpus", "1", "--wait",
                                    "-o", "json").stdout)  # fmt: skip
        assert lease["state"] == "RESERVED"
        assert _platform_processes(other.home)
        assert set(_platform_processes(up.home)).isdisjoint(_platform_processes(other.home))
    finally:
        down = _fastgpu(other.env, "down", "-o", "json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["stopped_server"] is True
    _assert_all_down(other)
    # The first platform is untouched.
    status = _fastgpu(up.env, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["gpu_types"][0]["total"] == 4


def test_up_fails_naming_the_holder_of_a_taken_api_port() -> None:
    root = Path(tempfile.mkdtemp(prefix="w"))
    env, home, _ = _platform_env(root)
    ports = _ports()
    cfg = _write_config(root, ports, {})
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports["api"]["port"]))
    holder.listen()
    try:
        out = _fastgpu(env, "up", "--gpus", "1", "--config", str(cfg), "-o", "json")
        assert out.returncode != 0, out.stdout
        message = " ".join((out.stderr + out.stdout).split())  # rich wraps long lines
        assert str(ports["api"]["port"]) in message, message
        assert f"pid {os.getpid()}" in message, message  # this test process holds it
        # No server was started (the port is checked before it).
        assert not (home / "server.pid").exists()
        # Nor any tenant's cluster.
        assert _platform_processes(home) == []
    finally:
        holder.close()
        down = _fastgpu(env, "down", "-o", "json")
    assert down.returncode == 0, down.stderr
    probe = Up(env, home, root / "user", {}, cfg, ports)
    _assert_all_down(probe)


def test_the_admin_token_rotates_and_the_local_cli_follows(up: Up) -> None:
    """`fastgpu admin rotate-token --grace 0`: the old admin token stops at once, the new one
    is saved (0600) where the CLI finds it, and the last admin token cannot be revoked."""
    old = (up.home / "admin_token").read_text().strip()
    out = _fastgpu(up.env, "admin", "rotate-token", "--grace", "0", "-o", "json")
    assert out.returncode == 0, out.stderr
    new = json.loads(out.stdout)
    saved = (up.home / "admin_token").read_text().strip()
    assert saved == new["token"] != old
    assert stat.S_IMODE((up.home / "admin_token").stat().st_mode) == 0o600
    with httpx.Client(base_url=up.first["api"], trust_env=False) as http:
        refused = http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {old}"})
        assert refused.status_code == 401
    who = json.loads(_fastgpu(up.env, "whoami", "-o", "json").stdout)  # the saved token
    assert who["is_admin"] is True
    assert who["token_id"] == new["id"]
    tokens = json.loads(_fastgpu(up.env, "admin", "tokens", "-o", "json").stdout)
    assert [t["id"] for t in tokens] == [new["id"]]
    last = _fastgpu(up.env, "admin", "revoke-token", new["id"])
    assert last.returncode == 1
    assert "last admin token" in " ".join((last.stderr + last.stdout).split())


def test_down_stops_everything(up: Up) -> None:
    """Runs last: `down` stops the server and every process of the tenants' clusters; nothing
    listens on the API port; the store and tokens stay; a second `down` is a no-op."""
    ops = Client(token=up.first["new_tenant_tokens"]["ops"], address=up.first["api"])
    held = ops.request_lease(1, "A100", "10m", wait=True, timeout=180)
    assert held.state == "RESERVED"
    ops.close()
    assert _platform_processes(up.home)
    down = _fastgpu(up.env, "down", "-o", "json")
    assert down.returncode == 0, down.stderr
    result = json.loads(down.stdout)
    assert result["stopped_server"] is True
    assert result["stopped_processes"] > 0
    _assert_all_down(up)
    assert not (up.home / "server.pid").exists()
    # Nothing written to the user's home (no ~/.ray): Ray's token lives in the state dir.
    assert list(up.user_home.iterdir()) == []
    assert (up.home / "fastgpu.db").exists()  # the store survives `down`
    assert (up.home / "admin_token").exists()
    again = json.loads(_fastgpu(up.env, "down", "-o", "json").stdout)
    assert again["stopped_server"] is False
    assert again["stopped_processes"] == 0
