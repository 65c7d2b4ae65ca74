"""The services' own rules (tokens, tenants, leases, retention), on a fake Ray seam and clock
and a real SQLite file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fastgpu.auth import Principal, new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig, QuotaSpec
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.loop import Controller
from fastgpu.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, PermissionDenied
from fastgpu.service import Services
from fastgpu.service.models import LeaseCreate, LeaseOut, TenantCreate, encode_cursor
from fastgpu.store import open_store

from .fakes import FakeBackend, FakeClock


@dataclass
class World:
    ctl: Controller
    svc: Services
    backend: FakeBackend
    clock: FakeClock
    admin_token: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def admin(self) -> Principal:
        return self.auth(self.admin_token)

    def auth(self, token: str) -> Principal:
        return self.svc.auth.authenticate(token)

    def tenant(self, name: str, nominal: int = 4, **extra: Any) -> Principal:
        quotas = {g: QuotaSpec(nominal=nominal) for g in self.ctl.config.gpu_types}
        created = self.svc.tenants.create(
            self.admin, TenantCreate(name=name, quotas=quotas, **extra)
        )
        assert created.token
        self.tokens[name] = created.token
        return self.auth(created.token)

    def request(self, p: Principal, **body: Any) -> LeaseOut:
        return self.svc.leases.request(p, LeaseCreate.model_validate(body))


def _world(tmp_path: Path, **config: Any) -> World:
    config.setdefault("gpu_types", {"A100": GpuTypeSpec(price_per_hour=3.6)})
    cfg = PlatformConfig(state_dir=str(tmp_path), **config)
    nodes = [NodeInfo(f"{g}-{i}", g, 4, True) for g in cfg.gpu_types for i in range(2)]
    backend = FakeBackend(node_list=nodes)
    clock = FakeClock()
    ctl = Controller(cfg, open_store(cfg.resolved_store_url()), backend, clock=clock)
    svc = Services.build(ctl)
    admin = new_token()
    svc.auth.bootstrap_admin(admin)
    svc.auth.bootstrap_admin(admin)  # a second start registers nothing new
    return World(ctl, svc, backend, clock, admin)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return _world(tmp_path)


# ==== tokens ====================================================================================
def test_rotation_keeps_the_old_token_for_the_grace_period(world: World) -> None:
    w = world
    w.tenant("acme")
    old = w.tokens["acme"]
    issued = w.svc.auth.rotate(w.admin, "acme", grace="10m", label="new")
    assert issued.token != old
    assert issued.principal == "acme"
    assert issued.label == "new"
    assert w.auth(issued.token).name == "acme"
    assert w.auth(old).name == "acme"
    w.clock.advance(599)
    assert w.auth(old).name == "acme"
    w.clock.advance(1)
    with pytest.raises(AuthenticationError):
        w.auth(old)
    assert w.auth(issued.token).name == "acme"
    assert [t.id for t in w.svc.auth.list_tokens(w.admin, "acme").items] == [issued.id]


def test_rotation_with_grace_0_revokes_at_once(world: World) -> None:
    w = world
    w.tenant("acme")
    old = w.tokens["acme"]
    w.auth(old)  # cached: the rotation must still stop it at once
    new = w.svc.auth.rotate(w.admin, "acme", grace=0).token
    with pytest.raises(AuthenticationError):
        w.auth(old)
    assert w.auth(new).tenant == "acme"


def test_rotation_default_grace_is_the_configured_one(tmp_path: Path) -> None:
    w = _world(tmp_path, api={"token_grace_s": 120})
    w.tenant("acme")
    w.svc.auth.rotate(w.admin, "acme")
    w.clock.advance(119)
    w.auth(w.tokens["acme"])
    w.clock.advance(1)
    with pytest.raises(AuthenticationError):
        w.auth(w.tokens["acme"])


def test_only_the_admin_rotates_and_issues(world: World) -> None:
    w = world
    p = w.tenant("acme")
    w.tenant("beta")
    with pytest.raises(PermissionDenied):
        w.svc.auth.rotate(p, "acme")
    with pytest.raises(PermissionDenied):
        w.svc.auth.issue(p, "acme")
    with pytest.raises(PermissionDenied):
        w.svc.auth.rotate(p, "admin")
    with pytest.raises(NotFound):
        w.svc.auth.list_tokens(p, "beta")
    with pytest.raises(NotFound):
        w.svc.auth.rotate(w.admin, "nobody")
    with pytest.raises(InvalidRequest):
        w.svc.auth.rotate(w.admin, "acme", grace="soon")
    assert [t.principal for t in w.svc.auth.list_tokens(p, "acme").items] == ["acme"]


def test_revoke_by_id(world: World) -> None:
    w = world
    w.tenant("acme")
    ci = w.svc.auth.issue(w.admin, "acme", label="ci")
    assert {t.label for t in w.svc.auth.list_tokens(w.admin, "acme").items} == {"initial", "ci"}
    p = w.auth(ci.token)
    assert p.token_id == ci.id
    out = w.svc.auth.revoke(w.admin, "acme", ci.id)
    assert out.id == ci.id
    with pytest.raises(AuthenticationError):
        w.auth(ci.token)
    assert w.auth(w.tokens["acme"]).name == "acme"
    with pytest.raises(NotFound):
        w.svc.auth.revoke(w.admin, "acme", ci.id)
    # A tenant may revoke its own other tokens, but not its only one.
    p = w.auth(w.tokens["acme"])
    extra = w.svc.auth.issue(w.admin, "acme")
    w.svc.auth.revoke(p, "acme", extra.id)
    with pytest.raises(AuthenticationError):
        w.auth(extra.token)
    with pytest.raises(Conflict, match="only token"):
        w.svc.auth.revoke(p, "acme", p.token_id or "")


def test_the_last_admin_token_cannot_be_revoked(world: World) -> None:
    w = world
    (only,) = w.svc.auth.list_tokens(w.admin, "admin").items
    assert only.is_admin
    with pytest.raises(Conflict, match="last admin token"):
        w.svc.auth.revoke(w.admin, "admin", only.id)
    spare = w.svc.auth.issue(w.admin, "admin", label="spare")
    w.svc.auth.revoke(w.admin, "admin", only.id)
    with pytest.raises(AuthenticationError):
        w.auth(w.admin_token)
    p = w.auth(spare.token)
    assert p.is_admin
    with pytest.raises(Conflict, match="last admin token"):
        w.svc.auth.revoke(p, "admin", spare.id)


def test_admin_rotation(world: World) -> None:
    w = world
    tenant = w.tenant("acme")
    with pytest.raises(PermissionDenied):
        w.svc.auth.list_tokens(tenant, "admin")
    new = w.svc.auth.rotate(w.admin, "admin", grace="1m")
    assert new.is_admin
    assert w.auth(new.token).is_admin
    assert w.auth(w.admin_token).is_admin  # within the grace period
    w.clock.advance(60)
    with pytest.raises(AuthenticationError):
        w.auth(w.admin_token)
    assert w.svc.auth.whoami(w.auth(new.token)).is_admin
    now = w.svc.auth.rotate(w.auth(new.token), "admin", grace=0)
    with pytest.raises(AuthenticationError):
        w.auth(new.token)
    assert w.auth(now.token).is_admin


def test_token_expiry_is_optional(world: World) -> None:
    w = world
    forever = w.tenant("forever")
    assert forever.token_expires_at is None
    timed = w.tenant("timed", token_expires_in="1h")
    assert timed.token_expires_at == pytest.approx(w.clock.now + 3600)
    assert w.svc.auth.whoami(timed).token_expires_at is not None
    day = w.svc.auth.issue(w.admin, "forever", expires_in="1d")
    w.clock.advance(3599)
    w.auth(w.tokens["timed"])
    w.clock.advance(1)
    with pytest.raises(AuthenticationError):
        w.auth(w.tokens["timed"])
    w.auth(day.token)
    w.clock.advance(86400)
    with pytest.raises(AuthenticationError):
        w.auth(day.token)
    assert w.auth(w.tokens["forever"]).name == "forever"
    with pytest.raises(InvalidRequest):
        w.svc.auth.issue(w.admin, "forever", expires_in=0)


# ==== tenants ===================================================================================
def test_a_recreated_tenant_name_inherits_no_leases_or_usage(world: World) -> None:
    w = world
    first = w.tenant("acme")
    lease = w.request(first, gpus=2, request_id="r1")
    w.ctl.tick()
    w.clock.advance(100)
    w.svc.leases.release(first, lease.id)
    assert w.svc.reads.usage(first).items[0].gpu_seconds == pytest.approx(200)
    w.svc.tenants.delete(w.admin, "acme")
    w.clock.advance(10)
    second = w.tenant("acme")
    assert second.tenant_id != first.tenant_id
    assert w.svc.leases.list(second).items == []
    assert w.svc.leases.list(w.admin, tenant="acme").items == []
    assert w.svc.reads.usage(second).items == []
    assert w.svc.reads.usage(w.admin, tenant="acme").items == []
    with pytest.raises(NotFound):
        w.svc.leases.get(second, lease.id)
    # The old request id means nothing to the new tenant: a new lease.
    again = w.request(second, gpus=1, request_id="r1")
    assert again.id != lease.id
    # The admin still sees the old usage, for billing.
    assert sum(r.gpu_seconds for r in w.svc.reads.usage(w.admin).items) == pytest.approx(200)


def test_a_retried_create_answers_without_a_token(world: World) -> None:
    w = world
    first = w.svc.tenants.create(w.admin, TenantCreate(name="acme", request_id="c-1"))
    assert first.token
    retry = w.svc.tenants.create(w.admin, TenantCreate(name="acme", request_id="c-1"))
    assert retry.token is None
    assert retry.id == first.id
    assert retry.note is not None
    assert "rotate-token" in retry.note
    with pytest.raises(Conflict, match="rotate-token"):
        w.svc.tenants.create(w.admin, TenantCreate(name="acme"))
    with pytest.raises(Conflict, match="rotate-token"):
        w.svc.tenants.create(w.admin, TenantCreate(name="acme", request_id="c-2"))
    assert w.auth(first.token).name == "acme"


def test_tenant_list_pages(world: World) -> None:
    w = world
    for name in ("e", "b", "d", "a", "c"):
        w.svc.tenants.create(w.admin, TenantCreate(name=name))
    names: list[str] = []
    cursor = None
    while True:
        page = w.svc.tenants.list(w.admin, limit=2, cursor=cursor)
        names += [t.name for t in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert names == ["a", "b", "c", "d", "e"]
    with pytest.raises(InvalidRequest):
        w.svc.tenants.list(w.admin, limit=0)
    with pytest.raises(InvalidRequest, match="cursor"):
        w.svc.tenants.list(w.admin, cursor=encode_cursor([1, 2]))


# ==== leases ====================================================================================
def test_lease_list_pages_walk_every_lease_once(world: World) -> None:
    w = world
    p = w.tenant("acme", nominal=0)
    made = []
    for i in range(7):
        made.append(w.request(p, gpus=1).id)
        if i % 3 == 2:
            w.clock.advance(1)  # some share a creation time: the id breaks the tie
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = w.svc.leases.list(p, limit=3, cursor=cursor)
        pages += 1
        seen += [x.id for x in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == set(made)
    assert seen == [x.id for x in w.svc.leases.list(p, limit=100).items]
    assert [x.id for x in w.svc.leases.list(w.admin, tenant="acme", limit=7).items] == seen
    assert w.svc.leases.list(p, limit=7).next_cursor is None
    for bad in ("!!!", "bm90IGpzb24", encode_cursor("x"), encode_cursor([1])):
        with pytest.raises(InvalidRequest, match="cursor"):
            w.svc.leases.list(p, cursor=bad)
    for limit in (0, 501, True):
        with pytest.raises(InvalidRequest, match="limit"):
            w.svc.leases.list(p, limit=limit)


def test_live_filter(world: World) -> None:
    w = world
    p = w.tenant("acme")
    a = w.request(p, gpus=1)
    b = w.request(p, gpus=1)
    w.svc.leases.release(p, a.id)
    assert [x.id for x in w.svc.leases.list(p, live=True).items] == [b.id]
    assert len(w.svc.leases.list(p).items) == 2


def test_retention_purge_removes_ended_leases_but_keeps_usage(tmp_path: Path) -> None:
    w = _world(tmp_path, controller={"lease_retention_s": 3600, "purge_interval_s": 60})
    p = w.tenant("acme")
    ended = w.request(p, gpus=2)
    live = w.request(p, gpus=1, duration="30d")
    w.ctl.tick()
    w.clock.advance(100)
    w.svc.leases.release(p, ended.id)
    w.clock.advance(3599)
    w.ctl.tick()
    assert w.svc.leases.get(p, ended.id).state == "RELEASED"  # not past retention yet
    w.clock.advance(30)
    w.ctl.tick()  # past retention, but the last purge was under purge_interval_s ago
    assert w.svc.leases.get(p, ended.id).state == "RELEASED"
    w.clock.advance(30)
    w.ctl.tick()
    with pytest.raises(NotFound):
        w.svc.leases.get(p, ended.id)
    assert w.svc.leases.get(p, live.id).state == "RESERVED"  # live leases are never purged
    usage = w.svc.reads.usage(p).items[0].gpu_seconds
    assert usage == pytest.approx(2 * 100 + 1 * (100 + 3599 + 60))
    assert w.ctl.purge(w.clock.now)["leases"] == 0


def test_minimum_duration(world: World) -> None:
    w = world
    p = w.tenant("acme")
    with pytest.raises(InvalidRequest, match="duration"):
        w.request(p, gpus=1, duration="0.000001s")
    with pytest.raises(InvalidRequest, match="duration"):
        w.request(p, gpus=1, duration=0.5)
    assert w.request(p, gpus=1, duration="1s").duration_s == 1


def test_lease_create_types_are_strict() -> None:
    for body in ({"gpus": True}, {"gpus": "2"}, {"gpus": 1.0}, {"gpus": 1, "sparkle": 1}):
        with pytest.raises(ValidationError):
            LeaseCreate.model_validate(body)
    assert LeaseCreate.model_validate({"gpus": 2}).gpus == 2


def test_perf_picks_the_cheapest_type_meeting_it(tmp_path: Path) -> None:
    w = _world(
        tmp_path,
        gpu_types={
            "A100": GpuTypeSpec(price_per_hour=3.6, perf=312),
            "H100": GpuTypeSpec(price_per_hour=7.2, perf=989),
        },
    )
    p = w.tenant("acme")
    assert w.request(p, gpus=1, perf=300).gpu_type == "A100"
    assert w.request(p, gpus=1, perf=500).gpu_type == "H100"
    with pytest.raises(InvalidRequest, match="perf"):
        w.request(p, gpus=1, perf=2000)
    with pytest.raises(InvalidRequest, match="gpu_type"):
        w.request(p, gpus=1)  # two types, two quotas: ambiguous


# ==== retried token calls =======================================================================
def test_a_retried_rotation_rotates_once_and_never_repeats_the_token(tmp_path: Path) -> None:
    w = _world(tmp_path)
    w.tenant("acme")
    first = w.svc.auth.rotate(w.admin, "acme", grace=0, request_id="rot-1")
    assert first.token
    again = w.svc.auth.rotate(w.admin, "acme", grace=0, request_id="rot-1")
    # The same token record, without the token (it is stored hashed; shown once).
    assert again.id == first.id
    assert again.token is None
    assert again.note
    assert "request id" in again.note
    # The retry did not rotate again: the first new token still works.
    assert w.auth(first.token).token_id == first.id
    assert [t.id for t in w.svc.auth.list_tokens(w.admin, "acme").items] == [first.id]
    # The same id for another call is refused, not silently replayed.
    with pytest.raises(Conflict):
        w.svc.auth.issue(w.admin, "acme", request_id="rot-1")


def test_a_retried_issue_issues_once(tmp_path: Path) -> None:
    w = _world(tmp_path)
    w.tenant("acme")
    a = w.svc.auth.issue(w.admin, "acme", label="ci", request_id="iss-1")
    b = w.svc.auth.issue(w.admin, "acme", label="ci", request_id="iss-1")
    assert a.token
    assert b.token is None
    assert a.id == b.id
    assert len(w.svc.auth.list_tokens(w.admin, "acme").items) == 2  # the initial one and this one


def test_every_list_pages_the_same_way(tmp_path: Path) -> None:
    """Usage and tokens page like leases and tenants: ``limit`` + ``next_cursor``."""
    w = _world(tmp_path)
    for name in ("a1", "a2", "a3"):
        p = w.tenant(name)
        lease = w.request(p, gpus=1, duration="10m")
        w.ctl.tick()
        w.svc.leases.release(p, lease.id)
    seen, cursor = [], None
    while True:
        page = w.svc.reads.usage(w.admin, limit=1, cursor=cursor)
        seen += [(u.tenant, u.gpu_type) for u in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [("a1", "A100"), ("a2", "A100"), ("a3", "A100")]
    for _ in range(2):
        w.svc.auth.issue(w.admin, "a1")
    first = w.svc.auth.list_tokens(w.admin, "a1", limit=2)
    assert len(first.items) == 2
    assert first.next_cursor
    rest = w.svc.auth.list_tokens(w.admin, "a1", limit=2, cursor=first.next_cursor)
    assert len(rest.items) == 1
    assert rest.next_cursor is None
    assert {t.id for t in first.items}.isdisjoint(t.id for t in rest.items)
    with pytest.raises(InvalidRequest):
        w.svc.reads.usage(w.admin, cursor="not-a-cursor")


# ==== working-directory uploads =================================================================
def _zip_of(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_an_upload_is_unpacked_once_by_its_hash(tmp_path: Path) -> None:
    from fastgpu.domain.bundle import content_hash
    from fastgpu.service.models import JobCreate

    w = _world(tmp_path)
    p = w.tenant("acme")
    data = _zip_of({"train.py": b"print('hi')\n", "lib/util.py": b"X = 1\n"})
    first = w.svc.jobs.upload(p, data)
    assert first.sha256 == content_hash(data)
    assert first.files == 2
    folder = tmp_path / "uploads" / p.tenant_id / first.sha256  # type: ignore[operator]
    assert (folder / "lib" / "util.py").read_bytes() == b"X = 1\n"
    # The same content again: the same folder, nothing left half-written beside it.
    assert w.svc.jobs.upload(p, data).sha256 == first.sha256
    assert sorted(x.name for x in folder.parent.iterdir()) == [first.sha256]
    # A hostile zip is refused and leaves nothing behind.
    with pytest.raises(InvalidRequest):
        w.svc.jobs.upload(p, _zip_of({"../escape.py": b"x"}))
    assert sorted(x.name for x in folder.parent.iterdir()) == [first.sha256]
    # A job may only name an upload of its own tenant (checked before Ray is asked).
    other = w.tenant("beta")
    with pytest.raises(NotFound):
        w.svc.jobs.submit(other, JobCreate(entrypoint="python train.py", upload=first.sha256))
    with pytest.raises(PermissionDenied):
        w.svc.jobs.upload(w.admin, data)


def test_old_uploads_are_purged_and_a_new_upload_renews_one(tmp_path: Path) -> None:
    import os
    import time

    w = _world(tmp_path)
    p = w.tenant("acme")
    old = w.svc.jobs.upload(p, _zip_of({"a.py": b"1\n"}))
    kept = w.svc.jobs.upload(p, _zip_of({"b.py": b"2\n"}))
    folder = tmp_path / "uploads" / p.tenant_id  # type: ignore[operator]
    day_ago = time.time() - 25 * 3600
    for sha in (old.sha256, kept.sha256):
        os.utime(folder / sha, (day_ago, day_ago))
    w.svc.jobs.upload(p, _zip_of({"b.py": b"2\n"}))  # uploaded again: kept from now
    assert w.ctl.purge(w.clock())["uploads"] == 1
    assert sorted(x.name for x in folder.iterdir()) == [kept.sha256]
