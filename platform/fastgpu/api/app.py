"""The versioned HTTP control API.

Every route needs ``Authorization: Bearer <token>``; the controller authorizes each call, so
the API holds no policy of its own: it validates shapes, forwards the caller's token and maps
:class:`~fastgpu.errors.FastGPUError` to status codes (401, 403, 404, 409, 422, 503). Bad input
is always a 4xx with a message naming the field; a 500 means a bug.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastgpu.config import BudgetSpec, QuotaSpec
from fastgpu.errors import AuthenticationError, FastGPUError, InvalidRequest
from fastgpu.validation import GPU_TYPE_PATTERN, MAX_GPUS_PER_LEASE, NAME_PATTERN

Call = Callable[..., Awaitable[Any]]
MAX_BODY_BYTES = 64 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Body):
    name: str = Field(pattern=NAME_PATTERN, description="Tenant name.")
    quotas: dict[str, QuotaSpec] = Field(default_factory=dict, description="Quota per GPU type.")
    weight: float = Field(default=1.0, gt=0, le=1000, description="Fair-share weight.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Tenant priority.")
    budget: BudgetSpec | None = Field(default=None, description="Spending cap per period.")
    queueing: Literal["strict_fifo", "best_effort_fifo"] = Field(
        default="best_effort_fifo", description="Queueing discipline within the tenant."
    )
    request_id: str | None = Field(
        default=None, max_length=128, description="Idempotency key for retries."
    )


class TenantUpdate(_Body):
    quotas: dict[str, QuotaSpec | None] | None = Field(
        default=None, description="Quotas to set per GPU type (null removes one)."
    )
    weight: float | None = Field(default=None, gt=0, le=1000, description="Fair-share weight.")
    priority: int | None = Field(default=None, ge=-1000, le=1000, description="Priority.")
    budget: BudgetSpec | None = Field(default=None, description="Spending cap per period.")
    queueing: Literal["strict_fifo", "best_effort_fifo"] | None = Field(
        default=None, description="Queueing discipline."
    )


class LeaseCreate(_Body):
    gpus: int = Field(ge=1, le=MAX_GPUS_PER_LEASE, description="GPUs wanted (elastic: the most).")
    min_gpus: int | None = Field(
        default=None, ge=1, le=MAX_GPUS_PER_LEASE, description="Elastic: the fewest GPUs."
    )
    gpu_type: str | None = Field(
        default=None, pattern=GPU_TYPE_PATTERN, description="GPU type; unset: the only one."
    )
    duration: str | float | None = Field(
        default=None, description="How long, e.g. '30m', '2h' or seconds; unset: the default."
    )
    preemptible: bool = Field(default=False, description="Whether it may be preempted.")
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Priority among the tenant's own leases."
    )
    strategy: Literal["PACK", "STRICT_PACK", "SPREAD"] = Field(
        default="PACK", description="Placement strategy."
    )
    request_id: str | None = Field(
        default=None, max_length=128, description="Idempotency key: a retry returns the same lease."
    )
    tenant: str | None = Field(
        default=None, description="The tenant the lease is for (admin only; tenants omit it)."
    )
    wait: float = Field(
        default=0.0, ge=0, le=3600, description="Seconds to wait for the GPUs before answering."
    )


class JobLease(_Body):
    gpus: int = Field(ge=1, le=MAX_GPUS_PER_LEASE, description="GPUs (elastic: the most).")
    min_gpus: int | None = Field(default=None, ge=1, le=MAX_GPUS_PER_LEASE, description="Fewest.")
    gpu_type: str | None = Field(default=None, pattern=GPU_TYPE_PATTERN, description="GPU type.")
    duration: str | float | None = Field(default=None, description="e.g. '2h'.")


class JobCreate(_Body):
    entrypoint: str = Field(min_length=1, max_length=4096, description="Command the job runs.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    working_dir: str | None = Field(
        default=None, max_length=4096, description="Folder on the head node to ship with the job."
    )
    lease: JobLease | None = Field(default=None, description="The lease the job should request.")


class BindBody(_Body):
    workload: str = Field(min_length=1, max_length=256, description="What runs on the lease.")


def _error(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def create_app(call: Call) -> FastAPI:
    """The API over ``call(method, token, *args, **kwargs)``, the controller transport."""
    app = FastAPI(
        title="FastGPU control API",
        version="1",
        description="Tenants, GPU leases, usage. Every call needs a bearer token.",
    )
    bearer = HTTPBearer(auto_error=False)

    def token_of(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        if cred is None or not cred.credentials:
            raise AuthenticationError(
                "no token given; send 'Authorization: Bearer <token>' (FASTGPU_TOKEN)"
            )
        return cred.credentials

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(FastGPUError)
    async def on_fastgpu_error(_: Request, exc: FastGPUError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            where = ".".join(loc) or "body"
            kind = err.get("type", "")
            if kind == "extra_forbidden":
                lines.append(f"{where}: unknown field; remove it")
            elif kind == "missing":
                lines.append(f"{where}: missing; this field is required")
            elif kind == "json_invalid":
                lines.append("body: not valid JSON")
            else:
                msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
                msg = msg.replace("Input should be ", "expected ")
                lines.append(f"{where}: got {err.get('input')!r}; {msg}")
        return _error(422, InvalidRequest.code, "\n".join(lines))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    v1 = "/api/v1"

    @app.get(f"{v1}/healthz")
    async def healthz(token: str = Depends(token_of)) -> dict[str, Any]:
        await call("whoami", token)
        return {"ok": True}

    @app.get(f"{v1}/whoami")
    async def whoami(token: str = Depends(token_of)) -> Any:
        return await call("whoami", token)

    @app.get(f"{v1}/status")
    async def status(token: str = Depends(token_of)) -> Any:
        return await call("status", token)

    @app.get(f"{v1}/tenants")
    async def list_tenants(token: str = Depends(token_of)) -> Any:
        return await call("list_tenants", token)

    @app.post(f"{v1}/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, token: str = Depends(token_of)) -> Any:
        spec = body.model_dump(mode="json", exclude={"name", "request_id"})
        return await call("create_tenant", token, body.name, spec, body.request_id)

    @app.get(v1 + "/tenants/{name}")
    async def get_tenant(name: str, token: str = Depends(token_of)) -> Any:
        return await call("get_tenant", token, name)

    @app.patch(v1 + "/tenants/{name}")
    async def update_tenant(name: str, body: TenantUpdate, token: str = Depends(token_of)) -> Any:
        changes = body.model_dump(mode="json", exclude_unset=True)
        return await call("update_tenant", token, name, changes)

    @app.delete(v1 + "/tenants/{name}")
    async def delete_tenant(name: str, token: str = Depends(token_of)) -> Any:
        return await call("delete_tenant", token, name)

    @app.post(v1 + "/tenants/{name}/rotate-token")
    async def rotate_token(name: str, token: str = Depends(token_of)) -> Any:
        return await call("rotate_token", token, name)

    @app.get(f"{v1}/leases")
    async def list_leases(
        token: str = Depends(token_of),
        tenant: str | None = Query(default=None, max_length=63),
        live: bool = Query(default=False, description="Only leases that have not ended."),
    ) -> Any:
        return await call("list_leases", token, tenant, not live)

    @app.post(f"{v1}/leases", status_code=201)
    async def request_lease(body: LeaseCreate, token: str = Depends(token_of)) -> Any:
        req = body.model_dump(exclude={"tenant", "wait"}, exclude_none=True)
        return await call("request_lease", token, req, body.tenant, body.wait)

    @app.get(v1 + "/leases/{lease_id}")
    async def get_lease(
        lease_id: str,
        token: str = Depends(token_of),
        wait: float = Query(default=0.0, ge=0, le=3600, description="Long-poll seconds."),
    ) -> Any:
        if wait:
            return await call("wait_lease", token, lease_id, wait)
        return await call("get_lease", token, lease_id)

    @app.post(v1 + "/leases/{lease_id}/release")
    async def release_lease(lease_id: str, token: str = Depends(token_of)) -> Any:
        return await call("release_lease", token, lease_id)

    @app.post(v1 + "/leases/{lease_id}/bind")
    async def bind_lease(lease_id: str, body: BindBody, token: str = Depends(token_of)) -> Any:
        return await call("bind_lease", token, lease_id, body.workload)

    @app.post(v1 + "/leases/{lease_id}/checkpoint")
    async def report_checkpoint(lease_id: str, token: str = Depends(token_of)) -> Any:
        return await call("report_checkpoint", token, lease_id)

    @app.post(f"{v1}/jobs", status_code=201)
    async def submit_job(body: JobCreate, token: str = Depends(token_of)) -> Any:
        spec = body.model_dump(exclude={"lease"})
        lease = body.lease.model_dump(exclude_none=True) if body.lease else None
        return await call("submit_job", token, spec, lease)

    @app.get(f"{v1}/jobs")
    async def list_jobs(
        token: str = Depends(token_of), tenant: str | None = Query(default=None, max_length=63)
    ) -> Any:
        return await call("list_jobs", token, tenant)

    @app.get(v1 + "/jobs/{job_id}")
    async def job_status(job_id: str, token: str = Depends(token_of)) -> Any:
        return await call("job_status", token, job_id)

    @app.get(v1 + "/jobs/{job_id}/logs")
    async def job_logs(job_id: str, token: str = Depends(token_of)) -> Any:
        return await call("job_logs", token, job_id)

    @app.post(v1 + "/jobs/{job_id}/stop")
    async def stop_job(job_id: str, token: str = Depends(token_of)) -> Any:
        return await call("stop_job", token, job_id)

    @app.get(f"{v1}/usage")
    async def usage(
        token: str = Depends(token_of),
        tenant: str | None = Query(default=None, max_length=63),
        since: str | None = Query(default=None, max_length=64, description="ISO 8601 time."),
    ) -> Any:
        return await call("usage", token, tenant, since)

    return app
