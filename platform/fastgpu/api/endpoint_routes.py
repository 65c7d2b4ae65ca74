"""Endpoints over HTTP: ``/api/v1/endpoints`` (deploy, list, show, update, delete, tokens,
logs).

The endpoints themselves, ``/t/<tenant>/<name>/``, are not routes of this API: a plain ASGI
middleware ahead of it forwards them to the tenant's Serve (:mod:`fastgpu.api.endpoint_proxy`).
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

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
