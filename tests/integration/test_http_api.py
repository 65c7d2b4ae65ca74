"""HTTP control API of a real ``fastgpu server`` process (real HTTP on 127.0.0.1), the SDK
over it, and the CLI.

Includes the isolation matrix: every operation with another tenant's token, with no token
and with a wrong token; and the hardening: bodies limited while they stream, strict JSON
types, pagination, the per-token rate limit and long-polls that hold no thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fastgpu as fgpu
from fastgpu.errors import InvalidRequest, LeaseRejected, NotFound, PermissionDenied
from fastgpu.sdk import Client
from tests.integration.platform_fixtures import Platform, lease_devices, pool_platform

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class Api:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.url = platform.url
        self.admin = platform.client()

    def http(self, token: str | None) -> httpx.Client:
        headers = {}
        if token == "Basic":  # a malformed credential
            headers = {"Authorization": "Basic dXNlcjpwYXNz"}
        elif token is not None:
            headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for platform in pool_platform(tmp_path_factory):
        yield Api(platform)


def test_listens_on_loopback_only(api: Api) -> None:
    assert api.url.startswith("http://127.0.0.1:")


def test_sdk_lease_round_trip_and_seed_allocator(api: Api) -> None:
    created = api.admin.create_tenant("seed", {"A100": 4})
    assert created["name"] == "seed"
    token = created["token"]
    with fgpu.Allocator(token, address=api.url) as allocator:
        lease = allocator.request_resource(2, gpu_type="A100", time="30m")
        assert lease.state == "RESERVED"
        # Two distinct devices, as raylets of the tenant's own cluster. (Tasks placed on the
        # lease's bundles from inside that cluster: test_pool_server.py.)
        assert len(set(lease_devices(api.platform)[lease.id])) == 2
        kept = allocator.request_resource(1, perf="A100", time="30m")
    # Leaving the block released both.
    client = Client(token=token, address=api.url)
    assert client.get_lease(lease.id).state == "RELEASED"
    assert client.get_lease(kept.id).state == "RELEASED"


def test_sdk_raises_clear_errors(api: Api) -> None:
    token = api.admin.create_tenant("errs", {"A100": 2})["token"]
    client = Client(token=token, address=api.url)
    with pytest.raises(LeaseRejected, match="infeasible"):
        client.request_lease(64, "A100", "1m")
    with pytest.raises(InvalidRequest, match="duration"):
        client.request_lease(1, "A100", "ten minutes")
    with pytest.raises(InvalidRequest, match="gpus"):
        client.request_lease(0, "A100", "1m")
    with pytest.raises(InvalidRequest, match="V100"):
        client.request_lease(1, "V100", "1m")
    with pytest.raises(PermissionDenied):
        client.create_tenant("sneaky", {"A100": 8})
    assert [lease.state for lease in client.list_leases()] == ["REJECTED"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": -3}, "gpus"),
        ({"gpus": "many"}, "gpus"),
        ({"gpus": 1, "gpu_type": "V100"}, "gpu_type"),
        ({"gpus": 1, "duration": "forever"}, "duration"),
        ({"gpus": 1, "colour": "red"}, "colour"),
        ({"gpus": 10**12}, "gpus"),
        ({"gpus": 1, "request_id": "x" * 500}, "request_id"),
        ({"gpus": 1, "strategy": "RANDOM"}, "strategy"),
        # Strict JSON types: no bool or string where a number is expected.
        ({"gpus": True}, "gpus"),
        ({"gpus": "2"}, "gpus"),
        # A duration that rounds to nothing is refused, not turned into a zero-length lease.
        ({"gpus": 1, "duration": "0.000001s"}, "duration"),
    ],
)
def test_http_bad_input_is_4xx_and_stores_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    name = "bad-input"
    try:
        token = api.admin.create_tenant(name, {"A100": 2})["token"]
    except Exception:
        token = api.admin.rotate_token(name)["token"]
    with api.http(token) as http:
        before = http.get("/api/v1/leases").json()
        resp = http.post("/api/v1/leases", json=body)
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_request"
        assert field in error["message"]
        assert http.get("/api/v1/leases").json() == before


def test_http_malformed_and_oversized_bodies(api: Api) -> None:
    with api.http(api.platform.admin) as http:
        resp = http.post(
            "/api/v1/tenants", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert resp.status_code == 422
        resp = http.post(
            "/api/v1/tenants", content=b"x" * 100_000, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 413
        resp = http.post("/api/v1/tenants", json={"name": "Bad Name!", "quotas": {}})
        assert resp.status_code == 422
        assert "name" in resp.json()["error"]["message"]
        resp = http.post(
            "/api/v1/tenants", json={"name": "ok-name", "quotas": {"A100": {"nominal": -1}}}
        )
        assert resp.status_code == 422
        resp = http.post(
            "/api/v1/tenants", json={"name": "ok-name", "quotas": {"TPU": {"nominal": 1}}}
        )
        assert resp.status_code == 422
        assert "TPU" in resp.json()["error"]["message"]
        assert http.get("/api/v1/tenants/ok-name").status_code == 404
        assert http.get("/api/v1/usage", params={"since": "yesterday"}).status_code == 422


def test_isolation_matrix(api: Api) -> None:
    victim = api.admin.create_tenant("victim", {"A100": 2})["token"]
    other = api.admin.create_tenant("intruder", {"A100": 2})["token"]
    lease = Client(token=victim, address=api.url).request_lease(
        1, "A100", "10m", wait=True, timeout=60
    )
    lid = lease.id
    # (method, path, body, query, what the intruder gets)
    ops: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None, int]] = [
        ("GET", "/api/v1/whoami", None, None, 200),
        ("GET", "/api/v1/status", None, None, 200),
        ("GET", "/api/v1/tenants", None, None, 200),
        ("GET", "/api/v1/healthz", None, None, 200),
        ("POST", "/api/v1/tenants", {"name": "evil", "quotas": {}}, None, 403),
        ("PATCH", "/api/v1/tenants/victim", {"weight": 9}, None, 403),
        ("DELETE", "/api/v1/tenants/victim", None, None, 403),
        # Token routes: a tenant manages only its own; another's name is not found.
        ("POST", "/api/v1/tenants/victim/rotate-token", None, None, 404),
        ("GET", "/api/v1/tenants/victim/tokens", None, None, 404),
        ("POST", "/api/v1/tenants/victim/tokens", {}, None, 404),
        ("DELETE", "/api/v1/tenants/victim/tokens/t1", None, None, 404),
        ("GET", "/api/v1/tenants/admin/tokens", None, None, 403),
        ("POST", "/api/v1/tenants/admin/rotate-token", None, None, 403),
        ("POST", "/api/v1/tenants/intruder/rotate-token", None, None, 403),
        ("GET", "/api/v1/tenants/victim", None, None, 404),
        ("GET", "/api/v1/leases", None, {"tenant": "victim"}, 404),
        ("POST", "/api/v1/leases", {"gpus": 1, "tenant": "victim"}, None, 404),
        ("GET", f"/api/v1/leases/{lid}", None, None, 404),
        ("GET", f"/api/v1/leases/{lid}", None, {"wait": 1}, 404),
        ("POST", f"/api/v1/leases/{lid}/release", None, None, 404),
        ("POST", f"/api/v1/leases/{lid}/bind", {"workload": "steal"}, None, 404),
        ("GET", "/api/v1/usage", None, {"tenant": "victim"}, 404),
    ]
    for method, path, body, params, expected in ops:
        for token in (None, "fgpu_wrong-token", "Basic"):
            with api.http(token) as http:
                resp = http.request(method, path, json=body, params=params)
            assert resp.status_code == 401, (method, path, token, resp.text)
            assert resp.json()["error"]["code"] == "unauthenticated"
        with api.http(other) as http:
            resp = http.request(method, path, json=body, params=params)
        assert resp.status_code == expected, (method, path, resp.text)
        if expected == 200:
            assert "victim" not in resp.text, (method, path)
    # The victim's lease and tenant are untouched.
    victim_client = Client(token=victim, address=api.url)
    assert victim_client.get_lease(lid).state == "RESERVED"
    assert victim_client.get_tenant("victim")["weight"] == 1.0
    assert [u["tenant"] for u in Client(token=other, address=api.url).usage()] in ([], ["intruder"])
    victim_client.release_lease(lid)
    # No token was issued to anyone: the victim's own, and the one its cluster's jobs use
    # (issued when its cluster started for the lease).
    labels = sorted(t["label"] or "" for t in victim_client.list_tokens("victim"))
    assert labels == ["cluster", "initial"], labels


def test_rotate_token_with_grace(api: Api) -> None:
    old = api.admin.create_tenant("rotating", {"A100": 1})["token"]
    with api.http(api.platform.admin) as http:
        resp = http.post("/api/v1/tenants/rotating/rotate-token", json={"grace": "1h"})
        assert resp.status_code == 200, resp.text
        kept = resp.json()["token"]
        # Within the grace period both work.
        for token in (old, kept):
            with api.http(token) as mine:
                assert mine.get("/api/v1/whoami").json()["tenant"] == "rotating"
        resp = http.post("/api/v1/tenants/rotating/rotate-token", json={"grace": 0})
        assert resp.status_code == 200, resp.text
        new = resp.json()["token"]
    for token in (old, kept):
        with api.http(token) as mine:
            assert mine.get("/api/v1/whoami").status_code == 401
    with api.http(new) as mine:
        assert mine.get("/api/v1/whoami").json()["tenant"] == "rotating"


def _cli(api: Api, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FASTGPU_TOKEN": token, "FASTGPU_ADDRESS": api.url}
    return subprocess.run(
        [sys.executable, "-m", "fastgpu.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_contract(api: Api) -> None:
    admin = api.platform.admin
    out = _cli(
        api,
        admin,
        "tenant",
        "create",
        "cli-team",
        "--quota",
        "A100=2",
        "--borrowing-limit",
        "A100=1",
        "--output",
        "json",
    )
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["name"] == "cli-team"
    token = created["token"]
    assert created["quotas"]["A100"] == {"nominal": 2, "borrowing_limit": 1, "lending_limit": None}

    out = _cli(
        api,
        token,
        "lease",
        "request",
        "--gpus",
        "2",
        "--duration",
        "10m",
        "--wait",
        "--timeout",
        "60",
        "--output",
        "json",
    )
    assert out.returncode == 0, out.stderr
    lease = json.loads(out.stdout)
    for key in (
        "id",
        "tenant",
        "state",
        "gpus",
        "gpu_type",
        "placement_group",
        "expires_at",
        "reason",
    ):
        assert key in lease
    assert lease["state"] == "RESERVED"

    # One more GPU is borrowed from idle capacity (borrowing limit 1; only a preemptible lease
    # may borrow GPUs behind other tenants' nominal)...
    wait_args = ("lease", "request", "--gpus", "1", "--preemptible", "--wait", "--output", "json")
    out = _cli(api, token, *wait_args)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "RESERVED"
    # ...and the next would exceed nominal + borrowing limit: it waits with the reason.
    out = _cli(
        api,
        token,
        "lease",
        "request",
        "--gpus",
        "1",
        "--wait",
        "--timeout",
        "1",
        "--output",
        "json",
    )
    assert out.returncode == 1
    assert json.loads(out.stdout)["reason"] == "over_quota"

    out = _cli(api, token, "lease", "list", "--output", "json")
    assert out.returncode == 0
    assert {row["tenant"] for row in json.loads(out.stdout)} == {"cli-team"}

    out = _cli(api, token, "lease", "release", lease["id"], "--output", "json")
    assert json.loads(out.stdout)["state"] == "RELEASED"
    out = _cli(api, token, "usage", "--output", "json")
    (row,) = json.loads(out.stdout)
    assert set(row) >= {"tenant", "gpu_type", "gpu_seconds", "cost"}
    assert row["gpu_seconds"] > 0

    out = _cli(api, admin, "status", "--output", "json")
    assert out.returncode == 0
    assert any(r["tenant"] == "cli-team" for r in json.loads(out.stdout)["tenants"])

    # Bad usage and invalid input exit 2 and store nothing; denials exit 1.
    for args in (
        ("lease", "request", "--gpus", "0", "--output", "json"),
        ("lease", "request", "--gpus", "-1"),
        ("lease", "request", "--gpus", "1", "--gpu-type", "V100"),
        ("lease", "request", "--gpus", "1", "--duration", "5 minutes"),
        ("lease", "request", "--gpus", "two"),
        ("lease", "request", "--gpus", "1", "--bogus"),
        ("usage", "--since", "last week"),
    ):
        out = _cli(api, token, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "error" in (out.stderr + out.stdout).lower()
    out = _cli(api, token, "tenant", "create", "x", "--quota", "A100=1")
    assert out.returncode == 1
    out = _cli(api, token, "lease", "show", "does-not-exist")
    assert out.returncode == 1
    out = _cli(api, "fgpu_bad", "lease", "list")
    assert out.returncode == 1
    leases = json.loads(_cli(api, token, "lease", "list", "--output", "json").stdout)
    # The released one, the borrowed one, and the one that queued over quota, admitted once
    # quota freed up; nothing from the bad input.
    assert sorted(x["state"] for x in leases) == ["RELEASED", "RESERVED", "RESERVED"]
    for x in leases:
        _cli(api, token, "lease", "release", x["id"])


def test_not_found_is_the_same_for_missing_and_foreign(api: Api) -> None:
    a = Client(token=api.admin.create_tenant("same-a", {"A100": 1})["token"], address=api.url)
    b = Client(token=api.admin.create_tenant("same-b", {"A100": 1})["token"], address=api.url)
    lease = a.request_lease(1, "A100", "1m")
    with pytest.raises(NotFound) as foreign:
        b.get_lease(lease.id)
    with pytest.raises(NotFound) as missing:
        b.get_lease("0" * 16)
    assert str(foreign.value).replace(lease.id, "X") == str(missing.value).replace("0" * 16, "X")
    a.release_lease(lease.id)


# ---- hardening -----------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413(api: Api) -> None:
    """A body without Content-Length (chunked) is counted while it streams: past 64 KiB the
    server answers 413 and stores nothing."""
    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:
        yield b'{"name": "chunked", "quotas": {}, "pad": "'
        for _ in range(16):  # 128 KiB in all
            sent["bytes"] += 8192
            yield b"x" * 8192
        yield b'"}'

    with api.http(api.platform.admin) as http:
        try:
            resp = http.post(
                "/api/v1/tenants", content=body(), headers={"content-type": "application/json"}
            )
        except httpx.WriteError:  # the server may close before the client sent it all
            pytest.fail("the server closed the connection without answering 413")
        assert "content-length" not in {k.lower() for k in resp.request.headers}
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"]["code"] == "too_large"
        assert http.get("/api/v1/tenants/chunked").status_code == 404
    # A chunked body under the limit goes through.
    with api.http(api.platform.admin) as http:
        small = iter([b'{"name": "chunked-ok", ', b'"quotas": {}}'])
        resp = http.post(
            "/api/v1/tenants", content=small, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 201, resp.text


def test_list_pagination_over_http(api: Api) -> None:
    token = api.admin.create_tenant("pages", {"A100": 1})["token"]
    client = Client(token=token, address=api.url)
    ids = []
    for _ in range(5):
        lease = client.request_lease(1, "A100", "5m")
        ids.append(lease.id)
        client.release_lease(lease.id)
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    with api.http(token) as http:
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            resp = http.get("/api/v1/leases", params=params)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            assert set(page) == {"items", "next_cursor"}
            assert len(page["items"]) <= 2
            seen += [x["id"] for x in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages < 10, "pagination does not end"
        assert seen == ids  # every lease once, oldest first
        assert pages >= 3
        # The SDK follows the cursor the same way.
        assert [x.id for x in client.list_leases()] == ids
        # Bad page arguments are 422.
        for params in ({"limit": 0}, {"limit": 501}, {"limit": "two"}, {"cursor": "x" * 300}):
            assert http.get("/api/v1/leases", params=params).status_code == 422, params
    # Tenants page the same way for the admin.
    with api.http(api.platform.admin) as http:
        names: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = http.get("/api/v1/tenants", params=params).json()
            assert len(page["items"]) <= 2
            names += [t["name"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert sorted(names) == sorted(t["name"] for t in api.admin.list_tenants())
    assert len(names) == len(set(names))


def test_long_polls_hold_no_thread(api: Api) -> None:
    """45 open 20 s long-polls (more than the server's 40 request threads; two tenants, each
    under its limit of 32) do not slow another tenant's calls, even those served by a thread."""
    no_borrowing = {"A100": {"nominal": 1, "borrowing_limit": 0}}
    other = api.admin.create_tenant("bystander", {"A100": 1})["token"]
    pollers = []
    for name, n in (("poller", 30), ("poller2", 15)):
        token = api.admin.create_tenant(name, no_borrowing)["token"]
        client = Client(token=token, address=api.url)
        held = client.request_lease(1, "A100", "10m", wait=True, timeout=60)
        pending = client.request_lease(1, "A100", "10m")
        assert pending.state == "PENDING", pending
        pollers.append((token, client, held, pending, n))
    results: list[tuple[int, float]] = []
    errors: list[BaseException] = []

    def poll(token: str, lease_id: str) -> None:
        start = time.monotonic()
        try:
            with api.http(token) as http:
                resp = http.get(f"/api/v1/leases/{lease_id}", params={"wait": 20})
            results.append((resp.status_code, time.monotonic() - start))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=poll, args=(token, pending.id), daemon=True)
        for token, _, _, pending, n in pollers
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)  # all 45 are open and waiting
    assert not results, "the long-polls answered before the lease changed"
    timings = []
    with api.http(other) as http:
        http.get("/api/v1/whoami")  # warm the connection
        for path in ("/api/v1/whoami", "/api/v1/tenants/bystander", "/api/v1/leases") * 3:
            start = time.monotonic()
            resp = http.get(path)
            timings.append(time.monotonic() - start)
            assert resp.status_code == 200, resp.text
    assert max(timings) < 1.0, timings
    # Freeing the held GPUs admits the pending leases, which ends the polls early.
    for _, client, held, _, _ in pollers:
        client.release_lease(held.id)
    for t in threads:
        t.join(40)
    assert not errors, errors
    assert [code for code, _ in results] == [200] * 45
    assert max(elapsed for _, elapsed in results) < 19, results
    for _, client, _, pending, _ in pollers:
        assert client.get_lease(pending.id).state == "RESERVED"
        client.release_lease(pending.id)
    assert api.admin.list_leases(live=True) == []


def test_jobs_take_uploads_never_server_paths(api: Api, tmp_path: Path) -> None:
    token = api.admin.create_tenant("uploader", {"A100": 1})["token"]
    with api.http(token) as http:
        # A path on the server is never read: the field does not exist.
        resp = http.post(
            "/api/v1/jobs",
            json={"entrypoint": "python x.py", "working_dir": str(api.platform.state_dir)},
        )
        assert resp.status_code == 422, resp.text
        assert "working_dir: unknown field" in resp.json()["error"]["message"]
        resp = http.post("/api/v1/jobs", json={"entrypoint": "python x.py", "upload": "../etc"})
        assert resp.status_code == 422, resp.text
        assert "upload" in resp.json()["error"]["message"]
        # Uploads are zips only.
        resp = http.post(
            "/api/v1/uploads", content=b"not a zip", headers={"content-type": "text/plain"}
        )
        assert resp.status_code == 422, resp.text
    (tmp_path / "hello.py").write_text("print('hello from the upload')\n")
    client = Client(token=token, address=api.url)
    first = client.upload(tmp_path)
    assert len(first["sha256"]) == 64
    assert client.upload(tmp_path)["sha256"] == first["sha256"]  # content-addressed


def test_rate_limit_answers_429_with_retry_after(
    api: Api, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A server whose per-token rate is small refuses a burst with 429 + Retry-After."""
    for limited in pool_platform(tmp_path_factory, api={"rate_per_s": 0.5, "burst": 3}):
        token = limited.tenant("rated", A100=1)  # one request of the admin's bucket
        with httpx.Client(
            base_url=limited.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        ) as http:
            codes = [http.get("/api/v1/whoami") for _ in range(6)]
        assert [r.status_code for r in codes[:3]] == [200, 200, 200], [r.text for r in codes]
        refused = [r for r in codes if r.status_code == 429]
        assert refused, [r.status_code for r in codes]
        for r in refused:
            assert r.json()["error"]["code"] == "rate_limited"
            retry = float(r.headers["Retry-After"])
            assert 0 < retry <= 10
        # Another token has its own bucket; healthz is exempt.
        with httpx.Client(base_url=limited.url, timeout=30, trust_env=False) as http:
            headers = {"Authorization": f"Bearer {limited.admin}"}
            assert http.get("/api/v1/whoami", headers=headers).status_code == 200
            tok = {"Authorization": f"Bearer {token}"}
            assert http.get("/api/v1/healthz", headers=tok).status_code == 200
        # The SDK waits as Retry-After says and then succeeds.
        with Client(token=token, address=limited.url) as sdk:
            assert sdk.whoami()["tenant"] == "rated"
