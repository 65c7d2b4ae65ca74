"""``cluster.yaml``: the pool, as an operator writes it (issue 14).

One file says which GPU hosts exist (or that agents join with `fastgpu host add` tokens), their
GPU types with price and ``perf``, their devices, how tenants' clusters are run and when idle
ones stop, and how fast a silent host is lost. :meth:`ClusterFile.platform_overlay` turns it
into the platform config's ``gpu_types``, ``pool`` and ``tenant_clusters`` (one definition of
each shape: the config's own models are reused here). ``fastgpu up --cluster cluster.yaml``
loads it; ``docs/cluster.schema.json`` is its JSON schema; every error names the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastgpu.config import AgentPoolSettings, GpuTypeSpec
from fastgpu.errors import ConfigError
from fastgpu.validation import describe_validation_error


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterHost(_Spec):
    """One GPU host."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,30}$",
        description="Host name: its agent's --name and the raylets' `fastgpu.io/host` label.",
    )
    gpu_type: str = Field(description="GPU type of every device on it (a key of gpu_types).")
    devices: int | list[int] = Field(
        description=(
            "Its GPUs: a count (CUDA ids 0..N-1) or the device ids it lends. Hosts sharing "
            "one machine (tests, a laptop) list disjoint ids."
        )
    )

    def device_ids(self) -> list[int]:
        return list(range(self.devices)) if isinstance(self.devices, int) else list(self.devices)

    @model_validator(mode="after")
    def _valid(self) -> ClusterHost:
        ids = self.device_ids()
        if not 1 <= len(ids) <= 64 or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"host {self.name}: devices must be 1..64 distinct ids >= 0")
        return self


class TenantClusterDefaults(_Spec):
    """How each tenant's own Ray cluster runs."""

    isolation: Literal["auto", "os_users", "single_user"] = Field(
        default="auto", description="os_users (root: a system user per tenant) or single_user."
    )
    head_cpus: int = Field(default=1, ge=0, le=64, description="Logical CPUs of its head.")
    idle_timeout_s: float = Field(
        default=600.0, ge=0, description="Stop a tenant's cluster idle this long (seconds)."
    )


class ClusterFile(_Spec):
    """The whole file."""

    version: Literal[1] = Field(default=1, description="Format version of this file.")
    gpu_types: dict[str, GpuTypeSpec] = Field(
        min_length=1, description="GPU types offered: price per GPU-hour and perf each."
    )
    hosts: list[ClusterHost] = Field(min_length=1, description="The GPU hosts of the pool.")
    agents: AgentPoolSettings | None = Field(
        default=None,
        description=(
            "Set: an agent runs on each host (`fastgpu agent`), heartbeating; unset: the hosts "
            "are this machine's devices (one-machine pools, tests)."
        ),
    )
    tenant_clusters: TenantClusterDefaults = Field(
        default_factory=TenantClusterDefaults, description="Per-tenant cluster defaults."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ClusterFile:
        names = [h.name for h in self.hosts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"hosts: names must be unique; repeated: {dup}")
        for i, h in enumerate(self.hosts):
            if h.gpu_type not in self.gpu_types:
                raise ValueError(
                    f"hosts[{i}].gpu_type: {h.gpu_type!r} is not in gpu_types "
                    f"({', '.join(sorted(self.gpu_types))})"
                )
        if self.agents is None:  # one machine: a device belongs to one host
            seen: dict[int, str] = {}
            for h in self.hosts:
                for d in h.device_ids():
                    if d in seen:
                        raise ValueError(
                            f"hosts: device {d} is in {seen[d]} and {h.name}; without agents "
                            "the hosts share this machine, so their devices must be disjoint"
                        )
                    seen[d] = h.name
        return self

    def platform_overlay(self) -> dict[str, Any]:
        """The platform config's sections this file sets."""
        pool: dict[str, Any] = {
            "hosts": [
                {"name": h.name, "gpu_type": h.gpu_type, "devices": h.device_ids()}
                for h in self.hosts
            ]
        }
        if self.agents is not None:
            pool["agents"] = self.agents.model_dump()
        return {
            "gpu_types": {k: v.model_dump() for k, v in self.gpu_types.items()},
            "pool": pool,
            "tenant_clusters": self.tenant_clusters.model_dump(),
        }


def parse_cluster_file(data: Any, source: str = "cluster.yaml") -> ClusterFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return ClusterFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{describe_validation_error(exc)}") from None


def load_cluster_file(path: str | Path) -> ClusterFile:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    return parse_cluster_file(data, str(p))


def cluster_json_schema() -> str:
    return json.dumps(ClusterFile.model_json_schema(), indent=2, sort_keys=True) + "\n"
