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
from fastgpu.controller.jobs import TenantJobGateway
from fastgpu.errors import NotFound
from fastgpu.service.auth import AuthService
from fastgpu.service.budgets import BudgetService
from fastgpu.service.clusters import ClusterService, no_clusters
from fastgpu.service.endpoints import EndpointService
from fastgpu.service.hosts import HostService
from fastgpu.service.jobs import JobService
from fastgpu.service.leases import LeaseService, WaitLimiter
from fastgpu.service.reads import ReadService
from fastgpu.service.registry import RegistryService
from fastgpu.service.tenants import TenantService

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller
    from fastgpu.controller.pool_backend import PoolBackend


def _job_gateway(ctl: Controller, clusters: PoolBackend | None) -> TenantJobGateway:
    """Each tenant's own cluster's Jobs API."""
    if clusters is None:
        return TenantJobGateway(connect=no_clusters, secret=no_clusters, running=list)

    def tenant_id(name: str) -> str:
        rec = ctl.tenant(name)
        if rec is None:
            raise NotFound(f"tenant {name!r} not found")
        return rec.id

    names: dict[str, str] = {}

    def running() -> list[str]:
        ids = clusters.clusters.running_tenants()
        for rec in ctl.tenants():
            names[rec.id] = rec.name
        return [names[i] for i in sorted(ids) if i in names]

    return TenantJobGateway(
        connect=lambda name: clusters.connect(tenant_id(name), name),
        secret=lambda name, file, value: clusters.secret(tenant_id(name), file, value),
        running=running,
    )


def _endpoints(
    ctl: Controller, leases: LeaseService, clusters: PoolBackend | None
) -> EndpointService:
    """Endpoints in tenants' clusters, their reconciler running."""
    from fastgpu.controller.endpoints import ServeGateway
    from fastgpu.service.endpoint_reconcile import EndpointReconciler

    if clusters is None:
        return EndpointService(ctl, None)
    gateway = ServeGateway(clusters, ctl.config.resolved_state_dir())
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
        wait_slots: WaitLimiter | None = None,
        clusters: PoolBackend | None = None,
    ) -> Services:
        """The services over ``ctl``. ``clusters`` runs the tenants' Ray clusters: on a server,
        its backend (``ctl.backend``). Services tested over a fake backend have none: there,
        what needs a tenant's cluster (jobs, ``GET /cluster``, endpoints) answers Unavailable,
        saying so."""
        auth = AuthService(ctl)
        leases = LeaseService(ctl, wait_slots)
        return cls(
            auth=auth,
            tenants=TenantService(ctl, auth),
            leases=leases,
            jobs=JobService(ctl, _job_gateway(ctl, clusters), leases),
            reads=ReadService(ctl),
            clusters=ClusterService(ctl, clusters),
            budgets=BudgetService(ctl),
            registry=RegistryService(ctl),
            endpoints=_endpoints(ctl, leases, clusters),
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
