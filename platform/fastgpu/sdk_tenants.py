"""The SDK's tenant and token calls (the admin's, and a tenant's own tokens), mixed into
:class:`fastgpu.sdk.Client`."""

from __future__ import annotations

import uuid
from typing import Any

from fastgpu.sdk_base import Calls, quotas_body, seg


class TenantCalls(Calls):
    """Create, list, show, update and delete tenants; issue, rotate, list and revoke tokens."""

    def create_tenant(
        self,
        name: str,
        quotas: dict[str, Any] | None = None,
        *,
        weight: float | None = None,
        priority: int | None = None,
        budget: dict[str, Any] | None = None,
        queueing: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Create a tenant; ``quotas`` maps GPU type to a nominal count or a quota mapping.
        The result holds the tenant's token, shown this once. Retries reuse the request id:
        a retry that finds the tenant made answers it without the token (rotate to get one)."""
        body: dict[str, Any] = {
            "name": name,
            "quotas": quotas_body(quotas or {}),
            "request_id": request_id or f"sdk-{uuid.uuid4().hex}",
        }
        for key, value in (
            ("weight", weight),
            ("priority", priority),
            ("budget", budget),
            ("queueing", queueing),
        ):
            if value is not None:
                body[key] = value
        return dict(self._call("POST", "/tenants", json=body))

    def list_tenants(self) -> list[dict[str, Any]]:
        return self._pages("/tenants")

    def get_tenant(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/tenants/{seg(name)}"))

    def update_tenant(self, name: str, **changes: Any) -> dict[str, Any]:
        if "quotas" in changes and changes["quotas"] is not None:
            changes["quotas"] = quotas_body(changes["quotas"])
        return dict(self._call("PATCH", f"/tenants/{seg(name)}", json=changes))

    def delete_tenant(self, name: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/tenants/{seg(name)}"))

    def rotate_token(
        self,
        name: str,
        grace: str | float | None = None,
        expires_in: str | float | None = None,
    ) -> dict[str, Any]:
        """A new token for tenant ``name`` (or ``"admin"``); the old ones keep working for
        ``grace`` (the server's default when unset; 0 stops them now)."""
        body = {k: v for k, v in (("grace", grace), ("expires_in", expires_in)) if v is not None}
        body["request_id"] = f"sdk-{uuid.uuid4().hex}"  # a retry does not rotate twice
        return dict(self._call("POST", f"/tenants/{seg(name)}/rotate-token", json=body))

    def issue_token(
        self, name: str, label: str | None = None, expires_in: str | float | None = None
    ) -> dict[str, Any]:
        """One more token for ``name`` (or ``"admin"``); the others keep working."""
        body = {k: v for k, v in (("label", label), ("expires_in", expires_in)) if v is not None}
        body["request_id"] = f"sdk-{uuid.uuid4().hex}"  # a retry does not issue twice
        return dict(self._call("POST", f"/tenants/{seg(name)}/tokens", json=body))

    def list_tokens(self, name: str) -> list[dict[str, Any]]:
        return self._pages(f"/tenants/{seg(name)}/tokens")

    def revoke_token(self, name: str, token_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/tenants/{seg(name)}/tokens/{seg(token_id)}"))
