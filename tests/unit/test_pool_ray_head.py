"""The start hook of a tenant's nodes (:mod:`fastgpu.pool.ray_head`) against the installed Ray:
the internals it relies on are still there, the dashboard modules it names are Ray's; and the
rule deciding where a tenant cluster listens (:func:`fastgpu.pool.tenant_cluster.node_ip`), with
the environment it gives every process of the cluster and ``fastgpu connect``'s exports."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fastgpu.pool import ray_head
from fastgpu.pool.hosts import Host
from fastgpu.pool.remote import RemotePool
from fastgpu.pool.runtime import TenantPython
from fastgpu.pool.seam import LocalPool
from fastgpu.pool.tenant_cluster import ClusterSpec, TenantCluster, node_ip


def _dashboard_modules() -> set[str]:
    from ray.dashboard import utils as dashboard_utils
    from ray.dashboard.subprocesses.module import SubprocessModule

    kinds = (dashboard_utils.DashboardHeadModule, SubprocessModule)
    return {m.__name__ for kind in kinds for m in dashboard_utils.get_all_modules(kind)}


def test_every_dashboard_module_of_this_ray_is_kept_or_dropped_by_name() -> None:
    """A name Ray does not have would stop the dashboard (it asserts what it loaded); a module
    a Ray upgrade adds must be decided on."""
    assert ray_head.DASHBOARD_MODULES.isdisjoint(ray_head.DROPPED_DASHBOARD_MODULES)
    assert _dashboard_modules() == ray_head.DASHBOARD_MODULES | ray_head.DROPPED_DASHBOARD_MODULES


def test_the_jobs_api_and_serve_api_modules_are_kept() -> None:
    assert {"JobHead", "ServeHead", "StateHead", "NodeHead"} <= ray_head.DASHBOARD_MODULES


def test_dashboard_command_sets_the_modules_once() -> None:
    cmd = ray_head.dashboard_command(["python", "dashboard.py", "--modules-to-load=UsageStatsHead"])
    flags = [a for a in cmd if a.startswith("--modules-to-load=")]
    assert cmd[:2] == ["python", "dashboard.py"]
    assert flags == ["--modules-to-load=" + ",".join(sorted(ray_head.DASHBOARD_MODULES))]


def test_the_hook_drops_the_client_server_and_picks_dashboard_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._private import parameter, ray_constants, services

    assert ray_constants.RAY_START_HOOK == "RAY_START_HOOK"  # what `ray start` reads
    params = parameter.RayParams(ray_client_server_port=10001)
    started: list[tuple[list[str], str]] = []

    def fake_start(command: list[str], process_type: str, *args: Any, **kw: Any) -> str:
        started.append((command, process_type))
        return "info"

    monkeypatch.setattr(services, "start_ray_process", fake_start)
    monkeypatch.setenv("RAY_START_HOOK", ray_head.HOOK)
    ray_head.configure(params, head=True)
    assert params.ray_client_server_port is None
    assert "RAY_START_HOOK" not in os.environ  # not passed on to the head's processes
    services.start_ray_process(["dash"], ray_constants.PROCESS_TYPE_DASHBOARD, False)
    services.start_ray_process(["gcs"], ray_constants.PROCESS_TYPE_GCS_SERVER, False)
    modules = started[0][0][1].removeprefix("--modules-to-load=").split(",")
    assert "JobHead" in modules
    assert "MetricsHead" not in modules
    assert started[1][0] == ["gcs"]


def test_the_hook_leaves_a_worker_node_alone_unless_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._private import ray_constants, services

    before = (services.start_ray_process, services.get_node_ip_address)
    params = SimpleNamespace(ray_client_server_port=None, node_ip_address="10.0.0.5")
    monkeypatch.setenv("RAY_START_HOOK", ray_head.HOOK)
    monkeypatch.delenv(ray_head.LOOPBACK_ENV, raising=False)
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_head.configure(params, head=False)
    assert (services.start_ray_process, services.get_node_ip_address) == before
    assert ray_constants.ENABLE_RAY_CLUSTER is enabled
    assert params.node_ip_address == "10.0.0.5"


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's switch off, as in a loopback-only cluster's processes; what the hook changes in
    Ray's modules is put back after the test."""
    from ray._private import ray_constants, services

    monkeypatch.setenv(ray_head.LOOPBACK_ENV, "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setattr(services, "get_node_ip_address", services.get_node_ip_address)
    monkeypatch.setattr(services, "start_ray_process", services.start_ray_process)


def test_ray_reads_the_switch_the_cluster_sets() -> None:
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == ray_head.LOOPBACK_ENV
    assert ray_head.loopback_env() == {ray_head.LOOPBACK_ENV: "0"}


@pytest.mark.usefixtures("loopback")
def test_with_the_switch_off_a_driver_keeps_the_loopback_address() -> None:
    """What every driver of a loopback-only cluster relies on (the keeper, jobs, Train, Tune,
    Serve, a user after `fastgpu connect`): ``ray.init("127.0.0.1:port")`` is not rewritten to
    the machine's address, and the driver's own node address is loopback too."""
    from ray._private import services

    assert services.canonicalize_bootstrap_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert services.get_node_ip_address() == "127.0.0.1"


@pytest.mark.usefixtures("loopback")
def test_the_hook_keeps_a_raylet_on_loopback_and_lets_it_join() -> None:
    """``ray start`` for a worker node aborts with the switch off, *after* the hook: the hook
    turns it on in that process and keeps its addresses loopback."""
    from ray._private import ray_constants, services

    params = SimpleNamespace(ray_client_server_port=None, node_ip_address=None)
    ray_head.configure(params, head=False)
    assert params.node_ip_address == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER is True  # the multi-node check passes
    # What `ray start` does next with the head's address and for the node's own.
    assert services.canonicalize_bootstrap_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert services.get_node_ip_address("127.0.0.1:6379") == "127.0.0.1"


@pytest.mark.usefixtures("loopback")
def test_the_hook_puts_a_head_on_loopback() -> None:
    from ray._private import ray_constants

    params = SimpleNamespace(ray_client_server_port=10001, node_ip_address="10.0.0.5")
    ray_head.configure(params, head=True)
    assert params.node_ip_address == "127.0.0.1"
    assert params.ray_client_server_port is None
    assert ray_constants.ENABLE_RAY_CLUSTER is False  # a head needs no multi-node check


def test_ray_start_calls_the_hook_before_its_multi_node_check() -> None:
    """The order the raylet's hook relies on (Ray 2.60 ``scripts.py``): hook, then the check,
    then the head's address resolved."""
    import inspect

    from ray.scripts import scripts

    source = inspect.getsource(scripts.start.callback)
    hook = source.index("RAY_START_HOOK")
    check = source.index("if not ray_constants.ENABLE_RAY_CLUSTER")
    resolve = source.index("services.canonicalize_bootstrap_address(")
    assert hook < check < resolve


def _cluster(tmp_path: Path, pool: Any = None) -> TenantCluster:
    spec = ClusterSpec(
        platform_id="p",
        tenant_id="t",
        home=tmp_path,
        storage=tmp_path / "storage",
        python=TenantPython("/usr/bin/python3"),
        user=None,
    )
    cluster = TenantCluster(spec)
    cluster.pool = pool
    cluster._ports = {"gcs": 6379, "dashboard": 8265}
    return cluster


def test_tenant_clusters_listen_on_loopback_unless_agents_run_the_hosts(tmp_path: Path) -> None:
    """The one rule (``node_ip``): all hosts on this machine -> 127.0.0.1; a pool of agents'
    hosts (other machines) -> the machine's address, as configured."""
    assert node_ip(None) == "127.0.0.1"
    assert node_ip(LocalPool([Host("h0", "A100", (0, 1))])) == "127.0.0.1"
    assert node_ip(RemotePool([Host("h0", "A100", (0, 1))])) is None

    local = _cluster(tmp_path)
    assert local.loopback
    assert local.address == "127.0.0.1:6379"
    for role in ("head", "keeper", "job", "raylet/l1/h0/0"):
        assert local.env(role)[ray_head.LOOPBACK_ENV] == "0", role
    assert local.env("head")["RAY_START_HOOK"] == ray_head.HOOK
    assert local.env("raylet/l1/h0/0")["RAY_START_HOOK"] == ray_head.HOOK
    assert "RAY_START_HOOK" not in local.env("keeper")

    remote = _cluster(tmp_path, RemotePool([Host("h0", "A100", (0, 1))]))
    assert not remote.loopback
    host, _, port = remote.address.rpartition(":")
    assert port == "6379"
    assert host != "127.0.0.1"  # what Ray made of 127.0.0.1 before: the machine's address
    for role in ("head", "keeper", "job", "raylet/l1/h0/0"):
        assert ray_head.LOOPBACK_ENV not in remote.env(role), role
    assert "RAY_START_HOOK" not in remote.env("raylet/l1/h0/0")
    # An agent's raylet joins a head on another machine: never loopback.
    assert ray_head.LOOPBACK_ENV not in local.env("raylet/l1/h0/0", loopback=False)


def test_connect_exports_the_switch_for_a_loopback_cluster_only() -> None:
    from fastgpu.cli.main import RAY_LOOPBACK_ENV, connect_env

    assert RAY_LOOPBACK_ENV == ray_head.LOOPBACK_ENV
    env = connect_env("127.0.0.1:6379", "http://127.0.0.1:8265", "/t/ray_token")
    assert env == {
        "RAY_ADDRESS": "127.0.0.1:6379",
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8265",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/t/ray_token",
        RAY_LOOPBACK_ENV: "0",
    }
    assert RAY_LOOPBACK_ENV not in connect_env("10.0.0.5:6379", "http://127.0.0.1:8265", "/t")


class _CountingRay(TenantPython):
    """`ray start` stand-in: a shell that counts its runs in ``<executable>`` (a file) and
    exits 1 for the first ``fails`` of them."""

    fails = 1

    def ray(self, *args: str) -> list[str]:
        count = self.executable
        script = (
            f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; "
            f'[ "$n" -ge {self.fails} ]'
        )
        return ["sh", "-c", script]


def test_a_raylet_whose_ray_start_gave_up_is_started_once_more(tmp_path: Path) -> None:
    from fastgpu.pool import processes

    cluster = _cluster(tmp_path)
    counter = tmp_path / "runs"
    cluster.spec = dataclasses.replace(cluster.spec, python=_CountingRay(str(counter)))
    host = Host("h0", "A100", (0, 1))
    cluster._join_raylet(("l1", "h0", 0), host, (0,), 1, None)
    assert counter.read_text().strip() == "2"  # failed once, then started

    counter.unlink()
    _CountingRay.fails = 5
    try:
        with pytest.raises(processes.StartFailed, match="exited with code 1"):
            cluster._join_raylet(("l2", "h0", 1), host, (1,), 1, None)
    finally:
        _CountingRay.fails = 1
    assert counter.read_text().strip() == "2"  # RAYLET_START_ATTEMPTS, no more


@contextlib.contextmanager
def _left_by_a_killed_server(
    tmp_path: Path, marker: str, name: str
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """What a server killed during a node's `ray start` leaves: the node's process ``name``
    (``raylet``, ``gcs_server``: a sleep by that name) and the `ray start` still running
    (1.5 s more), both carrying the node's ``marker``."""
    import shutil
    import sys

    from fastgpu.pool import processes

    env = {**os.environ, processes.MARKER_ENV: marker}
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    node = subprocess.Popen([str(exe), "30"], env=env)
    earlier = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(1.5)", "ray.scripts.scripts", "start"],
        env=env,
    )
    try:
        yield node, earlier
    finally:
        for proc in (node, earlier):
            proc.kill()
            proc.wait()


def test_a_raylet_an_earlier_server_was_starting_is_adopted_not_started_twice(
    tmp_path: Path,
) -> None:
    """A server killed while its `ray start` of a lease's raylet ran leaves that command
    running: the next server's add_raylet waits for it (a start still running is not yet an
    adopted raylet) and adopts the raylet it left."""
    cluster = _cluster(tmp_path)
    counter = tmp_path / "runs"
    cluster.spec = dataclasses.replace(cluster.spec, python=_CountingRay(str(counter)))
    key = ("l1", "h0", 0)
    marker = cluster.marker(cluster._raylet_role(key))
    with _left_by_a_killed_server(tmp_path, marker, "raylet") as (raylet, earlier):
        cluster._head = os.getpid()  # a running head, as far as add_raylet can tell
        cluster.keeper_running = lambda: True  # type: ignore[method-assign]
        cluster.add_raylet("l1", Host("h0", "A100", (0, 1)), (0,), cpus=1)
        assert earlier.poll() is not None  # it waited for the earlier start to end
        assert not counter.exists()  # and started no second raylet
        assert cluster._raylets[key] == raylet.pid


def test_a_head_an_earlier_server_was_starting_is_adopted_not_started_twice(
    tmp_path: Path,
) -> None:
    """A server killed while its `ray start --head` ran leaves that command running: the next
    server does not adopt the head half up, start_head waits for that start and adopts the
    head it left (with the ports saved before it), starting no second head."""
    import json

    cluster = _cluster(tmp_path)
    cluster._ports = {}
    counter = tmp_path / "runs"
    cluster.spec = dataclasses.replace(cluster.spec, python=_CountingRay(str(counter)))
    ports = {"gcs": 7001, "dashboard": 7002}
    (tmp_path / "cluster.json").write_text(json.dumps({"ports": ports}))
    with _left_by_a_killed_server(tmp_path, cluster.marker("head"), "gcs_server") as (
        gcs,
        earlier,
    ):
        assert cluster.adopt() is False  # its start still runs
        cluster.start_head()
        assert earlier.poll() is not None  # it waited for the earlier start to end
        assert not counter.exists()  # and started no second head
        assert cluster._head == gcs.pid
        assert cluster._ports == ports


class _SeeingRay(TenantPython):
    """`ray start` stand-in that copies ``cluster.json`` as it was when the start ran."""

    def ray(self, *args: str) -> list[str]:
        home = Path(self.executable)
        return ["cp", str(home / "cluster.json"), str(home / "seen.json")]


def test_the_head_ports_are_saved_before_its_ray_start_runs(tmp_path: Path) -> None:
    """A server killed during a head's start leaves the next one that head's ports, not those
    of an earlier head of the tenant (a stale ``cluster.json``)."""
    import json

    cluster = _cluster(tmp_path)
    cluster.spec = dataclasses.replace(cluster.spec, python=_SeeingRay(str(tmp_path)))
    (tmp_path / "cluster.json").write_text(json.dumps({"ports": {"gcs": 1, "dashboard": 2}}))
    cluster.start_head()
    seen = json.loads((tmp_path / "seen.json").read_text())["ports"]
    assert seen == cluster._ports
    assert seen["gcs"] != 1


def test_raylet_starts_an_earlier_server_left_running_take_start_slots(tmp_path: Path) -> None:
    """The limit on raylets starting at once holds across a takeover: `ray start`s a killed
    server left (not this process's children) take slots, and a start waits for them."""
    import sys
    import time

    from fastgpu.pool import processes

    def orphan_start(marker: str, seconds: float) -> None:
        """A `ray start` stand-in whose parent exits at once, as a killed server's would."""
        code = f"import time; time.sleep({seconds})"
        cmd = f"({sys.executable} -c '{code}' ray.scripts.scripts start &)"
        env = {**os.environ, processes.MARKER_ENV: marker}
        subprocess.run(["sh", "-c", cmd], env=env, check=True)

    slots = processes.StartSlots(2, "/raylet/")
    tag = f"p-{os.getpid()}/t/raylet/"
    mine = subprocess.Popen(  # this process's own start is not counted as another's
        [sys.executable, "-c", "import time; time.sleep(5)", "ray.scripts.scripts", "start"],
        env={**os.environ, processes.MARKER_ENV: tag + "l0/h0/0"},
    )
    try:
        orphan_start(tag + "l1/h0/0", 2.0)
        orphan_start(tag + "l2/h0/1", 2.0)
        orphan_start(f"p-{os.getpid()}/t/head", 5.0)  # not a raylet's: no slot
        deadline = time.monotonic() + 5
        while slots.elsewhere() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slots.elsewhere() == 2
        began = time.monotonic()
        with slots.slot(timeout_s=30):
            waited = time.monotonic() - began
        assert 0.5 < waited < 10  # until the earlier starts ended
        assert slots.elsewhere() == 0
        began = time.monotonic()
        with slots.slot(timeout_s=30), slots.slot(timeout_s=30):
            assert time.monotonic() - began < 1  # none left elsewhere: both at once
    finally:
        mine.kill()
        mine.wait()


def test_a_raylet_still_being_started_counts_as_running(tmp_path: Path) -> None:
    """A `ray start` of a raylet (its marker and devices in its environment) is reported by
    ``running_raylets`` before the raylet itself exists: its devices are taken."""
    import sys

    from fastgpu.pool import processes
    from fastgpu.pool.tenant_cluster import running_raylets

    marker = "unit-p1/t1/raylet/l9/host-0/2"
    env = {**os.environ, processes.MARKER_ENV: marker, "CUDA_VISIBLE_DEVICES": "2,3"}
    start = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "ray.scripts.scripts", "start"],
        env=env,
    )
    other = subprocess.Popen(  # a process of a node that is neither raylet nor its start
        [sys.executable, "-c", "import time; time.sleep(30)"],
        env={**env, processes.MARKER_ENV: "unit-p1/t1/raylet/l8/host-0/0"},
    )
    try:
        found = running_raylets("unit-p1/")
        assert found == {("t1", ("l9", "host-0", 2)): (2, 3)}
    finally:
        for proc in (start, other):
            proc.kill()
            proc.wait()
