"""The versioned HTTP control API (``/api/v1``), FastAPI over the services.

Every route needs ``Authorization: Bearer <token>`` (``GET /metrics``, Prometheus' text format,
the admin's only, unless ``api.metrics_public`` opens it on loopback). The web console's static
files are served at ``/console/`` without a token (:mod:`fastgpu.console`; they hold no data,
the page calls ``/api/v1`` with the user's token), and ``/`` redirects there. The API resolves the
token to a principal (:class:`~fastgpu.service.AuthService`), parses the body into the
services' typed models and calls the service directly; results are the services' pydantic
models.

Errors: :class:`~fastgpu.errors.FastGPUError` maps to its status (401, 403, 404, 409, 422,
429, 503); Ray, database and network failures are 503 with a message (the caller may retry);
500 is kept for bugs. Bodies are limited while they stream (64 KiB by default, uploads
``api.max_upload_bytes``), each token is rate limited (429 + Retry-After), long-polls are async
and limited per tenant. Sync routes run in the server's thread pool; waits hold no thread.
"""

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastgpu.api.deps import CURSOR, LIMIT, TENANT_Q, V1, Caller, T
from fastgpu.api.endpoint_proxy import EndpointProxy
from fastgpu.api.limits import BodyLimitMiddleware, RateLimitMiddleware, error_response
from fastgpu.auth import ADMIN
from fastgpu.config import ApiSettings
from fastgpu.console import mount_console
from fastgpu.errors import FastGPUError, InvalidRequest
from fastgpu.service import Services
from fastgpu.service.models import (
    BindBody,
    ClusterOut,
    Deleted,
    Health,
    JobCreate,
    JobLogs,
    JobOut,
    LeaseCreate,
    LeaseOut,
    Page,
    StatementOut,
    StatusOut,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TenantUpdate,
    TokenCreate,
    TokenIssued,
    TokenOut,
    UploadOut,
    UsageOut,
    UsageReportOut,
    WhoAmI,
)
from fastgpu.validation import NAME_PATTERN

log = logging.getLogger(__name__)
UPLOAD_PATH = f"{V1}/uploads"


def area_routers() -> list[APIRouter]:
    """The routers of the API's areas that live in their own modules (one line each)."""
    from fastgpu.api import budget_routes, endpoint_routes, host_routes, registry_routes

    return [
        registry_routes.router,
        budget_routes.router,
        endpoint_routes.router,
        host_routes.router,
    ]


def infrastructure_error(exc: BaseException) -> str | None:
    """A message when ``exc`` is a failure of Ray, the database or the network (503), None
    when it is a bug (500)."""
    mod = type(exc).__module__
    if mod.startswith(("ray", "sqlalchemy", "psycopg", "grpc", "httpx", "requests", "aiohttp")):
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None


def _validation_message(exc: RequestValidationError) -> str:
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
            shown = repr(err.get("input"))
            lines.append(f"{where}: got {shown[:80]}; {msg}")
    return "\n".join(lines)


def create_app(
    services: Services,
    settings: ApiSettings,
    leader: Any = None,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
) -> FastAPI:
    """The API over ``services``; ``leader()`` says whether this server is the leader;
    ``metrics()`` renders ``GET /metrics`` (body, content type), which is absent without it."""
    app = FastAPI(
        title="FastGPU control API",
        version="2",
        description="Tenants, tokens, GPU leases, jobs, usage. Every call needs a bearer token.",
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={UPLOAD_PATH: settings.max_upload_bytes},
    )
    app.add_middleware(
        RateLimitMiddleware,
        rate_per_s=settings.rate_per_s,
        burst=settings.burst,
        exempt_paths=(f"{V1}/healthz",),
    )
    # Added last, so outermost: /t/ inference requests never reach FastAPI's routing.
    app.add_middleware(
        EndpointProxy,
        routes=services.endpoints.route,
        rate_per_s=settings.rate_per_s,
        burst=settings.burst,
    )
    auth = services.auth
    # Writes queue for the controller's lock; they get their own threads so that reads (and
    # other tenants) never wait behind them in one pool.
    writes = anyio.CapacityLimiter(settings.write_threads)
    app.state.services = services
    app.state.writes = writes

    async def write(fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=writes)

    @app.exception_handler(FastGPUError)
    async def on_fastgpu_error(_: Request, exc: FastGPUError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        return error_response(exc.http_status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, InvalidRequest.code, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        why = infrastructure_error(exc)
        if why is not None:
            log.warning("%s %s: infrastructure error: %s", request.method, request.url.path, why)
            return error_response(503, "unavailable", f"a platform dependency failed: {why}")
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal", "internal error (a bug); see the server log")

    # ---- identity and health ----------------------------------------------------------------
    # Answered on the event loop (no store access once the token is cached): they never
    # queue for a thread.
    @app.get(f"{V1}/healthz")
    async def healthz(p: Caller) -> Health:
        from fastgpu import __version__

        return Health(ok=True, leader=bool(leader() if leader else True), version=__version__)

    @app.get(f"{V1}/whoami")
    async def whoami(p: Caller) -> WhoAmI:
        return auth.whoami(p)

    @app.get(f"{V1}/status")
    def status(p: Caller) -> StatusOut:
        return services.reads.status(p)

    # ---- tenants ------------------------------------------------------------------------------
    @app.get(f"{V1}/tenants")
    def list_tenants(
        p: Caller, limit: int | None = LIMIT, cursor: str | None = CURSOR
    ) -> Page[TenantOut]:
        return services.tenants.list(p, limit, cursor)

    @app.post(f"{V1}/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, p: Caller) -> TenantCreated:
        return await write(services.tenants.create, p, body)

    @app.get(V1 + "/tenants/{name}")
    def get_tenant(name: str, p: Caller) -> TenantOut:
        return services.tenants.get(p, name)

    @app.patch(V1 + "/tenants/{name}")
    async def update_tenant(name: str, body: TenantUpdate, p: Caller) -> TenantOut:
        return await write(services.tenants.update, p, name, body)

    @app.delete(V1 + "/tenants/{name}")
    async def delete_tenant(name: str, p: Caller) -> Deleted:
        return await write(services.tenants.delete, p, name)

    # ---- tokens (a tenant's, or 'admin') ----------------------------------------------------
    def _who(name: str) -> str:
        import re

        if name != ADMIN and not re.fullmatch(NAME_PATTERN, name):
            raise InvalidRequest(f"name: got {name!r}; expected a tenant name or 'admin'")
        return name

    @app.get(V1 + "/tenants/{name}/tokens")
    def list_tokens(
        name: str, p: Caller, limit: int | None = LIMIT, cursor: str | None = CURSOR
    ) -> Page[TokenOut]:
        return auth.list_tokens(p, _who(name), limit, cursor)

    @app.post(V1 + "/tenants/{name}/tokens", status_code=201)
    async def issue_token(name: str, body: TokenCreate, p: Caller) -> TokenIssued:
        who = _who(name)
        return await write(auth.issue, p, who, body.expires_in, body.label, body.request_id)

    @app.post(V1 + "/tenants/{name}/rotate-token")
    async def rotate_token(name: str, p: Caller, body: TokenCreate | None = None) -> TokenIssued:
        b, who = body or TokenCreate(), _who(name)
        return await write(auth.rotate, p, who, b.grace, b.expires_in, b.label, b.request_id)

    @app.delete(V1 + "/tenants/{name}/tokens/{token_id}")
    async def revoke_token(name: str, token_id: str, p: Caller) -> TokenOut:
        return await write(auth.revoke, p, _who(name), token_id)

    # ---- leases -------------------------------------------------------------------------------
    @app.get(f"{V1}/leases", response_model=Page[LeaseOut])
    async def list_leases(
        p: Caller,
        tenant: str | None = TENANT_Q,
        live: bool = Query(default=False, description="Only leases that have not ended."),
        limit: int | None = LIMIT,
        cursor: str | None = CURSOR,
    ) -> Response:
        # JSON straight from the stored rows (LeaseService.list_json), not validated again.
        leases = services.leases
        page = await leases.read(leases.list_json, p, tenant, live, limit, cursor)
        return Response(page, media_type="application/json")

    @app.post(f"{V1}/leases", status_code=201)
    async def request_lease(body: LeaseCreate, p: Caller) -> LeaseOut:
        lease = await write(services.leases.submit, p, body)
        return await services.leases.wait_on(p, lease, float(body.wait))

    @app.get(V1 + "/leases/{lease_id}")
    async def get_lease(
        lease_id: str,
        p: Caller,
        wait: float = Query(default=0.0, ge=0, le=3600, description="Long-poll seconds."),
    ) -> LeaseOut:
        return await services.leases.wait(p, lease_id, wait)

    @app.post(V1 + "/leases/{lease_id}/release")
    async def release_lease(lease_id: str, p: Caller) -> LeaseOut:
        return await write(services.leases.release, p, lease_id)

    @app.post(V1 + "/leases/{lease_id}/bind")
    async def bind_lease(lease_id: str, body: BindBody, p: Caller) -> LeaseOut:
        return await write(services.leases.bind, p, lease_id, body.workload)

    @app.post(V1 + "/leases/{lease_id}/checkpoint")
    async def report_checkpoint(lease_id: str, p: Caller) -> LeaseOut:
        return await write(services.leases.checkpoint, p, lease_id)

    # ---- jobs ---------------------------------------------------------------------------------
    @app.post(UPLOAD_PATH, status_code=201)
    async def upload(request: Request, p: Caller) -> UploadOut:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/zip":
            raise InvalidRequest("content-type: expected application/zip (a zipped folder)")
        data = await request.body()
        return await write(services.jobs.upload, p, data)

    @app.post(f"{V1}/jobs", status_code=201)
    async def submit_job(body: JobCreate, p: Caller) -> JobOut:
        return await write(services.jobs.submit, p, body)

    @app.get(f"{V1}/jobs")
    def list_jobs(
        p: Caller,
        tenant: str | None = TENANT_Q,
        limit: int | None = LIMIT,
        cursor: str | None = CURSOR,
    ) -> Page[JobOut]:
        return services.jobs.list(p, tenant, limit, cursor)

    @app.get(V1 + "/jobs/{job_id}")
    def job_status(job_id: str, p: Caller) -> JobOut:
        return services.jobs.status(p, job_id)

    @app.get(V1 + "/jobs/{job_id}/logs")
    def job_logs(job_id: str, p: Caller) -> JobLogs:
        return services.jobs.logs(p, job_id)

    @app.post(V1 + "/jobs/{job_id}/stop")
    async def stop_job(job_id: str, p: Caller) -> JobOut:
        return await write(services.jobs.stop, p, job_id)

    # ---- the tenant's own Ray cluster ---------------------------------------------------------
    @app.get(f"{V1}/cluster")
    async def cluster(p: Caller, tenant: str | None = TENANT_Q) -> ClusterOut:
        # Starting a cold cluster takes seconds: a write thread, never the event loop.
        return await write(services.clusters.connect, p, tenant)

    # ---- usage --------------------------------------------------------------------------------
    @app.get(f"{V1}/usage")
    def usage(
        p: Caller,
        tenant: str | None = TENANT_Q,
        since: str | None = Query(default=None, max_length=64, description="ISO 8601 time."),
        limit: int | None = LIMIT,
        cursor: str | None = CURSOR,
    ) -> Page[UsageOut]:
        return services.reads.usage(p, tenant, since, limit, cursor)

    @app.get(f"{V1}/usage/report")
    def usage_report(
        p: Caller,
        by: str | None = Query(
            default="tenant", max_length=64, description="Of tenant,gpu_type,workload."
        ),
        period: str | None = Query(
            default=None, max_length=8, description="hour, day, week (ISO) or month, UTC."
        ),
        since: str | None = Query(
            default=None, max_length=64, description="ISO 8601; default: this month's start."
        ),
        until: str | None = Query(
            default=None, max_length=64, description="ISO 8601, exclusive; default: now."
        ),
        tenant: str | None = TENANT_Q,
    ) -> UsageReportOut:
        return services.reads.usage_report(p, by, period, since, until, tenant)

    @app.get(f"{V1}/usage/statement")
    def usage_statement(
        p: Caller,
        at: str = Query(max_length=16, description="The period: 2026-11 for a month, a date."),
        period: str = Query(default="month", max_length=8, description="day, week or month."),
        tenant: str | None = TENANT_Q,
    ) -> StatementOut:
        return services.reads.statement(p, at, period, tenant)

    # ---- Prometheus metrics (at /metrics, where scrapers look) ---------------------------------
    # Sync: a scrape reads the controller's snapshot and the store, in the read threads.
    if metrics is not None:
        render = metrics
        if settings.metrics_public:  # the config allows it on loopback only

            @app.get("/metrics", response_class=Response)
            def metrics_open() -> Response:
                body, content_type = render()
                return Response(body, media_type=content_type)

        else:

            @app.get("/metrics", response_class=Response)
            def metrics_admin(p: Caller) -> Response:
                auth.require_admin(p)
                body, content_type = render()
                return Response(body, media_type=content_type)

    # ---- areas in their own modules (fastgpu.api.*_routes) -----------------------------------
    for router in area_routers():
        app.include_router(router)

    # ---- the web console: static files with a strict CSP; its data calls come to /api/v1 ----
    mount_console(app)
    return app
