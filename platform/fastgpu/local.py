"""``fastgpu up`` / ``fastgpu down``: the control-plane server on 127.0.0.1, over a pool of GPU
hosts (the config's ``pool``, or this machine's GPUs as ``--gpus/--nodes`` describe them).

No Ray cluster starts here: the server starts each tenant's own when the tenant first needs
one. State lives in the state dir (``$FASTGPU_HOME`` or ``~/.fastgpu``, 0711: tenants' users
pass through it to their storage): the SQLite store, the admin token (0600), the effective
config (0600: its store URL may hold a password), the server's pid file and log.

``up`` is idempotent: it starts the server only if it is not running, and says ok only after
the server's API answers. ``down`` stops the server by its pid, then every process of the
tenants' clusters, found by the platform's marker in their environment (Ray's agents ignore
SIGTERM and re-parent to init, and workers rename themselves, so neither the process tree nor
the command line finds them all); SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fastgpu.auth import new_token, write_secret
from fastgpu.config import (
    KNOWN_PERF,
    GpuTypeSpec,
    PlatformConfig,
    default_config,
    load_config,
    parse_config,
)
from fastgpu.controller.clusters import platform_id, platform_of
from fastgpu.errors import ConfigError, FastGPUError, InvalidRequest
from fastgpu.pool import processes
from fastgpu.pool.hosts import default_pool_spec
from fastgpu.pool.processes import stop_processes
from fastgpu.sdk import ADDRESS_FILE, ADMIN_TOKEN_FILE

CONFIG_FILE = "config.yaml"
SERVER_PID_FILE = "server.pid"
SERVER_LOG_FILE = "server.log"


def _server_env() -> dict[str, str]:
    """The server's environment: this one, without the caller's tokens (it reaches each
    tenant's cluster with that cluster's own Ray token)."""
    env = os.environ.copy()
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("FASTGPU_TOKEN", None)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def load_saved_config(path: Path) -> PlatformConfig:
    """The config ``fastgpu up`` saved in a state dir. One saved before the shared cluster was
    removed has that cluster's ``ray:`` ports, written by FastGPU itself, not by the operator:
    they are dropped. A platform that ran the shared cluster (``tenant_clusters.enabled:
    false``) is refused by :func:`parse_config`, saying why."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "ray" in data:
        data = {k: v for k, v in data.items() if k != "ray"}
    return parse_config(data, str(path))


def effective_config(
    config_path: str | None, gpu_type: str, state_dir: Path | None
) -> PlatformConfig:
    if config_path:
        config = load_config(config_path)
    else:
        saved = (state_dir or default_config().resolved_state_dir()) / CONFIG_FILE
        config = load_saved_config(saved) if saved.exists() else default_config(gpu_type)
    if gpu_type not in config.gpu_types:
        if config_path:
            raise ConfigError(
                f"--gpu-type {gpu_type} is not in the config's gpu_types "
                f"({', '.join(sorted(config.gpu_types))})"
            )
        types = dict(config.gpu_types)
        types[gpu_type] = GpuTypeSpec(price_per_hour=2.0, perf=KNOWN_PERF.get(gpu_type, 0.0))
        config = config.model_copy(update={"gpu_types": types})
    return config


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now (connections of processes that just
    stopped, in TIME_WAIT, do not count: servers bind with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, ok: Any, what: str, timeout: float, headers: Any = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            r = httpx.get(url, timeout=5, trust_env=False, headers=headers)
            if ok(r.status_code):
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() > deadline:
            raise FastGPUError(f"{what} at {url} is not healthy after {timeout:.0f} s ({last})")
        time.sleep(0.3)


def _pid_alive(pid_file: Path) -> int | None:
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        if alive and any("fastgpu" in part for part in proc.cmdline()):
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def start_server(state_dir: Path) -> int:
    """Start ``fastgpu server`` on the config saved in ``state_dir``, in the background (pid
    file and log in the state dir)."""
    config_file = state_dir / CONFIG_FILE
    log_path = state_dir / SERVER_LOG_FILE
    cmd = [sys.executable, "-m", "fastgpu.cli.main", "server", "--config", str(config_file)]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=_server_env(),
            start_new_session=True,
            cwd=str(state_dir),
        )
    finally:
        os.close(fd)
    (state_dir / SERVER_PID_FILE).write_text(str(proc.pid))
    return proc.pid


def wait_server(config: PlatformConfig, state_dir: Path, pid: int, admin: str) -> None:
    import psutil

    url = f"http://{config.api.host}:{config.api.port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            _wait_http(
                f"{url}/api/v1/healthz",
                lambda s: s == 200,
                "the FastGPU server",
                1,
                headers={"Authorization": f"Bearer {admin}"},
            )
            return
        except FastGPUError:
            if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                tail = (state_dir / SERVER_LOG_FILE).read_text()[-3000:]
                raise FastGPUError(f"the FastGPU server exited during start-up:\n{tail}") from None
            if time.monotonic() > deadline:
                raise


def up(
    gpus: int = 8,
    gpu_type: str = "A100",
    nodes: int = 1,
    config_path: str | None = None,
    cluster_path: str | None = None,
) -> dict[str, Any]:
    """Start (or check) the local platform; returns what runs and any new tenant tokens.

    The server starts each tenant's own Ray cluster when it needs one, on the config's
    ``pool`` (the hosts ``cluster_path`` names, or those ``gpus``/``nodes``/``gpu_type``
    describe on this machine). The result keeps ``ray_address`` (None), ``started_ray``
    (False) and ``tenant_clusters`` (True) for scripts that read ``fastgpu up -o json``: they
    described the shared cluster, since removed."""
    if gpus < 1 or gpus > 1024:
        raise InvalidRequest(f"--gpus: got {gpus}; expected 1..1024")
    if nodes < 1 or nodes > 16 or gpus % nodes:
        raise InvalidRequest(
            f"--nodes: got {nodes}; expected 1..16 dividing --gpus ({gpus}) evenly"
        )
    config = effective_config(config_path, gpu_type, None)
    if cluster_path:  # cluster.yaml is the pool: its sections replace the config's
        from fastgpu.domain.cluster_file import load_cluster_file

        overlay = load_cluster_file(cluster_path).platform_overlay()
        config = parse_config({**config.model_dump(mode="json"), **overlay}, cluster_path)
    if config.pool is None:
        config = config.model_copy(update={"pool": default_pool_spec(gpus, nodes, gpu_type)})
    state_dir = config.resolved_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    # Tenants' users pass through the state dir to their storage (its files stay 0600).
    os.chmod(state_dir, 0o711)
    if not config.state_dir:
        config = config.model_copy(update={"state_dir": str(state_dir)})
    # 0600: store_url may hold a password, and tenants pass through the state dir.
    write_secret(state_dir / CONFIG_FILE, yaml.safe_dump(config.model_dump(mode="json")))
    admin_path = state_dir / ADMIN_TOKEN_FILE
    admin = admin_path.read_text().strip() if admin_path.exists() else new_token()
    write_secret(admin_path, admin)

    pid = _pid_alive(state_dir / SERVER_PID_FILE)
    started_server = pid is None
    if pid is None:
        from fastgpu.server import port_holder

        if not port_free(config.api.port, config.api.host):
            raise FastGPUError(
                f"the API port {config.api.host}:{config.api.port} is held by "
                f"{port_holder(config.api.host, config.api.port)}; stop it or set api.port"
            )
        pid = start_server(state_dir)
    wait_server(config, state_dir, pid, admin)
    url = f"http://{config.api.host}:{config.api.port}"
    (state_dir / ADDRESS_FILE).write_text(url)

    from fastgpu.sdk import Client

    new_tokens: dict[str, str] = {}
    with Client(token=admin, address=url) as client:
        known = {t["name"] for t in client.list_tenants()}
        for name, spec in config.tenants.items():
            if name not in known:
                out = client.create_tenant(
                    name,
                    spec.model_dump(mode="json")["quotas"],
                    weight=spec.weight,
                    priority=spec.priority,
                    budget=spec.budget.model_dump(mode="json") if spec.budget else None,
                    queueing=spec.queueing,
                    request_id=f"up-{name}",
                )
                if out.get("token"):
                    new_tokens[name] = out["token"]
    return {
        "ray_address": None,
        "api": url,
        "state_dir": str(state_dir),
        "started_ray": False,
        "started_server": started_server,
        "server_pid": pid,
        "gpus": gpus,
        "gpu_type": gpu_type,
        "nodes": nodes,
        "admin_token_file": str(admin_path),
        "tenant_clusters": True,
        "new_tenant_tokens": new_tokens,
    }


def _stop_pid(pid: int, grace_s: float = 15.0) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return False
    stop_processes([proc], grace_s)
    return True


def down(state_dir: Path | None = None) -> dict[str, Any]:
    """Stop the server and every process of the tenants' clusters (each carries the
    platform's marker); the store stays."""
    sd = state_dir or default_config().resolved_state_dir()
    saved = sd / CONFIG_FILE
    # Before anything stops: a saved config this version refuses stops nothing.
    platform = platform_of(load_saved_config(saved)) if saved.exists() else platform_id(sd)
    server = _pid_alive(sd / SERVER_PID_FILE)
    stopped_server = _stop_pid(server) if server is not None else False
    stopped = 0
    for marker, marked in processes.marked(f"{platform}/").items():
        stopped += processes.stop_tree(marked[0].pid, grace_s=5, marker=marker)
    for name in (ADDRESS_FILE, SERVER_PID_FILE):
        (sd / name).unlink(missing_ok=True)
    return {
        "stopped_server": stopped_server,
        "stopped_processes": stopped,
        "state_dir": str(sd),
    }
