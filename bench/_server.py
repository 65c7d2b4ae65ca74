"""A ``fastgpu server`` process for benchmarks, as ``fastgpu up`` runs it: a separate process,
outside Ray, real SQLite, HTTP on 127.0.0.1, each tenant's leases in its own Ray cluster carved
from the ``pool`` the bench passes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from fastgpu.auth import new_token, write_secret
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.local import free_port


class BenchServer:
    """``config``: the platform config's sections (``pool`` among them) over the bench's
    defaults."""

    def __init__(self, state: Path, **config: Any) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.config = PlatformConfig(
            gpu_types={"A100": GpuTypeSpec(price_per_hour=2.0, perf=312)},
            state_dir=str(state),
            api={"port": free_port(), "rate_per_s": 10000, "burst": 10000},
            **config,
        )
        (state / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json")))
        self.admin = new_token()
        write_secret(state / "admin_token", self.admin)
        self.url = f"http://127.0.0.1:{self.config.api.port}"
        cmd = [sys.executable, "-m", "fastgpu.cli.main", "server", "--config"]
        cmd += [str(state / "config.yaml")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while not self._healthy():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the FastGPU server did not come up")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            r = httpx.get(
                f"{self.url}/api/v1/healthz",
                headers={"Authorization": f"Bearer {self.admin}"},
                trust_env=False,
            )
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def tenant_client(self, name: str, nominal: int) -> Any:
        from fastgpu.sdk import Client

        token = Client(token=self.admin, address=self.url).create_tenant(name, {"A100": nominal})
        return Client(token=token["token"], address=self.url)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
