"""Hosts of a multi-host pool (issue 14): the operator's routes (admin token) and the agents'
(each host's own token). See :class:`fastgpu.service.hosts.HostService`.

    POST /api/v1/hosts                      add a host: its token, shown once
    GET  /api/v1/hosts                      every host and its state
    GET  /api/v1/hosts/{name}
    POST /api/v1/hosts/{name}/drain         {"deadline_s": ...}
    POST /api/v1/hosts/{name}/undrain
    POST /api/v1/agents/register            an agent announces its host
    POST /api/v1/agents/heartbeat
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fastgpu.api.deps import V1, Caller, Svc, write
from fastgpu.domain.agent_protocol import NAME, Heartbeat, HeartbeatReply, Register, Registered
from fastgpu.errors import AuthenticationError
from fastgpu.service.host_models import DrainIn, HostAdd, HostAdded, HostList, HostOut

router = APIRouter(prefix=V1, tags=["hosts"])
_bearer = HTTPBearer(auto_error=False)
HOST = Path(max_length=31, pattern=NAME, description="Host name.")


def host_token(cred: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    if cred is None or not cred.credentials:
        raise AuthenticationError("an agent sends 'Authorization: Bearer <host token>'")
    return cred.credentials


@router.post("/hosts")
async def add_host(request: Request, p: Caller, s: Svc, body: HostAdd) -> HostAdded:
    return await write(request, s.hosts.add, p, body.name)


@router.get("/hosts")
def list_hosts(p: Caller, s: Svc) -> HostList:
    return s.hosts.list(p)


@router.get("/hosts/{name}")
def show_host(p: Caller, s: Svc, name: str = HOST) -> HostOut:
    return s.hosts.show(p, name)


@router.post("/hosts/{name}/drain")
async def drain_host(
    request: Request, p: Caller, s: Svc, body: DrainIn, name: str = HOST
) -> HostOut:
    return await write(request, s.hosts.drain, p, name, body.deadline_s)


@router.post("/hosts/{name}/undrain")
async def undrain_host(request: Request, p: Caller, s: Svc, name: str = HOST) -> HostOut:
    return await write(request, s.hosts.undrain, p, name)


@router.post("/agents/register")
async def register_agent(
    request: Request, s: Svc, body: Register, token: str = Depends(host_token)
) -> Registered:
    return await write(request, s.hosts.register, token, body)


@router.post("/agents/heartbeat")
def agent_heartbeat(s: Svc, body: Heartbeat, token: str = Depends(host_token)) -> HeartbeatReply:
    return s.hosts.heartbeat(token, body)
