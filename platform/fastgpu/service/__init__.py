"""Services: what callers may do, with typed inputs and results (:mod:`.models`).

Each service authorizes with the :class:`~fastgpu.auth.Principal` the API resolved from the
bearer token, validates what the models cannot, and acts through the controller
(:mod:`fastgpu.controller`), the only writer of the store and the only caller of Ray. The API
(:mod:`fastgpu.api`) calls these directly; there is no call-by-name table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastgpu.controller.jobs import JobGateway
from fastgpu.service.auth import AuthService
from fastgpu.service.jobs import JobService
from fastgpu.service.leases import LeaseService, WaitLimiter
from fastgpu.service.reads import ReadService
from fastgpu.service.tenants import TenantService

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


@dataclass(frozen=True)
class Services:
    auth: AuthService
    tenants: TenantService
    leases: LeaseService
    jobs: JobService
    reads: ReadService

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
            jobs=JobService(ctl, JobGateway(dashboard_url), leases),
            reads=ReadService(ctl),
        )


__all__ = [
    "AuthService",
    "JobService",
    "LeaseService",
    "ReadService",
    "Services",
    "TenantService",
]
