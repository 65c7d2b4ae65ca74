"""The registry's API input and output (shared by the HTTP API, the SDK and the CLI)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from fastgpu.validation import NAME_PATTERN, REQUEST_ID_PATTERN

HASH_PATTERN = r"^[0-9a-f]{64}$"
#: What a registration may carry in config, metrics and lineage (each), as JSON.
MAX_META_BYTES = 16 * 1024


def _small_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    import json

    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{what}: expected JSON values ({exc})") from None
    if len(text) > MAX_META_BYTES:
        raise ValueError(f"{what}: {len(text)} bytes as JSON; at most {MAX_META_BYTES}")
    return value


class ModelCreate(BaseModel):
    """Register files the tenant published with :func:`fastgpu.registry.publish`."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(pattern=NAME_PATTERN, description="Model name (per tenant).")
    path: StrictStr = Field(
        max_length=512,
        description="models/<name>/<hash[:16]> under the tenant's storage (the SDK sets it).",
    )
    content_hash: StrictStr = Field(pattern=HASH_PATTERN, description="SHA-256 of the files.")
    size_bytes: StrictInt = Field(ge=0, le=2**53, description="Total bytes of the files.")
    config: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Its measured metrics.")
    lineage: dict[str, Any] = Field(
        default_factory=dict, description="Where it came from: sweep, trial, run, job."
    )
    request_id: StrictStr | None = Field(
        default=None, min_length=1, max_length=128, pattern=REQUEST_ID_PATTERN
    )

    @field_validator("config", "metrics", "lineage")
    @classmethod
    def _json(cls, v: dict[str, Any], info: Any) -> dict[str, Any]:
        return _small_json(v, info.field_name)


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="tenant/name:vN")
    tenant: str
    name: str
    version: int
    path: str = Field(description="The files' folder, relative to the tenant's storage.")
    uri: str = Field(description="The files' folder on the platform's storage.")
    content_hash: str
    size_bytes: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    created_at: str
