"""The leader lock (:mod:`fastgpu.store.leader`) on a real PostgreSQL server and a real lock file.

A holder that gets killed runs in a real subprocess (``python -c``) and is SIGKILLed, so only
what the kernel and PostgreSQL do on process death can free its lock. The PostgreSQL cases skip
when no PostgreSQL server binaries are installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from fastgpu.errors import ConfigError
from fastgpu.store.leader import (
    LEADER_KEY,
    FileLock,
    LeaderLock,
    PostgresAdvisoryLock,
    leader_lock_for,
)
from tests.integration.pg_fixtures import private_postgres

TAKEOVER_LIMIT_S = 10.0

# Takes the lock through the same factory a server uses, says so, and waits to be killed.
_HOLDER = """
import sys, time
from pathlib import Path
from fastgpu.store.leader import leader_lock_for
lock = leader_lock_for(sys.argv[1], Path(sys.argv[2]))
print("held" if lock.try_acquire() else "refused", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from private_postgres()


@pytest.fixture
def locks() -> Iterator[Callable[[LeaderLock], LeaderLock]]:
    """Register a lock to be released at teardown, so no test leaks leadership to the next."""
    made: list[LeaderLock] = []

    def track(lock: LeaderLock) -> LeaderLock:
        made.append(lock)
        return lock

    yield track
    for lock in made:
        lock.release()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start a subprocess that holds the leader lock for a store URL; kill it at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, url, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != "held\n":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the holder subprocess did not take the lock: {line!r} {err}")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.communicate()


def _kill_and_time_takeover(proc: subprocess.Popen[str], standby: LeaderLock) -> float:
    """SIGKILL the holder; seconds until ``standby`` (polling as a server would) holds the lock."""
    stop = threading.Event()
    timer = threading.Timer(TAKEOVER_LIMIT_S * 2, stop.set)  # never hang the suite
    timer.start()
    try:
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        acquired = standby.acquire(stop, poll_s=1.0)
        elapsed = time.monotonic() - killed
    finally:
        timer.cancel()
    proc.wait()
    assert acquired, f"no takeover within {TAKEOVER_LIMIT_S * 2} s of SIGKILL"
    print(f"takeover {elapsed:.3f} s after SIGKILL of the leader ({standby!r})")
    return elapsed


# -- PostgreSQL advisory lock ------------------------------------------------------------------


def test_postgres_second_acquirer_fails_while_first_holds(
    postgres_url: str, locks: Callable[[LeaderLock], LeaderLock]
) -> None:
    first = locks(PostgresAdvisoryLock(postgres_url))
    second = locks(PostgresAdvisoryLock(postgres_url))
    assert first.try_acquire()
    assert first.try_acquire()  # idempotent: holds once, not twice
    assert first.is_held()
    assert not second.try_acquire()
    assert not second.is_held()
    stop = threading.Event()
    stop.set()
    assert not second.acquire(stop, poll_s=0.01)  # a stopped standby gives up at once
    assert first.is_held()


def test_postgres_release_hands_over_at_once(
    postgres_url: str, locks: Callable[[LeaderLock], LeaderLock]
) -> None:
    first = locks(PostgresAdvisoryLock(postgres_url))
    second = locks(PostgresAdvisoryLock(postgres_url))
    assert first.try_acquire()
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert not first.is_held()
    assert second.try_acquire()  # no wait: release unlocks before it disconnects
    first.release()  # idempotent
    assert second.is_held()
    assert not first.try_acquire()


def test_postgres_standby_takes_over_within_10s_of_sigkill(
    postgres_url: str,
    locks: Callable[[LeaderLock], LeaderLock],
    holder: Callable[[str], subprocess.Popen[str]],
) -> None:
    leader = holder(postgres_url)
    standby = locks(PostgresAdvisoryLock(postgres_url))
    assert not standby.try_acquire()
    assert _kill_and_time_takeover(leader, standby) < TAKEOVER_LIMIT_S
    assert standby.is_held()


def test_postgres_is_held_turns_false_when_the_session_is_terminated(
    postgres_url: str, locks: Callable[[LeaderLock], LeaderLock]
) -> None:
    lock = locks(PostgresAdvisoryLock(postgres_url))
    other = locks(PostgresAdvisoryLock(postgres_url))
    assert lock.try_acquire()
    unsigned = LEADER_KEY & 0xFFFF_FFFF_FFFF_FFFF
    admin = create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            (pid,) = conn.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"
                ),
                {"hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF},
            ).scalars()
            # Holding, the session sits idle, never "idle in transaction".
            state = conn.execute(
                text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one()
            assert state == "idle"
            terminated = conn.execute(
                text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}
            ).scalar()
            assert terminated
    finally:
        admin.dispose()
    assert not lock.is_held()
    assert other.try_acquire()
    assert not lock.try_acquire()  # reconnects, and finds the lock taken
    other.release()
    assert lock.try_acquire()
    assert lock.is_held()


# -- file lock (SQLite) ------------------------------------------------------------------------


def test_file_lock_second_acquirer_fails_and_takes_over_within_10s_of_sigkill(
    tmp_path: Path,
    locks: Callable[[LeaderLock], LeaderLock],
    holder: Callable[[str], subprocess.Popen[str]],
) -> None:
    url = f"sqlite:///{tmp_path / 'fastgpu.db'}"
    leader = holder(url)
    path = tmp_path / "leader.lock"
    assert path.read_text() == f"{leader.pid}\n"
    standby = locks(leader_lock_for(url, tmp_path))
    assert not standby.try_acquire()
    assert not standby.is_held()
    assert _kill_and_time_takeover(leader, standby) < TAKEOVER_LIMIT_S
    assert standby.is_held()
    assert path.read_text() == f"{os.getpid()}\n"


def test_file_lock_release_hands_over(
    tmp_path: Path, locks: Callable[[LeaderLock], LeaderLock]
) -> None:
    first = locks(FileLock(tmp_path / "leader.lock"))
    second = locks(FileLock(tmp_path / "leader.lock"))
    assert first.try_acquire()
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    first.release()
    assert not first.is_held()
    assert (tmp_path / "leader.lock").read_text() == ""
    assert second.try_acquire()
    assert second.is_held()
    assert not first.try_acquire()


def test_file_lock_is_lost_when_its_file_is_replaced(
    tmp_path: Path, locks: Callable[[LeaderLock], LeaderLock]
) -> None:
    path = tmp_path / "state" / "leader.lock"
    first = locks(FileLock(path))
    second = locks(FileLock(path))
    assert first.try_acquire()  # creates the missing state directory
    path.unlink()
    assert second.try_acquire()  # locks a new file at the path...
    assert not first.is_held()  # ...so the old holder must stand down
    assert not first.try_acquire()


# -- choosing the lock -------------------------------------------------------------------------


def test_leader_lock_for_follows_the_store_url(tmp_path: Path) -> None:
    sqlite_lock = leader_lock_for(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    assert isinstance(sqlite_lock, FileLock)
    assert sqlite_lock.path == tmp_path / "leader.lock"
    assert isinstance(leader_lock_for("sqlite://", tmp_path), FileLock)
    pg = leader_lock_for("postgresql+psycopg://fg:secret@db.example:5432/fastgpu", tmp_path)
    assert isinstance(pg, PostgresAdvisoryLock)
    assert "secret" not in repr(pg)
    with pytest.raises(ConfigError, match="expected sqlite"):
        leader_lock_for("mysql://fg@db.example/fastgpu", tmp_path)
