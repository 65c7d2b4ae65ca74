"""One tenant's own Ray cluster on this machine: a CPU-only head, raylets for its leases, and a
keeper driver; each process run as the tenant's user. ``ray start`` exits once a node is
up; the node's processes are then known by their marker (and the GCS server's or raylet's pid).

Layout of a cluster's home (``<root>/<tenant id>``, 0700, owned by the tenant's user)::

    ray_token     the cluster's Ray token (0600): RAY_AUTH_TOKEN_PATH, never in an environment
    secrets/      other 0600 files for the tenant's processes (a job's FastGPU token; the
                  cluster's own, ``job_token``, for jobs sent with plain `ray job submit`)
    cluster.json  the head's ports, so a restarted server reconnects
    r/            Ray's temp dir (short: Ray's socket paths are length-limited)
    logs/         what each ``ray start`` printed
    tmp/          TMPDIR of every process

Invariants: every port is chosen here (free) and passed explicitly; every process
carries the marker ``<platform>/<tenant>/<role>`` (:mod:`fastgpu.pool.processes`), role being
``head``, ``keeper`` or ``raylet/<lease>/<host>/<part>``; environments are built from nothing (the
server's variables never reach tenants' processes); where the nodes listen is decided by
:func:`node_ip` alone: 127.0.0.1 unless the pool's hosts are other machines.

A lease holds one raylet per host at first; growing it adds a raylet for the new devices (a
*part*, named by its first device id), so the raylets already running are left alone. A
raylet's GPUs are fixed when it starts, so shrinking stops whole parts (the controller decides
which; see :mod:`fastgpu.controller.pool_resize`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastgpu.domain.lease import (
    GPU_TYPE_LABEL,
    HOST_LABEL,
    LEASE_LABEL,
    PART_LABEL,
    lease_resource,
)
from fastgpu.errors import FastGPUError
from fastgpu.pool import processes, ray_head
from fastgpu.pool.hosts import Host
from fastgpu.pool.processes import MARKER_ENV, OsUser
from fastgpu.pool.remote import RemotePool
from fastgpu.pool.runtime import TenantPython, private_dir, write_private

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastgpu.pool.seam import Pool

log = logging.getLogger(__name__)

#: The cluster's own FastGPU token under ``secrets/`` (FASTGPU_TOKEN_FILE of its job drivers).
JOB_TOKEN_FILE = "job_token"

#: Tries of a raylet's `ray start` that gave up itself (see TenantCluster._join_raylet).
RAYLET_START_ATTEMPTS = 2
#: Raylets starting at once on this machine, over every tenant, platform and server process
#: (starts a killed server left running count): a raylet must register with its head within
#: 30 s of its start (fixed in Ray 2.60), and a burst of starts (a server taking over leases
#: mid-start, many grants at once) on a few cores made some miss that. The wait for a slot is
#: not part of that 30 s.
_RAYLET_STARTS = processes.StartSlots(2, "/raylet/")

#: The ports every node of a tenant cluster binds (head and raylets).
NODE_PORTS = (
    "dashboard_agent_listen",
    "dashboard_agent_grpc",
    "runtime_env_agent",
    "metrics_export",
    "node_manager",
    "object_manager",
)
#: The head's: no Ray Client server runs there (:mod:`fastgpu.pool.ray_head`); the
#: autoscaler's and the dashboard's metrics servers take theirs from the environment (else
#: Ray's fixed 44217 and 44227, which a second tenant's head could not bind).
HEAD_PORTS = ("gcs", "dashboard", *NODE_PORTS, "autoscaler_metrics", "dashboard_metrics")


def node_ip(pool: Pool | None) -> str | None:
    """Where a tenant cluster's nodes listen: the one rule (docs/threat-model.md).

    * ``127.0.0.1`` when every host of the pool is this machine (no pool, or
      :class:`~fastgpu.pool.seam.LocalPool`: the default, the tests, ``make demo``). Every
      listener of the head, the raylets, the keeper and the job drivers is then on loopback,
      and every process of the cluster runs with :func:`ray_head.loopback_env` so that its
      drivers keep that address (:mod:`fastgpu.pool.ray_head`).
    * ``None`` when agents run the pool's hosts (``pool.agents`` in the config:
      :class:`~fastgpu.pool.remote.RemotePool`): raylets on other machines must reach the head
      and each other, so Ray picks the machine's address and binds some ports on all
      interfaces, as configured by the operator (a firewall is theirs to set).
    """
    return None if isinstance(pool, RemotePool) else ray_head.LOOPBACK


@functools.cache
def _machine_ip() -> str:
    """This machine's address as Ray picks it for a node given ``--node-ip-address=127.0.0.1``
    when clusters span machines (``services.resolve_ip_for_localhost``)."""
    from ray._common.network_utils import node_ip_address_from_perspective

    return str(node_ip_address_from_perspective(None))


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, chosen at random *below* the kernel's ephemeral range.

    Ray binds them seconds later (a raylet's agents after ``ray start`` returns). A port the
    kernel handed out as "free" (port 0) comes from the ephemeral range, which every outgoing
    connection on the machine also draws from: under load one of them took the port in
    between, the agent failed to bind and the raylet exited with it (measured in the sweep
    tests). Below that range only explicit binds compete, and a random pick from thousands of
    ports rarely meets another. Each port is checked bindable on all interfaces (Ray binds some
    there), held open together while choosing.
    """
    import random

    low = 20000
    high = min(_ephemeral_range()[0], 65536) - 1
    if high - low < 10 * n:  # an unusual ephemeral range: fall back to the kernel's choice
        low, high = 0, 0
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            try:
                s.bind(("0.0.0.0", rng.randint(low, high) if high else 0))
            except OSError:
                s.close()
                continue
            if s.getsockname()[1] in {x.getsockname()[1] for x in socks}:
                s.close()
                continue
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def node_port_args(p: dict[str, int]) -> list[str]:
    """The ports flags every node of a tenant cluster takes (head and raylets)."""
    return [
        f"--dashboard-agent-listen-port={p['dashboard_agent_listen']}",
        f"--dashboard-agent-grpc-port={p['dashboard_agent_grpc']}",
        f"--runtime-env-agent-port={p['runtime_env_agent']}",
        f"--metrics-export-port={p['metrics_export']}",
        f"--node-manager-port={p['node_manager']}",
        f"--object-manager-port={p['object_manager']}",
        # Workers bind random free ports: no range to collide with other clusters'.
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]


def _named(proc: Any, name: str) -> bool:
    try:
        return bool(proc.name() == name)
    except Exception:
        return False


#: A raylet of a tenant's cluster: (lease, host, part), the part being its first device id.
RayletKey = tuple[str, str, int]


def running_raylets(prefix: str) -> dict[tuple[str, RayletKey], tuple[int, ...]]:
    """(tenant, (lease, host, part)) -> device ids of every live raylet whose marker starts
    with ``prefix`` (``<platform>/`` for all of a platform's, ``<platform>/<tenant>/raylet/``
    for one tenant's), in one scan of the processes. A raylet whose ``ray start`` still runs
    counts: a server that restarts while a start its predecessor began goes on must see those
    devices taken, or it gives them to another lease (the crash test found one device held by
    two leases' raylets)."""
    out: dict[tuple[str, RayletKey], tuple[int, ...]] = {}
    for value, procs in processes.marked(prefix).items():
        platform_tenant, sep, rest = value.partition("/raylet/")
        if not sep or not any(_named(p, "raylet") or processes.is_ray_start(p) for p in procs):
            continue  # not a raylet, or its raylet died (its agents are on their way out)
        tenant = platform_tenant.rpartition("/")[2]
        lease, _, host_part = rest.partition("/")
        host, _, part = host_part.partition("/")
        for proc in procs:  # any of them: a worker may have exited meanwhile
            try:
                visible = proc.environ().get("CUDA_VISIBLE_DEVICES", "")
            except Exception:
                continue
            ids = tuple(int(d) for d in visible.split(",") if d.strip())
            key = (lease, host, int(part) if part.isdigit() else min(ids, default=-1))
            out[(tenant, key)] = ids
            break
    return out


def head_args(p: dict[str, int], cpus: int, temp_dir: Path) -> list[str]:
    """``ray start`` arguments of a tenant's CPU-only head on the ports ``p`` (a
    ``ray_client_server`` port among them for a plain head: the bench's raw one)."""
    client = p.get("ray_client_server")
    return [
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={p['gcs']}",
        f"--dashboard-port={p['dashboard']}",
        *([f"--ray-client-server-port={client}"] if client else []),
        *node_port_args(p),
        "--num-gpus=0",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]


@dataclass(frozen=True)
class ClusterSpec:
    """What the pool needs to run one tenant's cluster."""

    platform_id: str
    tenant_id: str
    home: Path
    storage: Path
    python: TenantPython
    user: OsUser | None
    head_cpus: int = 1
    start_timeout_s: float = 90.0


def _start_raylet(
    spec: ClusterSpec, args: list[str], env: dict[str, str], log_path: Path, what: str, marker: str
) -> None:
    """`ray start` a raylet (``args`` but its ports) and wait until it joined. At most
    ``_RAYLET_STARTS`` at once; a start that gave up itself is tried once more on fresh ports:
    `ray start` gives a raylet 30 s to register with its head (fixed in Ray 2.60), which a
    loaded machine or a busy head can exceed. What a failed start started is stopped first."""
    for attempt in range(1, RAYLET_START_ATTEMPTS + 1):
        try:
            with _RAYLET_STARTS.slot(spec.start_timeout_s):
                ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))
                cmd = spec.python.ray(*args, *node_port_args(ports))
                proc = processes.spawn(cmd, env, spec.home, log_path, spec.user)
                processes.wait_started(proc, log_path, what, spec.start_timeout_s, marker)
            return
        except processes.StartFailed as exc:
            if not exc.exited or attempt == RAYLET_START_ATTEMPTS:
                raise
            log.warning("%s did not start (attempt %d); trying again", what, attempt)


def _head_env(ports: dict[str, int], api_url: str | None, home: Path) -> dict[str, str]:
    """What a head's environment adds to every node's."""
    env = {
        # No idle Python worker started ahead on the CPU-only head when the first driver
        # (the keeper) connects: ~45 MB per tenant, measured; a task there starts one.
        "RAY_prestart_worker_first_driver": "0",
        # No Ray Client server, fewer dashboard modules (and loopback only): see
        # fastgpu.pool.ray_head.
        "RAY_START_HOOK": ray_head.HOOK,
    }
    if api_url is not None:  # job drivers run on the head
        env["FASTGPU_ADDRESS"] = api_url
        env["FASTGPU_TOKEN_FILE"] = str(home / "secrets" / JOB_TOKEN_FILE)
    for name, var in (
        ("autoscaler_metrics", "AUTOSCALER_METRIC_PORT"),
        ("dashboard_metrics", "DASHBOARD_METRIC_PORT"),
    ):
        if name in ports:
            env[var] = str(ports[name])
    return env


def _saved_ports(home: Path) -> dict[str, int] | None:
    """The ports of the tenant's latest head start (``cluster.json``), if any."""
    state = home / "cluster.json"
    if not state.exists():
        return None
    return {k: int(v) for k, v in json.loads(state.read_text())["ports"].items()}


class TenantCluster:
    """Start, use and stop one tenant's Ray cluster. Thread-safe; slow calls (seconds) are
    ``start_head`` and ``add_raylet``."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._lock = threading.RLock()
        self._ports: dict[str, int] = {}
        #: The head's GCS server and each raylet, by pid (found by marker once started).
        self._head: int | None = None
        self._raylets: dict[RayletKey, int] = {}
        self._keeper: subprocess.Popen[bytes] | None = None
        self._keeper_lock = threading.Lock()
        #: Raylets being started here: the keeper stays while one is on its way.
        self._starting = 0
        #: The pool, when some hosts are run by agents: their raylets go through it.
        self.pool: Pool | None = None
        #: Set by the server: the API's address and a source of FastGPU tokens for the
        #: tenant's own jobs (one issued at each head start, kept in ``secrets/``), so a job
        #: sent with plain `ray job submit` acts as its tenant (FASTGPU_TOKEN_FILE).
        self.api_url: str | None = None
        self.job_token: Callable[[], str] | None = None

    def _remote(self, host: str) -> Pool | None:
        return self.pool if self.pool is not None and self.pool.owns(host) else None

    # -- paths and environment -----------------------------------------------------------
    @property
    def token_path(self) -> Path:
        return self.spec.home / "ray_token"

    @property
    def address(self) -> str:
        """The GCS address raylets and drivers join: ``127.0.0.1:<port>`` on a loopback-only
        cluster, else the machine's address, which is what Ray made of ``127.0.0.1`` there
        (and what agents on other machines can reach)."""
        return f"{node_ip(self.pool) or _machine_ip()}:{self._ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['dashboard']}"

    @property
    def loopback(self) -> bool:
        """Whether this cluster's nodes listen on 127.0.0.1 only (:func:`node_ip`)."""
        return node_ip(self.pool) is not None

    def marker(self, role: str) -> str:
        return f"{self.spec.platform_id}/{self.spec.tenant_id}/{role}"

    def env(
        self, role: str, devices: tuple[int, ...] = (), loopback: bool | None = None
    ) -> dict[str, str]:
        """The environment of the cluster's process ``role`` (``job``: a driver's), built
        from nothing; ``loopback`` (default :attr:`loopback`) keeps it on 127.0.0.1."""
        home = self.spec.home
        if loopback is None:
            loopback = self.loopback
        env = {
            # `python` in a job's entrypoint is the tenants' interpreter.
            "PATH": f"{Path(self.spec.python.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "FASTGPU_STORAGE": str(self.spec.storage),
            "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
            MARKER_ENV: self.marker(role),
        }
        if loopback:  # inherited by everything the node starts: workers, jobs' drivers
            env |= ray_head.loopback_env()
            if role.startswith("raylet/"):  # ray start of a raylet: see fastgpu.pool.ray_head
                env["RAY_START_HOOK"] = ray_head.HOOK
        if role == "head":
            env |= _head_env(self._ports, self.api_url, self.spec.home)
        return env

    def prepare_for_raylets(self, token: str) -> None:
        """On an agent's host: the dirs raylets of this tenant need, and the cluster's Ray
        token (sent by the server) in a 0600 file of the tenant's user."""
        self._prepare()
        write_private(self.token_path, token, self.spec.user)

    def _prepare(self) -> None:
        import secrets

        user = self.spec.user
        home = private_dir(self.spec.home, user)
        for sub in ("r", "logs", "tmp"):
            private_dir(home / sub, user)
        private_dir(self.spec.storage, user)
        if not self.token_path.exists():
            write_private(self.token_path, secrets.token_hex(32), user)

    def write_secret(self, name: str, value: str) -> Path:
        """A 0600 file of the tenant's user under ``secrets/`` of its home."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"secret file name {name!r}: a plain file name expected")
        folder = private_dir(self.spec.home / "secrets", self.spec.user)
        path = folder / name
        write_private(path, value, self.spec.user)
        return path

    # -- head ------------------------------------------------------------------------------
    def running(self) -> bool:
        return processes.alive(self._head)

    def adopt(self) -> bool:
        """Take over a head left running by a previous server process (its ports are in
        ``cluster.json``); True if there is one. A head whose ``ray start`` still runs is not
        taken here: :meth:`start_head` waits for that start, then adopts what it left."""
        with self._lock:
            if self.running():
                return True
            marker = self.marker("head")
            pid = processes.node_pid(marker, "gcs_server")
            if pid is None or processes.starting(marker):
                return False
            return self._take_head(pid)

    def _take_head(self, pid: int) -> bool:
        ports = _saved_ports(self.spec.home)
        if ports is None:
            return False
        self._ports, self._head = ports, pid
        return True

    def start_head(self) -> None:
        """Start the head (idempotent); return once its GCS and dashboard are up."""
        with self._lock:
            if self.running():
                return
            marker = self.marker("head")
            what = f"tenant {self.spec.tenant_id}'s head"
            # A server killed while it started this head left its `ray start` running: adopt
            # the head that start leaves rather than start a second one beside it.
            timeout = self.spec.start_timeout_s
            if processes.left_by_earlier_start(marker, "gcs_server", timeout):
                pid = processes.node_pid(marker, "gcs_server")
                if pid is not None and self._take_head(pid):
                    log.info("%s: adopted the head an earlier server process started", what)
                    return
                processes.stop_tree(None, grace_s=2.0, marker=marker)  # no ports known
            self._prepare()
            if self.job_token is not None:
                self.write_secret(JOB_TOKEN_FILE, self.job_token())
            self._ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS)), strict=True))
            # Written before the start: a server killed during it leaves the next one the
            # ports of the head that start brings up, not those of an earlier head.
            (self.spec.home / "cluster.json").write_text(json.dumps({"ports": self._ports}))
            args = head_args(self._ports, self.spec.head_cpus, self.spec.home / "r")
            log_path = self.spec.home / "logs" / "head.log"
            proc = processes.spawn(
                self.spec.python.ray(*args),
                self.env("head"),
                self.spec.home,
                log_path,
                self.spec.user,
            )
            processes.wait_started(proc, log_path, what, timeout, marker)
            self._head = processes.node_pid(marker, "gcs_server")

    # -- raylets ---------------------------------------------------------------------------
    def add_raylet(
        self,
        lease_id: str,
        host: Host,
        devices: tuple[int, ...],
        cpus: int | None = None,
        address: str | None = None,
    ) -> None:
        """Join a raylet holding ``devices`` of ``host`` for the lease (idempotent): the
        lease's part on that host named by its first device. A host run by an agent gets it
        through the pool; ``address`` (an agent's call) joins a head running elsewhere."""
        if not devices:
            raise ValueError("a raylet needs at least one device")
        devices = tuple(sorted(devices))
        with self._lock:
            if address is None and not self.running():
                raise FastGPUError(f"tenant {self.spec.tenant_id}'s cluster is not running")
            key = (lease_id, host.name, devices[0])
            if processes.alive(self._raylets.get(key)):
                return
            # Adopted: started by a previous server process. One whose `ray start` still runs
            # (running_raylets counts it) goes on: _join_raylet waits, then adopts or starts.
            role = self._raylet_role(key)
            if key in self.raylets() and not processes.starting(self.marker(role)):
                return
            local_head = address is None
            if local_head:
                # The lease's group comes next: start the keeper while the raylet joins.
                self._starting += 1
                if not self.keeper_running():
                    threading.Thread(target=self._warm_keeper, daemon=True).start()
        try:
            self._join_raylet(key, host, devices, cpus, address)
        finally:
            if local_head:
                with self._lock:
                    self._starting -= 1

    def _join_raylet(
        self,
        key: RayletKey,
        host: Host,
        devices: tuple[int, ...],
        cpus: int | None,
        address: str | None,
    ) -> None:
        lease_id = key[0]
        remote = self._remote(host.name)
        if remote is not None and address is None:
            remote.start_raylet(self, lease_id, host, devices, cpus)
            return
        joins_elsewhere = address is not None
        address = address or self.address
        labels = ",".join(
            f"{k}={v}"
            for k, v in (
                (LEASE_LABEL, lease_id),
                (GPU_TYPE_LABEL, host.gpu_type),
                (HOST_LABEL, host.name),
                (PART_LABEL, devices[0]),
            )
        )
        args = [
            "start",
            f"--address={address}",
            "--node-ip-address=127.0.0.1",
            f"--num-gpus={len(devices)}",
            f"--num-cpus={cpus if cpus is not None else len(devices)}",
            f"--labels={labels}",
            f"--resources={json.dumps({lease_resource(lease_id): len(devices)})}",
            "--disable-usage-stats",
        ]
        role = self._raylet_role(key)
        log_path = self.spec.home / "logs" / f"raylet-{lease_id}-{host.name}-{devices[0]}.log"
        # An agent's raylet (``address`` given) joins a head on another machine: never loopback.
        env = self.env(role, devices, loopback=self.loopback and not joins_elsewhere)
        what = f"raylet of lease {lease_id}"
        # A server killed while it started this raylet left its `ray start` running: adopt
        # what that start leaves, rather than start a second raylet of the lease on the same
        # devices (a 1-GPU lease would look like 2 GPUs to Ray).
        if processes.left_by_earlier_start(self.marker(role), "raylet", self.spec.start_timeout_s):
            log.info("%s: adopted the raylet an earlier server process started", what)
        else:
            _start_raylet(self.spec, args, env, log_path, what, self.marker(role))
        pid = processes.node_pid(self.marker(role), "raylet")
        with self._lock:
            if pid is not None:
                self._raylets[key] = pid

    @staticmethod
    def _raylet_role(key: RayletKey) -> str:
        lease_id, host_name, part = key
        return f"raylet/{lease_id}/{host_name}/{part}"

    def remove_raylet(self, key: RayletKey, grace_s: float = 5.0) -> int:
        """Stop one raylet of a lease (``(lease, host, part)``) and everything it runs."""
        with self._lock:
            pid = self._raylets.pop(key, None)
        remote = self._remote(key[1])
        if remote is not None:
            n = remote.stop_raylet(self, key, grace_s)
        else:
            n = processes.stop_tree(pid, grace_s, marker=self.marker(self._raylet_role(key)))
        self._stop_keeper_if_unleased()
        return n

    def raylets(self) -> dict[RayletKey, tuple[int, ...]]:
        """(lease, host, part) -> device ids of every live raylet of this cluster, as the
        processes say (their marker and ``CUDA_VISIBLE_DEVICES``), or for a host run by an
        agent, as its agent last reported."""
        found = running_raylets(self.marker("raylet/"))
        if self.pool is not None:
            found = {k: v for k, v in found.items() if not self.pool.owns(k[1][1])}
            found |= self.pool.running_raylets(self.spec.platform_id, self.spec.tenant_id)
        return {key: ids for (_, key), ids in found.items()}

    # -- keeper ----------------------------------------------------------------------------
    # The keeper runs while the cluster holds a lease (a raylet): started as a lease's first
    # raylet joins (in parallel: ready before the raylet is), stopped when the last one goes.
    # Any call starts it again; its groups are detached and outlive it.
    def call(self, op: str, **args: Any) -> Any:
        """Ask the keeper (started on first use) and return its result."""
        with self._keeper_lock:
            keeper = self._ensure_keeper()
            assert keeper.stdin is not None
            assert keeper.stdout is not None
            try:
                keeper.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
                keeper.stdin.flush()
                line = keeper.stdout.readline()
            except OSError:
                line = b""
            if not line:
                self._stop_keeper()
                raise FastGPUError(f"tenant {self.spec.tenant_id}'s keeper stopped")
            answer = json.loads(line)
        if not answer["ok"]:
            raise FastGPUError(f"keeper of tenant {self.spec.tenant_id}: {answer['error']}")
        return answer["result"]

    def _ensure_keeper(self) -> subprocess.Popen[bytes]:
        if self._keeper is not None and self._keeper.poll() is None:
            return self._keeper
        if not self.running():
            raise FastGPUError(f"tenant {self.spec.tenant_id}'s cluster is not running")
        log = self.spec.home / "logs" / "keeper.log"
        with open(log, "ab") as err:
            if self.spec.user is not None:
                os.chown(log, self.spec.user.uid, self.spec.user.gid)
            user = self.spec.user
            keeper = subprocess.Popen(
                [self.spec.python.executable, "-m", "fastgpu.pool.keeper", self.address],
                env=self.env("keeper"),
                cwd=self.spec.home,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=[] if user else None,
                umask=0o077,
            )
        assert keeper.stdout is not None
        first = keeper.stdout.readline()
        if not first:
            keeper.wait(timeout=10)
            raise FastGPUError(
                f"tenant {self.spec.tenant_id}'s keeper did not start; see {log}: "
                + log.read_text(errors="replace")[-1500:]
            )
        self._keeper = keeper
        return keeper

    def _warm_keeper(self) -> None:
        try:
            with self._keeper_lock:
                self._ensure_keeper()
        except FastGPUError as exc:  # the lease's first call starts it, or says why it cannot
            log.info("tenant %s's keeper did not start ahead: %s", self.spec.tenant_id, exc)

    def keeper_running(self) -> bool:
        keeper = self._keeper
        return keeper is not None and keeper.poll() is None

    def _stop_keeper_if_unleased(self) -> None:
        """Stop the keeper when no raylet of this cluster runs or is starting (~57 MB)."""
        if self._keeper is None:
            return
        with self._keeper_lock:
            with self._lock:
                starting = self._starting
            if starting or self.raylets():
                return
            self._stop_keeper()

    def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            processes.stop_tree(keeper.pid, 2.0, marker=self.marker("keeper"))
            keeper.wait(timeout=10)

    def busy(self) -> bool:
        """Whether a driver (a job, a `ray.init` session) runs in the cluster; True when the
        keeper cannot tell (never stop a cluster on a guess)."""
        try:
            return int(self.call("drivers")) > 0
        except FastGPUError:
            return True
        finally:
            self._stop_keeper_if_unleased()  # asked with no lease: it started for this

    # -- stop ------------------------------------------------------------------------------
    def stop(self, grace_s: float = 5.0) -> int:
        """Stop every process of this cluster (keeper, raylets, head); the dirs stay."""
        with self._keeper_lock:
            self._stop_keeper()
        with self._lock:
            raylets = list(self._raylets)
        if self.pool is not None:  # the agents' raylets of this tenant
            raylets += [k for k in self.raylets() if self.pool.owns(k[1]) and k not in raylets]
        n = sum(self.remove_raylet(key, grace_s) for key in raylets)
        for value, procs in processes.marked(self.marker("raylet/")).items():
            if self.pool is not None and self.pool.owns(value.split("/")[-2]):
                continue  # an agent's: not this machine's to stop
            n += processes.stop_tree(procs[0].pid, grace_s, marker=value)
        with self._lock:
            pid, self._head = self._head, None
            n += processes.stop_tree(pid, grace_s, marker=self.marker("head"))
        return n
