"""Typed inputs and results of the hosts service (``/api/v1/hosts``): one definition per
shape, used by the API, the SDK's callers and the CLI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fastgpu.domain.agent_protocol import NAME


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostAdd(_Model):
    name: str = Field(pattern=NAME, description="The host's name (its agent's --name).")


class HostAdded(_Model):
    name: str = Field(description="The host's name.")
    token: str = Field(description="The host's token: shown once; the server keeps its hash.")


class DrainIn(_Model):
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="Time the leases on it get at most (seconds); unset: their grace.",
    )


class HostOut(_Model):
    name: str = Field(description="Host name.")
    state: str = Field(description="PENDING, READY, DRAINING, DRAINED or LOST.")
    gpu_type: str | None = Field(description="GPU type of its devices (None: never seen).")
    devices: list[int] = Field(description="Device ids it lends.")
    token_issued: bool = Field(description="Whether `fastgpu host add` issued its token.")
    agent_url: str | None = Field(description="Where its agent listens.")
    cpus: int | None = Field(description="CPUs its agent reported.")
    memory_bytes: int | None = Field(description="Memory its agent reported.")
    last_heartbeat_s_ago: float | None = Field(description="Seconds since its last heartbeat.")
    raylets: int = Field(description="Tenants' raylets running there.")
    leases: list[str] = Field(description="Live leases holding GPUs there.")
    drain: dict[str, Any] = Field(
        description="The drain that stands: requested_at, deadline_s, drained_at; {}: none."
    )


class HostList(_Model):
    hosts: list[HostOut]
