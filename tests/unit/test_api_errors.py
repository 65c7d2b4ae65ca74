"""How the API answers failures: infrastructure (Ray, database) is 503 with a message, a bug is
500 without internals, bad input is 422 naming the field. The app runs in-process over the real
services with a fake Ray seam that fails on demand."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fastgpu.api.app import create_app, infrastructure_error
from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.service import Services
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock


class FailingBackend(FakeBackend):
    fail_with: BaseException | None = None

    def nodes(self) -> list[NodeInfo]:
        if self.fail_with is not None:
            raise self.fail_with
        return super().nodes()


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, FailingBackend, str]:
    cfg = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)}, state_dir=str(tmp_path)
    )
    backend = FailingBackend(node_list=[NodeInfo("n1", "A100", 4, True)])
    ctl = Controller(cfg, open_store(cfg.resolved_store_url()), backend, clock=FakeClock())
    svc = Services.build(ctl)
    admin = new_token()
    svc.auth.bootstrap_admin(admin)
    client = TestClient(create_app(svc, cfg.api), raise_server_exceptions=False)
    return client, backend, admin


def test_a_ray_failure_is_503_with_a_message(api: tuple[TestClient, FailingBackend, str]) -> None:
    from ray.exceptions import RaySystemError

    client, backend, admin = api
    backend.fail_with = RaySystemError("GCS unreachable")
    r = client.get("/api/v1/status", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"
    assert "GCS unreachable" in r.json()["error"]["message"]


def test_a_bug_is_500_without_internals(api: tuple[TestClient, FailingBackend, str]) -> None:
    client, backend, admin = api
    backend.fail_with = KeyError("secret-internal-detail")
    r = client.get("/api/v1/status", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 500
    assert "secret-internal-detail" not in r.text


def test_strict_types_and_missing_token(api: tuple[TestClient, FailingBackend, str]) -> None:
    client, _, admin = api
    h = {"Authorization": f"Bearer {admin}"}
    assert client.get("/api/v1/whoami").status_code == 401
    for bad, field in (({"gpus": True}, "gpus"), ({"gpus": "2"}, "gpus"), ({"gpus": 1.5}, "gpus")):
        r = client.post("/api/v1/leases", json={**bad, "tenant": "x"}, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"].startswith(field)


def test_infrastructure_error_classification() -> None:
    import sqlalchemy.exc

    assert infrastructure_error(ConnectionRefusedError("down")) is not None
    assert infrastructure_error(sqlalchemy.exc.OperationalError("x", {}, Exception())) is not None
    assert infrastructure_error(ValueError("bug")) is None
