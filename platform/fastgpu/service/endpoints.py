"""Endpoints (issue 11): deploy a tenant's model to an authenticated HTTP endpoint, list, show,
update, delete, tokens, logs; and the route the platform's proxy forwards to.

Who may do what: a tenant acts on its own endpoints only (another tenant's answer 404); the
admin names the tenant. The model is a registered model of the tenant (``[tenant/]model:vN``
or ``:latest``, resolved through the registry and pinned to its version; the replica verifies
the files' hash before loading) or a training run of the tenant (its latest complete
checkpoint in the tenant's storage), resolved here; the Serve side runs in the tenant's own
cluster (:class:`~fastgpu.controller.endpoints.ServeGateway`); the lease and autoscaling
follow in :mod:`fastgpu.service.endpoint_reconcile`.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Any

from fastgpu.auth import Principal
from fastgpu.domain.endpoint import EndpointRecord
from fastgpu.endpoints.models import (
    DeploySpec,
    EndpointCreated,
    EndpointOut,
    EndpointTokenOut,
    EndpointUpdate,
    Scaling,
)
from fastgpu.endpoints.tokens import new_endpoint_id, new_token, token_file_body, token_hash
from fastgpu.errors import Conflict, InvalidRequest, NotFound
from fastgpu.service.clusters import no_clusters
from fastgpu.service.registry import RegistryService
from fastgpu.timeutil import iso

if TYPE_CHECKING:
    from fastgpu.controller.endpoints import ServeGateway
    from fastgpu.controller.loop import Controller
    from fastgpu.store import TenantRecord

#: The deployment's resource when the endpoint holds no bound lease: no node has it, so a
#: replica Serve wants waits (pending) until the lease is bound and the config names it.
NO_LEASE = "fastgpu_lease_none"


def app_name(name: str, version: int) -> str:
    return f"{name}-v{version}"


class EndpointService:
    def __init__(self, ctl: Controller, gateway: ServeGateway | None) -> None:
        self._ctl = ctl
        self._store = ctl.store
        self._gw = gateway
        self._registry = RegistryService(ctl)
        self.mu = threading.RLock()
        #: (tenant name, endpoint name) -> (Serve port, app): what the proxy forwards to.
        self._routes: dict[tuple[str, str], tuple[int, str]] = {}
        self.public_url = ""

    # -- helpers --------------------------------------------------------------------------------
    @property
    def gateway(self) -> ServeGateway:
        if self._gw is None:
            no_clusters()
        return self._gw

    def owner(self, p: Principal, tenant: str | None) -> TenantRecord:
        name = tenant if p.is_admin else p.name
        if not p.is_admin and tenant not in (None, p.name):
            raise NotFound(f"tenant {tenant!r} not found")
        if name is None:
            raise InvalidRequest("tenant: the admin must name the tenant")
        rec = self._ctl.tenant(name)
        if rec is None:
            raise NotFound(f"tenant {name!r} not found")
        return rec

    def record(self, p: Principal, name: str, tenant: str | None = None) -> EndpointRecord:
        owner = self.owner(p, tenant)
        rec = self._store.endpoint(owner.id, name)
        if rec is None:
            raise NotFound(f"endpoint {name!r} not found")
        return rec

    def source_of(self, owner: TenantRecord, model: str) -> dict[str, Any]:
        """What a model reference deploys: ``model`` (as shown; a registered model pinned to
        its version), ``checkpoint`` (the folder replicas load) and ``content_hash`` (a
        registered model's, which the replica verifies before loading; None for a run).

        A reference with ``/`` or ``:`` is a registered model of the endpoint's tenant
        (another tenant's answers 404, as if absent); a bare name is a training run whose
        latest complete checkpoint is served."""
        from fastgpu.config import tenant_storage_key
        from fastgpu.train.checkpoints import CheckpointStore

        if "/" in model or ":" in model:
            as_owner = Principal(name=owner.name, is_admin=False, tenant_id=owner.id)
            found = self._registry.resolve(as_owner, model)
            return {"model": found.ref, "checkpoint": found.uri, "content_hash": found.content_hash}
        root = self._ctl.config.resolved_storage_root() / tenant_storage_key(owner.id)
        latest = CheckpointStore(root / "runs" / model).latest()
        if latest is None:
            raise NotFound(
                f"model: no complete checkpoint of run {model!r} in your storage "
                f"(runs/{model}/step-*); a registered model is named MODEL:vN or MODEL:latest"
            )
        return {"model": model, "checkpoint": str(latest.path), "content_hash": None}

    def out(self, rec: EndpointRecord, details: dict[str, Any] | None = None) -> EndpointOut:
        d = rec.doc
        lease = self._store.get_lease(d["lease_id"]) if d.get("lease_id") else None
        return EndpointOut(
            id=rec.id,
            tenant=rec.tenant,
            name=rec.name,
            url=f"{self.public_url}/t/{rec.tenant}/{rec.name}/",
            model=d["model"],
            checkpoint=d["checkpoint"],
            content_hash=d.get("content_hash"),
            state=d["state"],
            message=d.get("message", ""),
            version=d["version"],
            updating_to=(d.get("next") or {}).get("model"),
            gpu_type=d["gpu_type"],
            replicas=int(d.get("replicas", 0)),
            lease_id=d.get("lease_id"),
            lease_gpus=lease.held_gpus if lease and not lease.state.is_terminal else 0,
            created_at=iso(rec.created_at) or "",
            updated_at=iso(rec.updated_at) or "",
            **d["scaling"],
        )

    def save(self, rec: EndpointRecord) -> None:
        rec.updated_at = self._ctl.clock()
        self._store.save_endpoint(rec)

    def publish_tokens(self, tenant_id: str) -> str:
        """Write the tenant's valid token hashes where its replicas read them."""
        valid = {
            t.token_hash: t.endpoint_id
            for t in self._store.endpoint_tokens(tenant_id)
            if t.revoked_at is None
        }
        ids = {e.id for e in self._store.endpoints(tenant_id)}
        return self.gateway.write_tokens(tenant_id, token_file_body(valid, ids))

    # -- calls ----------------------------------------------------------------------------------
    def deploy(self, p: Principal, spec: DeploySpec, tenant: str | None = None) -> EndpointCreated:
        owner = self.owner(p, tenant)
        self.gateway  # noqa: B018  (fails early where no tenant's cluster runs)
        gpu_type = spec.gpu_type or self._only_gpu_type()
        source = self.source_of(owner, spec.model)
        now = self._ctl.clock()
        scaling = Scaling.model_validate(spec.model_dump(include=set(Scaling.model_fields)))
        with self.mu:
            port = self._tenant_port(owner.id, owner.name)
            rec = EndpointRecord(
                id=new_endpoint_id(),
                tenant_id=owner.id,
                tenant=owner.name,
                name=spec.name,
                created_at=now,
                updated_at=now,
                doc={
                    **source,
                    "version": 1,
                    "app": app_name(spec.name, 1),
                    "gpu_type": gpu_type,
                    "scaling": scaling.model_dump(),
                    "lease_id": None,
                    "bound_lease": None,
                    "serve_port": port,
                    "state": "DEPLOYING",
                    "message": "starting the first version",
                    "next": None,
                    "idle_since": now,
                },
            )
            token = new_token(rec.id)
            self._store.create_endpoint(rec, uuid.uuid4().hex[:12], token_hash(token))
            self.publish_tokens(owner.id)
            self._routes[(owner.name, rec.name)] = (port, rec.doc["app"])
        self.apply(owner.id, owner.name)
        return EndpointCreated(**self.out(rec).model_dump(), token=token)

    def _only_gpu_type(self) -> str:
        types = sorted(self._ctl.config.gpu_types)
        if len(types) != 1:
            raise InvalidRequest(f"gpu_type: missing; expected one of {', '.join(types)}")
        return types[0]

    def _tenant_port(self, tenant_id: str, tenant: str) -> int:
        """The port of the tenant's Serve proxy: its endpoints share it, and a running Serve
        keeps the one it started with (Serve cannot move its proxy), even with no endpoint."""
        for e in self._store.endpoints(tenant_id):
            return int(e.doc["serve_port"])
        details = self.gateway.details(tenant_id, tenant)
        running = details.get("http_options", {}).get("port") if details.get("proxies") else None
        return int(running) if running else self.gateway.free_port()

    def list_for(self, p: Principal, tenant: str | None = None) -> list[EndpointOut]:
        if p.is_admin and tenant is None:
            return [self.out(r) for r in self._store.endpoints()]
        return [self.out(r) for r in self._store.endpoints(self.owner(p, tenant).id)]

    def get(self, p: Principal, name: str, tenant: str | None = None) -> EndpointOut:
        return self.out(self.record(p, name, tenant))

    def update(
        self, p: Principal, name: str, body: EndpointUpdate, tenant: str | None = None
    ) -> EndpointOut:
        with self.mu:
            rec = self.record(p, name, tenant)
            d = rec.doc
            scaling = Scaling.model_validate(
                {**d["scaling"], **body.model_dump(exclude_none=True, exclude={"model"})}
            )
            d["scaling"] = scaling.model_dump()
            if body.model is not None:
                if d.get("next"):
                    raise Conflict(f"endpoint {name!r} is updating to {d['next']['model']!r}")
                owner = self.owner(p, tenant)
                version = int(d.get("last_version", d["version"])) + 1
                d["last_version"] = version
                source = self.source_of(owner, body.model)
                d["next"] = {**source, "version": version, "app": app_name(name, version)}
                d["state"] = "UPDATING"
                d["message"] = f"rolling to {source['model']} (version {version})"
            self.save(rec)
        self.apply(rec.tenant_id, rec.tenant)
        return self.out(rec)

    def delete(self, p: Principal, name: str, tenant: str | None = None) -> EndpointOut:
        with self.mu:
            rec = self.record(p, name, tenant)
            self._store.delete_endpoint(rec.id)
            self._routes.pop((rec.tenant, rec.name), None)
            self.publish_tokens(rec.tenant_id)
        self.apply(rec.tenant_id, rec.tenant, int(rec.doc["serve_port"]))
        if rec.doc.get("lease_id"):
            self._ctl.release(rec.doc["lease_id"])
        rec.doc["message"], rec.doc["lease_id"], rec.doc["bound_lease"] = "deleted", None, None
        return self.out(rec)

    def tokens(self, p: Principal, name: str, tenant: str | None = None) -> list[EndpointTokenOut]:
        rec = self.record(p, name, tenant)
        return [
            EndpointTokenOut(
                id=t.id, created_at=iso(t.created_at) or "", revoked=bool(t.revoked_at)
            )
            for t in self._store.endpoint_tokens(rec.tenant_id, rec.id)
        ]

    def issue_token(self, p: Principal, name: str, tenant: str | None = None) -> EndpointTokenOut:
        with self.mu:
            rec = self.record(p, name, tenant)
            token, tid, now = new_token(rec.id), uuid.uuid4().hex[:12], self._ctl.clock()
            self._store.add_endpoint_token(rec, tid, token_hash(token), now)
            self.publish_tokens(rec.tenant_id)
        return EndpointTokenOut(id=tid, created_at=iso(now) or "", revoked=False, token=token)

    def revoke_token(
        self, p: Principal, name: str, token_id: str, tenant: str | None = None
    ) -> EndpointTokenOut:
        with self.mu:
            rec = self.record(p, name, tenant)
            if not self._store.revoke_endpoint_token(rec.id, token_id, self._ctl.clock()):
                raise NotFound(f"token {token_id!r} of endpoint {name!r} not found (or revoked)")
            self.publish_tokens(rec.tenant_id)
        return EndpointTokenOut(id=token_id, created_at="", revoked=True)

    def logs(self, p: Principal, name: str, tenant: str | None = None, lines: int = 200) -> str:
        rec = self.record(p, name, tenant)
        details = self.gateway.details(rec.tenant_id, rec.tenant)
        apps = [rec.doc["app"]] + ([rec.doc["next"]["app"]] if rec.doc.get("next") else [])
        out = []
        for app in apps:
            dep = details.get("applications", {}).get(app, {}).get("deployments", {})
            for replica in dep.get("ModelServer", {}).get("replicas", []):
                path = replica.get("log_file_path")
                if path and replica.get("node_id"):
                    text = self.gateway.log_file(
                        rec.tenant_id, rec.tenant, replica["node_id"], path, lines
                    )
                    out.append(f"==> {app} {replica.get('replica_id')} <==\n{text}")
        return "\n".join(out) or "(no replica is running)"

    # -- the Serve config and the proxy's routes ------------------------------------------------
    def apps(self, tenant_id: str) -> list[dict[str, Any]]:
        """Every Serve application the tenant's endpoints need now."""
        out = []
        token_file = self.gateway.token_path(tenant_id)
        delay = self._ctl.config.endpoints.downscale_delay_s
        for rec in self._store.endpoints(tenant_id):
            d = rec.doc
            out.append(app_config(rec, d, token_file, surge=False, downscale_delay_s=delay))
            if d.get("next"):
                out.append(app_config(rec, d["next"], token_file, True, delay))
        return out

    def apply(self, tenant_id: str, tenant: str, port: int | None = None) -> None:
        """Make the tenant's Serve run what its endpoints need (``port``: its proxy's, when
        the last endpoint just went: its applications go too)."""
        with self.mu:
            recs = self._store.endpoints(tenant_id)
            if not recs and port is None:
                return
            port = int(recs[0].doc["serve_port"]) if recs else port
            apps = self.apps(tenant_id)
        assert port is not None
        self.gateway.apply(tenant_id, tenant, port, apps)

    def route(self, tenant: str, name: str) -> tuple[int, str] | None:
        """(Serve port, app) the proxy forwards ``/t/<tenant>/<name>/`` to; None: no such
        endpoint."""
        hit = self._routes.get((tenant, name))
        if hit is not None:
            return hit
        rec_t = self._ctl.tenant(tenant)
        rec = self._store.endpoint(rec_t.id, name) if rec_t is not None else None
        if rec is None:
            return None
        hit = self._routes[(tenant, name)] = (int(rec.doc["serve_port"]), rec.doc["app"])
        return hit

    def set_route(self, rec: EndpointRecord) -> None:
        self._routes[(rec.tenant, rec.name)] = (int(rec.doc["serve_port"]), rec.doc["app"])


def app_config(
    rec: EndpointRecord,
    version: dict[str, Any],
    token_file: str,
    surge: bool,
    downscale_delay_s: float = 30.0,
) -> dict[str, Any]:
    """One version's Serve application (``version``: the endpoint's doc, or its ``next``: app,
    checkpoint, model, content_hash): the model server, its replicas on the lease."""
    d, s = rec.doc, rec.doc["scaling"]
    g = int(s["gpus_per_replica"])
    bound = d.get("bound_lease")
    resource = f"fastgpu_lease_{bound}" if bound and bound == d.get("lease_id") else NO_LEASE
    autoscaling: dict[str, Any] = {
        "min_replicas": max(s["min_replicas"], 1 if surge else 0),
        "max_replicas": s["max_replicas"],
        "target_ongoing_requests": max(1, s["max_batch_size"] // 2),
        "upscale_delay_s": 1.0,
        "downscale_delay_s": downscale_delay_s,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2.0,
    }
    if surge:
        autoscaling["initial_replicas"] = max(1, int(d.get("replicas", 1)))
    return {
        "name": version["app"],
        "route_prefix": f"/{version['app']}",
        "import_path": "serve_apps.model_server:build",
        "args": {
            "checkpoint": version["checkpoint"],
            "expected_hash": version.get("content_hash"),
            "endpoint_id": rec.id,
            "token_file": token_file,
            "max_batch_size": s["max_batch_size"],
            "batch_wait_ms": s["batch_wait_ms"],
            "model_label": version["model"],
        },
        "deployments": [
            {
                "name": "ModelServer",
                "max_ongoing_requests": max(2 * s["max_batch_size"], 8),
                "autoscaling_config": autoscaling,
                "graceful_shutdown_timeout_s": 10,
                "ray_actor_options": {"num_cpus": 0, "num_gpus": g, "resources": {resource: g}},
            }
        ],
    }
