"""Hosts: what the operator may do with the pool's agent-run hosts (admin only), and the
agents' own calls (authenticated by each host's token, not by a tenant's or the admin's).

Without ``pool.agents`` every call says so (409): the hosts are this machine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.domain.agent_protocol import Heartbeat, HeartbeatReply, Register, Registered
from fastgpu.errors import Conflict, NotFound, PermissionDenied
from fastgpu.service.host_models import HostAdded, HostList, HostOut

if TYPE_CHECKING:
    from fastgpu.controller.hosts import HostController


class HostService:
    def __init__(self, hosts: HostController | None) -> None:
        self._hosts = hosts

    def _ctl(self) -> HostController:
        if self._hosts is None:
            raise Conflict(
                "this platform's hosts are local: set pool.agents (cluster.yaml `agents:`) "
                "to run hosts with `fastgpu agent`"
            )
        return self._hosts

    @staticmethod
    def _admin(p: Principal) -> None:
        if not p.is_admin:
            raise PermissionDenied("hosts are the operator's: an admin token is needed")

    def add(self, p: Principal, name: str) -> HostAdded:
        self._admin(p)
        return HostAdded(name=name, token=self._ctl().add(name))

    def list(self, p: Principal) -> HostList:
        self._admin(p)
        return HostList(hosts=[HostOut(**v) for v in self._ctl().views()])

    def show(self, p: Principal, name: str) -> HostOut:
        for host in self.list(p).hosts:
            if host.name == name:
                return host
        raise NotFound(f"host {name!r} not found")

    def drain(self, p: Principal, name: str, deadline_s: float | None) -> HostOut:
        self._admin(p)
        self._ctl().drain(name, deadline_s)
        return self.show(p, name)

    def undrain(self, p: Principal, name: str) -> HostOut:
        self._admin(p)
        self._ctl().undrain(name)
        return self.show(p, name)

    # -- agents ----------------------------------------------------------------------------
    def register(self, token: str, req: Register) -> Registered:
        return self._ctl().register(token, req)

    def heartbeat(self, token: str, req: Heartbeat) -> HeartbeatReply:
        return self._ctl().heartbeat(token, req)
