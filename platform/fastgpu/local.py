"""``fastgpu up`` / ``fastgpu down``: a local Ray cluster with logical GPUs and the control-plane
server beside it, all on 127.0.0.1.

State lives in the state dir (``$FASTGPU_HOME`` or ``~/.fastgpu``, 0700): the SQLite store,
the admin token and Ray's auth token (0600), the effective config, the server's pid file and
log. Ray runs with token auth on (``RAY_AUTH_MODE=token``, token file in the state dir, never
``~/.ray``); every Ray port comes from the config's ``ray`` section and is checked free first.

``up`` is idempotent: it starts only what is missing, and says ok only after Ray's GCS, its
dashboard and job agent, and the server's API answer. ``down`` stops exactly what ``up``
started: the server by its pid, and every process of this Ray cluster, found by a variable
in its environment (Ray's agents ignore SIGTERM and re-parent to init, and workers rename
themselves, so neither the process tree nor the command line finds them all); SIGTERM, then
SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import secrets
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
from fastgpu.controller.backend import GPU_TYPE_LABEL
from fastgpu.controller.clusters import platform_id, platform_of
from fastgpu.errors import ConfigError, FastGPUError, InvalidRequest
from fastgpu.pool import processes
from fastgpu.pool.hosts import default_pool_spec
from fastgpu.pool.processes import stop_processes
from fastgpu.sdk import ADDRESS_FILE, ADMIN_TOKEN_FILE

RAY_TOKEN_FILE = "ray_auth_token"
CONFIG_FILE = "config.yaml"
RAY_ADDRESS_FILE = "ray_address"
SERVER_PID_FILE = "server.pid"
SERVER_LOG_FILE = "server.log"
#: Set in the environment of every process of a cluster ``up`` started: ``down`` finds them.
CLUSTER_ENV = "FASTGPU_CLUSTER_ID"


def ray_env(state_dir: Path) -> dict[str, str]:
    """Environment that makes Ray clients and nodes use this platform's auth token (a file;
    the token itself never travels in the environment)."""
    token_path = state_dir / RAY_TOKEN_FILE
    if not token_path.exists():
        write_secret(token_path, secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def cluster_id(state_dir: Path) -> str:
    """This platform's id: names its shared cluster's processes and its tenants' users."""
    return platform_id(state_dir)


def _child_env(state_dir: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("FASTGPU_TOKEN", None)
    env.update(ray_env(state_dir))
    env[CLUSTER_ENV] = cluster_id(state_dir)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def effective_config(
    config_path: str | None, gpu_type: str, state_dir: Path | None
) -> PlatformConfig:
    if config_path:
        config = load_config(config_path)
    else:
        saved = (state_dir or default_config().resolved_state_dir()) / CONFIG_FILE
        config = load_config(saved) if saved.exists() else default_config(gpu_type)
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


def ray_temp_dir(state_dir: Path) -> Path:
    """Ray's session folder for this state dir: short (Ray's socket paths are length-limited)
    and unique per state dir."""
    base = Path(os.environ.get("RAY_TMPDIR") or "/tmp")
    return base / f"fg-{cluster_id(state_dir)}"


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


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise naming each port that is taken and what holds it."""
    from fastgpu.server import port_holder

    taken = [
        f"{name}={port} (held by {port_holder('127.0.0.1', port)})"
        for name, port in ports.items()
        if not port_free(port)
    ]
    if taken:
        raise FastGPUError(
            "ports needed by this platform are in use: "
            + "; ".join(taken)
            + ". Stop what holds them or choose other ports in the config (ray.*, api.port)"
        )


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    cmd = [str(Path(sys.executable).with_name("ray")), "start", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise FastGPUError(f"`ray start` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _ray_alive(state_dir: Path) -> str | None:
    """The GCS address if this state dir's cluster answers, else None."""
    path = state_dir / RAY_ADDRESS_FILE
    if not path.exists():
        return None
    address = path.read_text().strip()
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return address
    except (OSError, ValueError):
        return None


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


def start_ray(
    config: PlatformConfig, state_dir: Path, gpus: int, gpu_type: str, nodes: int, cpus: int | None
) -> str:
    """Start this platform's Ray cluster on fixed, checked ports; return the GCS address."""
    r = config.ray
    # The API port too: finding it taken after Ray started would leave a cluster behind.
    check_ports_free({**r.ports(), "api.port": config.api.port})
    env = _child_env(state_dir)
    per_node = gpus // nodes
    label = f"{GPU_TYPE_LABEL}={gpu_type}"
    address = f"127.0.0.1:{r.gcs_port}"
    head = [
        "--head",
        f"--port={r.gcs_port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={r.dashboard_port}",
        f"--dashboard-agent-listen-port={r.dashboard_agent_listen_port}",
        f"--dashboard-agent-grpc-port={r.dashboard_agent_grpc_port}",
        f"--runtime-env-agent-port={r.runtime_env_agent_port}",
        f"--metrics-export-port={r.metrics_export_port}",
        f"--ray-client-server-port={r.ray_client_server_port}",
        f"--node-manager-port={r.node_manager_port}",
        f"--object-manager-port={r.object_manager_port}",
        f"--min-worker-port={r.min_worker_port}",
        f"--max-worker-port={r.max_worker_port}",
        f"--num-gpus={per_node}",
        f"--labels={label}",
        "--disable-usage-stats",
        f"--temp-dir={ray_temp_dir(state_dir)}",
    ]
    if cpus is not None:
        head.append(f"--num-cpus={cpus}")
    _ray_start(head, env)
    for _ in range(nodes - 1):
        # Extra logical nodes on this machine: their own ports, chosen free here.
        _ray_start(
            [
                f"--address={address}",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--num-gpus={per_node}",
                "--num-cpus=1",
                f"--labels={label}",
                "--disable-usage-stats",
            ],
            env,
        )
    (state_dir / RAY_ADDRESS_FILE).write_text(address)
    return address


def check_ray_health(config: PlatformConfig, state_dir: Path) -> None:
    """The dashboard (Jobs API) and the head's job agent answer."""
    r = config.ray
    token = (state_dir / RAY_TOKEN_FILE).read_text().strip()
    _wait_http(
        f"http://127.0.0.1:{r.dashboard_port}/api/version",
        lambda s: s == 200,
        "Ray's dashboard (Jobs API)",
        60,
        headers={"Authorization": f"Bearer {token}"},
    )
    _wait_http(
        f"http://127.0.0.1:{r.dashboard_agent_listen_port}/api/local_raylet_healthz",
        lambda s: s < 500,
        "Ray's job agent",
        60,
    )


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


def start_server(config: PlatformConfig, state_dir: Path, address: str | None) -> int:
    """Start ``fastgpu server`` in the background (pid file and log in the state dir); with
    tenant clusters there is no shared cluster (``address`` None)."""
    config_file = state_dir / CONFIG_FILE
    log_path = state_dir / SERVER_LOG_FILE
    cmd = [sys.executable, "-m", "fastgpu.cli.main", "server", "--config", str(config_file)]
    if address is not None:
        cmd += [
            "--ray-address",
            address,
            "--dashboard-url",
            f"http://127.0.0.1:{config.ray.dashboard_port}",
        ]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=_child_env(state_dir),
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
    cpus: int | None = None,
    tenant_clusters: bool | None = None,
    cluster_path: str | None = None,
) -> dict[str, Any]:
    """Start (or check) the local platform; returns what runs and any new tenant tokens.

    With tenant clusters (the default: the config's ``tenant_clusters.enabled`` unless
    ``tenant_clusters`` here overrides it) no shared cluster starts: the server starts each
    tenant's own when it needs one, on the config's ``pool`` (or the hosts
    ``gpus``/``nodes``/``gpu_type`` describe). ``tenant_clusters=False`` is the legacy shared
    cluster (v1), which does not isolate tenants."""
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
    if tenant_clusters is not None and tenant_clusters != config.tenant_clusters.enabled:
        settings = config.tenant_clusters.model_copy(update={"enabled": tenant_clusters})
        config = config.model_copy(update={"tenant_clusters": settings})
    pooled = config.tenant_clusters.enabled
    if pooled and config.pool is None:
        config = config.model_copy(update={"pool": default_pool_spec(gpus, nodes, gpu_type)})
    state_dir = config.resolved_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    # Tenants' users pass through the state dir to their storage (its files stay 0600).
    os.chmod(state_dir, 0o711 if pooled else 0o700)
    if not config.state_dir:
        config = config.model_copy(update={"state_dir": str(state_dir)})
    # 0600: store_url may hold a password, and tenants pass through the state dir.
    write_secret(state_dir / CONFIG_FILE, yaml.safe_dump(config.model_dump(mode="json")))
    admin_path = state_dir / ADMIN_TOKEN_FILE
    admin = admin_path.read_text().strip() if admin_path.exists() else new_token()
    write_secret(admin_path, admin)

    pid = _pid_alive(state_dir / SERVER_PID_FILE)
    address = None if pooled else _ray_alive(state_dir)
    started_ray = not pooled and address is None
    if started_ray:
        if pid is not None:  # a server without its cluster: start both afresh
            _stop_pid(pid)
            pid = None
        address = start_ray(config, state_dir, gpus, gpu_type, nodes, cpus)
    if not pooled:
        check_ray_health(config, state_dir)
    started_server = pid is None
    if pid is None:
        from fastgpu.server import port_holder

        if not port_free(config.api.port, config.api.host):
            raise FastGPUError(
                f"the API port {config.api.host}:{config.api.port} is held by "
                f"{port_holder(config.api.host, config.api.port)}; stop it or set api.port"
            )
        pid = start_server(config, state_dir, address)
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
        "ray_address": address,
        "api": url,
        "state_dir": str(state_dir),
        "started_ray": started_ray,
        "started_server": started_server,
        "server_pid": pid,
        "gpus": gpus,
        "gpu_type": gpu_type,
        "nodes": nodes,
        "admin_token_file": str(admin_path),
        "dashboard": None if pooled else f"http://127.0.0.1:{config.ray.dashboard_port}",
        "tenant_clusters": pooled,
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


def _fds_under(pid: int, marker: str) -> bool:
    """Whether the process holds a file under ``marker`` open (Ray's processes keep their
    session's log files open, whatever they renamed themselves to)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}").startswith(marker):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def cluster_processes(state_dir: Path) -> list[Any]:
    """Every live process of this state dir's Ray cluster: by its command line, its
    environment (set by ``up``; Ray's renamed processes overwrite theirs) or the session files
    it holds open."""
    import psutil

    ident = cluster_id(state_dir)
    marker = str(ray_temp_dir(state_dir)) + "/"
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        try:
            if (
                any(marker in part for part in proc.info["cmdline"] or [])
                or proc.environ().get(CLUSTER_ENV) == ident
                or _fds_under(proc.pid, marker)
            ):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def down(state_dir: Path | None = None) -> dict[str, Any]:
    """Stop the server and the local Ray cluster; the store stays."""
    sd = state_dir or default_config().resolved_state_dir()
    server = _pid_alive(sd / SERVER_PID_FILE)
    stopped_server = _stop_pid(server) if server is not None else False
    procs = cluster_processes(sd)
    stop_processes(procs, grace_s=10)
    # Tenants' own clusters (each process carries the platform's marker).
    tenants = 0
    saved = sd / CONFIG_FILE
    platform = platform_of(load_config(saved)) if saved.exists() else platform_id(sd)
    for marker, marked in processes.marked(f"{platform}/").items():
        tenants += processes.stop_tree(marked[0].pid, grace_s=5, marker=marker)
    # Anything started meanwhile by a dying raylet (a worker, a job driver): once more.
    late = cluster_processes(sd)
    stop_processes(late, grace_s=0)
    for name in (RAY_ADDRESS_FILE, ADDRESS_FILE, SERVER_PID_FILE):
        (sd / name).unlink(missing_ok=True)
    return {
        "stopped_server": stopped_server,
        "stopped_processes": len(procs) + len(late) + tenants,
        "state_dir": str(sd),
    }
