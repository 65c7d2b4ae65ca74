"""A real local Ray cluster with logical GPUs, a real SQLite store and the controller actor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig, QuotaSpec, TenantSpec
from fastgpu.controller.actor import ControllerClient, start_controller, stop_controller
from fastgpu.controller.backend import GPU_TYPE_LABEL


@dataclass
class Platform:
    config: PlatformConfig
    admin: str
    client: ControllerClient
    handle: Any

    def tenant(self, name: str, borrowing_limit: int | None = None, **quotas: int) -> str:
        """Create a tenant with nominal quotas; return its token."""
        spec = TenantSpec(
            quotas={
                k: QuotaSpec(nominal=v, borrowing_limit=borrowing_limit) for k, v in quotas.items()
            }
        )
        out = self.client.call("create_tenant", self.admin, name, spec.model_dump(mode="json"))
        return str(out["token"])


def make_config(state_dir: Path, **extra: Any) -> PlatformConfig:
    return PlatformConfig(
        gpu_types={
            "A100": GpuTypeSpec(price_per_hour=3.6),
            "H100": GpuTypeSpec(price_per_hour=7.2),
        },
        state_dir=str(state_dir),
        **extra,
    )


def start_local_ray(num_gpus: int = 8, gpu_type: str = "A100") -> None:
    ray.init(
        num_cpus=2,
        num_gpus=num_gpus,
        include_dashboard=False,
        labels={GPU_TYPE_LABEL: gpu_type},
        namespace="fastgpu-tests",
        log_to_driver=False,
    )


def platform_on_running_ray(state_dir: Path, **config_extra: Any) -> Iterator[Platform]:
    config = make_config(state_dir, **config_extra)
    admin = new_token()
    handle = start_controller(config, admin)
    try:
        yield Platform(config, admin, ControllerClient(), handle)
    finally:
        stop_controller()


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def local_platform(
    tmp_path_factory: Any, num_gpus: int = 8, **config_extra: Any
) -> Iterator[Platform]:
    """A one-node local cluster with ``num_gpus`` logical A100s and the controller on it."""
    start_local_ray(num_gpus=num_gpus)
    try:
        yield from platform_on_running_ray(tmp_path_factory.mktemp("state"), **config_extra)
    finally:
        ray.shutdown()
