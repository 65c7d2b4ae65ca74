"""The agent's life: settings, registration, heartbeats, and ``main``.

Start-up: read the host token from its file (0600, never an argument or a variable), start
the signed HTTP endpoint, register (retrying while the server is away), stop the raylets the
server calls stale, then heartbeat every ``heartbeat_s``. When a heartbeat says "register"
(the server restarted, or wrote this host off) it registers again. SIGTERM/SIGINT end the
agent and leave its raylets running: the next agent adopts them. Stopping the host's raylets
is the server's decision, never the agent's.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from fastgpu.agent.http_api import AgentHTTP
from fastgpu.agent.raylets import HostRaylets
from fastgpu.domain.agent_protocol import NAME, Heartbeat, HeartbeatReply, Register, Registered
from fastgpu.errors import ConfigError
from fastgpu.pool.hosts import Host
from fastgpu.pool.runtime import resolve_isolation
from fastgpu.pool.signing import Verifier

log = logging.getLogger("fastgpu.agent")


class AgentSettings(BaseModel):
    """What ``fastgpu agent`` is told (flags of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME, description="This host's name, as `fastgpu host add` took.")
    server: str = Field(description="The server's URL, e.g. http://10.0.0.1:8265.")
    token_file: Path = Field(description="The host token `fastgpu host add` printed (0600).")
    gpu_type: str = Field(min_length=1, description="The GPU type of this host's devices.")
    devices: list[int] = Field(min_length=1, description="Device ids this host lends.")
    listen: str = Field(default="127.0.0.1", description="Address the agent binds.")
    port: int = Field(default=0, ge=0, le=65535, description="Its port (0: a free one).")
    advertise: str | None = Field(
        default=None, description="The URL the server calls (default http://<listen>:<port>)."
    )
    root: Path | None = Field(
        default=None, description="Tenants' raylet homes (short: Ray's socket paths)."
    )
    isolation: str = Field(default="auto", description="auto, os_users or single_user.")
    python: str | None = Field(default=None, description="Interpreter for tenants' users.")


def read_token(path: Path) -> str:
    """The host token from its file, refused unless only its owner can read it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            f"--token-file {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    token = path.read_text().strip()
    if not token:
        raise ConfigError(f"--token-file {path} is empty")
    return token


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.token = read_token(settings.token_file)
        root = settings.root or Path(os.environ.get("RAY_TMPDIR") or "/tmp") / (
            f"fga-{settings.name}"
        )
        host = Host(settings.name, settings.gpu_type, tuple(settings.devices))
        self.raylets = HostRaylets(
            host, root, resolve_isolation(settings.isolation), settings.python
        )
        self.verifier = Verifier()
        self.http = AgentHTTP(self.raylets, self.verifier, settings.listen, settings.port)
        self.url = settings.advertise or f"http://{settings.listen}:{self.http.port}"
        self.heartbeat_s = 2.0
        self.state = "UNREGISTERED"
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=settings.server.rstrip("/"), timeout=10.0)

    def _post(self, path: str, body: BaseModel) -> Any:
        resp = self._client.post(
            path,
            content=body.model_dump_json().encode(),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        if resp.status_code != 200:
            raise ConfigError(f"server answered {resp.status_code} to {path}: {resp.text[:500]}")
        return resp.json()

    def register(self) -> Registered:
        s = self.settings
        req = Register(
            host=s.name,
            gpu_type=s.gpu_type,
            devices=list(s.devices),
            cpus=os.cpu_count() or 1,
            memory_bytes=_memory_bytes(),
            url=self.url,
            report=self.raylets.report(),
        )
        got = Registered.model_validate(self._post("/api/v1/agents/register", req))
        self.verifier.key = got.key
        self.raylets.serve(got.platform_id)
        self.heartbeat_s = got.heartbeat_s
        if got.stale:
            n = self.raylets.stop_all(got.stale)
            log.warning("stopped %d stale raylet(s) the server wrote off: %s", len(got.stale), n)
        self.state = "REGISTERED"
        log.info(
            "host %s registered at %s (%d raylets adopted)",
            s.name,
            self.url,
            len(self.raylets.running()),
        )
        return got

    def heartbeat(self) -> HeartbeatReply:
        req = Heartbeat(host=self.settings.name, report=self.raylets.report())
        reply = HeartbeatReply.model_validate(self._post("/api/v1/agents/heartbeat", req))
        self.state = reply.state
        if reply.reregister:
            self.register()
        return reply

    def run(self) -> int:
        self.raylets.prepare()
        self.http.start()
        log.info("agent %s listening on %s", self.settings.name, self.url)
        registered = False
        while not self._stop.is_set():
            try:
                if not registered:
                    self.register()
                    registered = True
                else:
                    self.heartbeat()
            except (httpx.HTTPError, ConfigError) as exc:
                log.warning("server unreachable or refused: %s", exc)
                if "answered 401" in str(exc) or "answered 403" in str(exc):
                    registered = False
            self._stop.wait(self.heartbeat_s if registered else 1.0)
        self.http.close()
        self._client.close()
        return 0

    def stop(self) -> None:
        self._stop.set()


def main(settings: AgentSettings) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    agent = Agent(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    started = time.monotonic()
    code = agent.run()
    log.info("agent stopped after %.0f s; its raylets run on", time.monotonic() - started)
    return code
