"""The store and controller on PostgreSQL (the production backend), on a private server.

The fixture starts a throwaway PostgreSQL server on 127.0.0.1 from the installed server
binaries (CI's `.ci/run` installs Debian's `postgresql` package when they are missing).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fastgpu.auth import new_token
from fastgpu.config import GpuTypeSpec, PlatformConfig, TenantSpec
from fastgpu.controller.backend import NodeInfo
from fastgpu.controller.core import Controller
from fastgpu.domain.lease import Lease, LeaseState
from fastgpu.store import SCHEMA_VERSION, open_store
from tests.unit.fakes import FakeBackend, FakeClock
from tests.unit.test_store import _lease


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs them)")
    # Not under the tests' private temp dir: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="fgpg", dir="/tmp"))
    os.chmod(root, 0o777)
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    opts = f"-k {root} -h 127.0.0.1 -p {port} -c fsync=off"
    subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def test_store_on_postgres(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert store.schema_version() == SCHEMA_VERSION
    assert open_store(postgres_url).schema_version() == SCHEMA_VERSION  # re-open: no re-migration
    store.create_tenant("pg", TenantSpec(), "h" * 64, 0.0)
    lease = replace(_lease("pg1", "r"), tenant="pg", price_per_hour=3.6)
    store.insert_lease(lease)
    again, created = store.insert_lease(Lease(**{**lease.__dict__, "id": "pg2"}))
    assert not created
    assert again.id == "pg1"
    store.transition(lease, LeaseState.ADMITTED, 1.0)
    store.transition(lease, LeaseState.RESERVED, 2.0)
    store.transition(lease, LeaseState.RELEASED, 12.0)
    (row,) = store.usage(now=100.0)
    assert row.gpu_seconds == pytest.approx(20.0)
    assert row.cost == pytest.approx(20.0 / 3600 * 3.6)


def test_controller_on_postgres(postgres_url: str) -> None:
    config = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=1.0)}, store_url=postgres_url
    )
    backend = FakeBackend(node_list=[NodeInfo("n1", "A100", 8, True)])
    clock = FakeClock()
    ctl = Controller(config, open_store(postgres_url), backend, clock=clock)
    admin = new_token()
    ctl.bootstrap_admin(admin)
    tok = ctl.create_tenant(
        admin, "pgteam", {"quotas": {"A100": {"nominal": 4, "borrowing_limit": 0}}}
    )["token"]
    lease = ctl.request_lease(tok, {"gpus": 4, "duration": "1m", "request_id": "x"})
    ctl.tick()
    assert ctl.get_lease(tok, lease["id"])["state"] == "RESERVED"
    queued = ctl.request_lease(tok, {"gpus": 1})
    assert queued["reason"] == "over_quota"
    clock.advance(60)
    ctl.tick()
    assert ctl.get_lease(tok, lease["id"])["state"] == "EXPIRED"
    assert ctl.get_lease(tok, queued["id"])["state"] == "ADMITTED"
    assert ctl.usage(tok)[0]["gpu_seconds"] == pytest.approx(240)
