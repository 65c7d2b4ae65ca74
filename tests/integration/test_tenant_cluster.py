"""Tenant clusters on this machine (issue 9, step 1): real Ray heads and raylets, each run as
its tenant's own system user, and a tenant's driver attacking the other tenant and the server.

Two tenants share one module: alpha holds a raylet with devices 1 and 3 of host-0; beta holds
a raylet with device 0 of host-1. The probes run as alpha's user with alpha's cluster env, as
alpha's job would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastgpu.pool import processes
from fastgpu.pool.hosts import Host
from fastgpu.pool.runtime import (
    ensure_user,
    remove_user,
    tenant_python,
    traversable_dir,
    user_name,
)
from fastgpu.pool.tenant_cluster import ClusterSpec, TenantCluster

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="tenants' own OS users need root"),
]

HOST0 = Host("host-0", "A100", (0, 1, 2, 3))
HOST1 = Host("host-1", "A100", (4, 5))


@dataclass
class Pair:
    alpha: TenantCluster
    beta: TenantCluster
    server_dir: Path
    platform: str


def _cluster(platform: str, tenant: str, root: Path, py: object) -> TenantCluster:
    user = ensure_user(user_name(platform, tenant), f"fastgpu test tenant {tenant}")
    spec = ClusterSpec(
        platform_id=platform,
        tenant_id=tenant,
        home=root / tenant,
        storage=root / "storage" / tenant,
        python=py,  # type: ignore[arg-type]
        user=user,
    )
    return TenantCluster(spec)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = Path(os.environ["RAY_TMPDIR"])
    base.chmod(0o711)  # tenants pass through the test's temp dir to their own homes
    root = traversable_dir(base / f"c{os.getpid()}")
    traversable_dir(root / "storage")
    server_dir = tmp_path_factory.mktemp("server")
    server_dir.chmod(0o700)
    (server_dir / "admin_token").write_text("the-admin-token")
    py = tenant_python("os_users", None, root / "runtime")
    platform = f"test{os.getpid()}"
    pair = Pair(
        _cluster(platform, "alpha", root, py),
        _cluster(platform, "beta", root, py),
        server_dir,
        platform,
    )
    try:
        pair.alpha.start_head()
        pair.beta.start_head()
        pair.alpha.add_raylet("la", HOST0, (1, 3))
        pair.beta.add_raylet("lb", HOST1, (4,))
        yield pair
    finally:
        for c in (pair.alpha, pair.beta):
            c.stop(grace_s=2)
            assert c.spec.user is not None
            remove_user(c.spec.user.name)


def run_as(cluster: TenantCluster, code: str, timeout: float = 120) -> dict[str, object]:
    """Run ``code`` as a driver of ``cluster``, as its tenant's user; it prints one JSON line."""
    user = cluster.spec.user
    assert user is not None
    done = subprocess.run(
        [cluster.spec.python.executable, "-c", textwrap.dedent(code)],
        env={**cluster.env("job"), "RAY_ADDRESS": cluster.address},
        cwd=cluster.spec.home,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The last JSON line: Ray may print after it (an autoscaler warning about the pending
    # over-quota task reaches the driver's stdout when the machine is slow).
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            out: dict[str, object] = json.loads(line)
        except ValueError:
            continue
        return out
    raise AssertionError(f"no JSON line in the driver's output: {done.stdout[-3000:]}")


def test_each_cluster_sees_only_its_leased_devices(pair: Pair) -> None:
    out = run_as(
        pair.alpha,
        """
        import json, os, ray
        ray.init(logging_level="ERROR")
        @ray.remote(num_gpus=1, num_cpus=0)
        def ids():
            return os.environ["CUDA_VISIBLE_DEVICES"]
        gpus = ray.cluster_resources().get("GPU", 0)
        seen = sorted(ray.get([ids.remote() for _ in range(2)]))
        # More GPUs than the lease: Ray keeps it unscheduled (quota is physical).
        ref = ray.remote(num_gpus=3, num_cpus=0)(lambda: 1).remote()
        ready, _ = ray.wait([ref], timeout=3)
        print(json.dumps({"gpus": gpus, "seen": seen, "over_quota_ran": bool(ready),
                          "user": os.getuid()}))
        """,
    )
    assert out["gpus"] == 2
    assert out["seen"] == ["1", "3"]
    assert out["over_quota_ran"] is False
    assert pair.alpha.spec.user is not None
    assert out["user"] == pair.alpha.spec.user.uid


def test_lease_group_is_made_by_the_keeper_on_the_lease_raylet(pair: Pair) -> None:
    group = pair.alpha.call("create_group", name="fastgpu-lease-la", gpus=2, lease="la")
    assert pair.alpha.call("ready", name="fastgpu-lease-la", timeout_s=30) is True
    # Idempotent: the same name gives the same group.
    assert pair.alpha.call("create_group", name="fastgpu-lease-la", gpus=2, lease="la") == group
    nodes = {n["lease"]: n for n in pair.alpha.call("nodes") if n["alive"]}
    assert nodes["la"]["gpus"] == 2
    assert nodes["la"]["host"] == "host-0"
    assert nodes[None]["gpus"] == 0  # the head is CPU-only
    out = run_as(
        pair.alpha,
        f"""
        import json, os, ray
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        ray.init(logging_level="ERROR")
        pg = PlacementGroup(PlacementGroupID(bytes.fromhex({group!r})))
        @ray.remote(num_gpus=1, num_cpus=0)
        def where():
            return os.environ["CUDA_VISIBLE_DEVICES"]
        s = [PlacementGroupSchedulingStrategy(pg, i) for i in range(2)]
        print(json.dumps(sorted(ray.get([where.options(scheduling_strategy=x).remote()
                                         for x in s]))))
        """,
    )
    assert out == ["1", "3"]
    assert pair.alpha.call("remove_group", name="fastgpu-lease-la") is True
    assert pair.alpha.call("ready", name="fastgpu-lease-la", timeout_s=0) is False


def test_a_tenant_job_cannot_reach_the_other_tenant_or_the_server(pair: Pair) -> None:
    beta_head = processes.marked(pair.beta.marker("head"))[pair.beta.marker("head")][0].pid
    server_pid = os.getpid()
    out = run_as(
        pair.alpha,
        f"""
        import json, os, signal
        def attempt(fn):
            try:
                fn()
                return "allowed"
            except OSError as exc:
                return type(exc).__name__
        results = {{
            "server_state": attempt(lambda: os.listdir({str(pair.server_dir)!r})),
            "admin_token": attempt(lambda: open({str(pair.server_dir / "admin_token")!r}).read()),
            "beta_token": attempt(lambda: open({str(pair.beta.token_path)!r}).read()),
            "beta_home": attempt(lambda: os.listdir({str(pair.beta.spec.home)!r})),
            "beta_storage": attempt(lambda: os.listdir({str(pair.beta.spec.storage)!r})),
            "beta_environ": attempt(lambda: open("/proc/{beta_head}/environ").read()),
            "server_environ": attempt(lambda: open("/proc/{server_pid}/environ").read()),
            "signal_beta": attempt(lambda: os.kill({beta_head}, signal.SIGTERM)),
            "signal_server": attempt(lambda: os.kill({server_pid}, signal.SIGTERM)),
            "own_token": attempt(lambda: open(os.environ["RAY_AUTH_TOKEN_PATH"]).read()),
        }}
        print(json.dumps(results))
        """,
    )
    assert out.pop("own_token") == "allowed"
    assert set(out.values()) == {"PermissionError"}, out


def test_alpha_token_does_not_open_beta_cluster(pair: Pair) -> None:
    done = subprocess.run(
        [
            pair.alpha.spec.python.executable,
            "-c",
            "import ray; ray.init(logging_level='ERROR'); print('connected')",
        ],
        env={**pair.alpha.env("job"), "RAY_ADDRESS": pair.beta.address},
        cwd=pair.alpha.spec.home,
        user=pair.alpha.spec.user.uid if pair.alpha.spec.user else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "connected" not in done.stdout
    assert done.returncode != 0
    assert "auth" in (done.stdout + done.stderr).lower()


def test_no_token_in_any_environment_command_line_or_log(pair: Pair) -> None:
    tokens = [c.token_path.read_text().strip() for c in (pair.alpha, pair.beta)]
    for proc in [p for procs in processes.marked(pair.platform).values() for p in procs]:
        text = " ".join(proc.cmdline()) + " ".join(f"{k}={v}" for k, v in proc.environ().items())
        assert not any(t in text for t in tokens), proc.cmdline()
    for c in (pair.alpha, pair.beta):
        for path in c.spec.home.rglob("*"):
            if path.is_file() and path != c.token_path and not path.is_socket():
                data = path.read_bytes()
                assert not any(t.encode() in data for t in tokens), path


def test_a_restarted_server_finds_and_stops_raylets_by_marker(pair: Pair) -> None:
    """A new TenantCluster object (the server after a crash) sees alpha's raylet through the
    process markers, and stopping the lease's raylet by marker removes its GPUs."""
    adopted = TenantCluster(pair.alpha.spec)
    assert adopted.adopt() is True
    assert adopted.running()
    assert adopted.address == pair.alpha.address
    assert adopted.raylets() == {("la", "host-0", 1): (1, 3)}
    pair.alpha.add_raylet("la2", HOST0, (0,))
    assert adopted.raylets() == {("la", "host-0", 1): (1, 3), ("la2", "host-0", 0): (0,)}
    adopted.add_raylet("la2", HOST0, (0,))  # already running: nothing started
    assert adopted.remove_raylet(("la2", "host-0", 0), grace_s=2) > 0
    assert adopted.raylets() == {("la", "host-0", 1): (1, 3)}
    out = run_as(
        pair.alpha,
        """
        import json, time, ray
        ray.init(logging_level="ERROR")
        deadline = time.time() + 60
        while ray.available_resources().get("GPU", 0) > 2 and time.time() < deadline:
            time.sleep(0.5)
        print(json.dumps(ray.cluster_resources().get("GPU", 0)))
        """,
    )
    assert out == 2


def test_the_head_serves_the_jobs_api_and_no_ray_client(pair: Pair) -> None:
    """What a tenant's head leaves out (fastgpu.pool.ray_head): no Ray Client server, no
    dashboard modules for Prometheus; the Jobs API answers with the cluster's token."""
    import urllib.request

    from fastgpu.pool.ray_head import DASHBOARD_MODULES

    head = processes.node_tree(pair.alpha.marker("head"))
    cmds = []
    for p in head:
        try:
            cmds.append(" ".join(p.cmdline()))
        except Exception:
            continue
    assert not any("ray.util.client.server" in c for c in cmds)
    modules = {c.split()[0].split("-")[2] for c in cmds if c.startswith("ray-dashboard-")}
    assert modules
    assert modules <= DASHBOARD_MODULES
    assert {"JobHead", "ServeHead", "StateHead"} <= modules
    assert "MetricsHead" not in modules
    token = pair.alpha.token_path.read_text().strip()
    req = urllib.request.Request(
        f"{pair.alpha.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        assert isinstance(json.loads(resp.read()), list)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1: an IPv6 socket bound to 127.0.0.1
    return addr.is_loopback


def test_every_process_of_a_tenant_cluster_listens_on_loopback_only(pair: Pair) -> None:
    """Nothing listens beyond 127.0.0.1 unless configured (the pool here is this machine's):
    head (GCS, dashboard, agents), raylets, keeper, workers; found by the tenants' users."""
    import psutil

    assert pair.alpha.loopback
    assert pair.beta.loopback
    assert pair.alpha.call("nodes")  # the keeper, a driver, is running
    users = {c.spec.user.uid: c for c in (pair.alpha, pair.beta) if c.spec.user is not None}
    owner: dict[int, TenantCluster] = {}
    for proc in psutil.process_iter(["pid", "uids"]):
        uids = proc.info["uids"]
        if uids is not None and uids.real in users:
            owner[proc.info["pid"]] = users[uids.real]
    listening = [
        (owner[c.pid].spec.tenant_id, c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections("inet")
        if c.pid in owner and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM)
    ]
    beyond = [x for x in listening if not _loopback(x[1])]
    assert not beyond, beyond
    for c in (pair.alpha, pair.beta):  # not vacuous: each GCS is among them
        gcs = int(c.address.rpartition(":")[2])
        assert (c.spec.tenant_id, gcs) in {(t, port) for t, _, port in listening}


def test_a_driver_with_the_exports_of_fastgpu_connect_reaches_the_cluster(pair: Pair) -> None:
    """``ray.init()`` in a shell that has only what `fastgpu connect` printed (and PATH, HOME),
    run as the tenant's user: it reaches the loopback-only GCS and runs on the lease's raylet."""
    from fastgpu.cli.main import connect_env

    alpha = pair.alpha
    assert alpha.spec.user is not None
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(alpha.spec.home),
        **connect_env(alpha.address, alpha.dashboard_url, str(alpha.token_path)),
    }
    code = """
    import json, ray
    ray.init(logging_level="ERROR")
    @ray.remote(num_gpus=1, num_cpus=0)
    def where():
        return ray.util.get_node_ip_address()
    print(json.dumps({"gpus": ray.cluster_resources().get("GPU", 0),
                      "ip": ray.get(where.remote()),
                      "nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes())}))
    """
    done = subprocess.run(
        [alpha.spec.python.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=alpha.spec.home,
        user=alpha.spec.user.uid,
        group=alpha.spec.user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["gpus"] == 2
    assert out["ip"] == "127.0.0.1"
    assert set(out["nodes"]) == {"127.0.0.1"}


def test_the_keeper_runs_only_while_the_cluster_holds_a_raylet(pair: Pair) -> None:
    """Started as a lease's raylet joins, stopped with the last raylet; a call (the idle check's
    driver count) starts it and it stops again. Runs last: beta ends with no raylet."""
    beta = pair.beta
    beta.add_raylet("lb2", HOST1, (5,))
    assert beta.keeper_running()
    assert beta.remove_raylet(("lb2", "host-1", 5), grace_s=2) > 0
    assert beta.keeper_running()  # lb still runs
    assert beta.remove_raylet(("lb", "host-1", 4), grace_s=2) > 0
    assert not beta.keeper_running()
    assert not processes.marked(beta.marker("keeper"))
    assert beta.busy() is False
    assert not beta.keeper_running()
