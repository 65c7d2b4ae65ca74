"""A platform's id (it names the tenants' clusters' processes, homes and users) comes from its
store: servers on one PostgreSQL database share it whatever their state dirs, so a standby that
takes over adopts what the leader started; a SQLite store names it by its state dir."""

from __future__ import annotations

from pathlib import Path

from fastgpu.config import PlatformConfig
from fastgpu.controller.clusters import clusters_root, platform_id, platform_of

GPUS = {"A100": {"price_per_hour": 1.0}}
PG = "postgresql+psycopg://fastgpu:{pw}@127.0.0.1:5432/{db}"


def _config(state: str, store: str | None = None) -> PlatformConfig:
    return PlatformConfig(gpu_types=GPUS, state_dir=state, store_url=store)


def test_servers_on_one_database_share_the_id(tmp_path: Path) -> None:
    a = _config(str(tmp_path / "a"), PG.format(pw="one", db="fg"))
    b = _config(str(tmp_path / "b"), PG.format(pw="rotated", db="fg"))
    assert platform_of(a) == platform_of(b)  # other state dir, other password: same platform
    assert clusters_root(a) == clusters_root(b)
    other = _config(str(tmp_path / "a"), PG.format(pw="one", db="other"))
    assert platform_of(other) != platform_of(a)
    assert len(platform_of(a)) == 10


def test_a_sqlite_platform_is_named_by_its_state_dir(tmp_path: Path) -> None:
    plain = _config(str(tmp_path / "a"))
    assert platform_of(plain) == platform_id(tmp_path / "a")
    explicit = _config(str(tmp_path / "a"), f"sqlite:///{tmp_path / 'a' / 'fastgpu.db'}")
    assert platform_of(explicit) == platform_id(tmp_path / "a")
    assert platform_of(_config(str(tmp_path / "b"))) != platform_of(plain)
