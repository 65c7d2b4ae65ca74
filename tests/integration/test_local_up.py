"""`fastgpu up` / `down` as a user runs them: real `ray start` processes, two nodes, the CLI."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


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


def test_up_is_idempotent_and_down_stops_only_this_cluster(short_tmp: Path) -> None:
    home = short_tmp / "h"
    fake_user_home = short_tmp / "user"
    fake_user_home.mkdir()
    cfg = short_tmp / "fastgpu.yaml"
    cfg.write_text(
        "gpu_types: {A100: {price_per_hour: 2.5}}\n"
        "tenants: {ops: {quotas: {A100: {nominal: 2}}}}\n"
        f"api: {{port: {_free_port()}}}\n"
    )
    env = {
        **os.environ,
        "FASTGPU_HOME": str(home),
        "HOME": str(fake_user_home),
        "RAY_TMPDIR": str(short_tmp),
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("FASTGPU_TOKEN", None)
    try:
        out = _fastgpu(env, "up", "--gpus", "4", "--nodes", "2", "--config", str(cfg), "-o", "json")
        assert out.returncode == 0, out.stderr
        first = json.loads(out.stdout)
        assert first["started_ray"] is True
        assert first["api"].startswith("http://127.0.0.1:")
        ops_token = first["new_tenant_tokens"]["ops"]
        for secret in ("admin_token", "ray_auth_token"):
            mode = stat.S_IMODE((home / secret).stat().st_mode)
            assert mode == 0o600, (secret, oct(mode))

        again = json.loads(
            _fastgpu(
                env, "up", "--gpus", "4", "--nodes", "2", "--config", str(cfg), "-o", "json"
            ).stdout
        )
        assert again["started_ray"] is False
        assert again["new_tenant_tokens"] == {}  # config tenants are created once

        status = json.loads(_fastgpu(env, "status", "-o", "json").stdout)  # local admin token
        (a100,) = status["gpu_types"]
        assert (a100["total"], a100["nodes"]) == (4, 2)

        tenant_env = {**env, "FASTGPU_TOKEN": ops_token}
        lease = json.loads(
            _fastgpu(
                tenant_env,
                "lease",
                "request",
                "--gpus",
                "2",
                "--strategy",
                "SPREAD",
                "--wait",
                "-o",
                "json",
            ).stdout
        )
        assert lease["state"] == "RESERVED"
        assert len(set(lease["nodes"])) == 2
    finally:
        down = _fastgpu(env, "down", "-o", "json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["stopped_processes"] > 0
    # Nothing written to the user's home (no ~/.ray): Ray's token lives in the state dir.
    assert list(fake_user_home.iterdir()) == []
    # The store survives `down`.
    assert (home / "fastgpu.db").exists()
