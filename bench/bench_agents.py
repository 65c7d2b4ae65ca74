"""Multi-host pools (issue 14): agent hosts against the server's own host, side by side.

- **grant**: a 2-GPU lease, request to RESERVED (its raylet joined the tenant's cluster, the
  group ready), the tenant's head already up; on a server whose pool is this machine's devices
  (``LocalPool``: the server starts the raylet) and on a server whose hosts are agents on this
  machine (``RemotePool``: a signed request to the host's agent, which starts it). Rounds
  alternate the two. Goal: within 1.2x.
- **host death**: a tenant holds a lease on an agent host; the agent is frozen (SIGSTOP: a
  host gone silent, as when it loses power or its network); measured: the freeze to the lease
  leaving RESERVED (the host marked LOST and the lease failed ``node_lost``), in heartbeats.
  Goal: within 2 heartbeats (``lost_after_s`` = 2 heartbeats, the least the config allows).

Needs root (tenants' own OS users). ``python bench/bench_agents.py [--rounds 5]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="fga")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
Path(_TMP).chmod(0o711)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _server import BenchServer  # noqa: E402
from fastgpu.auth import write_secret  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

HOSTS = {"host-0": [0, 1], "host-1": [2, 3]}
HEARTBEAT_S = 1.0


def _server(root: Path, agents: bool) -> BenchServer:
    pool: dict[str, Any] = {
        "hosts": [{"name": n, "gpu_type": "A100", "devices": d} for n, d in HOSTS.items()]
    }
    if agents:
        pool["agents"] = {"heartbeat_s": HEARTBEAT_S, "lost_after_s": 2 * HEARTBEAT_S}
    return BenchServer(
        root / "state",
        pool=pool,
        storage_root=str(root / "storage"),
        tenant_clusters={"idle_timeout_s": 600},
        controller={"tick_interval_s": 0.25, "min_duration_s": 1.0},
    )


def _start_agents(server: BenchServer, root: Path) -> dict[str, subprocess.Popen[bytes]]:
    from fastgpu.sdk import Client

    admin = Client(token=server.admin, address=server.url)
    procs = {}
    for host, devices in HOSTS.items():
        token_file = root / f"{host}.token"
        write_secret(token_file, admin.add_host(host)["token"])
        log = open(root / f"agent-{host}.log", "ab")  # noqa: SIM115 - lives with the process
        procs[host] = subprocess.Popen(
            [sys.executable, "-m", "fastgpu.agent", "--name", host, "--server", server.url,
             "--token-file", str(token_file), "--gpu-type", "A100",
             "--devices", ",".join(map(str, devices)), "--root", str(root / f"agent-{host}")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            env={**os.environ, "FASTGPU_TOKEN": ""},
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while any(admin.get_host(h)["state"] != "READY" for h in HOSTS):
        if time.monotonic() > deadline:
            raise SystemExit("the agents did not register in 90 s")
        time.sleep(0.2)
    return procs


def _grant(client: Any) -> float:
    t0 = time.perf_counter()
    lease = client.request_lease(2, "A100", "10m", wait=True, timeout=300)
    took = time.perf_counter() - t0
    lease.release()
    time.sleep(1.0)  # its raylet stops before the next round
    return took


def _cleanup(server: BenchServer, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    clusters = TenantClusters(server.config)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(20)
    server.stop()
    for marker, found in processes.marked(f"{clusters.platform}/").items():
        processes.stop_tree(found[0].pid, 2.0, marker=marker)
    remove_platform_users(clusters.platform)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = Path(_TMP)
    local = _server(root / "local", agents=False)
    (root / "remote").mkdir()
    remote = _server(root / "remote", agents=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs = _start_agents(remote, root / "remote")
        clients = {"local": local.tenant_client("t", 4), "agents": remote.tenant_client("t", 4)}
        for c in clients.values():
            _grant(c)  # warm: the tenant's head starts
        times: dict[str, list[float]] = {"local": [], "agents": []}
        for _ in range(args.rounds):
            for name, c in clients.items():
                times[name].append(_grant(c))
        # Host death: freeze the agent of the host the lease is on.
        client = clients["agents"]
        lease = client.request_lease(2, "A100", "10m", wait=True, timeout=300)
        from fastgpu.sdk import Client

        admin = Client(token=remote.admin, address=remote.url)
        host = next(h for h in HOSTS if lease.id in str(admin.get_host(h)))
        frozen = time.monotonic()
        procs[host].send_signal(signal.SIGSTOP)
        while client.get_lease(lease.id).state in ("RESERVED", "BOUND"):
            if time.monotonic() - frozen > 60:
                raise SystemExit("the lease was not marked within 60 s")
            time.sleep(0.05)
        marked_s = time.monotonic() - frozen
        final = client.get_lease(lease.id)
    finally:
        for server in (local, remote):
            _cleanup(server, procs if server is remote else {})
        shutil.rmtree(_TMP, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nagent hosts vs the server's own host ({args.rounds} rounds, 2-GPU leases, medians)")
    print(f"{'measure':<46}{'local s':>10}{'agents s':>10}{'ratio':>8}{'goal':>10}")
    ratio = med["agents"] / med["local"]
    print(f"{'lease grant: request -> RESERVED':<46}{med['local']:>10.2f}{med['agents']:>10.2f}"
          f"{ratio:>7.2f}x{'1.2x':>10}")  # fmt: skip
    beats = marked_s / HEARTBEAT_S
    print(f"{'host frozen -> lease marked (' + final.state + ')':<46}{'':>10}{marked_s:>10.2f}"
          f"{beats:>6.1f} hb{'2 hb':>10}")  # fmt: skip
    print(f"grant samples: local {[round(x, 2) for x in times['local']]}, "
          f"agents {[round(x, 2) for x in times['agents']]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
