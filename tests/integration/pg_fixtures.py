"""A throwaway PostgreSQL server for integration tests.

:func:`private_postgres` starts a private server on 127.0.0.1 from the installed server
binaries (CI's `.ci/run` installs Debian's `postgresql` package when they are missing) and
skips the calling test when there are none. Test modules wrap it in their own fixture:

    @pytest.fixture(scope="module")
    def postgres_url() -> Iterator[str]:
        yield from private_postgres()
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def private_postgres() -> Iterator[str]:
    """Start a private server; yield its SQLAlchemy URL (superuser ``postgres``); stop it."""
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
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
            check=True,
            capture_output=True,
        )
        opts = f"-k {root} -h 127.0.0.1 -p {port} -c fsync=off"
        subprocess.run(
            _as_postgres(
                [pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
