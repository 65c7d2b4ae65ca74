"""Three agents on this machine stand in for three GPU hosts (issue 14): loopback ports,
disjoint logical devices, one server with tenant clusters whose raylets the agents start.

Covered: a tenant's lease over two hosts; an agent restart adopts its raylets; forged, altered
and replayed requests to an agent are refused, as are devices it does not own; a host whose
agent stops heartbeating is LOST within ``lost_after_s`` and, when it comes back, its stale
raylets are stopped; an elastic training job loses a host to a drain (shrinks off it at a
checkpoint) and another to a crash (all its processes killed) and finishes from its
checkpoints on the others.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fastgpu.auth import write_secret
from fastgpu.controller.clusters import TenantClusters
from fastgpu.pool import processes
from fastgpu.pool.runtime import remove_platform_users
from tests.integration.platform_fixtures import (
    ELASTIC_ENV,
    Platform,
    checkpointed_after,
    end_elastic_job_soon,
    start_platform,
    stop_marked,
    wait_until,
)

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="tenants' own OS users need root"),
]

HOSTS = {"host-0": [0, 1], "host-1": [2, 3], "host-2": [4, 5]}
HEARTBEAT_S, LOST_AFTER_S = 2.0, 4.0
JOB_SCRIPTS = Path(__file__).resolve().parent / "job_scripts"


class Agents:
    """The agent processes, by host; restartable."""

    def __init__(self, platform: Platform, base: Path) -> None:
        self.platform = platform
        self.base = base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens: dict[str, Path] = {}

    def start(self, host: str) -> None:
        log = open(self.base / f"agent-{host}.log", "ab")  # noqa: SIM115 - lives with it
        self.procs[host] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastgpu.agent",
                "--name",
                host,
                "--server",
                self.platform.url,
                "--token-file",
                str(self.tokens[host]),
                "--gpu-type",
                "A100",
                "--devices",
                ",".join(str(d) for d in HOSTS[host]),
                "--root",
                str(Path(os.environ["RAY_TMPDIR"]) / f"a{host[-1]}{os.getpid() % 1000}"),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "FASTGPU_TOKEN": ""},
        )

    def state(self, host: str) -> str:
        return str(self.platform.client().get_host(host)["state"])

    def wait_state(self, host: str, state: str, timeout: float = 60) -> float:
        t0 = time.monotonic()
        wait_until(lambda: self.state(host) == state, timeout=timeout, interval=0.1)
        return time.monotonic() - t0

    def stop(self, host: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs[host]
        proc.send_signal(sig)
        if sig != signal.SIGSTOP:
            proc.wait(20)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    base = Path(os.environ["RAY_TMPDIR"])
    base.chmod(0o711)
    state = tmp_path_factory.mktemp("agents-state")
    pool = {
        "hosts": [{"name": n, "gpu_type": "A100", "devices": d} for n, d in HOSTS.items()],
        "agents": {"heartbeat_s": HEARTBEAT_S, "lost_after_s": LOST_AFTER_S},
    }
    platform = start_platform(
        state,
        pool=pool,
        storage_root=str(base / f"storage-a{os.getpid()}"),
        tenant_clusters={"idle_timeout_s": 600},
        controller={"min_duration_s": 1.0, "tick_interval_s": 0.25},
        scheduler={"grace_s": 60.0},
    )
    found = Agents(platform, state)
    admin = platform.client()
    try:
        for host in HOSTS:
            token = admin.add_host(host)["token"]
            found.tokens[host] = state / f"{host}.token"
            write_secret(found.tokens[host], token)
            found.start(host)
        for host in HOSTS:
            found.wait_state(host, "READY", timeout=60)
        yield found
    finally:
        for proc in found.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                proc.wait(20)
        platform.stop_server()
        if os.environ.get("FASTGPU_KEEP_LOGS"):  # debugging: keep the server's and agents' logs
            import shutil

            shutil.copytree(state, os.environ["FASTGPU_KEEP_LOGS"], dirs_exist_ok=True)
        clusters = TenantClusters(platform.config)
        stop_marked(f"{clusters.platform}/")
        remove_platform_users(clusters.platform)


def parts(platform: Platform, lease: str | None = None) -> list[dict[str, Any]]:
    """Every live raylet of this platform's tenants: lease, host, devices, user, pid."""
    prefix = f"{TenantClusters(platform.config).platform}/"
    out = []
    for marker, procs in processes.marked(prefix).items():
        tenant, _, role = marker[len(prefix) :].partition("/")
        if not role.startswith("raylet/"):
            continue
        _, lease_id, host, _part = role.split("/")
        pid = processes.node_pid(marker, "raylet")
        if pid is None or (lease is not None and lease_id != lease):
            continue
        try:
            env, user = procs[0].environ(), procs[0].username()
        except psutil.Error:
            continue
        devices = env["CUDA_VISIBLE_DEVICES"]
        out.append(
            {
                "lease": lease_id,
                "host": host,
                "devices": devices,
                "user": user,
                "pid": pid,
                "marker": marker,
                "tenant": tenant,
            }
        )
    return out


def test_a_lease_spans_two_agent_hosts_and_survives_an_agent_restart(agents: Agents) -> None:
    pool = agents.platform
    client = pool.client(pool.tenant("wide", A100=4))
    t0 = time.monotonic()
    lease = client.request_lease(4, "A100", "10m", wait=True, timeout=240)
    granted_s = time.monotonic() - t0
    mine = parts(pool, lease.id)
    assert sorted(p["host"] for p in mine) == sorted(set(lease.nodes))
    assert len({p["host"] for p in mine}) == 2
    for p in mine:
        assert set(p["devices"].split(",")) <= {str(d) for d in HOSTS[p["host"]]}
        assert p["user"] != "root"  # the tenant's own OS user, started by the agent
    host = mine[0]["host"]
    assert agents.platform.client().get_host(host)["leases"] == [lease.id]
    # The agent restarts (an upgrade, a crash): its raylets run on and are adopted.
    before = {p["pid"] for p in mine}
    agents.stop(host)
    agents.start(host)
    time.sleep(HEARTBEAT_S * 2)
    assert agents.state(host) == "READY"
    assert {p["pid"] for p in parts(pool, lease.id)} == before
    assert client.get_lease(lease.id).state == "RESERVED"
    assert agents.platform.client().get_host(host)["raylets"] >= 1
    client.release_lease(lease.id)
    wait_until(lambda: not parts(pool, lease.id), timeout=60)
    print(f"lease of 4 GPUs over 2 agent hosts granted in {granted_s:.1f} s")


def test_forged_replayed_and_foreign_requests_are_refused(agents: Agents, tmp_path: Path) -> None:
    from fastgpu.agent.http_api import AgentHTTP
    from fastgpu.agent.raylets import HostRaylets
    from fastgpu.pool.hosts import Host
    from fastgpu.pool.signing import Verifier, new_key, sign

    url = agents.platform.client().get_host("host-1")["agent_url"]
    path = "/v1/raylets/list"
    unsigned = httpx.post(url + path, content=b"{}", trust_env=False)
    assert unsigned.status_code == 401
    forged = httpx.post(
        url + path, content=b"{}", headers=sign(new_key(), "POST", path, b"{}"), trust_env=False
    )
    assert forged.status_code == 401
    assert "bad signature" in forged.json()["error"]
    # The same HTTP endpoint with a key this test knows: one request passes, its replay not.
    verifier = Verifier()
    verifier.key = new_key()
    raylets = HostRaylets(Host("host-x", "A100", (9,)), tmp_path / "x", "single_user")
    api = AgentHTTP(raylets, verifier, "127.0.0.1", 0)
    api.start()
    try:
        base = f"http://127.0.0.1:{api.port}"
        headers = sign(verifier.key, "POST", path, b"{}")
        assert httpx.post(base + path, content=b"{}", headers=headers).status_code == 200
        replay = httpx.post(base + path, content=b"{}", headers=headers)
        assert replay.status_code == 401
        assert "replayed" in replay.json()["error"]
        start = json.dumps(
            {
                "platform_id": "p",
                "tenant_id": "t",
                "lease_id": "l",
                "gpu_type": "A100",
                "devices": [0],
                "cpus": 1,
                "address": "127.0.0.1:1",
                "ray_token": "x" * 32,
                "storage": str(tmp_path),
            }
        ).encode()
        spath = "/v1/raylets/start"
        foreign = httpx.post(
            base + spath, content=start, headers=sign(verifier.key, "POST", spath, start)
        )
        assert foreign.status_code == 403
        assert "not this host's" in foreign.json()["error"]
    finally:
        api.close()


def test_a_silent_host_is_lost_and_its_stale_raylets_stop_when_it_rejoins(agents: Agents) -> None:
    pool = agents.platform
    client = pool.client(pool.tenant("spread", A100=2))
    lease = client.request_lease(
        2, "A100", "10m", min_gpus=1, strategy="SPREAD", wait=True, timeout=240
    )
    lease.bind("x:survivor")
    mine = parts(pool, lease.id)
    assert len({p["host"] for p in mine}) == 2
    victim, survivor = mine
    # The agent freezes (a hung host, a network partition): its raylet runs on, unheard.
    stopped_at = time.monotonic()
    agents.stop(victim["host"], signal.SIGSTOP)
    agents.wait_state(victim["host"], "LOST", timeout=LOST_AFTER_S + 10)
    lost_s = time.monotonic() - stopped_at
    # Shrunk off the lost host (the policy may grow it again on the free third host).
    shrunk = wait_until(
        lambda: (
            (x := client.get_lease(lease.id)).state == "BOUND"
            and victim["host"] not in x.nodes
            and x
        ),
        timeout=30,
    )
    assert shrunk.state == "BOUND"
    assert survivor["pid"] in {p["pid"] for p in parts(pool, lease.id)}
    agents.procs[victim["host"]].send_signal(signal.SIGCONT)
    agents.wait_state(victim["host"], "READY", timeout=30)
    wait_until(lambda: victim["pid"] not in {p["pid"] for p in parts(pool)}, timeout=30)
    client.release_lease(lease.id)
    wait_until(lambda: not parts(pool, lease.id), timeout=60)
    print(f"frozen agent: host LOST {lost_s:.1f} s after its last chance to heartbeat")


def test_elastic_training_survives_a_drain_and_a_host_crash(agents: Agents) -> None:
    pool = agents.platform
    admin = pool.client()
    trainer = pool.client(pool.tenant("trainer", A100=6))
    me = trainer.whoami()
    log = Path(me["storage_root"]) / me["storage_key"] / "elastic.jsonl"
    run = log.parent / "runs" / "elastic"

    def starts() -> list[dict[str, Any]]:
        text = log.read_text() if log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    step_s = 0.25
    job = trainer.submit_job(
        "python elastic_job.py",
        gpus=4,
        min_gpus=2,
        gpu_type="A100",
        duration="15m",
        working_dir=JOB_SCRIPTS,
        env=ELASTIC_ENV | {"STEPS": "3200", "STEP_S": str(step_s)},  # ended by the test
    )
    wait_until(lambda: starts(), timeout=300, interval=1.0)
    (lease,) = [x for x in trainer.list_leases(live=True) if x.state == "BOUND"]
    wait_until(lambda: trainer.get_lease(lease.id).held_gpus == 4, timeout=120, interval=0.5)
    on_4 = wait_until(
        lambda: next((s for s in starts() if s["world"] == 4), None), timeout=240, interval=0.5
    )
    # Some steps and a checkpoint on 4 workers.
    wait_until(lambda: checkpointed_after(run, on_4["start"]), timeout=120, interval=0.2)
    hosts = sorted({p["host"] for p in parts(pool, lease.id)})
    drained = hosts[0]
    before = starts()[-1]
    asked = time.time()
    step_at_drain = before["start"] + (asked - before["t"]) / step_s
    got = admin.drain_host(drained, deadline_s=120)
    assert got["state"] == "DRAINING"
    wait_until(lambda: admin.get_host(drained)["state"] == "DRAINED", timeout=180, interval=0.5)
    drained_s = time.time() - asked
    assert not [p for p in parts(pool) if p["host"] == drained]
    after = wait_until(
        lambda: next((s for s in starts() if s["t"] > asked), None), timeout=240, interval=0.5
    )
    lost_steps = step_at_drain - after["start"]
    # Shrinking waits for the workload's checkpoint: at most one interval (8 steps) is redone.
    assert lost_steps <= 8 + 4, (step_at_drain, after)
    # It grows back on the third host and checkpoints after its restart; then a host it runs
    # on crashes (every process).
    wait_until(
        lambda: (
            len({p["host"] for p in parts(pool, lease.id)}) >= 2
            and checkpointed_after(run, after["start"])
        ),
        timeout=120,
        interval=0.2,
    )
    live = parts(pool, lease.id)
    victim = next(
        h for h in sorted({p["host"] for p in live}) if sum(p["host"] != h for p in live) >= 1
    )
    held = trainer.get_lease(lease.id).held_gpus
    killed_at = time.time()
    agents.stop(victim, signal.SIGKILL)
    for p in [p for p in parts(pool) if p["host"] == victim]:
        for proc in processes.node_tree(p["marker"]):
            try:
                proc.kill()
            except psutil.Error:
                pass
    agents.wait_state(victim, "LOST", timeout=LOST_AFTER_S + 10)
    marked_s = time.time() - killed_at
    wait_until(lambda: trainer.get_lease(lease.id).held_gpus < held, timeout=30, interval=0.2)
    shrunk_s = time.time() - killed_at
    # Once the run has restarted after the crash, it need not go on to its STEPS.
    wait_until(lambda: starts()[-1]["t"] > killed_at, timeout=240, interval=0.5)
    end = end_elastic_job_soon(log, step_s)
    final = wait_until(
        lambda: (
            (s := trainer.job_status(job["id"]))["status"] in ("SUCCEEDED", "FAILED", "STOPPED")
            and s
        ),
        timeout=600,
        interval=0.5,
    )
    logs = trainer.job_logs(job["id"])
    assert final["status"] == "SUCCEEDED", logs[-4000:]
    result = json.loads(next(x for x in reversed(logs.splitlines()) if x.startswith("{")))
    assert result["step"] == end
    assert starts()[-1]["start"] > after["start"]  # resumed from a later checkpoint
    agents.start(victim)
    agents.wait_state(victim, "READY", timeout=60)
    admin.undrain_host(drained)
    assert admin.get_host(drained)["state"] == "READY"
    print(
        f"drain: host empty in {drained_s:.1f} s, {max(lost_steps, 0):.0f} steps redone; "
        f"crash: host LOST {marked_s:.1f} s after the kill (heartbeat {HEARTBEAT_S:g} s, "
        f"lost_after {LOST_AFTER_S:g} s), lease shrunk {shrunk_s:.1f} s after; "
        f"segments {result['segments']}"
    )
