"""The model registry: references, content-addressed files, versions, scope and deletion, over
the real services and HTTP routes (in-process app, real SQLite, a fake Ray seam)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastgpu.api.app import create_app
from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.errors import InvalidRequest
from fastgpu.registry import content_hash, parse_ref, publish, verify
from fastgpu.registry.files import model_path
from fastgpu.service import Services
from fastgpu.service.registry import remove_tree
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock


# ==== references ================================================================================
@pytest.mark.parametrize(
    ("text", "tenant", "name", "version"),
    [
        ("clf", None, "clf", None),
        ("clf:latest", None, "clf", None),
        ("clf:v3", None, "clf", 3),
        ("vision/clf:v12", "vision", "clf", 12),
    ],
)
def test_references_parse(text: str, tenant: str | None, name: str, version: int | None) -> None:
    r = parse_ref(text)
    assert (r.tenant, r.name, r.version) == (tenant, name, version)


@pytest.mark.parametrize("text", ["", "Clf", "clf:3", "a/b/c", "clf:v0", "clf:v-1", "/clf", 7])
def test_bad_references_say_what_is_expected(text: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"expected|start at v1"):
        parse_ref(text)


# ==== files =====================================================================================
def _checkpoint(folder: Path, weights: bytes = b"w" * 100) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "model.pt").write_bytes(weights)
    (folder / "sub" / "meta.json").write_text('{"epoch": 3}')
    return folder


def test_hash_is_of_content_not_place_and_publish_is_content_addressed(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a")
    b = _checkpoint(tmp_path / "b")
    assert content_hash(a) == content_hash(b)
    digest, size = content_hash(a)
    assert size == 100 + len('{"epoch": 3}')
    rel, got, _ = publish(a, tmp_path / "storage", "clf")
    assert (rel, got) == (model_path("clf", digest), digest)
    assert rel == f"models/clf/{digest[:16]}"
    assert publish(b, tmp_path / "storage", "clf")[0] == rel  # same content: one folder
    verify(tmp_path / "storage" / rel, digest)
    (tmp_path / "storage" / rel / "model.pt").write_bytes(b"tampered")
    with pytest.raises(InvalidRequest, match="changed since registration"):
        verify(tmp_path / "storage" / rel, digest)
    # A damaged copy is replaced on the next publish.
    publish(a, tmp_path / "storage", "clf")
    verify(tmp_path / "storage" / rel, digest)
    assert not [
        p for p in (tmp_path / "storage" / "models" / "clf").iterdir() if p.name != rel[-16:]
    ]


def test_links_and_empty_folders_are_refused(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    os.symlink("/etc/passwd", ck / "evil")
    with pytest.raises(InvalidRequest, match="is a link"):
        content_hash(ck)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequest, match="holds no files"):
        content_hash(tmp_path / "empty")
    with pytest.raises(InvalidRequest, match="not a folder"):
        content_hash(tmp_path / "missing")


def test_remove_tree_never_follows_a_link(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    victim = tmp_path / "victim" / "clf" / "abc"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    storage.mkdir()
    os.symlink(tmp_path / "victim", storage / "models")  # the tenant planted a link
    remove_tree(storage, "models/clf/abc")
    assert (victim / "keep.txt").read_text() == "precious"
    with pytest.raises(InvalidRequest):
        remove_tree(storage, "models/../../victim")
    real = storage.parent / "s2" / "models" / "clf" / "abc"
    real.mkdir(parents=True)
    (real / "f").write_text("x")
    remove_tree(storage.parent / "s2", "models/clf/abc")
    assert not real.exists()


# ==== the service over HTTP =====================================================================
class Api:
    def __init__(self, tmp_path: Path) -> None:
        cfg = PlatformConfig(
            gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)}, state_dir=str(tmp_path)
        )
        backend = FakeBackend(node_list=[NodeInfo("n1", "A100", 4, True)])
        ctl = Controller(cfg, open_store(cfg.resolved_store_url()), backend, clock=FakeClock())
        svc = Services.build(ctl)
        self.admin = new_token()
        svc.auth.bootstrap_admin(self.admin)
        self.http = TestClient(create_app(svc, cfg.api), raise_server_exceptions=False)
        self.tokens: dict[str, str] = {}

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        token = self.admin if who == "admin" else self.tokens[who]
        headers = {"Authorization": f"Bearer {token}"}
        return self.http.request(method, f"/api/v1{path}", headers=headers, **kw)

    def tenant(self, name: str) -> Path:
        r = self.call("admin", "POST", "/tenants", json={"name": name})
        assert r.status_code == 201, r.text
        self.tokens[name] = r.json()["token"]
        me = self.call(name, "GET", "/whoami").json()
        return Path(me["storage_root"]) / me["storage_key"]

    def register(self, who: str, storage: Path, folder: Path, name: str, **extra: Any) -> Any:
        rel, digest, size = publish(folder, storage, name)
        body = {"name": name, "path": rel, "content_hash": digest, "size_bytes": size, **extra}
        return self.call(who, "POST", "/models", json=body)


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def test_versions_count_up_are_scoped_and_never_reused(api: Api, tmp_path: Path) -> None:
    alpha = api.tenant("alpha")
    api.tenant("beta")
    ck1 = _checkpoint(tmp_path / "ck1")
    ck2 = _checkpoint(tmp_path / "ck2", b"other weights")
    lineage = {"sweep": "s1", "trial": "t_0001"}
    r1 = api.register("alpha", alpha, ck1, "clf", metrics={"val_loss": 0.5}, lineage=lineage)
    assert r1.status_code == 201, r1.text
    m1 = r1.json()
    assert m1["ref"] == "alpha/clf:v1"
    assert m1["metrics"] == {"val_loss": 0.5}
    assert m1["lineage"] == lineage
    assert Path(m1["uri"]) == alpha / m1["path"]
    verify(m1["uri"], m1["content_hash"])
    m2 = api.register("alpha", alpha, ck2, "clf", request_id="reg-2").json()
    assert m2["version"] == 2
    again = api.register("alpha", alpha, ck2, "clf", request_id="reg-2").json()
    assert again["version"] == 2  # a retry answers the first call's version
    assert api.call("alpha", "GET", "/models/clf:latest").json()["version"] == 2
    assert api.call("alpha", "GET", "/models/clf:v1").json()["content_hash"] == m1["content_hash"]
    listed = api.call("alpha", "GET", "/models", params={"limit": 1}).json()
    assert [m["ref"] for m in listed["items"]] == ["alpha/clf:v1"]
    page2 = api.call("alpha", "GET", "/models", params={"cursor": listed["next_cursor"]}).json()
    assert [m["ref"] for m in page2["items"]] == ["alpha/clf:v2"]

    # Another tenant: nothing to see, resolve or delete; the admin sees all.
    assert api.call("beta", "GET", "/models").json()["items"] == []
    for path in ("/models/clf:v1", "/models/clf:latest"):
        assert api.call("beta", "GET", path).status_code == 404
    assert api.call("beta", "GET", "/models/clf:v1", params={"tenant": "alpha"}).status_code == 404
    assert api.call("beta", "DELETE", "/models/clf:v1").status_code == 404
    assert len(api.call("admin", "GET", "/models").json()["items"]) == 2
    got = api.call("admin", "GET", "/models/clf:v2", params={"tenant": "alpha"}).json()
    assert got["ref"] == "alpha/clf:v2"
    assert api.call("admin", "POST", "/models", json={}).status_code == 422

    # Delete v2: its folder goes; v3 is a new number, never v2 again.
    deleted = api.call("alpha", "DELETE", "/models/clf:v2")
    assert deleted.status_code == 200
    assert not Path(m2["uri"]).exists()
    assert Path(m1["uri"]).exists()
    assert api.call("alpha", "GET", "/models/clf:v2").status_code == 404
    assert api.call("alpha", "GET", "/models/clf:latest").json()["version"] == 1
    assert api.register("alpha", alpha, ck2, "clf").json()["version"] == 3
    # The same files in two versions: deleting one keeps the folder for the other.
    m4 = api.register("alpha", alpha, ck2, "clf").json()
    api.call("alpha", "DELETE", "/models/clf:v3")
    verify(m4["uri"], m4["content_hash"])


def test_registration_input_is_checked(api: Api, tmp_path: Path) -> None:
    alpha = api.tenant("alpha")
    rel, digest, size = publish(_checkpoint(tmp_path / "ck"), alpha, "clf")
    good = {"name": "clf", "path": rel, "content_hash": digest, "size_bytes": size}
    cases = [
        ({**good, "path": "models/clf/../../t-other/x"}, "path"),
        ({**good, "path": "/etc"}, "path"),
        ({**good, "name": "Bad Name"}, "name"),
        ({**good, "content_hash": "abc"}, "content_hash"),
        ({**good, "size_bytes": -1}, "size_bytes"),
        ({**good, "size_bytes": True}, "size_bytes"),
        ({**good, "metrics": {"x": "y" * 20000}}, "metrics"),
        ({**good, "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        r = api.call("alpha", "POST", "/models", json=body)
        assert r.status_code == 422, (field, r.text)
        assert field in r.json()["error"]["message"], (field, r.text)
    r = api.call("admin", "POST", "/models", json=good)
    assert r.status_code == 403
    assert api.call("alpha", "GET", "/models/Bad:v1").status_code == 422
    assert api.call("alpha", "DELETE", "/models/clf").status_code == 422  # name the version
    assert api.call("alpha", "GET", "/models", params={"cursor": "nonsense"}).status_code == 422
    assert api.call("alpha", "GET", "/models").json()["items"] == []  # nothing was stored
