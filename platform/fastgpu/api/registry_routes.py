"""``/api/v1/models``: the model registry (:class:`fastgpu.service.registry.RegistryService`).

A reference in a path is ``NAME:vN`` or ``NAME:latest``; the admin adds ``?tenant=``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from fastgpu.api.deps import CURSOR, LIMIT, TENANT_Q, V1, Caller, Svc, write
from fastgpu.registry.shapes import ModelCreate, ModelOut
from fastgpu.service.models import Page

router = APIRouter(prefix=f"{V1}/models", tags=["models"])
REF = "Model reference: NAME:vN or NAME:latest (the admin adds ?tenant=)."


def _ref(ref: str, tenant: str | None) -> str:
    return f"{tenant}/{ref}" if tenant else ref


@router.post("", status_code=201)
async def register_model(body: ModelCreate, p: Caller, s: Svc, request: Request) -> ModelOut:
    return await write(request, s.registry.register, p, body)


@router.get("")
def list_models(
    p: Caller,
    s: Svc,
    tenant: str | None = TENANT_Q,
    name: str | None = Query(default=None, max_length=63, description="One model's versions."),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> Page[ModelOut]:
    return s.registry.list(p, tenant, name, limit, cursor)


@router.get("/{ref}")
def get_model(ref: str, p: Caller, s: Svc, tenant: str | None = TENANT_Q) -> ModelOut:
    return s.registry.resolve(p, _ref(ref, tenant))


@router.delete("/{ref}")
async def delete_model(
    ref: str, p: Caller, s: Svc, request: Request, tenant: str | None = TENANT_Q
) -> ModelOut:
    return await write(request, s.registry.delete, p, _ref(ref, tenant))
