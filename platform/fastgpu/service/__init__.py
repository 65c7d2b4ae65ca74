"""Services: what callers may do, with typed inputs and results (:mod:`.models`).

Each service authorizes with the :class:`~fastgpu.auth.Principal` the API resolved from the
bearer token, validates what the models cannot, and acts through the controller
(:mod:`fastgpu.controller`), the only writer of the store and the only caller of Ray. The API
(:mod:`fastgpu.api`) calls these directly; there is no call-by-name table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastgpu.controller.hosts import host_controller
from fastgpu.controller.jobs import JobGateway, TenantJobGateway
from fastgpu.errors import NotFound
from fastgpu.service.auth import AuthService
from fastgpu.service.budgets import BudgetService
from fastgpu.service.clusters import ClusterService
from fastgpu.service.endpoints import EndpointService
from fastgpu.service.hosts import HostService
from fastgpu.service.jobs import JobService
from fastgpu.service.leases import LeaseService, WaitLimiter
from fastgpu.service.reads import ReadService
from fastgpu.service.registry import RegistryService
from fastgpu.service.tenants import TenantService

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


def _job_gateway(ctl: Controller, dashboard_url: str | None) -> JobGateway:
    """The shared cluster's Jobs API, or each tenant's own (tenant clusters on)."""
    from fastgpu.controller.pool_backend import PoolBackend

    backend = ctl.backend
    if not isinstance(backend, PoolBackend):
        return JobGateway(dashboard_url)

    def tenant_id(name: str) -> str:
        rec = ctl.tenant(name)
        if rec is None:
            raise NotFound(f"tenant {name!r} not found")
        return rec.id

    names: dict[str, str] = {}

    def running() -> list[str]:
        ids = backend.clusters.running_tenants()
        for rec in ctl.tenants():
            names[rec.id] = rec.name
        return [names[i] for i in sorted(ids) if i in names]

    return TenantJobGateway(
        connect=lambda name: backend.connect(tenant_id(name), name),
        secret=lambda name, file, value: backend.secret(tenant_id(name), file, value),
        running=running,
    )


def _endpoints(ctl: Controller, leases: LeaseService) -> EndpointService:
    """Endpoints on tenant clusters, their reconciler running (without them: every call says
    they need tenant clusters)."""
    from fastgpu.controller.endpoints import ServeGateway
    from fastgpu.controller.pool_backend import PoolBackend
    from fastgpu.service.endpoint_reconcile import EndpointReconciler

    if not isinstance(ctl.backend, PoolBackend):
        return EndpointService(ctl, None)
    gateway = ServeGateway(ctl.backend, ctl.config.resolved_state_dir())
    service = EndpointService(ctl, gateway)
    service.public_url = f"http://{ctl.config.api.host}:{ctl.config.api.port}"
    EndpointReconciler(ctl, service, leases).start()
    return service


@dataclass(frozen=True)
class Services:
    auth: AuthService
    tenants: TenantService
    leases: LeaseService
    jobs: JobService
    reads: ReadService
    clusters: ClusterService
    budgets: BudgetService
    registry: RegistryService
    endpoints: EndpointService
    hosts: HostService

    @classmethod
    def build(
        cls,
        ctl: Controller,
        dashboard_url: str | None = None,
        wait_slots: WaitLimiter | None = None,
    ) -> Services:
        auth = AuthService(ctl)
        leases = LeaseService(ctl, wait_slots)
        return cls(
            auth=auth,
            tenants=TenantService(ctl, auth),
            leases=leases,
            jobs=JobService(ctl, _job_gateway(ctl, dashboard_url), leases),
            reads=ReadService(ctl),
            clusters=ClusterService(ctl),
            budgets=BudgetService(ctl),
            registry=RegistryService(ctl),
            endpoints=_endpoints(ctl, leases),
            hosts=HostService(host_controller(ctl)),
        )


__all__ = [
    "AuthService",
    "BudgetService",
    "ClusterService",
    "EndpointService",
    "HostService",
    "JobService",
    "LeaseService",
    "ReadService",
    "RegistryService",
    "Services",
    "TenantService",
]
