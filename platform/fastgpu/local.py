"""``fastgpu up`` / ``fastgpu down``: a local Ray cluster with logical GPUs, the controller and
the API, all on 127.0.0.1.

State lives in the state dir (``$FASTGPU_HOME`` or ``~/.fastgpu``): the SQLite store, the admin
token and Ray's auth token (both 0600), the effective config and the API address. Ray runs with
token auth on (``RAY_AUTH_MODE=token``, token file in the state dir, never ``~/.ray``).
``up`` is idempotent: run it again and it checks what runs and starts only what is missing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fastgpu.auth import new_token, write_secret
from fastgpu.config import GpuTypeSpec, PlatformConfig, default_config, load_config
from fastgpu.controller.backend import GPU_TYPE_LABEL
from fastgpu.errors import ConfigError, FastGPUError, InvalidRequest
from fastgpu.sdk import ADDRESS_FILE, ADMIN_TOKEN_FILE

RAY_TOKEN_FILE = "ray_auth_token"
CONFIG_FILE = "config.yaml"
RAY_ADDRESS_FILE = "ray_address"
GCS_PORT = 6380


def ray_env(state_dir: Path) -> dict[str, str]:
    """Environment that makes Ray clients and nodes use this platform's auth token."""
    token_path = state_dir / RAY_TOKEN_FILE
    if not token_path.exists():
        write_secret(token_path, secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def apply_ray_env(state_dir: Path) -> None:
    env = ray_env(state_dir)
    os.environ.update(env)
    os.environ.pop("RAY_AUTH_TOKEN", None)


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
        types[gpu_type] = GpuTypeSpec(price_per_hour=2.0)
        config = config.model_copy(update={"gpu_types": types})
    return config


def ray_temp_dir(state_dir: Path) -> Path:
    """Ray's session folder for this state dir: short (Ray's socket paths are length-limited)
    and unique, so ``down`` can stop exactly this cluster's processes and no other."""
    import hashlib

    base = Path(os.environ.get("RAY_TMPDIR") or "/tmp")
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return base / f"fg-{digest}"


def _ray_running(address_file: Path) -> str | None:
    if not address_file.exists():
        return None
    address = address_file.read_text().strip()
    probe = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address={address!r}); print('ok')"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    return address if probe.returncode == 0 and "ok" in probe.stdout else None


def _free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there on loopback, else a free port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _ray_start(args: list[str]) -> None:
    cmd = [str(Path(sys.executable).with_name("ray")), "start", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    if done.returncode != 0:
        raise FastGPUError(f"`ray start` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def up(
    gpus: int = 8,
    gpu_type: str = "A100",
    nodes: int = 1,
    config_path: str | None = None,
    cpus: int | None = None,
) -> dict[str, Any]:
    """Start (or check) the local platform; returns what runs and any new tenant tokens."""
    if gpus < 1 or gpus > 1024:
        raise InvalidRequest(f"--gpus: got {gpus}; expected 1..1024")
    if nodes < 1 or nodes > 16 or gpus % nodes:
        raise InvalidRequest(
            f"--nodes: got {nodes}; expected 1..16 dividing --gpus ({gpus}) evenly"
        )
    config = effective_config(config_path, gpu_type, None)
    state_dir = config.resolved_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    if not config.state_dir:
        config = config.model_copy(update={"state_dir": str(state_dir)})
    (state_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json")))
    apply_ray_env(state_dir)

    address_file = state_dir / RAY_ADDRESS_FILE
    address = _ray_running(address_file)
    started = address is None
    if started:
        per_node = gpus // nodes
        port = _free_port(GCS_PORT)
        address = f"127.0.0.1:{port}"
        label = f"{GPU_TYPE_LABEL}={gpu_type}"
        head = [
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--num-gpus={per_node}",
            f"--labels={label}",
            "--disable-usage-stats",
            f"--temp-dir={ray_temp_dir(state_dir)}",
        ]
        if cpus is not None:
            head.append(f"--num-cpus={cpus}")
        _ray_start(head)
        for _ in range(nodes - 1):
            _ray_start(
                [
                    f"--address={address}",
                    "--node-ip-address=127.0.0.1",
                    f"--num-gpus={per_node}",
                    "--num-cpus=1",
                    f"--labels={label}",
                    "--disable-usage-stats",
                ]
            )
        address_file.write_text(address)

    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="fastgpu", log_to_driver=False)
    from ray._private.worker import get_dashboard_url

    dashboard = get_dashboard_url()
    dashboard_url = f"http://{dashboard}" if dashboard else None

    from fastgpu.api.serve import deploy_api
    from fastgpu.controller.actor import ControllerClient, start_controller

    admin_path = state_dir / ADMIN_TOKEN_FILE
    admin = admin_path.read_text().strip() if admin_path.exists() else new_token()
    write_secret(admin_path, admin)
    start_controller(config, admin, dashboard_url)
    url = deploy_api(config)
    (state_dir / ADDRESS_FILE).write_text(url)

    client = ControllerClient()
    new_tokens: dict[str, str] = {}
    known = {t["name"] for t in client.call("list_tenants", admin)}
    for name, spec in config.tenants.items():
        if name not in known:
            out = client.call("create_tenant", admin, name, spec.model_dump(mode="json"))
            new_tokens[name] = out["token"]
    _wait_http(url, admin)
    return {
        "ray_address": address,
        "api": url,
        "state_dir": str(state_dir),
        "started_ray": started,
        "gpus": gpus,
        "gpu_type": gpu_type,
        "nodes": nodes,
        "admin_token_file": str(admin_path),
        "dashboard": dashboard_url,
        "new_tenant_tokens": new_tokens,
    }


def _wait_http(url: str, token: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(
                f"{url}/api/v1/healthz",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
                trust_env=False,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise FastGPUError(f"the API at {url} did not come up within {timeout:.0f} s")
        time.sleep(0.5)


def down(state_dir: Path | None = None) -> dict[str, Any]:
    """Stop the API, the controller and the local Ray cluster; the store stays."""
    sd = state_dir or default_config().resolved_state_dir()
    stopped = _stop_processes(str(ray_temp_dir(sd)))
    (sd / RAY_ADDRESS_FILE).unlink(missing_ok=True)
    (sd / ADDRESS_FILE).unlink(missing_ok=True)
    return {"stopped_processes": stopped, "state_dir": str(sd)}


def _stop_processes(marker: str, grace_s: float = 10.0) -> int:
    """Terminate the processes of this cluster only (their command line names its temp dir),
    unlike ``ray stop``, which stops every Ray process on the machine."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(procs)
