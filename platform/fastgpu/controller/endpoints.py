"""Ray Serve in a tenant's own cluster, as the platform drives it (issue 11).

The server never joins a tenant's cluster as a driver; it speaks to the cluster's dashboard
(Serve's declarative config API, ``PUT /api/serve/applications/``) with the tenant's Ray token,
as :class:`~fastgpu.controller.jobs.TenantJobGateway` does for jobs. The config always names
*every* application of the tenant (the API is declarative): the service builds it
(:meth:`fastgpu.service.endpoints.EndpointService.apps`). The code of the model server
(``serve_apps/``) is uploaded to the cluster once per content (Ray's package URIs are content
hashes), so tenants' interpreters need no copy of it.

Serve's proxy listens on 127.0.0.1 only, on the head alone (``HeadOnly``: lease raylets on the
same machine would otherwise share its port). Any local process may connect to it, which is why
every replica checks every request's token itself (:mod:`serve_apps.model_server`). Its port is
bound with SO_REUSEPORT, which Linux lets only the same user share: another tenant's user
cannot bind beside it.

The valid token hashes reach the replicas as a 0600 file of the tenant's user in its cluster
home (``secrets/endpoint-tokens.json``), replaced atomically; replicas re-read it when it
changes, so a rotation needs no restart.

When an endpoint's lease shrinks, the pool stops the raylets that hold no live actor first
(:mod:`fastgpu.controller.pool_elastic`). Replicas on their way out still live for a while: in
STOPPING in Serve's last view (read each reconcile pass, before the resize); of an
application the last config applied no longer names (a retired version: Serve may not have
started deleting it yet); or gone from the view though their actor has not exited yet (Serve
drops a replica once it asked Ray to kill it). The gateway tells the pool about them
(:meth:`ServeGateway.stopping_actors`): their raylets count as idle, so the raylet of a
replica Serve keeps is the one that stays.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastgpu.endpoints.autoscale import LEAVING_STATES
from fastgpu.errors import Unavailable

if TYPE_CHECKING:
    from fastgpu.controller.pool_backend import PoolBackend

log = logging.getLogger(__name__)

#: The repository's Serve applications (``serve_apps/`` beside ``platform/``).
SERVE_APPS = Path(__file__).resolve().parents[3] / "serve_apps"
TOKEN_FILE = "endpoint-tokens.json"
#: How long a replica Serve ran is remembered once gone from its view (its actor may outlive
#: that by a moment: Serve drops it once it asked Ray to kill it).
REMEMBER_S = 600.0


class ServeGateway:
    """Serve's config API of each tenant's cluster."""

    def __init__(self, backend: PoolBackend, state_dir: Path) -> None:
        self._backend = backend
        self._pkg = state_dir / "serve_pkg"
        self._clients: dict[str, tuple[str, Any]] = {}
        self._uris: dict[str, str] = {}
        self._mu = threading.Lock()
        #: Per tenant, the actor ids of the replicas on their way out in Serve's last view read.
        self._stopping: dict[str, frozenset[str]] = {}
        #: Per tenant, replicas Serve ran (actor id -> time.monotonic() last seen so), kept
        #: :data:`REMEMBER_S`: one no longer running is on its way out.
        self._ran: dict[str, dict[str, float]] = {}
        self._noting = threading.Lock()
        #: Per tenant, the applications of the config last applied.
        self._applied: dict[str, frozenset[str]] = {}
        backend.elastic.stopping.append(self.stopping_actors)

    # -- the tenant's cluster ------------------------------------------------------------------
    def running(self, tenant_id: str) -> bool:
        return tenant_id in self._backend.clusters.running_tenants()

    def keep_alive(self, tenant_id: str) -> None:
        """An endpoint lives here: the cluster is not idle (its Serve proxy stays up)."""
        self._backend.clusters.touch(tenant_id)

    def _client(self, tenant_id: str, tenant: str) -> Any:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        info = self._backend.connect(tenant_id, tenant)
        url, token = info["dashboard_url"], info["ray_token"]
        known = self._clients.get(tenant_id)
        if known is None or known[0] != url:
            client = ServeSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
            known = self._clients[tenant_id] = (url, client)
            self._uris.pop(tenant_id, None)
        return known[1]

    def _package(self, tenant_id: str, client: Any) -> str:
        """The model server's code as a package URI in the tenant's cluster (uploaded once)."""
        uri = self._uris.get(tenant_id)
        if uri is None:
            with self._mu:
                dest = self._pkg / "serve_apps"
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(
                    SERVE_APPS, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
                uri = client._upload_package_if_needed(
                    str(self._pkg), include_gitignore=False, excludes=["__pycache__"]
                )
            self._uris[tenant_id] = uri
        return uri

    @staticmethod
    def free_port() -> int:
        """A free port for a tenant's Serve proxy (its endpoints share it)."""
        from fastgpu.pool.tenant_cluster import free_ports

        return free_ports(1)[0]

    # -- calls -------------------------------------------------------------------------------
    def write_tokens(self, tenant_id: str, body: str) -> str:
        """Replace the tenant's token file atomically; its path (what replicas read)."""
        tmp = Path(self._backend.secret(tenant_id, TOKEN_FILE + ".new", body))
        final = tmp.with_name(TOKEN_FILE)
        os.replace(tmp, final)
        return str(final)

    def token_path(self, tenant_id: str) -> str:
        return str(self._backend.clusters.get(tenant_id).spec.home / "secrets" / TOKEN_FILE)

    def apply(self, tenant_id: str, tenant: str, port: int, apps: list[dict[str, Any]]) -> None:
        """Make the tenant's Serve run exactly ``apps`` (each without its runtime env, which
        this adds), its proxy on 127.0.0.1:``port``."""
        client = self._client(tenant_id, tenant)
        uri = self._package(tenant_id, client)
        config = {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 300},
            "applications": [{**a, "runtime_env": {"working_dir": uri}} for a in apps],
        }
        try:
            client.deploy_applications(config)
        except RuntimeError as exc:
            raise Unavailable(f"Serve in the tenant's cluster refused the config: {exc}") from None
        self._applied[tenant_id] = frozenset(a["name"] for a in apps)

    def details(self, tenant_id: str, tenant: str) -> dict[str, Any]:
        """Serve's view (applications, deployments, replicas); {} when the cluster is down."""
        if not self.running(tenant_id):
            return {}
        try:
            out: dict[str, Any] = self._client(tenant_id, tenant).get_serve_details()
        except Exception as exc:  # the dashboard restarting: no view this pass
            log.debug("serve details of %s: %s", tenant, exc)
            return {}
        self._note_replicas(tenant_id, out)
        return out

    def _note_replicas(self, tenant_id: str, details: dict[str, Any]) -> None:
        now = time.monotonic()
        live, leaving = replica_states(details, self._applied.get(tenant_id))
        with self._noting:  # the reconciler's pass and API calls (show, logs) read views
            ran = self._ran.setdefault(tenant_id, {})
            for actor in live:
                ran[actor] = now
            for actor, seen in list(ran.items()):
                if now - seen > REMEMBER_S:
                    del ran[actor]
            self._stopping[tenant_id] = leaving | (ran.keys() - live)

    def stopping_actors(self, tenant_id: str) -> frozenset[str]:
        """Actor ids of the tenant's replicas on their way out when Serve was last asked."""
        return self._stopping.get(tenant_id, frozenset())

    def log_file(self, tenant_id: str, tenant: str, node_id: str, path: str, lines: int) -> str:
        """The last ``lines`` of one log file of the tenant's cluster (Ray's log API)."""
        client = self._client(tenant_id, tenant)
        name = path.rsplit("/logs/", 1)[-1]
        resp = client._do_request(
            "GET", f"/api/v0/logs/file?node_id={node_id}&filename={name}&lines={lines}"
        )
        return str(resp.text)


def replica_states(
    details: dict[str, Any], applied: Collection[str] | None = None
) -> tuple[frozenset[str], frozenset[str]]:
    """Actor ids of the replicas in Serve's view (``get_serve_details``) that Serve keeps, and
    of those on their way out: in STOPPING or PENDING_MIGRATION (on a raylet the lease gives
    back, which Ray knows is draining), or of an application that ``applied`` (the config
    last applied; None: not known) does not name, which Serve deletes next."""
    live: set[str] = set()
    leaving: set[str] = set()
    for name, app in (details.get("applications") or {}).items():
        retired = applied is not None and name not in applied
        for dep in (app.get("deployments") or {}).values():
            for r in dep.get("replicas") or ():
                if r.get("actor_id"):
                    going = retired or r.get("state") in LEAVING_STATES
                    (leaving if going else live).add(r["actor_id"])
    return frozenset(live), frozenset(leaving)
