"""The Python SDK: :class:`Client` (the whole control API) and :class:`Lease`; the seed's
interface (``Allocator``, ``Device``) builds on them in :mod:`fastgpu.allocator`. It speaks HTTP
to the control API, so it works from a laptop, a Ray job or a notebook alike; running work
*inside* a lease needs a Ray connection (``ray.init``).

Caller identity: ``token`` or ``$FASTGPU_TOKEN``, else the file ``$FASTGPU_TOKEN_FILE`` names (how
a job in a tenant's own cluster gets its token: never as a value in its environment), else the
local admin token that ``fastgpu up`` wrote. Address: ``address`` or ``$FASTGPU_ADDRESS``, else
the local API's address. Lease requests carry a request id, and retries after connection errors
reuse it, so a retry never books twice.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from fastgpu.config import DEFAULT_API_PORT, default_state_dir
from fastgpu.errors import (
    AuthenticationError,
    FastGPUError,
    LeaseRejected,
    WaitTimeout,
)
from fastgpu.sdk_base import seg
from fastgpu.sdk_endpoints import EndpointCalls
from fastgpu.sdk_hosts import HostCalls
from fastgpu.sdk_registry import RegistryCalls
from fastgpu.sdk_sweeps import SweepCalls
from fastgpu.sdk_tenants import TenantCalls
from fastgpu.sdk_usage import UsageCalls

ADMIN_TOKEN_FILE = "admin_token"
ADDRESS_FILE = "api_address"
_POLL_S = 20.0  # one long-poll; kept under common proxy timeouts
_HELD = ("RESERVED", "BOUND")
_ENDED = ("RELEASED", "EXPIRED", "PREEMPTED", "FAILED", "REJECTED", "CANCELLED")


def local_admin_token(state_dir: Path | None = None) -> str | None:
    path = (state_dir or default_state_dir()) / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _token_from_file() -> str | None:
    path = os.environ.get("FASTGPU_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise AuthenticationError(
            f"FASTGPU_TOKEN_FILE={path} cannot be read ({exc.strerror})"
        ) from None


def local_address(state_dir: Path | None = None) -> str:
    path = (state_dir or default_state_dir()) / ADDRESS_FILE
    try:
        return path.read_text().strip()
    except OSError:
        return f"http://127.0.0.1:{DEFAULT_API_PORT}"


class Client(TenantCalls, UsageCalls, EndpointCalls, RegistryCalls, SweepCalls, HostCalls):
    """A handle on the FastGPU control API for one caller (admin or tenant)."""

    def __init__(
        self,
        token: str | None = None,
        address: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests pass ``httpx.MockTransport``)."""
        self.token = (
            token or os.environ.get("FASTGPU_TOKEN") or _token_from_file() or local_admin_token()
        )
        if not self.token:
            raise AuthenticationError(
                "no token: pass token=, set FASTGPU_TOKEN (or FASTGPU_TOKEN_FILE), or run "
                "`fastgpu up` on this machine"
            )
        self.address = (address or os.environ.get("FASTGPU_ADDRESS") or local_address()).rstrip("/")
        self._retries = retries
        self._http = httpx.Client(
            base_url=self.address,
            timeout=timeout,
            headers={"Authorization": f"Bearer {self.token}"},
            trust_env=False,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identity and cluster ---------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return dict(self._call("GET", "/whoami"))

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/status"))

    def cluster(self, tenant: str | None = None) -> dict[str, Any]:
        """The caller's own Ray cluster (started if needed): ``address``, ``dashboard_url``,
        ``ray_token``. Keep the token in a 0600 file (``fastgpu connect`` does)."""
        params = {"tenant": tenant} if tenant else None
        return dict(self._call("GET", "/cluster", params=params, timeout=180))

    def request_lease(
        self,
        gpus: int,
        gpu_type: str | None = None,
        duration: str | float | None = None,
        *,
        perf: float | None = None,
        min_gpus: int | None = None,
        preemptible: bool = False,
        priority: int = 0,
        strategy: str = "PACK",
        wait: bool = False,
        timeout: float | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> Lease:
        """Ask for ``gpus`` GPUs. With ``wait``, return once they are held (raising
        :class:`LeaseRejected` if it can never fit, :class:`WaitTimeout` after ``timeout``).
        Only a ``preemptible`` lease may borrow GPUs behind other tenants' nominal quota
        (a non-preemptible one holds at most nominal plus the unowned GPUs). ``perf`` is the
        minimum per-GPU performance: without ``gpu_type`` the server picks the cheapest type
        that meets it, with one it checks that type does."""
        body: dict[str, Any] = {
            "gpus": gpus,
            "gpu_type": gpu_type,
            "perf": perf,
            "duration": duration,
            "min_gpus": min_gpus,
            "preemptible": preemptible,
            "priority": priority,
            "strategy": strategy,
            "tenant": tenant,
            "request_id": request_id or f"sdk-{uuid.uuid4().hex}",
        }
        body = {k: v for k, v in body.items() if v is not None}
        _check_lease(body)
        first_wait = min(timeout if timeout is not None else _POLL_S, _POLL_S) if wait else 0.0
        body["wait"] = first_wait
        data = self._call("POST", "/leases", json=body, timeout=first_wait + 30)
        lease = Lease(self, data)
        if wait:
            lease.wait(None if timeout is None else max(0.0, timeout - first_wait))
        elif lease.state == "REJECTED":
            raise LeaseRejected(
                f"lease {lease.id} rejected ({lease.reason}): {lease.reason_detail}"
            )
        return lease

    def get_lease(self, lease_id: str, wait: float = 0.0) -> Lease:
        data = self._call(
            "GET", f"/leases/{seg(lease_id)}", params={"wait": wait or None}, timeout=wait + 30
        )
        return Lease(self, data)

    def list_leases(self, tenant: str | None = None, live: bool = False) -> list[Lease]:
        rows = self._pages("/leases", params={"tenant": tenant, "live": live or None})
        return [Lease(self, r) for r in rows]

    def release_lease(self, lease_id: str) -> Lease:
        return Lease(self, self._call("POST", f"/leases/{seg(lease_id)}/release"))

    def bind_lease(self, lease_id: str, workload: str) -> Lease:
        data = self._call("POST", f"/leases/{seg(lease_id)}/bind", json={"workload": workload})
        return Lease(self, data)

    # -- jobs ------------------------------------------------------------------------------
    def upload(self, folder: str | Path) -> dict[str, Any]:
        """Zip ``folder`` (regular files only, size-limited) and upload it; returns its sha256,
        which ``submit_job`` names. The server never reads a path of yours."""
        from fastgpu.domain.bundle import MAX_BUNDLE_BYTES, pack_dir

        data = pack_dir(Path(folder), MAX_BUNDLE_BYTES)
        return dict(
            self._call(
                "POST", "/uploads", content=data, headers={"content-type": "application/zip"}
            )
        )

    def submit_job(
        self,
        entrypoint: str,
        *,
        gpus: int | None = None,
        min_gpus: int | None = None,
        gpu_type: str | None = None,
        duration: str | float | None = None,
        working_dir: str | Path | None = None,
        env: dict[str, str] | None = None,
        request_id: str | None = None,
        sweep: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit a Ray job as this tenant; with ``gpus`` it asks for that lease when it runs;
        with ``sweep`` (:class:`fastgpu.tune.SweepSpec` fields) it is a Tune sweep.
        ``working_dir`` is uploaded first (see :meth:`upload`). Retries reuse the request id,
        so a retried submission never runs twice."""
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "env": env or {},
            "request_id": request_id or f"sdk-{uuid.uuid4().hex}",
        }
        if working_dir is not None:
            body["upload"] = self.upload(working_dir)["sha256"]
        if gpus is not None:
            lease = {"gpus": gpus, "min_gpus": min_gpus, "gpu_type": gpu_type, "duration": duration}
            body["lease"] = {k: v for k, v in lease.items() if v is not None}
        if sweep is not None:
            body["sweep"] = sweep
        return dict(self._call("POST", "/jobs", json=body))

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._pages("/jobs")

    def job_status(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{seg(job_id)}"))

    def job_logs(self, job_id: str) -> str:
        return str(self._call("GET", f"/jobs/{seg(job_id)}/logs")["logs"])

    def stop_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{seg(job_id)}/stop"))


class Lease:
    """A client-side view of a lease; :meth:`refresh` re-reads it."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self._client = client
        self.data = data

    def __repr__(self) -> str:
        return f"Lease(id={self.id!r}, state={self.state!r}, gpus={self.gpus})"

    id = property(lambda self: str(self.data["id"]))
    state = property(lambda self: str(self.data["state"]))
    tenant = property(lambda self: str(self.data["tenant"]))
    gpus = property(lambda self: int(self.data["gpus"]))
    gpu_type = property(lambda self: str(self.data["gpu_type"]))
    nodes = property(lambda self: list(self.data.get("nodes") or []))
    reason = property(lambda self: self.data.get("reason"))
    reason_detail = property(lambda self: self.data.get("reason_detail"))
    expires_at = property(lambda self: self.data.get("expires_at"))
    placement_group_name = property(lambda self: self.data.get("placement_group"))

    @property
    def held(self) -> bool:
        return self.state in _HELD

    def refresh(self) -> Lease:
        self.data = self._client.get_lease(self.id).data
        return self

    def wait(self, timeout: float | None = None) -> Lease:
        """Block until the GPUs are held; raise if the lease ends or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.held:
                return self
            if self.state == "REJECTED":
                raise LeaseRejected(
                    f"lease {self.id} rejected ({self.reason}): {self.reason_detail}"
                )
            if self.state not in ("PENDING", "ADMITTED"):
                raise FastGPUError(f"lease {self.id} ended as {self.state} while waiting")
            left = _POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"lease {self.id} still {self.state} after waiting ({self.reason}: "
                    f"{self.reason_detail}); it stays queued until released"
                )
            self.data = self._client.get_lease(self.id, wait=min(left, _POLL_S)).data

    def release(self) -> Lease:
        self.data = self._client.release_lease(self.id).data
        return self

    def report_checkpoint(self) -> Lease:
        """Tell the scheduler a checkpoint was just saved (preemption loses least work)."""
        self.data = self._client._call("POST", f"/leases/{seg(self.id)}/checkpoint")
        return self

    @property
    def preempt_at(self) -> str | None:
        """When the GPUs will be taken (ISO time), once a preemption was announced."""
        value = self.data.get("preempt_at")
        return str(value) if value else None

    @property
    def held_gpus(self) -> int:
        return int(self.data.get("held_gpus") or 0)

    def bind(self, workload: str) -> Lease:
        self.data = self._client.bind_lease(self.id, workload).data
        return self

    # -- running work inside the lease (needs ray.init) -------------------------------------
    @property
    def placement_group(self) -> Any:
        """The Ray placement group reserving this lease's GPUs.

        Found by id: group names are scoped to the Ray namespace of the job that made them (the
        controller's), while ids work from any driver or job.
        """
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup

        group_id = self.data.get("placement_group_id")
        if not group_id or self.state not in ("ADMITTED", "RESERVED"):
            raise FastGPUError(f"lease {self.id} is {self.state}; it holds no placement group")
        return PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))

    def scheduling_strategy(self, bundle_index: int = 0) -> Any:
        """Strategy that runs a task or actor on GPU ``bundle_index`` of this lease; request
        ``num_gpus=1`` (or less) with it."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not 0 <= bundle_index < self.gpus:
            raise FastGPUError(
                f"bundle_index: got {bundle_index}; expected 0..{self.gpus - 1} for this lease"
            )
        return PlacementGroupSchedulingStrategy(
            placement_group=self.placement_group,
            placement_group_bundle_index=bundle_index,
            placement_group_capture_child_tasks=True,
        )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.state not in _ENDED:
            self.release()


def _check_lease(body: dict[str, Any]) -> None:
    """Validate a lease body here with the server's own model (one definition of the shape)."""
    from pydantic import ValidationError

    from fastgpu.domain.lease import LeaseSpec
    from fastgpu.validation import invalid_from

    try:
        LeaseSpec.model_validate({k: v for k, v in body.items() if k in LeaseSpec.model_fields})
    except ValidationError as exc:
        raise invalid_from(exc) from None
