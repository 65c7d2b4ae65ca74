"""A tenant's own Ray cluster, as its tenant reaches it (``GET /cluster``, ``fastgpu connect``).

Rules: a tenant gets its own cluster only (naming another answers 404, as for leases); the
admin names the tenant. Asking starts the cluster if it is not running (seconds). The Ray
token travels only in this answer's body (over the authenticated API), never in a URL, an
environment or a log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from fastgpu.auth import Principal
from fastgpu.errors import InvalidRequest, NotFound, Unavailable
from fastgpu.service.models import ClusterOut

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller
    from fastgpu.controller.pool_backend import PoolBackend


def no_clusters(*_: object) -> NoReturn:
    """What needs a tenant's cluster, on services built without the backend that runs them
    (tests over a fake backend)."""
    raise Unavailable(
        "tenants' clusters are not run here: these services were built without their backend "
        "(a test over a fake backend); a server passes its pool's"
    )


class ClusterService:
    def __init__(self, ctl: Controller, clusters: PoolBackend | None) -> None:
        self._ctl = ctl
        self._clusters = clusters

    def connect(self, p: Principal, tenant: str | None = None) -> ClusterOut:
        if p.is_admin and tenant is None:
            raise InvalidRequest("tenant: the admin must name the tenant whose cluster to reach")
        if not p.is_admin and tenant not in (None, p.name):
            raise NotFound(f"tenant {tenant!r} not found")
        rec = self._ctl.tenant(tenant or p.name)
        if rec is None:
            raise NotFound(f"tenant {tenant or p.name!r} not found")
        if self._clusters is None:
            no_clusters()
        return ClusterOut(tenant=rec.name, **self._clusters.connect(rec.id, rec.name))
