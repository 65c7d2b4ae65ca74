"""Leader election for the control plane: one lock, kept where the store keeps its state.

Several ``fastgpu server`` processes may share one store. Exactly one of them, the *leader*,
runs the controller loop; the others are *standby* and wait in :meth:`LeaderLock.acquire`.
Which lock guards the store follows from its URL (:func:`leader_lock_for`):

* PostgreSQL: a session-level advisory lock, :class:`PostgresAdvisoryLock`, held on a dedicated
  connection (not the store's pool). Its key is :data:`LEADER_KEY`, derived from
  ``"fastgpu-leader"``; in ``pg_locks`` it shows as ``locktype = 'advisory'``,
  ``classid = 1441012015``, ``objid = 118891549``, ``objsubid = 1``.
* SQLite: an exclusive ``flock`` on ``<state_dir>/leader.lock``, :class:`FileLock`. The only
  SQLite case is several servers on one machine sharing one database file; the lock file holds
  the leader's pid for people to read.

Fencing rule
    The leader calls :meth:`LeaderLock.is_held` before each controller pass and, as soon as it
    returns False, stops acting as leader: it starts no further action, goes back to standby
    and calls :meth:`LeaderLock.acquire` again. ``is_held`` never answers from a cached flag:
    it asks PostgreSQL whether this session still holds the lock (which also proves the
    connection lives), or checks that the locked file is still the one at the lock path.

Why a dead leader's lock is freed
    A session-level advisory lock belongs to the PostgreSQL backend serving the connection, and
    a backend drops all its session locks when it exits, which it does as soon as it sees its
    client gone. When the leader process dies, even by SIGKILL, the kernel closes its sockets;
    the backend reads EOF and exits at once, so a standby polling every ``poll_s`` takes over
    within ``poll_s`` plus one connect. When the leader's *host* vanishes, no FIN arrives:
    server-side TCP keepalives and ``tcp_user_timeout``, set on the lock's session, make
    PostgreSQL drop it about :data:`SERVER_DEAD_AFTER_S` seconds after the last contact. The
    client side uses shorter ones (:data:`CLIENT_DEAD_AFTER_S`), so a leader cut off from
    PostgreSQL sees ``is_held() == False`` before the server frees the lock for a standby. The
    lock connection runs in autocommit and never sits in a transaction, so
    ``idle_in_transaction_session_timeout`` cannot end it; ``idle_session_timeout`` is turned off
    for it.

    A ``flock`` belongs to the open file description; the kernel drops it when the last
    descriptor to it closes, which process exit does. Python opens files and libpq opens sockets
    close-on-exec, so exec'd children (Ray, subprocesses) do not inherit either lock; a child
    made by ``fork`` without ``exec`` would keep both alive after its parent dies.

Not covered
    * A leader that can reach PostgreSQL but not Ray keeps its session, so it keeps the lock
      and stays leader while it cannot act; no standby takes over. Leadership follows
      reachability of the store, not of the cluster: an operator must restart that server.
    * ``is_held`` is a check, not a fencing token. The lock can be lost after a passing check,
      so an old leader and a new one can overlap for the rest of the pass in flight (a pass
      longer than :data:`SERVER_DEAD_AFTER_S` when the network fails). Lease transitions in the
      store are compare-and-set on the current state, so a doubled transition fails instead of
      applying twice, but actions on Ray in that window are not fenced.
    * Advisory locks are per database: all servers must name the same database, and talk to
      PostgreSQL directly or through a *session*-mode pooler (a transaction-mode PgBouncer
      breaks session locks).
    * SQLite across machines (a database file on a network file system) is not supported.

Every method of a lock is idempotent and thread-safe.
"""

from __future__ import annotations

import abc
import fcntl
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from fastgpu.errors import ConfigError

__all__ = [
    "CLIENT_DEAD_AFTER_S",
    "LEADER_KEY",
    "LEADER_LOCK_FILE",
    "SERVER_DEAD_AFTER_S",
    "FileLock",
    "LeaderLock",
    "PostgresAdvisoryLock",
    "advisory_key",
    "leader_lock_for",
]

log = logging.getLogger(__name__)

LEADER_LOCK_FILE = "leader.lock"


def advisory_key(name: str) -> int:
    """The fixed signed 64-bit advisory-lock key for ``name``: its SHA-256's first 8 bytes."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


LEADER_KEY = advisory_key("fastgpu-leader")

# The leader's side gives up on a silent PostgreSQL after about this many seconds
# (keepalive probes after 2 s idle, every 1 s, 3 unanswered; unacknowledged data: 5 s)...
CLIENT_DEAD_AFTER_S = 5
_CLIENT_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": CLIENT_DEAD_AFTER_S * 1000,
}
# ...before PostgreSQL gives up on a silent leader and frees the lock (about this many seconds).
SERVER_DEAD_AFTER_S = 9
_SERVER_SETTINGS = {
    "tcp_keepalives_idle": "3",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": str(SERVER_DEAD_AFTER_S * 1000),
    "idle_session_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "statement_timeout": "5000",
}
# libpq's keyword parameters; other drivers get only the server-side settings.
_LIBPQ_DRIVERS = {"psycopg", "psycopg2", "psycopg2cffi"}

# Joining pg_settings skips the settings this server version does not know
# (idle_session_timeout is new in PostgreSQL 14).
_SET_SESSION = text(
    "SELECT set_config(v.name, v.value, false) "
    "FROM unnest(CAST(:names AS text[]), CAST(:values AS text[])) AS v(name, value) "
    "JOIN pg_settings s ON s.name = v.name"
)
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
# A bigint key shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
_HOLDS_LOCK = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1)"
)


class LeaderLock(abc.ABC):
    """Exclusive leadership over one store (see the module docstring for the fencing rule)."""

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting; True when this instance holds it."""

    @abc.abstractmethod
    def is_held(self) -> bool:
        """Whether the lock is verifiably still ours. False: stop acting as leader now."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up so a standby can take it; a no-op when not held."""

    def acquire(self, stop: threading.Event, poll_s: float = 1.0) -> bool:
        """Wait as standby: True once the lock is ours, False once ``stop`` is set.

        Tries every ``poll_s`` seconds, so a freed lock is taken within ``poll_s`` plus one
        :meth:`try_acquire`.
        """
        while not stop.is_set():
            if self.try_acquire():
                return True
            stop.wait(poll_s)
        return False


class PostgresAdvisoryLock(LeaderLock):
    """A session-level ``pg_try_advisory_lock(key)`` on a connection of its own.

    The connection opens on the first :meth:`try_acquire` and stays open while standby (one
    query per poll, no reconnect); any error on it drops it, and the next call reconnects.
    """

    def __init__(self, url: str, key: int = LEADER_KEY) -> None:
        self._url = make_url(url)
        self._key = key
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        self._key_parts = {"hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF}
        connect_args = _CLIENT_CONNECT_ARGS if self._url.get_driver_name() in _LIBPQ_DRIVERS else {}
        self._engine = create_engine(
            self._url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=connect_args
        )
        self._mutex = threading.Lock()
        self._conn: Connection | None = None
        self._held = False
        self._unreachable = False  # warn once per outage, not once per poll

    def __repr__(self) -> str:
        shown = self._url.render_as_string(hide_password=True)
        return f"PostgresAdvisoryLock({shown!r}, key={self._key})"

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._held and self._check_held():
                return True
            try:
                conn = self._connection()
                self._held = bool(conn.execute(_TRY_LOCK, {"key": self._key}).scalar())
            except DBAPIError as exc:
                self._drop()
                if not self._unreachable:
                    log.warning("%r: cannot reach PostgreSQL, staying standby: %s", self, exc)
                self._unreachable = True
                return False
            self._unreachable = False
            if self._held:
                log.info("%r: took the leader lock", self)
            return self._held

    def is_held(self) -> bool:
        with self._mutex:
            return self._held and self._check_held()

    def release(self) -> None:
        with self._mutex:
            if self._conn is None:
                return
            if self._held:
                # Unlock before closing: a close returns before the backend has exited and
                # freed the lock, and a standby polling right after must find it free.
                try:
                    self._conn.execute(_UNLOCK, {"key": self._key})
                except DBAPIError:
                    # The connection is gone, and PostgreSQL freed the lock with it.
                    log.info("%r: the lock's connection was already gone", self)
                log.info("%r: released the leader lock", self)
            self._drop()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect()
            try:
                conn.execute(
                    _SET_SESSION,
                    {"names": list(_SERVER_SETTINGS), "values": list(_SERVER_SETTINGS.values())},
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _check_held(self) -> bool:
        """Ask the server; on any doubt drop the connection (which frees a lock it may hold)."""
        assert self._conn is not None
        try:
            held = bool(self._conn.execute(_HOLDS_LOCK, self._key_parts).scalar())
        except DBAPIError as exc:
            log.warning("%r: lost the leader lock, its connection failed: %s", self, exc)
            self._drop()
            return False
        if not held:
            log.warning("%r: lost the leader lock, pg_locks no longer shows it", self)
            self._drop()
        return held

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.invalidate()  # close the DBAPI connection itself, not back to a pool
                conn.close()
            except Exception:
                pass


class FileLock(LeaderLock):
    """An exclusive, non-blocking ``flock`` on ``path``, which then holds the leader's pid.

    The file is never deleted (deleting a lock file races with its next locker); a file
    deleted or replaced by someone else counts as lost, since a new locker can lock the new one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r})"

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._fd is not None and self._check_held():
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if not self._is_lock_path(fd):  # replaced between our open and our flock
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            log.info("%r: took the leader lock", self)
            return True

    def is_held(self) -> bool:
        with self._mutex:
            return self._fd is not None and self._check_held()

    def release(self) -> None:
        with self._mutex:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)  # no stale pid for people to read
            os.close(fd)  # closing the only descriptor drops the flock
            log.info("%r: released the leader lock", self)

    def _check_held(self) -> bool:
        assert self._fd is not None
        if self._is_lock_path(self._fd):
            return True
        log.warning("%r: lost the leader lock, the lock file was deleted or replaced", self)
        os.close(self._fd)
        self._fd = None
        return False

    def _is_lock_path(self, fd: int) -> bool:
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        ours = os.fstat(fd)
        return (ours.st_dev, ours.st_ino) == (at_path.st_dev, at_path.st_ino)


def leader_lock_for(url: str, state_dir: Path) -> LeaderLock:
    """The leader lock guarding the store at SQLAlchemy ``url``.

    PostgreSQL: :class:`PostgresAdvisoryLock` on ``url``. SQLite: :class:`FileLock` on
    ``<state_dir>/leader.lock``, so servers sharing one SQLite file must share ``state_dir``
    (they do when ``store_url`` is unset: the file then lives in ``state_dir``).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return PostgresAdvisoryLock(url)
    if backend == "sqlite":
        return FileLock(state_dir / LEADER_LOCK_FILE)
    raise ConfigError(
        f"Got a {backend} store_url ({parsed.render_as_string(hide_password=True)}); "
        "expected sqlite:///... or postgresql+psycopg://..., the stores that have a leader lock"
    )
