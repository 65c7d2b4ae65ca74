"""Endpoints over HTTP: ``/api/v1/endpoints`` (deploy, list, show, update, delete, tokens,
logs) and the endpoints themselves at ``/t/<tenant>/<name>/``.

The ``/t/`` routes forward the request as it is (method, body, ``Authorization``) to the
tenant's Serve proxy on 127.0.0.1, to the application serving now; they check nothing
themselves: every replica checks the endpoint token (401/403/404), so the proxy on this
side and a process connecting to Serve's port directly meet the same check. An endpoint that
does not exist is 404 here; one scaled to zero waits for its first replica (up to 5 minutes).
A request that meets a version an update just retired, or a replica that failed under it (5xx),
is sent once more, to the version serving then.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from fastgpu.api.deps import TENANT_Q, V1, Caller, Svc, write
from fastgpu.endpoints.models import (
    DeploySpec,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    EndpointTokenOut,
    EndpointUpdate,
)

router = APIRouter()
_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


@router.post(f"{V1}/endpoints", status_code=201, response_model=EndpointCreated)
async def deploy(
    body: DeploySpec, p: Caller, svc: Svc, request: Request, tenant: str | None = TENANT_Q
) -> EndpointCreated:
    return await write(request, svc.endpoints.deploy, p, body, tenant)


@router.get(f"{V1}/endpoints", response_model=EndpointList)
async def list_endpoints(p: Caller, svc: Svc, tenant: str | None = TENANT_Q) -> EndpointList:
    return EndpointList(endpoints=svc.endpoints.list_for(p, tenant))


@router.get(f"{V1}/endpoints/{{name}}", response_model=EndpointOut)
async def show(name: str, p: Caller, svc: Svc, tenant: str | None = TENANT_Q) -> EndpointOut:
    return svc.endpoints.get(p, name, tenant)


@router.patch(f"{V1}/endpoints/{{name}}", response_model=EndpointOut)
async def update(
    name: str,
    body: EndpointUpdate,
    p: Caller,
    svc: Svc,
    request: Request,
    tenant: str | None = TENANT_Q,
) -> EndpointOut:
    return await write(request, svc.endpoints.update, p, name, body, tenant)


@router.delete(f"{V1}/endpoints/{{name}}", response_model=EndpointOut)
async def delete(
    name: str, p: Caller, svc: Svc, request: Request, tenant: str | None = TENANT_Q
) -> EndpointOut:
    return await write(request, svc.endpoints.delete, p, name, tenant)


@router.get(f"{V1}/endpoints/{{name}}/tokens", response_model=list[EndpointTokenOut])
async def tokens(
    name: str, p: Caller, svc: Svc, tenant: str | None = TENANT_Q
) -> list[EndpointTokenOut]:
    return svc.endpoints.tokens(p, name, tenant)


@router.post(f"{V1}/endpoints/{{name}}/tokens", status_code=201, response_model=EndpointTokenOut)
async def issue_token(
    name: str, p: Caller, svc: Svc, request: Request, tenant: str | None = TENANT_Q
) -> EndpointTokenOut:
    return await write(request, svc.endpoints.issue_token, p, name, tenant)


@router.delete(f"{V1}/endpoints/{{name}}/tokens/{{token_id}}", response_model=EndpointTokenOut)
async def revoke_token(
    name: str,
    token_id: str,
    p: Caller,
    svc: Svc,
    request: Request,
    tenant: str | None = TENANT_Q,
) -> EndpointTokenOut:
    return await write(request, svc.endpoints.revoke_token, p, name, token_id, tenant)


@router.get(f"{V1}/endpoints/{{name}}/logs")
async def logs(
    name: str,
    p: Caller,
    svc: Svc,
    request: Request,
    tenant: str | None = TENANT_Q,
    lines: int = Query(default=200, ge=1, le=10_000),
) -> dict[str, str]:
    return {"logs": await write(request, svc.endpoints.logs, p, name, tenant, lines)}


# ---- the endpoints themselves ----------------------------------------------------------------
def _client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(request.app.state, "endpoint_client", None)
    if client is None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(300.0, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
        request.app.state.endpoint_client = client
    return client


@router.api_route(
    "/t/{tenant}/{name}/{rest:path}", methods=["GET", "POST"], include_in_schema=False
)
async def forward(tenant: str, name: str, rest: str, request: Request, svc: Svc) -> Any:
    route = svc.endpoints.route(tenant, name)
    if route is None:
        return JSONResponse({"error": "no such endpoint"}, status_code=404)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    body = await request.body()
    for attempt in range(2):
        port, app = route
        try:
            resp = await _client(request).request(
                request.method,
                f"http://127.0.0.1:{port}/{app}/{rest}",
                content=body,
                headers=headers,
                params=request.query_params,
            )
        except httpx.ConnectError:
            return JSONResponse(
                {"error": "the endpoint's server is starting; retry in a few seconds"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        except httpx.TransportError as exc:
            # a kept-alive connection Serve's proxy closed meanwhile: once more, on a new one
            if attempt == 0:
                continue
            return JSONResponse(
                {"error": f"the endpoint's server did not answer ({type(exc).__name__})"},
                status_code=502,
            )
        unrouted = resp.status_code == 404 and b"/-/routes" in resp.content
        if not unrouted and resp.status_code < 500:
            break
        # Serve's own 404 (the application is not routed) or a 5xx (an application being
        # removed, a replica that died under the request: a raylet restarted by a resize):
        # sent once more, to the serving version (an inference has no side effect to repeat).
        now = svc.endpoints.route(tenant, name)
        if now is None or now == route:
            if not unrouted:
                continue
            return JSONResponse(
                {"error": "the endpoint is starting; retry in a few seconds"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        route = now
    out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
    return Response(content=resp.content, status_code=resp.status_code, headers=out)
