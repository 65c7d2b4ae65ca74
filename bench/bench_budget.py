"""Budget stop: from a tenant's spend crossing its cap to its lease's preemption announced, in
controller ticks and seconds, on a real ``fastgpu server`` process.

    python bench/bench_budget.py [--runs 5] [--tick 0.25]

Set-up: a local Ray cluster with logical A100s (2.0 per GPU-hour in the bench config) and a
server beside it (as ``fastgpu up`` runs it). Each run is a tenant with a money budget,
``action: stop``, holding one preemptible 1-GPU lease; the budgets are sized so the tenants
cross their caps one after another, ``--gap`` seconds apart (the first ~4 s after its lease is
reserved). The crossing time is exact from the lease's ``reserved_at`` (the usage record opens
then): ``reserved_at + budget / price``. The announcement time is the lease's ``preempt_at``
minus the grace. Lag = announced - crossed; in ticks = lag / ``controller.tick_interval_s``.
Goal (issue 12): within one controller tick. Prints a markdown table and the median.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

_TMP = tempfile.mkdtemp(prefix="fgbb")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_TMPDIR", _TMP)
os.environ.setdefault("FASTGPU_HOME", os.path.join(_TMP, "home"))

import ray  # noqa: E402

PRICE = 2.0  # per GPU-hour, bench/_server.py's A100
GRACE_S = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tick", type=float, default=0.25, help="controller.tick_interval_s")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds between crossings")
    args = parser.parse_args()

    from _server import BenchServer
    from fastgpu.controller.backend import GPU_TYPE_LABEL
    from fastgpu.sdk import Client
    from fastgpu.timeutil import parse_iso

    ray.init(
        num_cpus=2,
        num_gpus=args.runs,
        include_dashboard=False,
        labels={GPU_TYPE_LABEL: "A100"},
        log_to_driver=False,
    )
    server = BenchServer(
        Path(os.environ["FASTGPU_HOME"]),
        controller={"tick_interval_s": args.tick},
        scheduler={"grace_s": GRACE_S, "min_runtime_s": 0},
    )
    rows: list[tuple[str, float, float]] = []
    try:
        admin = Client(token=server.admin, address=server.url)
        leases = []
        for i in range(args.runs):
            seconds = 4.0 + args.runs * 0.5 + i * args.gap  # after every lease is reserved
            budget = {"money": PRICE * seconds / 3600.0, "action": "stop", "period": "month"}
            token = admin.create_tenant(f"bench-{i}", {"A100": 1}, budget=budget)["token"]
            client = Client(token=token, address=server.url)
            lease = client.request_lease(1, "A100", "10m", preemptible=True, wait=True)
            leases.append((lease, budget["money"]))
        deadline = time.monotonic() + 60 + args.runs * args.gap
        for lease, money in leases:
            while lease.refresh().preempt_at is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"lease {lease.id}: no preemption announced")
                time.sleep(0.05)
            crossed = parse_iso(lease.data["reserved_at"]) + money / PRICE * 3600.0
            announced = parse_iso(str(lease.preempt_at)) - GRACE_S
            rows.append((lease.id, announced - crossed, (announced - crossed) / args.tick))
    finally:
        server.stop()
        ray.shutdown()
        shutil.rmtree(_TMP, ignore_errors=True)

    print(
        f"\nBudget stop: cap crossed -> preemption announced, {args.runs} tenants, "
        f"tick {args.tick:g} s (goal: <= 1 tick)\n"
    )
    print("| lease | lag (s) | lag (ticks) |")
    print("|---|---:|---:|")
    for lease_id, lag, ticks in rows:
        print(f"| {lease_id} | {lag:.3f} | {ticks:.2f} |")
    lags = [r[1] for r in rows]
    ticks = [r[2] for r in rows]
    print(
        f"| **median** | **{statistics.median(lags):.3f}** | **{statistics.median(ticks):.2f}** |"
    )
    print(f"| max | {max(lags):.3f} | {max(ticks):.2f} |")
    within = sum(1 for t in ticks if t <= 1.0)
    print(f"\n{within}/{len(ticks)} within one tick")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
