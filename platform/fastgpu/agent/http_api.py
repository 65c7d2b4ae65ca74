"""The agent's HTTP endpoint: what the server may ask of it, each request signed.

Routes (all POST, JSON, signed per :mod:`fastgpu.pool.signing`)::

    /v1/raylets/start   StartRaylet -> RayletReport
    /v1/raylets/stop    StopRaylet  -> RayletReport
    /v1/raylets/list    {}          -> RayletReport

Errors are ``{"error": message}`` with 401 (unsigned, forged, stale, replayed), 403 (a device
not this host's), 404, 409 (a device in use), 413, 422 (a malformed body), 503 (not yet
registered), 500. Binds 127.0.0.1 unless told otherwise. Uses the standard library's threaded
server: the agent must stay small and start in a fraction of a second.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from fastgpu.agent.raylets import HostRaylets
from fastgpu.domain.agent_protocol import StartRaylet, StopRaylet
from fastgpu.errors import Conflict, PermissionDenied
from fastgpu.pool.signing import SignatureError, Verifier

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


class AgentHTTP:
    """Serve the signed routes on ``host:port`` (port 0: a free one) in a thread."""

    def __init__(self, raylets: HostRaylets, verifier: Verifier, host: str, port: int) -> None:
        self.raylets = raylets
        self.verifier = verifier
        handler = _handler(self)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="fastgpu-agent-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        if len(body) > MAX_BODY:
            return 413, {"error": f"body over {MAX_BODY} bytes"}
        routes = {
            "/v1/raylets/start": lambda d: self.raylets.start(StartRaylet.model_validate(d)),
            "/v1/raylets/stop": lambda d: self.raylets.stop(StopRaylet.model_validate(d)),
            "/v1/raylets/list": lambda d: self.raylets.report(),
        }
        route = routes.get(path)
        if route is None:
            return 404, {"error": f"no route {path}"}
        try:
            self.verifier.verify("POST", path, body, headers)
        except SignatureError as exc:
            log.warning("refused a request to %s: %s", path, exc)
            code = 503 if self.verifier.key is None else 401
            return code, {"error": str(exc)}
        try:
            data = json.loads(body or b"{}")
            return 200, route(data).model_dump(mode="json")
        except (ValueError, ValidationError) as exc:
            return 422, {"error": str(exc)[:2000]}
        except PermissionDenied as exc:
            log.warning("refused %s: %s", path, exc)
            return 403, {"error": str(exc)}
        except Conflict as exc:
            return 409, {"error": str(exc)}
        except Exception as exc:  # reported to the server, which fails the reservation
            log.exception("%s failed", path)
            return 500, {"error": f"{type(exc).__name__}: {str(exc)[:3000]}"}


def _handler(api: AgentHTTP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fastgpu-agent"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(min(length, MAX_BODY + 1))
            code, out = api.handle(self.path, body, dict(self.headers.items()))
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("agent http: " + format, *args)

    return Handler
