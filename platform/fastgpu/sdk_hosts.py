"""The SDK's host calls (admin; issue 14), mixed into :class:`fastgpu.sdk.Client`."""

from __future__ import annotations

from typing import Any

from fastgpu.sdk_base import Calls


class HostCalls(Calls):
    """Add, list, show, drain and undrain the pool's agent-run hosts."""

    def add_host(self, name: str) -> dict[str, Any]:
        """Declare host ``name``; returns ``{"name", "token"}``: the token is shown once (give
        it to the host's agent in a 0600 file)."""
        return dict(self._call("POST", "/hosts", json={"name": name}))

    def list_hosts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/hosts")["hosts"])

    def get_host(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/hosts/{name}"))

    def drain_host(self, name: str, deadline_s: float | None = None) -> dict[str, Any]:
        """Stop new placements on the host and tell its leases to leave (within
        ``deadline_s`` at most); its state becomes DRAINED when nothing is left there."""
        return dict(self._call("POST", f"/hosts/{name}/drain", json={"deadline_s": deadline_s}))

    def undrain_host(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/hosts/{name}/undrain"))
