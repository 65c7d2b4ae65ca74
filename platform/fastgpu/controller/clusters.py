"""Tenants' own Ray clusters, as the controller keeps them: one :class:`TenantCluster` per
tenant id, made on first need, adopted after a server restart, stopped when idle.

Where things live (see ``docs/design/tenant-clusters.md``):

* a tenant's cluster home: ``<tenant_clusters.root>/<start of tenant id>`` (short: Ray's socket
  paths);
* its storage dir: ``<storage root>/t-<tenant id>``, 0700 and owned by the tenant's user; the
  storage root itself is 0711 (passable, not listable);
* its OS user: ``fg<hash>`` in ``os_users`` mode (:mod:`fastgpu.pool.runtime`).

Thread-safety: :meth:`get` and :meth:`ensure` may be called from any thread; a cluster's own
calls serialize on the cluster.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastgpu.config import PlatformConfig, tenant_storage_key
from fastgpu.errors import ConfigError
from fastgpu.pool import processes
from fastgpu.pool.runtime import (
    SINGLE_USER_WARNING,
    Isolation,
    TenantPython,
    ensure_user,
    resolve_isolation,
    tenant_python,
    traversable_dir,
    user_comment,
    user_name,
)
from fastgpu.pool.seam import Pool
from fastgpu.pool.tenant_cluster import (
    ClusterSpec,
    RayletKey,
    TenantCluster,
    running_raylets,
)

log = logging.getLogger(__name__)


def platform_id(state_dir: Path) -> str:
    """A short id of a platform whose store is a SQLite file in ``state_dir``: names its
    processes and tenants' users (see :func:`platform_of`)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]


def platform_of(config: PlatformConfig) -> str:
    """This platform's id. A platform is its store: servers on one PostgreSQL database (a
    leader and its standbys, each with its own state dir) share the id, so a standby that
    takes over adopts the tenants' clusters the leader started; a SQLite store lives in the
    state dir, which names the platform then. The URL is taken without its password (a
    rotated password keeps the id), as written: every server of a platform must spell it the
    same way."""
    url = config.store_url
    if not url or url.startswith("sqlite"):
        return platform_id(config.resolved_state_dir())
    from sqlalchemy.engine import make_url

    u = make_url(url)
    ident = (u.drivername, u.username, u.host, u.port, u.database, sorted(u.query.items()))
    return hashlib.sha256(f"store:{ident!r}".encode()).hexdigest()[:10]


#: A tenant's home is named by the start of its id: Ray's socket paths (under the home) must
#: stay within 107 bytes.
HOME_NAME_CHARS = 8
#: What Ray adds under a cluster's home: ``/r/session_<date>_<time>_<us>_<pid>/sockets/
#: plasma_store``.
_RAY_SOCKET_SUFFIX = 66


def clusters_root(config: PlatformConfig) -> Path:
    setting = config.tenant_clusters.root
    if setting:
        return Path(setting)
    base = Path(os.environ.get("RAY_TMPDIR") or "/tmp")
    return base / f"fg{platform_of(config)[:8]}"


class TenantClusters:
    def __init__(self, config: PlatformConfig, pool: Pool | None = None) -> None:
        """``pool``: when agents run some hosts, raylets there go through it."""
        self.config = config
        self.pool = pool
        self.platform = platform_of(config)
        self.isolation: Isolation = resolve_isolation(config.tenant_clusters.isolation)
        if self.isolation == "single_user":
            log.warning(SINGLE_USER_WARNING)
        self.root = clusters_root(config)
        longest = len(str(self.root)) + 1 + HOME_NAME_CHARS + _RAY_SOCKET_SUFFIX
        if longest > 107:
            raise ConfigError(
                f"tenant_clusters.root {self.root} is too long for Ray's socket paths "
                f"({longest} > 107 bytes); choose a root of at most "
                f"{107 - 1 - HOME_NAME_CHARS - _RAY_SOCKET_SUFFIX} characters"
            )
        self._python: TenantPython | None = None
        #: Set by the server once its services exist: the API's address and the issuer of a
        #: cluster's own FastGPU token (by tenant id); see TenantCluster.job_token.
        self.api_url: str | None = None
        self.job_token: Callable[[str], str] | None = None
        self._mu = threading.Lock()
        self._clusters: dict[str, TenantCluster] = {}
        self._idle_since: dict[str, float] = {}

    def prepare(self) -> TenantPython:
        """Make the roots and the tenants' interpreter (once); raise ConfigError when tenants'
        users could not run it (the server calls this at start-up: fail fast)."""
        if self._python is None:
            traversable_dir(self.root)
            state = self.config.resolved_state_dir()
            storage = self.config.resolved_storage_root()
            if storage.is_relative_to(state):
                traversable_dir(state)  # its files are 0600: the server runs with umask 077
            traversable_dir(storage)
            self._python = tenant_python(
                self.isolation, self.config.tenant_clusters.python, self.root / "runtime"
            )
        return self._python

    def spec(self, tenant_id: str, tenant_name: str = "") -> ClusterSpec:
        python = self.prepare()
        user = None
        if self.isolation == "os_users":
            comment = user_comment(self.platform, tenant_name or tenant_id)
            user = ensure_user(user_name(self.platform, tenant_id), comment)
        return ClusterSpec(
            platform_id=self.platform,
            tenant_id=tenant_id,
            home=self.root / tenant_id[:HOME_NAME_CHARS],
            storage=self.config.resolved_storage_root() / tenant_storage_key(tenant_id),
            python=python,
            user=user,
            head_cpus=self.config.tenant_clusters.head_cpus,
        )

    def get(self, tenant_id: str, tenant_name: str = "") -> TenantCluster:
        """The tenant's cluster object (its processes may not run yet)."""
        with self._mu:
            cluster = self._clusters.get(tenant_id)
            if cluster is None:
                cluster = TenantCluster(self.spec(tenant_id, tenant_name))
                cluster.pool = self.pool
                cluster.api_url = self.api_url
                source = self.job_token
                if source is not None:
                    cluster.job_token = lambda: source(tenant_id)
                cluster.adopt()
                self._clusters[tenant_id] = cluster
            return cluster

    def ensure(self, tenant_id: str, tenant_name: str = "") -> TenantCluster:
        """The tenant's cluster, its head started if needed (seconds when cold)."""
        cluster = self.get(tenant_id, tenant_name)
        cluster.start_head()
        self._idle_since.pop(tenant_id, None)
        return cluster

    def touch(self, tenant_id: str) -> None:
        """The tenant used its cluster now: its idle time starts again."""
        self._idle_since[tenant_id] = time.monotonic()

    def known(self) -> dict[str, TenantCluster]:
        with self._mu:
            return dict(self._clusters)

    def running_raylets(self) -> dict[tuple[str, RayletKey], tuple[int, ...]]:
        """(tenant, (lease, host, part)) -> devices of every live raylet of this platform's
        tenants (an agent's host: as its agent reported)."""
        found = running_raylets(f"{self.platform}/")
        if self.pool is None:
            return found
        local = {k: v for k, v in found.items() if not self.pool.owns(k[1][1])}
        return local | self.pool.running_raylets(self.platform)

    def running_tenants(self) -> set[str]:
        """Tenant ids with a live head on this machine (whether this server started it)."""
        prefix = f"{self.platform}/"
        out = set()
        for marker in processes.marked(prefix):
            tenant, _, role = marker[len(prefix) :].partition("/")
            if role == "head":
                out.add(tenant)
        return out

    def idle(self, busy: set[str], now: float | None = None) -> list[TenantCluster]:
        """Running clusters of tenants not in ``busy`` (tenants holding leases) that had no
        lease and no driver for ``idle_timeout_s``: the ones to stop now."""
        now = time.monotonic() if now is None else now
        timeout = self.config.tenant_clusters.idle_timeout_s
        out = []
        for tenant_id, cluster in self.known().items():
            if tenant_id in busy or not cluster.running():
                self._idle_since.pop(tenant_id, None)
                continue
            since = self._idle_since.setdefault(tenant_id, now)
            if now - since < timeout:
                continue
            if cluster.busy():  # a job or a session runs there: idle from now on, at most
                self._idle_since[tenant_id] = now
                continue
            out.append(cluster)
        return out

    def stopped(self, tenant_id: str) -> None:
        self._idle_since.pop(tenant_id, None)

    def stop_all(self) -> None:
        for cluster in self.known().values():
            cluster.stop()
