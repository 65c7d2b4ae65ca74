"""Usage report benchmark: a month's report by tenant and day over 1,000,000 usage records.

    .venv/bin/python bench/bench_usage.py [--records 1000000] [--runs 5]

The store is a SQLite file (the default backend) migrated to the current schema; the records
are bulk-inserted with one ``executemany`` (not through the metering hook, which writes one
per state change). They spread over 35 days (a month and the days around it), 200 tenants,
3 GPU types and 50 workloads; each lasts 1 minute to 6 hours, so some cross day boundaries,
and 0.1% are still open. They are inserted in start order, as metering appends them. Metering
adds a closed record's days to the daily rollup in its transaction; the bulk load bypasses it,
so the rollup is then rebuilt from the records (:meth:`fastgpu.store.Store.rebuild_usage_rollup`,
the migration's backfill; timed). The timed call is
:meth:`fastgpu.store.Store.usage_report` for November 2026 grouped by tenant and day (the
rollup's days, the open records, building its rows), median of ``--runs`` after one warm-up.

Goal (issue 12): < 1 s. Results: a markdown table on stdout and JSON in
``bench/results/usage.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fastgpu.store import open_store

GOAL_S = 1.0
MONTH = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
NEXT = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()


def fill(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    gpu_types = ["A100", "H100", "L4"]
    lo, hi = MONTH - 2 * 86400, NEXT + 3 * 86400
    rows = []
    for i in range(records):
        start = rng.uniform(lo, hi)
        end = None if i % 1000 == 0 else start + rng.uniform(60, 6 * 3600)
        tenant = rng.randrange(200)
        rows.append(
            (
                f"l{i}",
                f"team{tenant}",
                f"tid{tenant}",
                rng.choice(gpu_types),
                rng.choice((1, 2, 4, 8)),
                rng.choice((1.0, 2.5, 4.0)),
                start,
                end,
                f"train:run{rng.randrange(50)}",
            )
        )
    rows.sort(key=lambda r: r[6])  # the ledger appends records as they open
    con = sqlite3.connect(path)
    with con:
        con.executemany(
            "INSERT INTO usage (lease_id, tenant, tenant_id, gpu_type, gpus, price_per_hour, "
            'start, "end", workload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
            rows,
        )
    con.execute("ANALYZE")
    con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "usage.sqlite"
        open_store(f"sqlite:///{path}").close()
        t0 = time.perf_counter()
        fill(path, args.records)
        fill_s = time.perf_counter() - t0
        store = open_store(f"sqlite:///{path}")
        t0 = time.perf_counter()
        rollup_rows = store.rebuild_usage_rollup()
        rollup_s = time.perf_counter() - t0
        now = NEXT + 10 * 86400

        def report() -> int:
            rows = store.usage_report(now, MONTH, NEXT, by=("tenant",), period="day")
            return len(rows)

        n_rows = report()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            report()
            times.append(time.perf_counter() - t0)
        store.close()
    median = statistics.median(times)
    print(
        "| usage records | insert (s) | rollup rows, backfill (s) | report rows "
        "| month by tenant, day (s) | goal |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.records:,} | {fill_s:.1f} | {rollup_rows:,}, {rollup_s:.1f} | {n_rows:,} "
        f"| {median:.3f} "
        f"(min {min(times):.3f}) | < {GOAL_S:.0f} s {'ok' if median < GOAL_S else 'MISSED'} |"
    )
    out = Path(__file__).resolve().parent / "results" / "usage.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "records": args.records,
                "insert_s": fill_s,
                "rollup_rows": rollup_rows,
                "rollup_s": rollup_s,
                "report_rows": n_rows,
                "report_s": times,
                "median_s": median,
                "goal_s": GOAL_S,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
