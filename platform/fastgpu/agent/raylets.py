"""The raylets of tenants on this agent's host: started, stopped and listed on the server's
request.

A raylet here is the same node a tenant's cluster starts on the server's machine
(:meth:`fastgpu.pool.tenant_cluster.TenantCluster.add_raylet`), joined to the head address the
server sends, run as the tenant's OS user (``os_users``) with a private home under this
agent's root holding the cluster's Ray token in a 0600 file. What runs is read from the
processes (their marker), never from memory: a restarted agent reports the raylets its
previous run started, and the server's ``(boot, seq)`` tells its reports apart.

Rules: a start naming a device this host does not lend is refused (PermissionDenied); one
naming a device another lease's raylet holds here is refused (Conflict); starts and stops
are idempotent.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from fastgpu.domain.agent_protocol import RayletReport, RunningRaylet, StartRaylet, StopRaylet
from fastgpu.errors import Conflict, PermissionDenied
from fastgpu.pool import processes
from fastgpu.pool.hosts import Host
from fastgpu.pool.runtime import (
    Isolation,
    TenantPython,
    ensure_user,
    tenant_python,
    traversable_dir,
    user_comment,
    user_name,
)
from fastgpu.pool.tenant_cluster import ClusterSpec, TenantCluster, running_raylets


class HostRaylets:
    def __init__(
        self,
        host: Host,
        root: Path,
        isolation: Isolation,
        python: str | None = None,
    ) -> None:
        self.host = host
        self.root = root
        self.isolation = isolation
        self._python_setting = python
        self._python: TenantPython | None = None
        self.boot = secrets.token_hex(8)
        self.seq = 0
        self._mu = threading.Lock()
        #: The platform this host serves (its server says so when the agent registers; kept
        #: in a file so a restarted agent reports its raylets before it registers again).
        self._platform_file = root / "platform"
        self.platform_id: str | None = (
            self._platform_file.read_text().strip() if self._platform_file.exists() else None
        )

    def serve(self, platform_id: str) -> None:
        if platform_id != self.platform_id:
            self.root.mkdir(parents=True, exist_ok=True)
            self._platform_file.write_text(platform_id + "\n")
            self.platform_id = platform_id

    def prepare(self) -> None:
        """The root (passable by tenants' users) and their interpreter (made once)."""
        traversable_dir(self.root)
        if self._python is None:
            self._python = tenant_python(
                self.isolation, self._python_setting, self.root / "runtime"
            )

    def _cluster(self, platform_id: str, tenant_id: str, storage: Path) -> TenantCluster:
        self.prepare()
        assert self._python is not None
        user = None
        if self.isolation == "os_users":
            comment = user_comment(platform_id, tenant_id)
            user = ensure_user(user_name(platform_id, tenant_id), comment)
        return TenantCluster(
            ClusterSpec(
                platform_id=platform_id,
                tenant_id=tenant_id,
                home=self.root / tenant_id[:8],
                storage=storage,
                python=self._python,
                user=user,
            )
        )

    # -- what runs ---------------------------------------------------------------------------
    def running(self) -> list[RunningRaylet]:
        if self.platform_id is None:
            return []  # no server yet: nothing here is ours to report
        out = []
        for (tenant, (lease, host, part)), ids in running_raylets(f"{self.platform_id}/").items():
            if host == self.host.name:
                out.append(
                    RunningRaylet(tenant_id=tenant, lease_id=lease, part=part, devices=list(ids))
                )
        return sorted(out, key=lambda r: (r.tenant_id, r.lease_id, r.part))

    def report(self) -> RayletReport:
        return RayletReport(boot=self.boot, seq=self.seq, raylets=self.running())

    # -- the server's requests -----------------------------------------------------------------
    def start(self, req: StartRaylet) -> RayletReport:
        foreign = sorted(set(req.devices) - set(self.host.devices))
        if foreign:
            raise PermissionDenied(
                f"devices {foreign} are not this host's ({self.host.name} lends "
                f"{list(self.host.devices)})"
            )
        if self.platform_id is not None and req.platform_id != self.platform_id:
            raise PermissionDenied(
                f"this agent serves platform {self.platform_id}, not {req.platform_id}"
            )
        if req.gpu_type != self.host.gpu_type:
            raise PermissionDenied(f"this host's GPUs are {self.host.gpu_type}, not {req.gpu_type}")
        with self._mu:
            for r in self.running():
                mine = (r.tenant_id, r.lease_id) == (req.tenant_id, req.lease_id)
                clash = set(r.devices) & set(req.devices)
                if clash and not (mine and r.part == min(req.devices)):
                    raise Conflict(
                        f"devices {sorted(clash)} are held by lease {r.lease_id}'s raylet here"
                    )
            cluster = self._cluster(req.platform_id, req.tenant_id, Path(req.storage))
            cluster.prepare_for_raylets(req.ray_token)
            cluster.add_raylet(
                req.lease_id, self.host, tuple(req.devices), cpus=req.cpus, address=req.address
            )
            self.seq += 1
            return self.report()

    def stop(self, req: StopRaylet) -> RayletReport:
        role = f"raylet/{req.lease_id}/{self.host.name}/{req.part}"
        marker = f"{req.platform_id}/{req.tenant_id}/{role}"
        with self._mu:
            pid = processes.node_pid(marker, "raylet")
            processes.stop_tree(pid, req.grace_s, marker=marker)
            self.seq += 1
            return self.report()

    def stop_all(self, stale: list[RunningRaylet], grace_s: float = 2.0) -> int:
        """Stop raylets the server wrote off (this host was lost): any platform's marker
        that names this host, the tenant and the lease."""
        n = 0
        with self._mu:
            for marker, procs in processes.marked(f"{self.platform_id}/").items():
                for r in stale:
                    role = f"/{r.tenant_id}/raylet/{r.lease_id}/{self.host.name}/{r.part}"
                    if marker.endswith(role):
                        n += processes.stop_tree(procs[0].pid, grace_s, marker=marker)
            self.seq += 1
        return n
