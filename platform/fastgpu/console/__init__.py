"""The web console: static files shipped in this package, served by the API at ``/console/``.

Responsibility: serve the console's assets (``index.html``, its JavaScript modules, its style
sheet and icon; no build step, no third-party code) with the security headers, and nothing
else. The assets hold no data and need no token: every number the console shows is the
browser's own call to ``/api/v1`` with the token the user signed in with, which the page keeps
in ``sessionStorage`` only (never a cookie, never a URL).

Invariants:

* only the files of :data:`ASSET_TYPES` in this folder are served, read once at start-up;
  any other path (this module, ``..``, a file added later) is a 404;
* every response under ``/console`` carries :data:`SECURITY_HEADERS`: a CSP that allows
  scripts, styles and ``fetch`` from this origin only (no inline script, no ``eval``, Trusted
  Types required, so an ``innerHTML`` sink throws), no framing, no referrer, no MIME sniffing;
* the API's routes and their behaviour are untouched (every ``/api/v1`` route still needs a
  token); ``/`` redirects to ``/console/`` only when nothing else is there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

ASSETS = Path(__file__).resolve().parent
#: What is served, by suffix: nothing else in this folder leaves it.
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Revalidated on every load (a 304 when unchanged): an upgraded server never serves a
    # page with the previous version's scripts.
    "Cache-Control": "no-cache",
}


class _Asset:
    __slots__ = ("body", "content_type", "etag")

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.content_type = ASSET_TYPES[path.suffix]
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'


class ConsoleFiles:
    """ASGI app for the mount point: ``GET``/``HEAD`` of a known asset (``/`` is
    ``index.html``), with :data:`SECURITY_HEADERS` on every answer, 404 and 405 included."""

    def __init__(self, directory: Path = ASSETS) -> None:
        self.assets = {
            p.name: _Asset(p)
            for p in sorted(directory.iterdir())
            if p.is_file() and p.suffix in ASSET_TYPES and not p.name.startswith((".", "_"))
        }
        if "index.html" not in self.assets:
            raise FileNotFoundError(f"no index.html in {directory}; the package is incomplete")

    def _response(self, scope: Scope) -> Response:
        path = scope["path"]
        root = scope.get("root_path", "")
        rel = path[len(root) :] if root and path.startswith(root) else path
        if scope["method"] not in ("GET", "HEAD"):
            return PlainTextResponse("method not allowed", 405, {"Allow": "GET, HEAD"})
        if rel == "":  # the mount point itself: relative asset URLs need the slash
            return RedirectResponse(f"{root}/", 307)
        asset = self.assets.get("index.html" if rel == "/" else rel.removeprefix("/"))
        if asset is None:
            return PlainTextResponse("not found", 404)
        if asset.etag in Request(scope).headers.get("if-none-match", ""):
            return Response(status_code=304, headers={"ETag": asset.etag})
        return Response(asset.body, media_type=asset.content_type, headers={"ETag": asset.etag})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = self._response(scope)
        response.headers.update(SECURITY_HEADERS)
        await response(scope, receive, send)


def mount_console(app: Starlette, path: str = "/console") -> None:
    """Serve the console at ``path``/ and redirect ``/`` there when nothing else is at ``/``."""
    app.mount(path, ConsoleFiles(), name="console")
    if not any(getattr(route, "path", None) == "/" for route in app.routes):

        async def to_console(_: Request) -> Response:
            return RedirectResponse(f"{path}/", 307)

        app.add_route("/", to_console, include_in_schema=False)
