"""What the SDK's call groups share: the transport :class:`fastgpu.sdk.Client` provides (typed
here once for the mixins) and how a path segment and a quota map are written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote


class Calls:
    """Base of the SDK's call groups (``sdk_*`` mixins); :class:`fastgpu.sdk.Client` is all
    of them over one HTTP transport."""

    if TYPE_CHECKING:  # provided by Client

        def _call(
            self,
            method: str,
            path: str,
            json: Any = None,
            params: dict[str, Any] | None = None,
            timeout: float | None = None,
            content: bytes | None = None,
            headers: dict[str, str] | None = None,
        ) -> Any: ...

        def _pages(self, path: str, params: dict[str, Any] | None = None) -> list[Any]: ...

        def whoami(self) -> dict[str, Any]: ...


def seg(value: str) -> str:
    """``value`` as one URL path segment (no '/' or '..' can change the path)."""
    return quote(str(value), safe="")


def quotas_body(quotas: dict[str, Any]) -> dict[str, Any]:
    """A quota map as the API takes it: a bare count is the nominal quota."""
    return {k: ({"nominal": v} if isinstance(v, int) else v) for k, v in quotas.items()}
