"""A real ``fastgpu server`` process with tenant clusters on a pool of logical GPUs of this
machine.

The server is a separate process (``python -m fastgpu.cli.main server``) with a real SQLite
store, talking HTTP on 127.0.0.1, exactly as ``fastgpu up`` runs it; each tenant's leases are
raylets of its own Ray cluster. Tests talk to it through the SDK and read where a lease landed
off its raylets (:func:`lease_devices`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from fastgpu.auth import new_token, write_secret
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.sdk import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Platform:
    config: PlatformConfig
    admin: str
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    clients: list[Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.api.port}"

    def client(self, token: str | None = None, **kwargs: Any) -> Client:
        c = Client(token=token or self.admin, address=self.url, **kwargs)
        self.clients.append(c)
        return c

    def tenant(self, name: str, borrowing_limit: int | None = None, **quotas: int) -> str:
        """Create a tenant with nominal quotas; return its token."""
        spec = {k: {"nominal": v, "borrowing_limit": borrowing_limit} for k, v in quotas.items()}
        return str(self.client().create_tenant(name, spec)["token"])

    def tenant_token(self, name: str, **quotas: int) -> str:
        return self.tenant(name, **quotas)

    # -- the server process ----------------------------------------------------------------
    def start_server(self, timeout: float = 90.0) -> None:
        log = open(self.state_dir / "server.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastgpu.cli.main",
                "server",
                "--config",
                str(self.state_dir / "config.yaml"),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "FASTGPU_TOKEN": ""},
        )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                r = httpx.get(
                    f"{self.url}/api/v1/healthz",
                    headers={"Authorization": f"Bearer {self.admin}"},
                    timeout=2,
                    trust_env=False,
                )
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        try:
            return (self.state_dir / "server.log").read_text()[-4000:]
        except OSError:
            return ""

    def kill_server(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)

    def stop_server(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def make_config(state_dir: Path, **extra: Any) -> PlatformConfig:
    """The test platform's config; an ``api`` dict in ``extra`` is merged over the test
    defaults (a free port, a high rate limit), so a test can change one API setting."""
    api: dict[str, Any] = {"port": free_port(), "rate_per_s": 1000, "burst": 5000}
    api.update(extra.pop("api", None) or {})
    return PlatformConfig(
        gpu_types={
            "A100": GpuTypeSpec(price_per_hour=3.6, perf=312),
            "H100": GpuTypeSpec(price_per_hour=7.2, perf=989),
        },
        state_dir=str(state_dir),
        api=api,
        **extra,
    )


def start_platform(state_dir: Path, **config_extra: Any) -> Platform:
    """Write the config (``config_extra`` names its ``pool``) and the admin token into
    ``state_dir`` and start a server process."""
    config = make_config(state_dir, **config_extra)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    admin = new_token()
    write_secret(state_dir / "admin_token", admin)
    platform = Platform(config, admin, state_dir)
    platform.start_server()
    return platform


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


#: A pool of two hosts of four logical A100s each on this machine.
EIGHT_A100 = {
    "hosts": [
        {"name": "host-0", "gpu_type": "A100", "devices": [0, 1, 2, 3]},
        {"name": "host-1", "gpu_type": "A100", "devices": [4, 5, 6, 7]},
    ]
}


def pool_platform(
    tmp_path_factory: Any, pool: dict[str, Any] | None = None, **config_extra: Any
) -> Iterator[Platform]:
    """A server with tenant clusters on a pool of logical GPUs on this machine (default:
    :data:`EIGHT_A100`); on exit every tenant cluster it started is stopped and the tenants'
    OS users are removed."""
    from fastgpu.controller.clusters import TenantClusters
    from fastgpu.pool.runtime import remove_platform_users

    base = Path(os.environ["RAY_TMPDIR"])
    base.chmod(0o711)  # tenants pass through the test's temp dir to their own dirs
    state = tmp_path_factory.mktemp("state")
    config_extra.setdefault("tenant_clusters", {"idle_timeout_s": 600})
    config_extra.setdefault("storage_root", str(base / f"storage-{state.name}"))
    platform = start_platform(state, pool=pool or EIGHT_A100, **config_extra)
    try:
        yield platform
    finally:
        platform.stop_server()
        prefix = TenantClusters(platform.config).platform
        stop_marked(f"{prefix}/")
        remove_platform_users(prefix)


def lease_devices(platform: Platform) -> dict[str, list[str]]:
    """Lease id -> the devices (``CUDA_VISIBLE_DEVICES`` entries) of its live raylets, for
    every lease of the platform that has one: what each tenant can use, seen from outside."""
    import psutil

    from fastgpu.controller.clusters import TenantClusters
    from fastgpu.pool import processes

    prefix = f"{TenantClusters(platform.config).platform}/"
    out: dict[str, list[str]] = {}
    for marker, procs in processes.marked(prefix).items():
        role = marker[len(prefix) :].partition("/")[2]
        if not role.startswith("raylet/"):
            continue
        lease = role.split("/")[1]
        for proc in procs:
            try:
                if proc.name() == "raylet":
                    env = proc.environ()["CUDA_VISIBLE_DEVICES"]
                    out.setdefault(lease, []).extend(d for d in env.split(",") if d)
            except psutil.Error:  # it stopped meanwhile
                continue
    return {lease: sorted(devices) for lease, devices in out.items()}


def stop_marked(prefix: str, grace_s: float = 2.0) -> int:
    """Stop every process of the tenant clusters whose marker starts with ``prefix`` (all
    nodes at once: one grace for all of them, not one each), then what a dying raylet started
    meanwhile. Returns how many processes were signalled."""
    from fastgpu.pool import processes

    def every() -> list[Any]:
        seen: dict[int, Any] = {}
        for procs in processes.marked(prefix).values():
            for proc in procs:
                for p in processes.tree(proc.pid):
                    seen[p.pid] = p
        return list(seen.values())

    first = every()
    processes.stop_processes(first, grace_s)
    late = every()
    processes.stop_processes(late, 0)
    return len(first) + len(late)


#: Environment of a test's ``job_scripts/elastic_job.py`` run, for speed only (what each does:
#: that script's docstring): Ray Train takes the workers' reports every 0.5 s instead of 2 s,
#: which paced the steps that report; a segment that started on fewer GPUs than its lease holds
#: grows 5 s later instead of 60 s.
ELASTIC_ENV = {"RESIZE_MONITOR_S": "5"}


def checkpointed_after(run: Path, step: int) -> bool:
    """Whether the run folder ``run`` holds a complete checkpoint later than ``step`` (what a
    restart would now resume from)."""
    from fastgpu.train.checkpoints import CheckpointStore

    latest = CheckpointStore(run).latest()
    return latest is not None and latest.step > step


def end_elastic_job_soon(log: Path, step_s: float, margin: int = 8) -> int:
    """Make ``job_scripts/elastic_job.py`` (whose (re)starts ``log`` records) end a few steps
    from now instead of at its ``STEPS``; returns the step it now ends at. Every step sleeps
    ``step_s``, so none can be past the estimate: every rank reads the same end ahead of it."""
    import json
    import math

    last = [json.loads(x) for x in log.read_text().splitlines() if x.strip()][-1]
    at = last["start"] + 1 + (time.time() - last["t"]) / step_s
    end = math.ceil(at) + margin
    tmp = log.with_suffix(".stop_at.tmp")
    tmp.write_text(str(end))
    tmp.replace(log.with_suffix(".stop_at"))
    return end
