"""The SDK's model registry calls, mixed into :class:`fastgpu.sdk.Client`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastgpu.errors import InvalidRequest
from fastgpu.sdk_base import Calls


class RegistryCalls(Calls):
    """Register, list, show, resolve and delete model versions (``tenant/name:vN``)."""

    def register_model(
        self,
        name: str,
        checkpoint: str | Path,
        *,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Publish the checkpoint folder into this tenant's storage (content-addressed, by this
        process: run it where the storage is, e.g. inside a job) and register it as the next
        version of ``name``; returns the version (``ref`` is ``tenant/name:vN``)."""
        from fastgpu.registry.files import publish

        me = self.whoami()
        if not me.get("storage_root") or not me.get("storage_key"):
            raise InvalidRequest("models are registered with a tenant's token, not the admin's")
        storage = Path(me["storage_root"]) / me["storage_key"]
        rel, digest, size = publish(checkpoint, storage, name)
        body = {
            "name": name,
            "path": rel,
            "content_hash": digest,
            "size_bytes": size,
            "config": config or {},
            "metrics": metrics or {},
            "lineage": lineage or {},
            "request_id": request_id or f"sdk-{uuid.uuid4().hex}",
        }
        return dict(self._call("POST", "/models", json=body))

    def list_models(self, name: str | None = None, tenant: str | None = None) -> list[Any]:
        return self._pages("/models", params={"name": name, "tenant": tenant})

    def get_model(self, ref: str) -> dict[str, Any]:
        """``name``, ``name:v3``, ``name:latest`` (the admin: ``tenant/name:v3``)."""
        tenant, name = _split(ref)
        return dict(self._call("GET", f"/models/{name}", params={"tenant": tenant}))

    def delete_model(self, ref: str) -> dict[str, Any]:
        tenant, name = _split(ref)
        return dict(self._call("DELETE", f"/models/{name}", params={"tenant": tenant}))


def _split(ref: str) -> tuple[str | None, str]:
    from fastgpu.registry.refs import parse_ref

    r = parse_ref(ref)
    version = "latest" if r.version is None else f"v{r.version}"
    return r.tenant, f"{r.name}:{version}"
