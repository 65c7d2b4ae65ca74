"""What the SDK's call groups share: the HTTP transport (one call with its retries, and a list
followed page by page) and how a path segment and a quota map are written."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from fastgpu.errors import Unavailable, error_from_dict


class Calls:
    """Base of the SDK's call groups (``sdk_*`` mixins): the transport they all use;
    :class:`fastgpu.sdk.Client` is all of them over one ``httpx.Client``."""

    #: Set by :class:`fastgpu.sdk.Client`.
    address: str
    _http: httpx.Client
    _retries: int

    if TYPE_CHECKING:  # provided by Client

        def whoami(self) -> dict[str, Any]: ...

    def _call(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        delay = 0.2
        for attempt in range(self._retries + 1):
            try:
                resp = self._http.request(
                    method,
                    f"/api/v1{path}",
                    json=json,
                    params=params,
                    content=content,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt == self._retries:
                    raise Unavailable(
                        f"cannot reach the FastGPU API at {self.address}: {exc}; is `fastgpu up` "
                        "running, and is FASTGPU_ADDRESS right?"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            if resp.status_code == 429 and attempt < self._retries:
                try:
                    wait = float(resp.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                time.sleep(min(max(wait, 0.1), 30.0))
                continue
            if resp.status_code == 503 and attempt < self._retries:
                time.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            if resp.is_success:
                return resp.json()
            try:
                payload = resp.json().get("error", {})
            except ValueError:
                payload = {"message": resp.text or resp.reason_phrase}
            if not isinstance(payload, dict):
                payload = {"message": str(payload)}
            payload.setdefault("message", f"HTTP {resp.status_code}")
            raise error_from_dict(payload)
        raise Unavailable("unreachable")  # pragma: no cover - the loop returns or raises

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paginated list (follows ``next_cursor``)."""
        items: list[Any] = []
        cursor = None
        while True:
            page = self._call("GET", path, params={**(params or {}), "cursor": cursor})
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def seg(value: str) -> str:
    """``value`` as one URL path segment (no '/' or '..' can change the path)."""
    return quote(str(value), safe="")


def quotas_body(quotas: dict[str, Any]) -> dict[str, Any]:
    """A quota map as the API takes it: a bare count is the nominal quota."""
    return {k: ({"nominal": v} if isinstance(v, int) else v) for k, v in quotas.items()}
