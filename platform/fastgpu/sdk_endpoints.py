"""The SDK's model endpoint calls (issue 11; shapes in :mod:`fastgpu.endpoints.models`), mixed
into :class:`fastgpu.sdk.Client`."""

from __future__ import annotations

from typing import Any

from fastgpu.sdk_base import Calls, seg


class EndpointCalls(Calls):
    """Deploy a model as an endpoint; show, update, delete it, its tokens and logs."""

    def deploy(self, model: str, name: str, **scaling: Any) -> dict[str, Any]:
        """Deploy ``model`` (a run name, or ``tenant/model:vN``) as endpoint ``name``; the
        answer holds its ``url`` and its ``token`` (shown once). ``scaling``: gpus_per_replica,
        min_replicas, max_replicas, max_batch_size, batch_wait_ms, gpu_type, tenant (admin)."""
        tenant = scaling.pop("tenant", None)
        body = {"name": name, "model": model, **scaling}
        return dict(self._call("POST", "/endpoints", json=body, params={"tenant": tenant}))

    def endpoint(self, name: str, op: str = "show", **body: Any) -> Any:
        """One endpoint: ``op`` is show, update (``body``: model, min_replicas, ...), delete,
        tokens, issue_token, revoke_token (``token_id``) or logs (``lines``)."""
        path = f"/endpoints/{seg(name)}"
        calls: dict[str, tuple[str, str, Any, Any]] = {
            "show": ("GET", path, None, None),
            "update": ("PATCH", path, body, None),
            "delete": ("DELETE", path, None, None),
            "tokens": ("GET", f"{path}/tokens", None, None),
            "issue_token": ("POST", f"{path}/tokens", None, None),
            "revoke_token": (
                "DELETE",
                f"{path}/tokens/{seg(body.get('token_id', ''))}",
                None,
                None,
            ),
            "logs": ("GET", f"{path}/logs", None, {"lines": body.get("lines", 200)}),
        }
        if op not in calls:
            raise ValueError(f"op: got {op!r}; expected one of {', '.join(calls)}")
        method, url, js, params = calls[op]
        return self._call(method, url, json=js, params=params)

    def list_endpoints(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/endpoints", params={"tenant": tenant})["endpoints"])
