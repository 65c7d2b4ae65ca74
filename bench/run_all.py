"""``make bench``: every benchmark once, each against its raw baseline in the same run.

Each script prints its own table with ratios; this only runs them in turn (quick settings where
a script has them) and stops at the first failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["bench_api.py", "--quick"],
    ["bench_scheduler.py"],
    ["bench_train.py"],
    ["bench_tenant_clusters.py", "--runs", "3"],
    ["bench_elastic.py", "--runs", "1"],
    ["bench_planner.py"],
    ["bench_console.py", "--runs", "3"],
    ["bench_usage.py", "--runs", "3"],
    ["bench_budget.py", "--runs", "5"],
    ["bench_tune.py"],
    ["bench_agents.py", "--rounds", "5"],
    ["bench_serve.py", "--seconds", "10"],
]


def main() -> int:
    for args in RUNS:
        print(f"\n=== {' '.join(args)}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], check=False)
        if done.returncode != 0:
            print(f"{args[0]} failed ({done.returncode})", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
