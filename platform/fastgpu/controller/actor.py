"""The controller as a named, detached Ray actor, and the client every entry point uses.

The actor (``controller`` in namespace ``fastgpu``) restarts forever (``max_restarts=-1``) and
Ray retries calls that were in flight when it died (``max_task_retries=-1``): that is safe
because every mutating call is idempotent (the client gives each lease request an id). On
(re)start it reloads the store and reconciles before serving. It is pinned to the head node,
where the SQLite file lives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fastgpu.config import PlatformConfig
from fastgpu.errors import FastGPUError, InvalidRequest, Unavailable

NAMESPACE = "fastgpu"
CONTROLLER_NAME = "controller"

log = logging.getLogger(__name__)

# Methods of Controller callable through the actor; everything else stays internal.
PUBLIC_METHODS = frozenset(
    {
        "whoami",
        "create_tenant",
        "list_tenants",
        "get_tenant",
        "update_tenant",
        "delete_tenant",
        "rotate_token",
        "request_lease",
        "get_lease",
        "wait_lease",
        "list_leases",
        "release_lease",
        "bind_lease",
        "report_checkpoint",
        "submit_job",
        "list_jobs",
        "job_status",
        "job_logs",
        "stop_job",
        "usage",
        "status",
    }
)


class ControllerActor:
    def __init__(
        self,
        config_json: str,
        admin_token_hash: str | None = None,
        dashboard_url: str | None = None,
    ) -> None:
        from fastgpu.controller.backend import RayBackend
        from fastgpu.controller.core import Controller
        from fastgpu.store import open_store

        logging.basicConfig(level=logging.INFO)
        config = PlatformConfig.model_validate_json(config_json)
        self.core = Controller(
            config,
            open_store(config.resolved_store_url()),
            RayBackend(),
            dashboard_url=dashboard_url,
        )
        if admin_token_hash:
            self.core.register_admin_hash(admin_token_hash)
        self.core.reconcile()
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="fastgpu-loop", daemon=True)
        self._loop.start()

    def _run(self) -> None:
        interval = self.core.config.controller.tick_interval_s
        while not self._stop.is_set():
            try:
                self.core.tick()
            except Exception:  # the loop must survive a bad pass; the next one retries
                log.exception("controller tick failed")
            self._stop.wait(interval)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in PUBLIC_METHODS:
            raise InvalidRequest(f"unknown controller method {method!r}")
        return getattr(self.core, method)(*args, **kwargs)

    def reconcile(self) -> dict[str, int]:
        return self.core.reconcile()

    def ping(self) -> str:
        return "ok"

    def pid(self) -> int:
        import os

        return os.getpid()


def head_node_id() -> str:
    for n in ray.nodes():
        if n.get("Alive") and "node:__internal_head__" in (n.get("Resources") or {}):
            return str(n["NodeID"])
    return str(ray.get_runtime_context().get_node_id())


def start_controller(
    config: PlatformConfig, admin_token: str | None = None, dashboard_url: str | None = None
) -> Any:
    """Start the controller actor (or find the running one) and register the admin token.

    The admin token goes in as a constructor argument (hashed), never through a method: any
    Ray driver can call an actor's methods, so none of them may grant admin rights.
    """
    from fastgpu.auth import hash_token

    cls: Any = ray.remote(ControllerActor)
    handle: Any = cls.options(
        name=CONTROLLER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=64,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id(), soft=False),
    ).remote(
        config.model_dump_json(), hash_token(admin_token) if admin_token else None, dashboard_url
    )
    ray.get(handle.ping.remote(), timeout=120)
    return handle


def stop_controller() -> None:
    try:
        handle = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return
    ray.kill(handle, no_restart=True)


def _unwrap(exc: BaseException) -> BaseException:
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, FastGPUError):
        return exc.cause
    return exc


class ControllerClient:
    """Calls the controller actor from inside the cluster (API server, Ray jobs, SDK).

    Waits out controller restarts for up to ``unavailable_timeout_s``; lease requests get a
    request id here when the caller gave none, so Ray's retries cannot double-book.
    """

    def __init__(self, unavailable_timeout_s: float = 60.0) -> None:
        self._handle: Any = None
        self._timeout = unavailable_timeout_s

    def _get_handle(self) -> Any:
        if self._handle is None:
            try:
                self._handle = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            except ValueError:
                raise Unavailable(
                    "the FastGPU controller is not running; run `fastgpu up`"
                ) from None
        return self._handle

    @staticmethod
    def _prepare(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        needs_id = (
            method == "request_lease"
            and len(args) >= 2
            and isinstance(args[1], dict)
            and not args[1].get("request_id")
        )
        if needs_id:
            args = (args[0], {**args[1], "request_id": "auto-" + uuid.uuid4().hex}, *args[2:])
        return args

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        args = self._prepare(method, args, kwargs)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return ray.get(self._get_handle().call.remote(method, *args, **kwargs))
            except (ActorDiedError, ActorUnavailableError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the FastGPU controller is unavailable: {exc}") from None
                time.sleep(0.2)
            except RayTaskError as exc:
                raise _unwrap(exc) from None

    async def acall(self, method: str, *args: Any, **kwargs: Any) -> Any:
        args = self._prepare(method, args, kwargs)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return await self._get_handle().call.remote(method, *args, **kwargs)
            except (ActorDiedError, ActorUnavailableError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the FastGPU controller is unavailable: {exc}") from None
                await asyncio.sleep(0.2)
            except RayTaskError as exc:
                raise _unwrap(exc) from None
