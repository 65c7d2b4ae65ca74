"""A tenant's own Ray cluster, as its tenant reaches it (``GET /cluster``, ``fastgpu connect``).

Rules: a tenant gets its own cluster only (naming another answers 404, as for leases); the
admin names the tenant. Asking starts the cluster if it is not running (seconds). The Ray
token travels only in this answer's body (over the authenticated API), never in a URL, an
environment or a log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.errors import InvalidRequest, NotFound, Unavailable
from fastgpu.service.models import ClusterOut

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


class ClusterService:
    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl

    def connect(self, p: Principal, tenant: str | None = None) -> ClusterOut:
        if p.is_admin and tenant is None:
            raise InvalidRequest("tenant: the admin must name the tenant whose cluster to reach")
        if not p.is_admin and tenant not in (None, p.name):
            raise NotFound(f"tenant {tenant!r} not found")
        rec = self._ctl.tenant(tenant or p.name)
        if rec is None:
            raise NotFound(f"tenant {tenant or p.name!r} not found")
        from fastgpu.controller.pool_backend import PoolBackend

        backend = self._ctl.backend
        if not isinstance(backend, PoolBackend):
            raise Unavailable(
                "tenant clusters are off on this platform (tenant_clusters.enabled: false): "
                "its jobs run in the shared cluster"
            )
        return ClusterOut(tenant=rec.name, **backend.connect(rec.id, rec.name))
