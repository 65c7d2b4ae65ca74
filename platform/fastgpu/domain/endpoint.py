"""A model endpoint as stored (issue 11): the record the store keeps and the service changes.

``doc`` is the endpoint's mutable state, written whole: ``model`` (the reference deployed; a
registered model pinned to ``tenant/name:vN``), ``checkpoint`` (its folder), ``content_hash``
(a registered model's SHA-256, verified by each replica; None for a run), ``version`` and
``app`` (the Serve application serving now), ``gpu_type``, ``scaling``
(:class:`fastgpu.endpoints.models.Scaling` as a dict), ``lease_id`` (the elastic lease its
replicas run on; None while scaled to zero), ``bound_lease`` (that lease once bound: only then
do replicas ask for its resource), ``serve_port`` (the tenant's Serve proxy), ``state`` and
``message``, ``next`` (a version rolling in: model, checkpoint, content_hash, version, app) and
``idle_since``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EndpointRecord:
    id: str
    tenant_id: str
    tenant: str
    name: str
    created_at: float
    updated_at: float
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointTokenRecord:
    id: str
    endpoint_id: str
    tenant_id: str
    token_hash: str
    created_at: float
    revoked_at: float | None
