"""Starting, finding and stopping the Ray processes of one node, on this machine.

A node is what one ``ray start`` starts (GCS, raylet, dashboard and its agents, workers); the
command itself exits once the node is up (``--block`` would keep a ~140 MB Python monitor per
node). Every node process carries :data:`MARKER_ENV` = ``<cluster>/<node>`` in its environment,
so the server (and a restarted server) finds them; Ray's workers rename themselves and
overwrite their environment, but they are children of the raylet, so the process tree finds
them. Stopping a node stops its tree: SIGTERM, then SIGKILL after a grace (Ray's agents ignore
SIGTERM).

Nothing here knows about tenants or leases: :mod:`fastgpu.pool.tenant_cluster` decides what
to start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastgpu.errors import FastGPUError

MARKER_ENV = "FASTGPU_NODE"
#: Where each log's output of the latest :func:`spawn` starts.
_log_start: dict[Path, int] = {}


@dataclass(frozen=True)
class OsUser:
    """Who a tenant's processes run as; ``None`` in the runtime means the server's own user."""

    name: str
    uid: int
    gid: int


def spawn(
    cmd: list[str], env: dict[str, str], cwd: Path, log: Path, user: OsUser | None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as ``user`` (or as this process's user), output appended to ``log``, in
    a new session (a signal to the server's process group does not reach it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        _log_start[log] = out.tell()
        if user is not None:
            os.chown(log, user.uid, user.gid)
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            umask=0o077,
        )


class StartFailed(FastGPUError):
    """``ray start`` failed: ``exited`` when it gave up itself (its own waits, such as the 30 s
    a raylet's registration may take, are shorter than ours), not when ours ran out."""

    def __init__(self, message: str, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited


def wait_started(
    proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float, marker: str
) -> None:
    """Wait until ``ray start`` exits; raise with its log (and stop what it started, by
    ``marker``) if it failed or took longer than ``timeout_s``."""
    start = _log_start.pop(log, 0)  # what earlier runs appended does not count
    try:
        code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    if code == 0:
        return
    stop_tree(proc.pid, grace_s=2.0, marker=marker)
    proc.wait(timeout=10)
    text = log.read_bytes()[start:].decode(errors="replace") if log.exists() else ""
    why = f"exited with code {code}" if code is not None else f"not up in {timeout_s:.0f} s"
    raise StartFailed(f"{what}: `ray start` {why}; its log ends:\n{text[-3000:]}", code is not None)


def node_pid(marker: str, name: str) -> int | None:
    """The pid of the node's process called ``name`` (``gcs_server``, ``raylet``)."""
    for proc in marked(marker).get(marker, []):
        try:
            if proc.name() == name:
                return int(proc.pid)
        except Exception:
            continue
    return None


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    import psutil

    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(procs: list[Any], kill: bool) -> None:
    import psutil

    for proc in procs:
        try:
            proc.kill() if kill else proc.terminate()
        except psutil.Error:
            pass


def stop_processes(procs: list[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``grace_s`` (0: SIGKILL at once)."""
    import psutil

    if not procs:
        return
    _signal(procs, kill=grace_s <= 0)
    _, alive = psutil.wait_procs(procs, timeout=max(grace_s, 0.1))
    if alive:
        _signal(alive, kill=True)
        psutil.wait_procs(alive, timeout=10)


def tree(pid: int | None) -> list[Any]:
    """The process and all its descendants (empty if it is gone or ``pid`` is None)."""
    import psutil

    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def marked(prefix: str) -> dict[str, list[Any]]:
    """Live processes whose :data:`MARKER_ENV` starts with ``prefix``, by marker value."""
    import psutil

    out: dict[str, list[Any]] = {}
    for proc in psutil.process_iter(["pid"]):
        try:
            value = proc.environ().get(MARKER_ENV)
        except (psutil.Error, OSError):
            continue
        if value is not None and value.startswith(prefix):
            out.setdefault(value, []).append(proc)
    return out


def is_ray_start(proc: Any) -> bool:
    """Whether ``proc`` is a ``ray start`` command (it runs in a session of its own, so one
    outlives a server killed while it waited for it)."""
    try:
        cmd = proc.cmdline()
    except Exception:  # it ended meanwhile
        return False
    return "ray.scripts.scripts" in cmd and "start" in cmd


def starting(marker: str) -> list[Any]:
    """The ``ray start`` commands still running for the node ``marker``."""
    return [p for p in marked(marker).get(marker, []) if is_ray_start(p)]


class StartSlots:
    """At most ``n`` ``ray start`` commands of some nodes (markers containing ``fragment``) at
    once on this machine: those this process runs, and those it finds running that another
    process began (a server killed during its starts leaves them running, in sessions of their
    own, while the next server starts more). Waiting for a slot gives up after ``timeout_s``
    and starts anyway."""

    def __init__(self, n: int, fragment: str) -> None:
        self.n = n
        self.fragment = fragment
        self._sem = threading.BoundedSemaphore(n)
        self._mu = threading.Lock()
        self._ours = 0

    @contextlib.contextmanager
    def slot(self, timeout_s: float) -> Iterator[None]:
        with self._sem:
            deadline = time.monotonic() + timeout_s
            while True:
                with self._mu:
                    if self._ours + self.elsewhere() < self.n or time.monotonic() > deadline:
                        self._ours += 1
                        break
                time.sleep(0.25)
            try:
                yield
            finally:
                with self._mu:
                    self._ours -= 1

    def elsewhere(self) -> int:
        """The ``ray start`` commands of such nodes running that this process did not start."""
        me = os.getpid()
        found = 0
        for value, procs in marked("").items():
            if self.fragment in value:
                found += sum(1 for p in procs if is_ray_start(p) and _parent(p) != me)
        return found


def _parent(proc: Any) -> int | None:
    try:
        return int(proc.ppid())
    except Exception:  # it ended meanwhile
        return None


def left_by_earlier_start(marker: str, name: str, timeout_s: float) -> bool:
    """Whether the node ``marker``'s process ``name`` runs once every ``ray start`` of that
    node still running (one a killed server left: see :func:`starting`) has ended."""
    deadline = time.monotonic() + timeout_s
    while starting(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return node_pid(marker, name) is not None


def node_tree(marker: str) -> list[Any]:
    """Every process of the node ``marker``: the marked ones and their descendants."""
    seen: dict[int, Any] = {}
    for proc in marked(marker).get(marker, []):
        for p in tree(proc.pid):
            seen[p.pid] = p
    return list(seen.values())


def stop_tree(pid: int | None, grace_s: float, marker: str | None = None) -> int:
    """Stop the process ``pid``, its descendants and (with ``marker``) every process carrying
    that marker; then once more for anything a dying raylet started meanwhile. Returns how many
    processes were signalled."""
    procs = {p.pid: p for p in tree(pid)}
    if marker is not None:
        procs |= {p.pid: p for p in node_tree(marker)}
    # Descendants first collected: a raylet's workers re-parent to init once it dies.
    stop_processes(list(procs.values()), grace_s)
    late = node_tree(marker) if marker is not None else []
    stop_processes(late, 0)
    return len(procs) + len(late)
