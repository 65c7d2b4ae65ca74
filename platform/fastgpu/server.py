"""``fastgpu server``: the control plane as one ordinary process, outside Ray.

It holds the HTTP API (FastAPI on uvicorn), the controller loop, the store and the tokens, and
runs each tenant's Ray cluster on the config's ``pool`` (:class:`~fastgpu.controller.
pool_backend.PoolBackend`), speaking to those clusters from outside; it runs no tenant code.

Start-up, in order:
1. open the store (migrating it) and take the **leader lock** (a PostgreSQL advisory lock, or
   a file lock next to a SQLite store). Without it the server is a *standby*: it waits, serving
   nothing, and takes over as soon as the leader's lock is freed (its process or its database
   session died);
2. adopt the tenants' clusters that run on the pool, register the admin token (by hash) and
   **reconcile** the store with them;
3. start the controller loop (a thread, ``controller.tick_interval_s``) and the API on a socket
   bound here without SO_REUSEPORT: if the port is taken, start-up fails and names the holder.

Fencing: before each pass the loop checks that the lock is still held; if it is not (the
database session was lost), the server stops serving and exits non-zero, never acting as a
second leader. A supervisor (``fastgpu up``, systemd) starts it again, as a standby.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from fastgpu.config import PlatformConfig
from fastgpu.errors import FastGPUError

log = logging.getLogger("fastgpu.server")

EXIT_LOST_LEADERSHIP = 3
UVICORN_SETTINGS: dict[str, Any] = {
    "log_level": "warning",
    "access_log": False,
    "timeout_keep_alive": 30,
    "lifespan": "off",
}
"""How the API is served (``bench/bench_api.py`` serves its FastAPI hello the same way)."""


def settle_heap() -> None:
    """Once start-up is done: collect, then freeze what survives (modules, pydantic schemas,
    the app, caches), so the collector's full passes under load scan only what requests
    allocate. Measured under 200 clients: full collections every ~1.3 s took ~50 ms each
    (every request meanwhile waits), ~18 ms after this."""
    gc.collect()
    gc.freeze()


def port_holder(host: str, port: int) -> str:
    """Who listens on ``host:port``, as well as this user can tell."""
    try:
        import psutil

        conns = sorted(
            psutil.net_connections(kind="tcp"), key=lambda c: c.status != psutil.CONN_LISTEN
        )
        for conn in conns:
            # A listener first; else any socket bound to the port (bound, not yet listening).
            if conn.laddr and conn.laddr.port == port and not conn.raddr:
                if conn.pid:
                    try:
                        proc = psutil.Process(conn.pid)
                        return f"pid {conn.pid} ({' '.join(proc.cmdline())[:160]})"
                    except psutil.Error:
                        return f"pid {conn.pid}"
                return "another user's process"
    except Exception:  # no permission to list sockets: say what we know
        pass
    return "an unknown process"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; no SO_REUSEPORT, so nobody shares it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR only allows re-binding over TIME_WAIT; two listeners still conflict.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FastGPUError(
            f"cannot listen on {host}:{port}: {exc.strerror}; it is held by "
            f"{port_holder(host, port)}. Stop that, or set api.port in the config"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


class Server:
    """One control-plane process: build with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        config: PlatformConfig,
        admin_token_file: Path | None = None,
    ) -> None:
        self.config = config
        self.admin_token_file = admin_token_file
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._uvicorn: Any = None
        self.controller: Any = None
        self.backend: Any = None
        self.lock: Any = None

    # -- leadership --------------------------------------------------------------------------
    def wait_for_leadership(self) -> bool:
        from fastgpu.store.leader import leader_lock_for

        self.lock = leader_lock_for(
            self.config.resolved_store_url(), self.config.resolved_state_dir()
        )
        if self.lock.try_acquire():
            log.info("leader lock taken (%r)", self.lock)
            return True
        log.info("standby: another server holds the leader lock; waiting for it")
        got = bool(self.lock.acquire(self._stop, poll_s=0.5))
        if got:
            log.info("leader lock taken after waiting: taking over")
        return got

    # -- start ---------------------------------------------------------------------------------
    def build(self) -> Any:
        """Store, the tenants' clusters on the pool, controller, services and the app (leader
        only)."""
        from fastgpu.api.app import create_app
        from fastgpu.api.limits import WaitSlots
        from fastgpu.controller.hosts import make_pool
        from fastgpu.controller.loop import Controller
        from fastgpu.controller.pool_backend import PoolBackend
        from fastgpu.controller.reconcile import reconcile
        from fastgpu.metrics import install_metrics
        from fastgpu.pool.hosts import hosts_from_spec
        from fastgpu.service import Services
        from fastgpu.store import open_store

        store = open_store(self.config.resolved_store_url())
        assert self.config.pool is not None  # checked by main()
        backend = self.backend = PoolBackend(
            self.config, hosts_from_spec(self.config.pool), pool=make_pool(self.config)
        )
        self.controller = Controller(self.config, store, backend)
        services = Services.build(
            self.controller,
            wait_slots=WaitSlots(self.config.api.max_waits_per_tenant),
            clusters=backend,
        )
        # Tenants' job drivers act as their tenant.
        backend.clusters.api_url = f"http://{self.config.api.host}:{self.config.api.port}"
        backend.clusters.job_token = services.auth.cluster_token
        if self.admin_token_file is not None and self.admin_token_file.exists():
            services.auth.bootstrap_admin(self.admin_token_file.read_text().strip())
        metrics = install_metrics(self.controller)  # before reconcile: it changes leases too
        try:
            reconcile(self.controller)
        except Exception:  # serve anyway: the loop reconciles again within seconds
            log.exception("start-up reconcile failed; the loop retries it")
        return create_app(services, self.config.api, leader=self.is_leader, metrics=metrics.render)

    def is_leader(self) -> bool:
        return self.lock is not None and not self._lost.is_set()

    def _loop(self) -> None:
        interval = self.config.controller.tick_interval_s
        while not self._stop.is_set():
            if self.lock is not None and not self.lock.is_held():
                log.error("the leader lock was lost; stopping (a standby takes over)")
                self._lost.set()
                self.shutdown()
                return
            try:
                self.controller.tick()
            except Exception:  # the loop must survive a bad pass; the next one retries
                log.exception("controller pass failed")
            self._stop.wait(interval)

    def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        import uvicorn

        if not self.wait_for_leadership():
            return 0
        api = self.config.api
        sock = bind_socket(api.host, api.port)
        app = self.build()
        loop = threading.Thread(target=self._loop, name="fastgpu-controller", daemon=True)
        loop.start()
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, **UVICORN_SETTINGS))
        settle_heap()
        log.info("serving the API on http://%s:%d", api.host, api.port)
        try:
            self._uvicorn.run(sockets=[sock])
        finally:
            self._stop.set()
            sock.close()
            if self.backend is not None:
                self.backend.close()  # tenants' clusters run on; the next server adopts them
            if self.lock is not None:
                self.lock.release()
        return EXIT_LOST_LEADERSHIP if self._lost.is_set() else 0

    def shutdown(self) -> None:
        self._stop.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True


def main(config_path: str) -> int:
    from fastgpu.config import load_config

    logging.basicConfig(
        level=os.environ.get("FASTGPU_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Every file the server makes (store, logs, uploads) is its own: tenants' users pass
    # through the state dir to their storage, so nothing in it may be readable by others.
    os.umask(0o077)
    config = load_config(config_path)
    if config.pool is None:
        from fastgpu.errors import ConfigError

        raise ConfigError(
            f"{config_path}: tenants' clusters need the GPUs to carve: set "
            "pool.hosts (or start with `fastgpu up`, which describes this machine's GPUs, or "
            "`fastgpu up --cluster cluster.yaml`)"
        )
    state_dir = config.resolved_state_dir()
    server = Server(config, admin_token_file=state_dir / "admin_token")

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    code = server.run()
    log.info("stopped after %.0f s (exit %d)", time.monotonic() - started, code)
    return code
