"""The shapes of endpoints over HTTP, the SDK and the CLI (one definition each).

* :class:`DeploySpec`: what ``fastgpu deploy`` sends (``POST /api/v1/endpoints``);
* :class:`EndpointUpdate`: ``PATCH /api/v1/endpoints/{name}`` (a new model rolls; scaling
  bounds change in place);
* :class:`EndpointOut`: an endpoint as callers see it; :class:`EndpointCreated` adds the token,
  shown once; :class:`EndpointTokenOut` one token's metadata (never the token).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from fastgpu.validation import GPU_TYPE_PATTERN, NAME_PATTERN

#: A model reference: a training run's name in the tenant's storage (``digits-1``: no ``/`` and
#: no ``:``), or a registered model ``[tenant/]model:vN`` or ``[tenant/]model:latest``.
SOURCE_PATTERN = r"^([a-z][a-z0-9-]{0,62}/)?[a-z][a-z0-9-]{0,62}(:v[0-9]{1,6}|:latest)?$"
MAX_REPLICAS = 64
EndpointState = Literal["DEPLOYING", "READY", "UPDATING", "FAILED"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Scaling(_In):
    """Replica bounds and batching (also what an update may change)."""

    gpus_per_replica: StrictInt = Field(default=1, ge=1, le=8, description="GPUs per replica.")
    min_replicas: StrictInt = Field(
        default=0, ge=0, le=MAX_REPLICAS, description="Fewest replicas; 0 scales to zero."
    )
    max_replicas: StrictInt = Field(
        default=1, ge=1, le=MAX_REPLICAS, description="Most replicas Serve may scale to."
    )
    max_batch_size: StrictInt = Field(
        default=8, ge=1, le=1024, description="@serve.batch: most requests in one batch."
    )
    batch_wait_ms: StrictInt = Field(
        default=5, ge=0, le=10_000, description="@serve.batch: longest wait to fill a batch."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas <= max_replicas (got {self.min_replicas} > {self.max_replicas})"
            )
        return self


class DeploySpec(Scaling):
    """``fastgpu deploy``: a model to a live endpoint."""

    name: StrictStr = Field(pattern=NAME_PATTERN, description="The endpoint's name.")
    model: StrictStr = Field(
        pattern=SOURCE_PATTERN,
        max_length=140,
        description=(
            "A training run's name in your storage, or a registered model "
            "'[tenant/]model:vN' or '[tenant/]model:latest'."
        ),
    )
    gpu_type: StrictStr | None = Field(
        default=None, pattern=GPU_TYPE_PATTERN, description="GPU type; unset: the only one."
    )


class EndpointUpdate(_In):
    """``fastgpu endpoint update``: every field optional; a new ``model`` rolls replicas with
    no failed request (a spare replica's GPUs are asked for the surge)."""

    model: StrictStr | None = Field(
        default=None, pattern=SOURCE_PATTERN, max_length=140, description="The new model."
    )
    min_replicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    max_replicas: StrictInt | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    max_batch_size: StrictInt | None = Field(default=None, ge=1, le=1024)
    batch_wait_ms: StrictInt | None = Field(default=None, ge=0, le=10_000)


class EndpointOut(BaseModel):
    """An endpoint as its tenant (or the admin) sees it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tenant: str
    name: str
    url: str = Field(description="Where to send requests (the platform's address).")
    model: str = Field(description="The model serving now.")
    checkpoint: str = Field(description="Its checkpoint folder.")
    content_hash: str | None = Field(
        default=None,
        description="A registered model's SHA-256 (replicas verify the files before loading).",
    )
    state: EndpointState
    message: str = Field(description="What happens now, or why the last change failed.")
    version: int = Field(description="The serving version (each model change adds one).")
    updating_to: str | None = Field(default=None, description="A model rolling in now.")
    gpu_type: str
    gpus_per_replica: int
    min_replicas: int
    max_replicas: int
    max_batch_size: int
    batch_wait_ms: int
    replicas: int = Field(default=0, description="Replicas running now (Serve's view).")
    lease_id: str | None = Field(default=None, description="The lease its replicas run on.")
    lease_gpus: int = Field(default=0, description="GPUs the lease holds now.")
    created_at: str
    updated_at: str


class EndpointCreated(EndpointOut):
    token: str = Field(description="The endpoint's first token: shown once, stored hashed.")


class EndpointTokenOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    created_at: str
    revoked: bool
    token: str | None = Field(default=None, description="Only when just issued.")


class EndpointList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointOut]
