"""Tenant clusters against raw Ray, side by side in one run (issue 9).

1. Cold start: a tenant's head (:class:`TenantCluster.start_head`: its user, dirs, token,
   ports, `ray start --head`) against a raw `ray start --head` with the same
   flags, as this user, until each says it is up.
2. Lease grant with the tenant's head running and no lease held (so no keeper: it starts
   with the lease's raylet): ``request_lease(1, wait=True)`` through the server's HTTP API
   until RESERVED (a raylet joined, the keeper's group ready) against the raw floor: a raylet
   joining a live head (`ray start --address`) plus a placement group on it, made by a driver
   already connected.
3. Memory: the PSS of an idle tenant cluster (its head: GCS, raylet, dashboard and its modules,
   agents, monitors; no lease, so no keeper), and, while a lease is held, of its raylet and of
   the keeper.

Runs alternate raw and platform, so drift in the machine's load hits both. Needs root for
tenants' own users (else it runs single-user and says so).

    python bench/bench_tenant_clusters.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

_TMP = tempfile.mkdtemp(prefix="fgb")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
Path(_TMP).chmod(0o711)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import BenchServer  # noqa: E402
from fastgpu.auth import write_secret  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import TenantPython, remove_platform_users  # noqa: E402
from fastgpu.pool.tenant_cluster import (  # noqa: E402
    HEAD_PORTS,
    NODE_PORTS,
    TenantCluster,
    free_ports,
    head_args,
    node_port_args,
)

POOL = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1, 2, 3]}]}


def pss_mb(procs: list[Any]) -> float:
    """Proportional set size: shared pages (the dashboard's forked modules) counted once."""
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


class RawHead:
    """`ray start --head` as this user, the same flags as a tenant's head."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.token = home / "token"
        write_secret(self.token, os.urandom(16).hex())
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "RAY_USAGE_STATS_ENABLED": "0",
            processes.MARKER_ENV: f"raw/{home.name}",
        }
        self.marker = f"raw/{home.name}"
        self.python = TenantPython(sys.executable)

    def start(self) -> float:
        names = (*HEAD_PORTS, "ray_client_server")
        p = dict(zip(names, free_ports(len(names)), strict=True))
        self.gcs = p["gcs"]
        # The same flags as a tenant's head, and a plain Ray head's Ray Client server and
        # dashboard modules (a tenant's head leaves them out: fastgpu.pool.ray_head).
        args = head_args(p, 1, self.home / "r")
        log = self.home / "head.log"
        t0 = time.perf_counter()
        proc = processes.spawn(self.python.ray(*args), self.env, self.home, log, None)
        processes.wait_started(proc, log, "raw head", 120, self.marker)
        return time.perf_counter() - t0

    def join_raylet(self, name: str) -> tuple[str, float]:
        p = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))
        args = [
            "start",
            f"--address=127.0.0.1:{self.gcs}",
            "--node-ip-address=127.0.0.1",
            *node_port_args(p),
            "--num-gpus=1",
            "--num-cpus=1",
            f"--labels=fastgpu.io/lease={name}",
            "--disable-usage-stats",
        ]
        log = self.home / f"{name}.log"
        env = {**self.env, "CUDA_VISIBLE_DEVICES": "0", processes.MARKER_ENV: f"raw/{name}"}
        t0 = time.perf_counter()
        proc = processes.spawn(self.python.ray(*args), env, self.home, log, None)
        processes.wait_started(proc, log, "raw raylet", 120, env[processes.MARKER_ENV])
        return env[processes.MARKER_ENV], time.perf_counter() - t0

    def stop(self) -> None:
        processes.stop_tree(None, 2.0, marker=self.marker)


def cold_starts(runs: int, clusters: TenantClusters) -> tuple[list[float], list[float], float]:
    raw, ours, idle_mb = [], [], 0.0
    for i in range(runs):
        head = RawHead(Path(_TMP) / f"raw{i}")
        raw.append(head.start())
        head.stop()
        cluster = TenantCluster(clusters.spec(f"{i:02d}bench{os.getpid()}"))
        t0 = time.perf_counter()
        cluster.start_head()
        ours.append(time.perf_counter() - t0)
        time.sleep(4)  # the dashboard's modules and the agents settle
        assert not cluster.keeper_running()  # no lease: no keeper
        idle_mb = pss_mb(processes.node_tree(cluster.marker("head")))
        cluster.stop()
    return raw, ours, idle_mb


def raw_grants(runs: int) -> list[float]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    head = RawHead(Path(_TMP) / "rawgrant")
    head.start()
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token)
    ray.init(address=f"127.0.0.1:{head.gcs}", logging_level="ERROR", log_to_driver=False)
    out = []
    try:
        for i in range(runs):
            t0 = time.perf_counter()
            raylet, _ = head.join_raylet(f"raw{i}")
            pg = placement_group(
                [{"GPU": 1}], bundle_label_selector=[{"fastgpu.io/lease": f"raw{i}"}]
            )
            ray.get(pg.ready())
            out.append(time.perf_counter() - t0)
            remove_placement_group(pg)
            processes.stop_tree(None, 2.0, marker=raylet)
    finally:
        ray.shutdown()
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        head.stop()
    return out


def platform_grants(runs: int, state: Path) -> tuple[list[float], float, float]:
    server = BenchServer(
        state,
        pool=POOL,
        storage_root=str(Path(_TMP) / "storage"),
        controller={"tick_interval_s": 0.25},
    )
    out, raylet_mb, keeper_mb = [], 0.0, 0.0
    try:
        client = server.tenant_client("bench", 4)
        client.cluster()  # the head is warm, as for a tenant that already holds a lease
        clusters = TenantClusters(server.config)
        for _ in range(runs):
            t0 = time.perf_counter()
            lease = client.request_lease(1, "A100", "10m", wait=True, timeout=300)
            out.append(time.perf_counter() - t0)
            assert lease.state == "RESERVED", lease
            markers = processes.marked(f"{clusters.platform}/")
            raylet = [m for m in markers if f"raylet/{lease.id}/host-0/" in m]
            raylet_mb = pss_mb(processes.node_tree(raylet[0])) if raylet else 0.0
            keeper = [m for m in markers if m.endswith("/keeper")]  # one tenant here
            keeper_mb = pss_mb(processes.node_tree(keeper[0])) if keeper else 0.0
            client.release_lease(lease.id)
            deadline = time.monotonic() + 30
            while raylet and raylet[0] in processes.marked(raylet[0]):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    finally:
        server.stop()
        clusters = TenantClusters(server.config)
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)
    return out, raylet_mb, keeper_mb


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    state = Path(_TMP) / "state"
    state.mkdir()
    from fastgpu.config import GpuTypeSpec, PlatformConfig

    config = PlatformConfig(
        gpu_types={"A100": GpuTypeSpec(price_per_hour=2.0)},
        state_dir=str(Path(_TMP) / "cold"),
        storage_root=str(Path(_TMP) / "storage-cold"),
        pool=POOL,
    )
    clusters = TenantClusters(config)
    try:
        raw_cold, our_cold, idle_mb = cold_starts(args.runs, clusters)
        raw_grant = raw_grants(args.runs)
        our_grant, raylet_mb, keeper_mb = platform_grants(args.runs, state)
    finally:
        remove_platform_users(clusters.platform)
        shutil.rmtree(_TMP, ignore_errors=True)
    med = statistics.median
    print(f"\ntenant clusters vs raw Ray ({args.runs} runs each, isolation={clusters.isolation})")
    print(f"{'measure':<44}{'raw p50 s':>11}{'fastgpu p50 s':>15}{'ratio':>8}")
    rows = [
        ("cold start: head up", raw_cold, our_cold),
        ("lease grant: raylet joined + group ready", raw_grant, our_grant),
    ]
    for name, raw, ours in rows:
        print(f"{name:<44}{med(raw):>11.2f}{med(ours):>15.2f}{med(ours) / med(raw):>7.2f}x")
    print(f"idle tenant cluster (head, agents, dashboard; no lease) PSS: {idle_mb:.0f} MB")
    print(f"while a lease is held: its raylet (1 GPU, idle) PSS {raylet_mb:.0f} MB")
    print(f"                       the keeper PSS {keeper_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
