"""Budget stop: from a tenant's spend crossing its cap to its lease's preemption announced, in
controller ticks and seconds, on a real ``fastgpu server`` process with tenant clusters.

    python bench/bench_budget.py [--runs 5] [--tick 0.25]

Set-up: a server (as ``fastgpu up`` runs it) with a pool of one host of ``--runs`` logical
A100s (2.0 per GPU-hour in the bench config) and tenant clusters. Each run is a tenant with a
money budget, ``action: stop``, holding one preemptible 1-GPU lease: a raylet of the tenant's
own Ray cluster. The tenants' heads are started first, one at a time (``GET /cluster``), and
the leases asked for together, so that every lease is reserved before the first cap is
crossed; the budgets are sized so the tenants cross their caps one after another, ``--gap``
seconds apart (the first ``LEAD_S + 1 s x runs`` after its lease is reserved). The crossing
time is exact from the lease's ``reserved_at`` (the usage record opens then): ``reserved_at +
budget / price``. The announcement time is the lease's ``preempt_at`` minus the grace. Lag =
announced - crossed; in ticks = lag / ``controller.tick_interval_s``. Goal (issue 12): within one
controller tick. Prints a markdown table and the median.

There is no raw Ray baseline: Ray has no budgets, so there is nothing of Ray's to set beside
the lag. Needs root for tenants' own users (else single-user).
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

_TMP = tempfile.mkdtemp(prefix="fgbb")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
Path(_TMP).chmod(0o711)  # tenants pass through it to their own dirs
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import BenchServer  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

PRICE = 2.0  # per GPU-hour, bench/_server.py's A100
GRACE_S = 1.0
#: Seconds from the first lease's reservation to the first crossing, beyond 1 s per tenant:
#: room for the other leases' raylets to join first.
LEAD_S = 6.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tick", type=float, default=0.25, help="controller.tick_interval_s")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds between crossings")
    args = parser.parse_args()

    from fastgpu.sdk import Client
    from fastgpu.timeutil import parse_iso

    pool = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": list(range(args.runs))}]}
    server = BenchServer(
        Path(_TMP) / "state",
        pool=pool,
        storage_root=str(Path(_TMP) / "storage"),
        controller={"tick_interval_s": args.tick},
        scheduler={"grace_s": GRACE_S, "min_runtime_s": 0},
    )
    clusters = TenantClusters(server.config)
    rows: list[tuple[str, float, float]] = []
    try:
        admin = Client(token=server.admin, address=server.url)
        clients, budgets = [], []
        for i in range(args.runs):
            seconds = LEAD_S + args.runs * 1.0 + i * args.gap
            budget = {"money": PRICE * seconds / 3600.0, "action": "stop", "period": "month"}
            token = admin.create_tenant(f"bench-{i}", {"A100": 1}, budget=budget)["token"]
            clients.append(Client(token=token, address=server.url))
            budgets.append(budget["money"])
        # The heads, as for tenants already in; one at a time: five at once on two cores
        # timed out Ray's node start-up.
        for client in clients:
            client.cluster()
        leases = [c.request_lease(1, "A100", "10m", preemptible=True) for c in clients]
        leases = [lease.wait(timeout=300) for lease in leases]
        reserved = [parse_iso(lease.data["reserved_at"]) for lease in leases]
        crossings = [r + m / PRICE * 3600.0 for r, m in zip(reserved, budgets, strict=True)]
        early = sum(1 for c in crossings if c < max(reserved))
        deadline = time.monotonic() + 60 + args.runs * args.gap
        for lease, crossed in zip(leases, crossings, strict=True):
            while lease.refresh().preempt_at is None:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"lease {lease.id} ({lease.state}): no preemption announced; budget "
                        f"{admin.budget(lease.tenant)}"
                    )
                time.sleep(0.05)
            announced = parse_iso(str(lease.preempt_at)) - GRACE_S
            rows.append((lease.id, announced - crossed, (announced - crossed) / args.tick))
    finally:
        server.stop()
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)
        shutil.rmtree(_TMP, ignore_errors=True)

    print(
        f"\nBudget stop on tenant clusters: cap crossed -> preemption announced, {args.runs} "
        f"tenants, tick {args.tick:g} s (goal: <= 1 tick; isolation={clusters.isolation})\n"
    )
    print("| lease | lag (s) | lag (ticks) |")
    print("|---|---:|---:|")
    for lease_id, lag, in_ticks in rows:
        print(f"| {lease_id} | {lag:.3f} | {in_ticks:.2f} |")
    lags = [r[1] for r in rows]
    ticks = [r[2] for r in rows]
    print(
        f"| **median** | **{statistics.median(lags):.3f}** | **{statistics.median(ticks):.2f}** |"
    )
    print(f"| max | {max(lags):.3f} | {max(ticks):.2f} |")
    within = sum(1 for t in ticks if t <= 1.0)
    print(f"\n{within}/{len(ticks)} within one tick")
    if early:
        print(f"{early} cap(s) crossed before the last lease was reserved (raise LEAD_S)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
