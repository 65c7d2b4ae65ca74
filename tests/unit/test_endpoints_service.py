"""Endpoints over the real services (in-process app, real SQLite, a fake Ray seam): what a
model reference deploys (a registered model, pinned to its version and hash, or a training
run), scoped to the endpoint's tenant; the Serve config carries the hash the replica verifies;
and the lease's maximum follows Serve's demand (the resize path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastgpu.api.app import create_app
from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.endpoints import ServeGateway, replica_states
from fastgpu.controller.loop import Controller
from fastgpu.controller.pool_backend import PoolBackend
from fastgpu.domain.endpoint import EndpointRecord
from fastgpu.domain.lease import LeaseState
from fastgpu.endpoints.tokens import new_endpoint_id
from fastgpu.errors import InvalidRequest, NotFound
from fastgpu.registry import verify
from fastgpu.service import Services
from fastgpu.service.endpoint_reconcile import EndpointReconciler
from fastgpu.service.endpoints import EndpointService, app_config
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock
from .test_pool_backend import FakeClusters
from .test_registry import Api, _checkpoint


class EndpointsApi(Api):
    """The registry's test API, keeping the controller (endpoints without tenant clusters:
    the model resolution and the Serve config need no cluster)."""

    def __init__(self, tmp_path: Path) -> None:
        cfg = PlatformConfig(
            gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)}, state_dir=str(tmp_path)
        )
        backend = FakeBackend(node_list=[NodeInfo("n1", "A100", 4, True)])
        self.ctl = Controller(cfg, open_store(cfg.resolved_store_url()), backend, FakeClock())
        svc = self.svc = Services.build(self.ctl)
        self.admin = new_token()
        svc.auth.bootstrap_admin(self.admin)
        self.http = TestClient(create_app(svc, cfg.api), raise_server_exceptions=False)
        self.tokens: dict[str, str] = {}


@pytest.fixture
def api(tmp_path: Path) -> EndpointsApi:
    return EndpointsApi(tmp_path)


def _service(api: EndpointsApi) -> EndpointService:
    return EndpointService(api.ctl, None)


def _ready_endpoint(api: Any, tenant_id: str, max_replicas: int) -> EndpointRecord:
    """Store alpha's endpoint "reg" as deployed and READY (v1, one GPU per replica)."""
    rec = EndpointRecord(new_endpoint_id(), tenant_id, "alpha", "reg", 0.0, 0.0)
    rec.doc = {
        "model": "alpha/clf:v1",
        "checkpoint": "/x",
        "version": 1,
        "app": "reg-v1",
        "gpu_type": "A100",
        "scaling": {
            "gpus_per_replica": 1,
            "min_replicas": 1,
            "max_replicas": max_replicas,
            "max_batch_size": 4,
            "batch_wait_ms": 5,
        },
        "lease_id": None,
        "serve_port": 1,
        "state": "READY",
        "message": "",
        "next": None,
        "idle_since": None,
    }
    api.ctl.store.create_endpoint(rec, "tok1", "0" * 64)
    return rec


def test_registered_models_resolve_pinned_to_a_version_and_scoped(
    api: EndpointsApi, tmp_path: Path
) -> None:
    alpha = api.tenant("alpha")
    api.tenant("beta")
    m1 = api.register("alpha", alpha, _checkpoint(tmp_path / "c1"), "clf").json()
    m2 = api.register("alpha", alpha, _checkpoint(tmp_path / "c2", b"v2"), "clf").json()
    eps = _service(api)
    owner = api.ctl.tenant("alpha")
    assert owner is not None
    for ref, want in [("clf:v1", m1), ("alpha/clf:v1", m1), ("clf:latest", m2)]:
        got = eps.source_of(owner, ref)
        assert got == {
            "model": want["ref"],
            "checkpoint": want["uri"],
            "content_hash": want["content_hash"],
        }
        verify(got["checkpoint"], got["content_hash"])
    beta = api.ctl.tenant("beta")
    assert beta is not None
    with pytest.raises(NotFound):  # another tenant's model: as if absent
        eps.source_of(beta, "alpha/clf:v1")
    with pytest.raises(NotFound):
        eps.source_of(beta, "clf:latest")
    with pytest.raises(NotFound):
        eps.source_of(owner, "clf:v9")
    with pytest.raises(NotFound, match="no complete checkpoint of run 'clf'"):
        eps.source_of(owner, "clf")  # a bare name is a training run
    with pytest.raises(InvalidRequest):
        eps.source_of(owner, "clf:v0")


def test_the_serve_config_carries_the_hash_the_replica_verifies() -> None:
    rec = EndpointRecord("e1", "t1", "alpha", "digits", 0.0, 0.0, doc={})
    rec.doc = {
        "lease_id": "L1",
        "bound_lease": "L1",
        "scaling": {
            "gpus_per_replica": 1,
            "min_replicas": 0,
            "max_replicas": 2,
            "max_batch_size": 8,
            "batch_wait_ms": 5,
        },
        "replicas": 1,
    }
    version: dict[str, Any] = {
        "app": "digits-v2",
        "checkpoint": "/s/models/clf/abc",
        "model": "alpha/clf:v2",
        "content_hash": "ab" * 32,
    }
    app = app_config(rec, version, "/home/t/secrets/tokens.json", surge=True)
    assert app["args"]["expected_hash"] == "ab" * 32
    assert app["args"]["checkpoint"] == "/s/models/clf/abc"
    dep = app["deployments"][0]
    assert dep["ray_actor_options"]["resources"] == {"fastgpu_lease_L1": 1}
    assert dep["autoscaling_config"]["min_replicas"] == 1  # surge: the new version starts
    run = app_config(rec, {**version, "content_hash": None}, "/x", surge=False)
    assert run["args"]["expected_hash"] is None


def _details(app: str, target: int) -> dict[str, Any]:
    replicas = [{"state": "RUNNING"}] * target
    dep = {"target_num_replicas": target, "replicas": replicas}
    return {"applications": {app: {"status": "RUNNING", "deployments": {"ModelServer": dep}}}}


def test_the_lease_maximum_follows_serve_and_shrinks_to_the_minimum_not_zero(
    api: EndpointsApi,
) -> None:
    """Serve wants 1, then 3, then 1, then 0 replicas of an endpoint with min_replicas 1:
    the lease is requested, its maximum grows to 3 GPUs a replica at a time (the scheduler
    fills it, borrowing beyond the guarantee of 1), shrinks back to 1 at once, and is kept at
    1 (not released)."""
    r = api.call(
        "admin",
        "POST",
        "/tenants",
        json={"name": "alpha", "quotas": {"A100": {"nominal": 1, "borrowing_limit": 3}}},
    )
    assert r.status_code == 201, r.text
    owner = api.ctl.tenant("alpha")
    assert owner is not None
    eps = _service(api)
    rec = _ready_endpoint(api, owner.id, max_replicas=3)
    rc = EndpointReconciler(api.ctl, eps, api.svc.leases, interval_s=60)
    assert rc.idle_s == api.ctl.config.endpoints.idle_s  # from the config

    def step(target: int) -> Any:
        rc._endpoint(rec, _details("reg-v1", target))
        api.ctl.tick()
        return api.ctl.store.get_lease(rec.doc["lease_id"])

    def resource() -> dict[str, int]:
        app = app_config(rec, rec.doc, "/t", surge=False)
        return dict(app["deployments"][0]["ray_actor_options"]["resources"])

    lease = step(1)  # no lease: one replica's GPUs are asked for
    assert lease.gpus == 1
    assert resource() == {"fastgpu_lease_none": 1}  # replicas wait: the lease reserves first
    lease = step(1)  # reserved: bound to the endpoint's workload (metered under it)
    assert lease.state == LeaseState.BOUND
    assert lease.workload == "endpoint:reg"
    assert resource() == {f"fastgpu_lease_{lease.id}": 1}
    # Serve wants 3: the maximum grows a replica's GPUs per pass, each step filled by the
    # scheduler (borrowing) before the next: a raylet per replica
    lease = step(3)
    assert (lease.gpus, lease.held_gpus) == (2, 2)
    lease = step(3)
    assert (lease.gpus, lease.held_gpus) == (3, 3)
    lease = step(3)
    assert (lease.gpus, lease.held_gpus) == (3, 3)
    lease = step(1)  # back to one: given back now
    assert (lease.gpus, lease.held_gpus) == (1, 1)
    rec.doc["idle_since"] = api.ctl.clock() - 10 * rc.idle_s
    lease = step(0)  # nothing wanted, long idle: min_replicas 1 keeps one replica's GPUs
    assert lease.state == LeaseState.BOUND
    assert (lease.gpus, lease.held_gpus) == (1, 1)


def test_endpoint_settings_are_validated() -> None:
    from pydantic import ValidationError

    from fastgpu.config import EndpointSettings

    assert EndpointSettings().idle_s == 60.0
    with pytest.raises(ValidationError, match="idle_s"):
        EndpointSettings(idle_s=-1)
    with pytest.raises(ValidationError, match="reconcile_interval_s"):
        EndpointSettings(reconcile_interval_s=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        EndpointSettings.model_validate({"idle": 5})


def test_replicas_serve_is_stopping_are_told_to_the_pool() -> None:
    """Their actors live on for a while (a graceful shutdown; a retired version Serve has not
    begun to delete; a replica Serve dropped once it asked Ray to kill it): a shrink must not
    count their raylets as busy (the pool keeps the raylets of live actors)."""
    replicas = [
        {"state": "RUNNING", "actor_id": "kept"},
        {"state": "STOPPING", "actor_id": "going"},
        {"state": "STARTING", "actor_id": "new"},
        {"state": "PENDING_MIGRATION", "actor_id": "moving"},  # on a raylet being given back
    ]
    details: dict[str, Any] = {
        "applications": {
            "reg-v2": {"deployments": {"ModelServer": {"replicas": replicas}}},
            "reg-v1": {  # the retired version, being deleted
                "status": "DELETING",
                "deployments": {
                    "ModelServer": {"replicas": [{"state": "STOPPING", "actor_id": "old"}]}
                },
            },
        }
    }
    assert replica_states(details) == ({"kept", "new"}, {"going", "moving", "old"})
    assert replica_states({}) == (frozenset(), frozenset())
    # a version the config no longer names goes next, though Serve may not have begun yet
    details["applications"]["reg-v1"] = {
        "status": "RUNNING",
        "deployments": {"ModelServer": {"replicas": [{"state": "RUNNING", "actor_id": "old"}]}},
    }
    assert replica_states(details)[1] == {"going", "moving"}
    assert replica_states(details, applied={"reg-v2"})[1] == {"going", "moving", "old"}

    # the gateway: a replica that ran and left Serve's view is still on its way out
    config = PlatformConfig(gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)})
    pool = PoolBackend(config, [], clusters=FakeClusters())  # type: ignore[arg-type]
    gateway = ServeGateway(pool, Path("/nonexistent"))
    gateway._note_replicas("t1", details)
    assert gateway.stopping_actors("t1") == {"going", "moving"}
    del details["applications"]["reg-v1"]
    replicas[:] = [{"state": "RUNNING", "actor_id": "new"}]
    gateway._note_replicas("t1", details)
    assert gateway.stopping_actors("t1") == {"kept", "old"}
    assert pool.elastic.stopping == [gateway.stopping_actors]
    pool.close()


def test_a_pass_never_writes_over_an_update_made_since_it_began(api: EndpointsApi) -> None:
    """The pass reads the endpoints, then Serve's view (slow: the tenant's dashboard); an
    update saved meanwhile must survive the pass (it read the record again under the lock)."""
    from types import SimpleNamespace

    r = api.call(
        "admin", "POST", "/tenants", json={"name": "alpha", "quotas": {"A100": {"nominal": 1}}}
    )
    assert r.status_code == 201, r.text
    owner = api.ctl.tenant("alpha")
    assert owner is not None
    gateway = SimpleNamespace(
        keep_alive=lambda tenant_id: None,
        details=lambda tenant_id, tenant: _details("reg-v1", 1),
        token_path=lambda tenant_id: "/t",
        apply=lambda *args: None,
    )
    eps = EndpointService(api.ctl, gateway)  # type: ignore[arg-type]
    _ready_endpoint(api, owner.id, max_replicas=1)
    rc = EndpointReconciler(api.ctl, eps, api.svc.leases, interval_s=60)
    read_by_the_pass = api.ctl.store.endpoint(owner.id, "reg")
    assert read_by_the_pass is not None
    updated = api.ctl.store.endpoint(owner.id, "reg")
    assert updated is not None
    updated.doc["next"] = {"model": "alpha/clf:v2", "version": 2, "app": "reg-v2"}
    eps.save(updated)
    rc._tenant(owner.id, "alpha", [read_by_the_pass])
    after = api.ctl.store.endpoint(owner.id, "reg")
    assert after is not None
    assert (after.doc["next"] or {}).get("app") == "reg-v2"
