"""The ``Pool`` seam: the hosts the controller places raylets on, and who starts them.

:class:`~fastgpu.controller.pool_backend.PoolBackend` drives a :class:`Pool`. ``hosts`` is
the live inventory (a dict the pool updates in place: a host lost, drained, joined), shared
with the device ledger, so every reader sees one view. For a host the pool ``owns``, raylets
are started, stopped and listed through the pool; for any other host, tenants' clusters do it
with this machine's processes (:mod:`fastgpu.pool.tenant_cluster`).

* :class:`LocalPool`: every host is this machine (several hosts = disjoint device sets), as
  before agents existed. Owns no host.
* :class:`~fastgpu.pool.remote.RemotePool`: an agent per host (``fastgpu agent``); owns them
  all. A KubeRay pool would be a third: see ``docs/design/kuberay.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fastgpu.pool.hosts import Host

if TYPE_CHECKING:
    from fastgpu.pool.tenant_cluster import RayletKey, TenantCluster

#: (tenant id, (lease, host, part)) -> device ids.
RayletMap = dict[tuple[str, "RayletKey"], tuple[int, ...]]


class Pool(Protocol):
    hosts: dict[str, Host]

    def owns(self, host: str) -> bool:
        """Whether raylets on ``host`` go through this pool (not this machine's processes)."""
        ...

    def start_raylet(
        self,
        cluster: TenantCluster,
        lease_id: str,
        host: Host,
        devices: tuple[int, ...],
        cpus: int | None,
    ) -> None:
        """Join a raylet to ``cluster`` on ``host`` (idempotent); raise when it did not."""
        ...

    def stop_raylet(self, cluster: TenantCluster, key: RayletKey, grace_s: float) -> int:
        """Stop the raylet ``key`` and what it runs; how many processes were signalled."""
        ...

    def running_raylets(self, platform_id: str, tenant_id: str | None = None) -> RayletMap:
        """The raylets on owned hosts that count as running (a lost host's do not)."""
        ...

    def close(self) -> None: ...


class LocalPool:
    """This machine's hosts: tenants' clusters start their raylets themselves."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = {h.name: h for h in hosts}

    def owns(self, host: str) -> bool:
        return False

    def start_raylet(
        self,
        cluster: TenantCluster,
        lease_id: str,
        host: Host,
        devices: tuple[int, ...],
        cpus: int | None,
    ) -> None:
        raise AssertionError("LocalPool owns no host: the tenant's cluster starts raylets")

    def stop_raylet(self, cluster: TenantCluster, key: RayletKey, grace_s: float) -> int:
        raise AssertionError("LocalPool owns no host: the tenant's cluster stops raylets")

    def running_raylets(self, platform_id: str, tenant_id: str | None = None) -> RayletMap:
        return {}

    def close(self) -> None:
        return None
