"""What every route module of the API shares: the caller's identity (``Caller``), the services
(``Svc``), write threads (:func:`write`) and the common query parameters.

:func:`fastgpu.api.app.create_app` stores the services and the write limiter on ``app.state``;
area modules (``*_routes.py``) declare an ``APIRouter`` with these dependencies and
``create_app`` includes it, so no area needs to live inside one function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fastgpu.auth import Principal
from fastgpu.errors import AuthenticationError
from fastgpu.service import Services

T = TypeVar("T")
V1 = "/api/v1"
LIMIT = Query(default=None, ge=1, le=500, description="Page size (<= 500).")
CURSOR = Query(default=None, max_length=200, description="next_cursor of the previous page.")
TENANT_Q = Query(default=None, max_length=63, description="Tenant name (admin).")

_bearer = HTTPBearer(auto_error=False)


def services(request: Request) -> Services:
    return request.app.state.services


async def principal(
    request: Request,
    cred: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Principal:
    if cred is None or not cred.credentials:
        raise AuthenticationError(
            "no token given; send 'Authorization: Bearer <token>' (FASTGPU_TOKEN)"
        )
    auth = services(request).auth
    # A token seen in the last seconds costs a dict look-up; else one store read, off the
    # event loop.
    hit = auth.cached(cred.credentials)
    if hit is not None:
        return hit
    return await anyio.to_thread.run_sync(auth.authenticate, cred.credentials)


Caller = Annotated[Principal, Depends(principal)]
Svc = Annotated[Services, Depends(services)]


async def write(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a write (it may queue for the controller's lock) in the write threads, so reads and
    other tenants never wait behind it in one pool."""
    limiter: anyio.CapacityLimiter = request.app.state.writes
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
