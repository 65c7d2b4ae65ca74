"""The server with tenant clusters on (issue 9, step 2): leases become raylets in each
tenant's own Ray cluster, run as the tenant's OS user, on the devices the pool assigned.

One server process per module, no shared Ray cluster: a pool of two hosts (host-0: devices
0-1, host-1: devices 2-3) of logical A100s. Tenants reach their cluster through
``GET /cluster`` (what ``fastgpu connect`` prints) and submit Ray jobs to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from fastgpu.auth import write_secret
from fastgpu.controller.clusters import TenantClusters, platform_id
from fastgpu.pool import processes
from fastgpu.pool.hosts import Host
from fastgpu.pool.runtime import remove_platform_users
from fastgpu.sdk import Client
from tests.integration.platform_fixtures import (
    ELASTIC_ENV,
    Platform,
    checkpointed_after,
    end_elastic_job_soon,
    free_port,
    start_platform,
    stop_marked,
    wait_until,
)

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="tenants' own OS users need root"),
]

IDLE_S = 10.0
REPO = Path(__file__).resolve().parents[2]
POOL = {
    "hosts": [
        {"name": "host-0", "gpu_type": "A100", "devices": [0, 1]},
        {"name": "host-1", "gpu_type": "A100", "devices": [2, 3]},
    ]
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = Path(os.environ["RAY_TMPDIR"])
    base.chmod(0o711)  # tenants pass through the test's temp dir to their own dirs
    state = tmp_path_factory.mktemp("pool-state")
    platform = start_platform(
        state,
        pool=POOL,
        storage_root=str(base / f"storage-{os.getpid()}"),
        tenant_clusters={"idle_timeout_s": IDLE_S},
        controller={"min_duration_s": 1.0, "tick_interval_s": 0.25},
        # Long enough that a shrink ending at the checkpoint is told apart from one at the grace.
        scheduler={"grace_s": 60.0},
    )
    config = platform.config
    try:
        yield platform
    finally:
        platform.stop_server()
        clusters = TenantClusters(config)
        stop_marked(f"{clusters.platform}/")
        remove_platform_users(clusters.platform)
        remove_platform_users(
            platform_id(Path(os.environ["RAY_TMPDIR"]) / f"up{os.getpid()}" / "h")
        )


def _is_raylet(proc: psutil.Process) -> bool:
    try:
        return bool(proc.name() == "raylet")
    except psutil.Error:
        return False


def _is_train_worker(proc: psutil.Process) -> bool:
    try:
        return "RayTrainWorker" in proc.name() and proc.is_running()
    except psutil.Error:  # it stopped meanwhile
        return False


def raylet_parts(platform: Platform) -> list[dict[str, Any]]:
    """{lease, tenant, host, devices, user, pid, marker} of every live raylet of this
    platform's tenants (a lease that grew has several)."""
    prefix = f"{TenantClusters(platform.config).platform}/"
    out = []
    for marker, procs in processes.marked(prefix).items():
        tenant, _, role = marker[len(prefix) :].partition("/")
        if not role.startswith("raylet/"):
            continue
        _, lease, host, _part = role.split("/")
        raylet = next((p for p in procs if _is_raylet(p)), None)
        if raylet is None:
            continue  # its raylet died; what is left of its node is on its way out
        try:
            env, user = raylet.environ(), raylet.username()
        except psutil.Error:  # it stopped meanwhile
            continue
        out.append(
            {
                "lease": lease,
                "tenant": tenant,
                "host": host,
                "devices": env["CUDA_VISIBLE_DEVICES"],
                "user": user,
                # The raylet's: the node's lowest pid may be a worker once pids wrap around.
                "pid": raylet.pid,
                "marker": marker,
            }
        )
    return out


def raylets(platform: Platform) -> dict[str, dict[str, Any]]:
    """lease id -> its raylet (the first, for a lease that has several)."""
    out: dict[str, dict[str, Any]] = {}
    for part in raylet_parts(platform):
        out.setdefault(part["lease"], part)
    return out


def ray_job(cluster: dict[str, Any], tmp: Path, code: str, timeout: float = 180) -> Any:
    """Run ``code`` as a Ray job in the tenant's cluster with `ray job submit`, as a user
    would after `fastgpu connect`; return the JSON it printed last."""
    tmp.mkdir(parents=True, exist_ok=True)
    token = tmp / "ray_token"
    write_secret(token, cluster["ray_token"])
    (tmp / "wd").mkdir(exist_ok=True)
    (tmp / "wd" / "job.py").write_text(code)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_API_SERVER_ADDRESS": cluster["dashboard_url"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("ray")),
            "job",
            "submit",
            "--working-dir",
            str(tmp / "wd"),
            "--",
            "python",
            "job.py",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]
    return json.loads(lines[-1])


GPU_PROBE = """
import json, os, ray
from ray._raylet import PlacementGroupID
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as S
ray.init()
pg = PlacementGroup(PlacementGroupID(bytes.fromhex(os.environ.get("PG", "") or "{pg}")))
@ray.remote(num_gpus=1, num_cpus=0)
def where():
    return os.environ["CUDA_VISIBLE_DEVICES"], os.getuid()
out = ray.get([where.options(scheduling_strategy=S(pg, i)).remote() for i in range({n})])
print(json.dumps({{"seen": sorted(d for d, _ in out), "uids": sorted({{u for _, u in out}}),
                  "gpus": ray.cluster_resources().get("GPU", 0)}}))
"""


def test_a_lease_is_raylets_in_the_tenant_cluster(pool: Platform, tmp_path: Path) -> None:
    token = pool.tenant("alpha", A100=4)
    alpha = pool.client(token)
    lease = alpha.request_lease(2, "A100", "10m", wait=True, timeout=180)
    assert lease.state == "RESERVED", lease
    mine = raylets(pool)
    assert set(mine) == {lease.id}
    info = mine[lease.id]
    assert info["user"].startswith("fg")  # the tenant's own OS user, not root
    devices = sorted(int(d) for d in info["devices"].split(","))
    assert len(devices) == 2
    cluster = alpha.cluster()
    assert cluster["isolation"] == "os_users"
    out = ray_job(
        cluster,
        tmp_path,
        GPU_PROBE.format(pg=lease.data["placement_group_id"], n=2),
    )
    assert out["seen"] == [str(d) for d in devices]
    assert out["gpus"] == 2  # the tenant's Ray sees its lease, nothing more
    alpha.release_lease(lease.id)
    wait_until(lambda: lease.id not in raylets(pool), timeout=30)


JOB_AS_TENANT = """
import json, os
import fastgpu as fgpu
path = os.environ["FASTGPU_TOKEN_FILE"]
client = fgpu.Client()  # no token given: the cluster's own file
lease = client.request_lease(1, "A100", "2m", wait=True, timeout=150)
st = os.stat(path)
print(json.dumps({"tenant": client.whoami()["tenant"], "lease": lease.state,
                  "mode": st.st_mode & 0o777, "owner": st.st_uid, "me": os.getuid(),
                  "token_in_env": any("fgpu_" in v for v in os.environ.values())}))
lease.release()
"""


def test_a_plain_ray_job_submit_acts_as_its_tenant(pool: Platform, tmp_path: Path) -> None:
    """A job sent with plain `ray job submit` (after `fastgpu connect`) finds its tenant's
    FastGPU token as a 0600 file of the tenant's user on its cluster's head, issued when the
    head started and labelled `cluster`; it takes a lease with no token in any environment."""
    token = pool.tenant("rayjobs", A100=1)
    me = pool.client(token)
    out = ray_job(me.cluster(), tmp_path, JOB_AS_TENANT)
    assert out["tenant"] == "rayjobs"
    assert out["lease"] == "RESERVED"
    assert out["mode"] == 0o600
    assert out["owner"] == out["me"] != 0  # the tenant's user, not root
    assert out["token_in_env"] is False
    labels = [t["label"] for t in pool.client().list_tokens("rayjobs")]
    assert labels.count("cluster") == 1, labels


SEED_SAMPLE = REPO / "docs" / "examples" / "seed_sample.py"


def test_the_seed_sample_runs_as_written(pool: Platform) -> None:
    """docs/examples/seed_sample.py, the seed's interface verbatim (token from the
    environment, ``perf=10.0`` picks the cheapest type that meets it, ``time`` in minutes),
    trains on a lease of the default mode and releases it."""
    token = pool.tenant("seed-sample", A100=1)
    env = {**os.environ, "FASTGPU_TOKEN": token, "FASTGPU_ADDRESS": pool.url}
    done = subprocess.run(
        [sys.executable, str(SEED_SAMPLE)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "released: RELEASED" in done.stdout
    losses = [float(x.split()[-1]) for x in done.stdout.splitlines() if x.startswith("step")]
    assert losses[-1] < losses[0]
    leases = pool.client(token).list_leases()
    assert [(x.state, x.gpus, x.gpu_type) for x in leases] == [("RELEASED", 1, "A100")]


def test_two_tenants_get_disjoint_devices_in_separate_clusters(
    pool: Platform, tmp_path: Path
) -> None:
    alpha = pool.client(pool.tenant("a2", A100=2))
    beta = pool.client(pool.tenant("b2", A100=2))
    la = alpha.request_lease(2, "A100", "10m", wait=True, timeout=180)
    lb = beta.request_lease(2, "A100", "10m", wait=True, timeout=180)
    assert (la.state, lb.state) == ("RESERVED", "RESERVED")
    seen = raylets(pool)
    da = set(seen[la.id]["devices"].split(","))
    db = set(seen[lb.id]["devices"].split(","))
    assert da.isdisjoint(db)
    assert seen[la.id]["user"] != seen[lb.id]["user"]
    ca, cb = alpha.cluster(), beta.cluster()
    assert ca["address"] != cb["address"]
    assert ca["ray_token"] != cb["ray_token"]
    # Each head's autoscaler and dashboard serve their metrics on ports of their own (Ray's
    # fixed 44217/44227 would leave the second head without them).
    clusters = TenantClusters(pool.config)
    listening = {
        c.laddr.port: c.pid
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid
    }
    for client in (alpha, beta):
        home = clusters.spec(client.whoami()["tenant_id"]).home
        ports = json.loads((home / "cluster.json").read_text())["ports"]
        for name in ("autoscaler_metrics", "dashboard_metrics"):
            assert ports[name] in listening, (name, ports[name])
    # The pool is full: a third lease waits for capacity, it does not overcommit a device.
    pending = alpha.request_lease(1, "A100", "10m")
    assert pending.state == "PENDING"
    out = ray_job(cb, tmp_path, GPU_PROBE.format(pg=lb.data["placement_group_id"], n=2))
    assert sorted(out["seen"]) == sorted(db)
    alpha.release_lease(pending.id)
    alpha.release_lease(la.id)
    beta.release_lease(lb.id)
    wait_until(lambda: not ({la.id, lb.id} & set(raylets(pool))), timeout=30)


def test_expiry_stops_the_raylet(pool: Platform) -> None:
    alpha = pool.client(pool.tenant("short", A100=1))
    lease = alpha.request_lease(1, "A100", "3s", wait=True, timeout=180)
    assert lease.state == "RESERVED"
    assert lease.id in raylets(pool)
    wait_until(lambda: alpha.get_lease(lease.id).state == "EXPIRED", timeout=30)
    wait_until(lambda: lease.id not in raylets(pool), timeout=30)


def test_a_restarted_server_adopts_raylets_and_stops_orphans(pool: Platform) -> None:
    alpha = pool.client(pool.tenant("crash", A100=2))
    lease = alpha.request_lease(1, "A100", "10m", wait=True, timeout=180)
    before = raylets(pool)[lease.id]
    pool.kill_server()
    # While the server is down, a raylet appears that no lease accounts for.
    clusters = TenantClusters(pool.config)
    tenant_id = before["tenant"]
    cluster = clusters.get(tenant_id)
    assert cluster.running()
    free = {"host-0": {0, 1}, "host-1": {2, 3}}
    host = next(h for h, ids in free.items() if h != before["host"])
    cluster.add_raylet("orphan", Host(host, "A100", tuple(sorted(free[host]))), (min(free[host]),))
    assert "orphan" in raylets(pool)
    pool.start_server()
    wait_until(lambda: "orphan" not in raylets(pool), timeout=60)
    after = raylets(pool)
    assert after[lease.id]["pid"] == before["pid"]  # adopted, not restarted
    fresh = pool.client(pool.admin).get_lease(lease.id)
    assert fresh.state == "RESERVED"
    alpha.release_lease(lease.id)
    wait_until(lambda: lease.id not in raylets(pool), timeout=30)


def test_cluster_access_is_per_tenant(pool: Platform) -> None:
    token = pool.tenant("viewer", A100=1)
    client = pool.client(token)
    with pytest.raises(Exception, match="not found"):
        client.cluster("alpha")
    admin = pool.client()
    with pytest.raises(Exception, match="must name the tenant"):
        admin.cluster()
    assert admin.cluster("viewer")["address"] == client.cluster()["address"]


@pytest.fixture(autouse=True)
def _server_log_on_failure(request: pytest.FixtureRequest, pool: Platform) -> Iterator[None]:
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print("---- server log ----\n" + (pool.state_dir / "server.log").read_text())


JOB_SCRIPT = Path(__file__).parent / "job_scripts" / "isolated_job.py"


def test_a_job_runs_in_its_tenant_cluster_and_reaches_nothing_else(
    pool: Platform, tmp_path: Path
) -> None:
    """`fastgpu job submit` sends the job to alpha's own cluster; there it takes its lease
    with a token it reads from a file, and fails to reach beta, the server and its state."""
    alpha = pool.client(pool.tenant("jobs-a", A100=2))
    beta = pool.client(pool.tenant("jobs-b", A100=2))
    # beta holds a lease, so its cluster runs (a target) and is not idle.
    beta_lease = beta.request_lease(1, "A100", "10m", wait=True, timeout=180)
    beta_id = beta.whoami()["tenant_id"]
    beta_spec = TenantClusters(pool.config).spec(beta_id)
    beta_head = processes.marked(f"{beta_spec.platform_id}/{beta_id}/head")
    beta_pid = next(iter(beta_head.values()))[0].pid
    assert pool.proc is not None
    targets = [
        str(pool.state_dir),
        str(pool.state_dir / "fastgpu.db"),
        str(pool.state_dir / "admin_token"),
        str(pool.state_dir / "config.yaml"),
        str(beta_spec.home),
        str(beta_spec.home / "ray_token"),
        str(beta_spec.storage),
    ]
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "isolated_job.py").write_text(JOB_SCRIPT.read_text())
    job = alpha.submit_job(
        "python isolated_job.py",
        gpus=2,
        gpu_type="A100",
        duration="5m",
        working_dir=wd,
        env={
            "PROBE_PATHS": json.dumps(targets),
            "PROBE_PIDS": json.dumps([beta_pid, pool.proc.pid]),
        },
    )
    final = wait_until(
        lambda: (
            (s := alpha.job_status(job["id"]))["status"] in ("SUCCEEDED", "FAILED", "STOPPED") and s
        ),
        timeout=300,
        interval=1.0,
    )
    logs = alpha.job_logs(job["id"])
    assert final["status"] == "SUCCEEDED", logs[-3000:]
    out = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
    assert out["state"] == "RESERVED"
    assert len(out["devices"]) == 2
    assert out["cluster_gpus"] == 2
    assert out["token_in_env"] is False
    assert out["uid"] != 0
    assert set(out["probes"].values()) == {"PermissionError"}, out["probes"]
    # The job is alpha's: beta cannot see it, in the API or in its own cluster.
    assert [j["id"] for j in alpha.list_jobs()] == [job["id"]]
    assert beta.list_jobs() == []
    with pytest.raises(Exception, match="not found"):
        beta.job_status(job["id"])
    beta.release_lease(beta_lease.id)


def head_running(pool: Platform, client: Any) -> bool:
    prefix = f"{TenantClusters(pool.config).platform}/{client.whoami()['tenant_id']}/head"
    return bool(processes.marked(prefix))


SLEEPER = "import ray, time; ray.init(); time.sleep({s}); print('slept')"


def test_an_idle_cluster_stops_and_a_running_job_keeps_it(pool: Platform, tmp_path: Path) -> None:
    """No lease and no driver for idle_timeout_s: the tenant's cluster stops (it starts again
    on the next need). A job running without a lease keeps it up."""
    idle = pool.client(pool.tenant("idler", A100=1))
    first = idle.cluster()
    assert head_running(pool, idle)
    wait_until(lambda: not head_running(pool, idle), timeout=IDLE_S + 30, interval=0.5)
    assert idle.list_jobs() == []  # a read does not start a stopped cluster
    assert not head_running(pool, idle)
    again = idle.cluster()  # the next need starts it again
    assert head_running(pool, idle)
    assert again["ray_token"] == first["ray_token"]  # its token file stays
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "sleeper.py").write_text(SLEEPER.format(s=IDLE_S * 2.5))
    job = idle.submit_job("python sleeper.py", working_dir=wd)
    wait_until(lambda: idle.job_status(job["id"])["status"] == "RUNNING", timeout=60)
    time.sleep(IDLE_S * 1.5)
    assert idle.job_status(job["id"])["status"] == "RUNNING"
    assert head_running(pool, idle)  # busy: a driver runs there
    final = wait_until(
        lambda: (s := idle.job_status(job["id"]))["status"] in ("SUCCEEDED", "FAILED") and s,
        timeout=120,
    )
    assert final["status"] == "SUCCEEDED", idle.job_logs(job["id"])[-2000:]


def test_no_token_in_any_log_environment_or_command_line(pool: Platform) -> None:
    """Every token this module made (tenants' API tokens, jobs' tokens, clusters' Ray tokens)
    is found only in its own 0600 file: not in a log, an environment or a command line."""
    clusters = TenantClusters(pool.config)
    secrets_files = {
        p
        for p in clusters.root.rglob("*")
        if p.is_file() and (p.name == "ray_token" or p.parent.name == "secrets")
    }
    tokens = {p.read_text().strip() for p in secrets_files}
    tokens |= {c.token for c in pool.clients} - {pool.admin}
    assert len(tokens) >= 6, tokens
    for path in [*clusters.root.rglob("*"), *pool.state_dir.rglob("*")]:
        if path in secrets_files or not path.is_file() or path.is_socket():
            continue
        data = path.read_bytes()
        leaked = [t[:6] for t in tokens if t.encode() in data]
        assert not leaked, f"{path} holds tokens starting {leaked}"
    for procs in processes.marked(f"{clusters.platform}/").values():
        for proc in procs:
            try:
                text = " ".join(proc.cmdline()) + str(proc.environ())
            except psutil.Error:
                continue
            assert not any(t in text for t in tokens), proc.cmdline()


def test_up_connect_and_down_with_tenant_clusters() -> None:
    """`fastgpu up` (tenant clusters: the default) starts no shared Ray; `fastgpu connect`
    writes a 0600 token file and prints only its path; `fastgpu down` stops every tenant
    process."""
    base = Path(os.environ["RAY_TMPDIR"]) / f"up{os.getpid()}"
    home = base / "h"
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_TOKEN", "FASTGPU_"))}
    env |= {"FASTGPU_HOME": str(home), "HOME": str(base)}
    cfg = base / "fastgpu.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gpu_types": {"A100": {"price_per_hour": 2.0}},
                "tenants": {"team": {"quotas": {"A100": {"nominal": 2}}}},
                "api": {"port": free_port()},
            }
        )
    )

    def fastgpu(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"FASTGPU_TOKEN": token} if token else {}
        return subprocess.run(
            [sys.executable, "-m", "fastgpu.cli.main", *args],
            env=env | extra, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    out = fastgpu("up", "--gpus", "2", "--config", str(cfg), "-o", "json")
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        info = json.loads(out.stdout)
        assert info["tenant_clusters"] is True
        assert info["ray_address"] is None  # no shared cluster
        token = info["new_tenant_tokens"]["team"]
        printed = fastgpu("connect", token=token)
        assert printed.returncode == 0, printed.stderr
        assert token not in printed.stdout
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in printed.stdout.splitlines()
        )
        token_file = Path(exports["RAY_AUTH_TOKEN_PATH"])
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert exports["RAY_ADDRESS"].startswith("127.0.0.1:")
        team = Client(token=token, address=info["api"])
        lease = team.request_lease(2, "A100", "5m", wait=True, timeout=180)
        assert lease.state == "RESERVED"
        team.close()
        assert processes.marked(f"{platform_id(home)}/")
    finally:
        down = fastgpu("down", "-o", "json")
    assert down.returncode == 0, down.stderr
    assert processes.marked(f"{platform_id(home)}/") == {}


def test_training_job_runs_on_its_lease_raylets(pool: Platform) -> None:
    """jobs/train_classifier.py (bf16) under `fastgpu job submit --gpus 2`: the job takes its lease,
    Ray Train's workers run on the lease's raylets (label fastgpu.io/lease) in the tenant's
    cluster, and the run's files are the tenant user's, in its storage folder."""
    ml = pool.client(pool.tenant("ml", A100=2))
    me = ml.whoami()
    assert me["tenant_clusters"] is True
    assert me["storage_key"] == f"t-{me['tenant_id']}"
    job = ml.submit_job(
        "python train_classifier.py --epochs 1 --run-name pooled --cpus-per-worker 0.25"
        " --precision bf16",
        gpus=2,
        gpu_type="A100",
        duration="10m",
        working_dir=REPO / "jobs",
    )
    final = wait_until(
        lambda: (
            (s := ml.job_status(job["id"]))["status"] in ("SUCCEEDED", "FAILED", "STOPPED") and s
        ),
        timeout=400,
        interval=2.0,
    )
    logs = ml.job_logs(job["id"])
    assert final["status"] == "SUCCEEDED", logs[-4000:]
    result = json.loads(next(x for x in reversed(logs.splitlines()) if x.startswith("{")))
    run_dir = Path(result["run_dir"])
    assert run_dir == Path(me["storage_root"]) / me["storage_key"] / "runs" / "pooled"
    assert result["checkpoint"]
    manifest = json.loads((Path(result["checkpoint"]) / "fastgpu_checkpoint.json").read_text())
    assert manifest["metadata"]["precision"] == "bf16"  # mixed precision on the lease's raylets
    assert result["metrics"]["test_accuracy"] > 0.5
    assert run_dir.stat().st_uid != 0  # written by the tenant's user, not the platform's
    assert final["lease"]["workload"] == "train:pooled"
    assert final["lease"]["state"] == "RELEASED"
    assert final["lease"]["gpus"] == 2


def test_a_raylet_that_dies_fails_its_lease_and_frees_its_gpus(pool: Platform) -> None:
    """The lease's raylet is killed (a crash, an OOM kill, its host gone): reconcile ends the
    lease as node_lost, what was left of that node stops, and its GPUs are leased again."""
    client = pool.client(pool.tenant("fragile", A100=2))
    lease = client.request_lease(2, "A100", "10m", wait=True, timeout=180)
    info = raylets(pool)[lease.id]
    marker = info["marker"]
    pid = processes.node_pid(marker, "raylet")
    assert pid is not None
    os.kill(pid, 9)
    failed = wait_until(
        lambda: (x := client.get_lease(lease.id)).state == "FAILED" and x, timeout=30
    )
    assert failed.data["reason"] == "node_lost"
    assert info["host"] in failed.data["reason_detail"]
    wait_until(lambda: not processes.node_tree(marker), timeout=30)
    again = client.request_lease(2, "A100", "10m", wait=True, timeout=180)
    assert again.state == "RESERVED"
    client.release_lease(again.id)


JOB_SCRIPTS = Path(__file__).resolve().parent / "job_scripts"


class DeviceWatch(threading.Thread):
    """Samples the platform's raylets while a test runs: records every device seen in two
    raylets at once (two leases, or a lease and a drained part, on one GPU)."""

    def __init__(self, platform: Platform) -> None:
        super().__init__(daemon=True)
        self.platform = platform
        self.clashes: list[Any] = []
        self.samples = 0
        #: (time, lease -> GPUs in its raylets) at each sample.
        self.held: list[tuple[float, dict[str, int]]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            seen: dict[tuple[str, str], str] = {}
            held: dict[str, int] = {}
            for part in raylet_parts(self.platform):
                held[part["lease"]] = held.get(part["lease"], 0) + part["devices"].count(",") + 1
                for d in part["devices"].split(","):
                    other = seen.setdefault((part["host"], d), part["marker"])
                    if other != part["marker"]:
                        self.clashes.append((part["host"], d, other, part["marker"]))
            self.held.append((time.time(), held))
            self.samples += 1

    def first(self, lease: str, gpus: int, after: float) -> float:
        """When the lease's raylets first held ``gpus`` GPUs after ``after``."""
        return next(t for t, held in self.held if t > after and held.get(lease) == gpus)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def test_an_elastic_training_job_grows_and_shrinks_as_raylets(pool: Platform) -> None:
    """A tenant's training job on an elastic 2..4 GPU lease: when another tenant frees 2 GPUs
    the lease grows (a raylet joins per host; the ones running stay) and the run continues
    on 4 workers from its checkpoint; when that tenant asks for its nominal 2 back, the lease
    shrinks: the run checkpoints, the raylets it gives back stop (at the checkpoint, well
    before the grace), and it continues on 2; a Train worker killed then is restarted from the
    last checkpoint. No GPU is ever in two raylets."""
    holder = pool.client(pool.tenant("holder", A100=2))
    grower = pool.client(pool.tenant("grower", borrowing_limit=2, A100=2))
    held = holder.request_lease(2, "A100", "10m", wait=True, timeout=180)
    me = grower.whoami()
    log = Path(me["storage_root"]) / me["storage_key"] / "elastic.jsonl"
    run = log.parent / "runs" / "elastic"
    watch = DeviceWatch(pool)
    watch.start()

    def starts() -> list[dict[str, Any]]:
        text = log.read_text() if log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    job: dict[str, Any] = {}
    try:
        job = grower.submit_job(
            "python elastic_job.py",
            gpus=4,
            min_gpus=2,
            gpu_type="A100",
            duration="10m",
            working_dir=JOB_SCRIPTS,
            # Far more steps than the test needs (it ends the job once it has seen it all):
            # on a loaded machine the 200 it had ran out before the worker was killed.
            env=ELASTIC_ENV | {"STEPS": "2000", "STEP_S": "0.25"},
        )
        wait_until(lambda: starts(), timeout=300, interval=0.5)
        (lease,) = [x for x in grower.list_leases(live=True) if x.state == "BOUND"]
        assert lease.held_gpus == 2
        first = {p["pid"] for p in raylet_parts(pool) if p["lease"] == lease.id}
        held.release()
        freed = time.time()
        wait_until(lambda: grower.get_lease(lease.id).held_gpus == 4, timeout=60, interval=0.2)
        resized = time.time()
        grown = wait_until(
            lambda: next((s for s in starts() if s["world"] == 4), None), timeout=240, interval=0.5
        )
        parts = [p for p in raylet_parts(pool) if p["lease"] == lease.id]
        assert sorted(d for p in parts for d in p["devices"].split(",")) == ["0", "1", "2", "3"]
        assert first <= {p["pid"] for p in parts}  # growing left the first raylet alone
        assert grown["start"] > 0  # continued from its checkpoint
        asked = time.time()
        back = holder.request_lease(2, "A100", "10m", wait=False)
        wait_until(lambda: grower.get_lease(lease.id).held_gpus == 2, timeout=60, interval=0.2)
        shrunk = time.time()
        back = back.wait(timeout=240)
        reclaimed_s = time.time() - asked
        assert back.state == "RESERVED"
        mine = [p for p in raylet_parts(pool) if p["lease"] == lease.id]
        assert sum(len(p["devices"].split(",")) for p in mine) == 2
        theirs = raylets(pool)[back.id]["devices"].split(",")
        assert not set(theirs) & {d for p in mine for d in p["devices"].split(",")}
        # A Train worker killed (OOM, a crash) on the shrunk lease: the run restarts its worker
        # group from the last checkpoint, on the same raylets, and goes on.
        shrunk_start = wait_until(
            lambda: next((s for s in starts() if s["start"] > grown["start"]), None), timeout=240
        )
        # A checkpoint in: the restart after the kill resumes from it.
        wait_until(
            lambda: checkpointed_after(run, shrunk_start["start"]), timeout=120, interval=0.2
        )
        # One of the running group's workers: on the lease's raylets now (a worker of an
        # earlier group, on a raylet given back, may still be on its way out under load, and
        # killing it restarts nothing), the newest.
        workers = sorted(
            (
                p
                for part in mine
                for p in processes.node_tree(part["marker"])
                if _is_train_worker(p)
            ),
            key=lambda p: p.create_time(),
        )
        assert workers, "no Train worker on the lease's raylets"
        victim = workers[-1]
        killed_at = time.time()
        victim.kill()
        try:
            restart = wait_until(
                lambda: next((s for s in starts() if s["t"] > killed_at), None),
                timeout=240,
                interval=0.5,
            )
        except AssertionError:
            left = [(p.pid, p.create_time()) for p in workers if p.is_running()]
            raise AssertionError(
                f"no restart within 240 s of killing Train worker {victim.pid} (started "
                f"{victim.create_time():.1f}; the shrunk run's start {shrunk_start['t']:.1f}); "
                f"workers still there: {left}; job log:\n" + grower.job_logs(job["id"])[-6000:]
            ) from None
        # It resumed from the newest checkpoint on disk, not from an older one Ray Train had
        # recorded (the kill may land before Ray collected the last report).
        assert restart["start"] > shrunk_start["start"], (restart, shrunk_start)
        end = end_elastic_job_soon(log, 0.25)  # seen it all: no need to go on to STEPS
        final = wait_until(
            lambda: (
                (s := grower.job_status(job["id"]))["status"] in ("SUCCEEDED", "FAILED", "STOPPED")
                and s
            ),
            timeout=400,
            interval=0.5,
        )
        logs = grower.job_logs(job["id"])
        assert final["status"] == "SUCCEEDED", logs[-4000:]
        holder.release_lease(back.id)
    except BaseException:
        # Leave the pool's GPUs free for the tests after this one: stop the job and end both
        # tenants' leases (a failure here used to fail the next test too, for want of GPUs).
        if job:
            with contextlib.suppress(Exception):
                grower.stop_job(job["id"])
        for client in (grower, holder):
            for live in client.list_leases(live=True):
                with contextlib.suppress(Exception):
                    client.release_lease(live.id)
        raise
    finally:
        watch.stop()
    result = json.loads(next(x for x in reversed(logs.splitlines()) if x.startswith("{")))
    assert [n for n, _ in result["segments"]] == [2, 4, 2]  # the kill restarted within one
    assert result["step"] == end
    worlds = [s["world"] for s in starts()]
    assert (worlds[0], max(worlds), worlds[-1]) == (2, 4, 2)
    assert starts()[-1]["start"] > grown["start"]  # the shrink resumed from a later checkpoint
    # The run's checkpoint ended the grace: the raylets given back stopped well before it.
    given_back_s = watch.first(lease.id, 2, asked) - asked
    assert given_back_s < pool.config.scheduler.grace_s / 2, given_back_s
    assert watch.clashes == []
    assert watch.samples > 20
    print(
        f"grow: decided {resized - freed:.1f} s after the release, first step on 4 workers "
        f"{grown['t'] - resized:.1f} s after the decision; reclaim: shrunk in "
        f"{shrunk - asked:.1f} s, raylets stopped in {given_back_s:.1f} s, the other tenant's "
        f"lease reserved in {reclaimed_s:.1f} s"
    )


def test_a_bound_elastic_lease_that_loses_a_host_shrinks_to_the_rest(pool: Platform) -> None:
    """A bound elastic lease (1..2 GPUs, one per host) loses its raylet on one host (a crash,
    the host gone): reconcile shrinks it to the GPU that still runs instead of failing it, and
    its other raylet keeps running throughout (the policy may then grow it again on a free GPU,
    with a new raylet)."""
    client = pool.client(pool.tenant("spread", A100=2))
    lease = client.request_lease(
        2, "A100", "10m", min_gpus=1, strategy="SPREAD", wait=True, timeout=180
    )
    lease.bind("x:survivor")
    parts = [p for p in raylet_parts(pool) if p["lease"] == lease.id]
    assert sorted(p["host"] for p in parts) == ["host-0", "host-1"]
    victim, survivor = parts
    pid = processes.node_pid(victim["marker"], "raylet")
    assert pid is not None
    os.kill(pid, 9)

    def recovered() -> Any:
        now = client.get_lease(lease.id)
        live = [p for p in raylet_parts(pool) if p["lease"] == lease.id]
        shrunk = now.held_gpus == 1 and [p["pid"] for p in live] == [survivor["pid"]]
        fresh = [p for p in live if p["pid"] not in (survivor["pid"], victim["pid"])]
        regrown = now.held_gpus == 2 and len(fresh) == 1
        return (shrunk or regrown) and now

    after = wait_until(recovered, timeout=60, interval=0.2)
    assert after.state == "BOUND"  # not failed: the workload goes on
    live = [p for p in raylet_parts(pool) if p["lease"] == lease.id]
    assert survivor["pid"] in [p["pid"] for p in live]  # the survivor was never stopped
    assert sum(p["devices"].count(",") + 1 for p in live) == after.held_gpus
    client.release_lease(lease.id)
    wait_until(lambda: not [p for p in raylet_parts(pool) if p["lease"] == lease.id], timeout=30)
