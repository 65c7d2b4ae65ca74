"""Golden record of FairSharePolicy decisions, to prove that a refactor changes none of them.

Records (``--record FILE``) or checks (``--compare FILE``) every decision of:

* ``bench``: the one-cycle snapshots of ``bench/bench_scheduler.py`` (1,000 tenants, 2,000
  nodes; 100, 1,000 and 3,000 pending; seeds 1 and 2) under the live controller's settings
  (reasons on), the simulator's (reasons off, with and without the caller's indexes) and with
  time limits on at a later ``now``;
* ``mixed``: small random snapshots that reach every branch (two GPU types and one no node
  offers, dead nodes, elastic, non-preemptible, announced and restarted leases, checkpoints,
  budgets, strict FIFO, borrowing and lending limits) under a dozen settings, each run for
  five cycles with the decisions carried out between them;
* ``trace``: one week of the Philly trace (2017-10-01 to 10-08, load 1.0) replayed by the
  simulator with the ``fairshare`` and ``elastic`` policies, and ``fairshare`` with reasons
  on: a digest of every cycle's decisions, every job's result and the metrics (wall-clock
  time left out).

Every admit (with placement), queue (reason and detail text), reject, preempt and resize is
kept, in order, with ``wake_at``. ``--compare`` prints each difference and exits 1 if any.
Together the cases run every statement of ``scheduler/fairshare/`` but error paths and one
unreachable fallback. The script uses only names that predate the split of the cycle into
modules, so a record can be taken at an older revision.

    .venv/bin/python bench/check_scheduler_identical.py --record /tmp/golden.json
    .venv/bin/python bench/check_scheduler_identical.py --compare /tmp/golden.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastgpu.config import BudgetSpec, QuotaSpec
from fastgpu.scheduler import (
    Decisions,
    FairSharePolicy,
    FairShareSettings,
    LeaseView,
    NodeView,
    Snapshot,
    TenantView,
)
from fastgpu.scheduler.index import PendingIndex, RunningIndex
from fastgpu.sim.cluster import size_for_load
from fastgpu.sim.engine import SimResult
from fastgpu.sim.metrics import compute
from fastgpu.sim.runner import POLICIES, SIM_SETTINGS
from fastgpu.sim.trace import load_trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scheduler import build as bench_snapshot

#: The live controller's settings (``make_policy`` with a default config).
LIVE = FairShareSettings(enforce_time_limits=False, explain=True)
WEEK = ("2017-10-01", "2017-10-08")


def dump(d: Decisions) -> dict[str, Any]:
    """Every field of a cycle's decisions, in order (placements as ordered pairs)."""
    return {
        "admit": [[a.lease_id, list(a.placement.items())] for a in d.admit],
        "queue": [[q.lease_id, q.reason, q.detail] for q in d.queue],
        "reject": [[r.lease_id, r.reason, r.detail] for r in d.reject],
        "preempt": [[p.lease_id, p.reason, p.detail, p.grace_s] for p in d.preempt],
        "resize": [[r.lease_id, list(r.placement.items()), r.reason] for r in d.resize],
        "notes": list(d.notes),
        "wake_at": d.wake_at,
    }


def digest(d: Decisions) -> str:
    text = json.dumps(dump(d), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- bench -------------------------------------------------------------------------------------
def bench_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    sim = replace(SIM_SETTINGS)  # explain off, time limits off
    limits = replace(LIVE, enforce_time_limits=True)
    for n in (100, 1000, 3000):
        for seed in (1, 2):
            snap = bench_snapshot(n, seed=seed)
            later = replace(snap, now=3000.0)
            indexed = replace(
                snap,
                pending_index=PendingIndex.build(snap.pending),
                running_index=RunningIndex.build(snap.running),
            )
            yield f"bench/{n}/{seed}/live", _one(snap, LIVE)
            yield f"bench/{n}/{seed}/sim", _one(snap, sim)
            yield f"bench/{n}/{seed}/sim-indexed", _one(indexed, sim)
            yield f"bench/{n}/{seed}/limits", _one(later, limits)


def _one(snap: Snapshot, settings: FairShareSettings) -> Callable[[], Any]:
    return lambda: dump(FairSharePolicy(settings).schedule(snap))


# -- mixed -------------------------------------------------------------------------------------
TYPES = ("A100", "H100")
STRATEGIES = ("PACK", "PACK", "STRICT_PACK", "SPREAD")

MIXED_SETTINGS: dict[str, FairShareSettings] = {
    "default": FairShareSettings(),
    "live": LIVE,
    "no-explain": replace(LIVE, explain=False),
    "static": FairShareSettings(borrowing=False, preemption=False, elastic=False),
    "no-preemption": FairShareSettings(preemption=False),
    "no-elastic": FairShareSettings(elastic=False),
    "no-backfill": FairShareSettings(backfill=False),
    "borrow-fixed": FairShareSettings(borrow_non_preemptible=True),
    "reject-budget": FairShareSettings(reject_over_budget=True),
    "attempts-0": FairShareSettings(max_preemption_attempts=0),
    "attempts-2": FairShareSettings(max_preemption_attempts=2, min_runtime_backoff=0),
    "short-runtime": FairShareSettings(min_runtime_s=0.0, grace_s=0.0),
}


def mixed_snapshot(seed: int) -> Snapshot:
    rng = random.Random(seed)
    now = 10_000.0
    node_list: list[NodeView] = []
    for gpu_type in TYPES:
        for i in range(rng.randint(2, 12)):
            size = rng.choice([4, 8, 8])
            node_list.append(NodeView(f"{gpu_type}-{i}", gpu_type, size, size, rng.random() > 0.1))
    names = [f"t{i}" for i in range(rng.randint(2, 7))]
    tenants: dict[str, TenantView] = {}
    for name in names:
        quotas = {}
        for gpu_type in TYPES:
            if rng.random() < 0.8:
                quotas[gpu_type] = QuotaSpec(
                    nominal=rng.randint(0, 24),
                    borrowing_limit=rng.choice([None, None, 0, rng.randint(1, 16)]),
                    lending_limit=rng.choice([None, None, 0, rng.randint(1, 16)]),
                )
        budget = None
        spent = 0.0
        if rng.random() < 0.25:
            budget = BudgetSpec(gpu_hours=100.0, period="week")
            spent = rng.choice([10.0, 150.0])
        elif rng.random() < 0.1:
            budget = BudgetSpec(money=50.0)
        tenants[name] = TenantView(
            name=name,
            quotas=quotas,
            weight=rng.choice([0.5, 1.0, 2.0]),
            priority=rng.choice([0, 0, 1]),
            queueing=rng.choice(["strict_fifo", "best_effort_fifo", "best_effort_fifo"]),
            budget=budget,
            decayed_usage_gpu_s=rng.uniform(0, 5e5),
            period_gpu_hours=spent,
            period_money=rng.choice([0.0, 60.0]),
        )
    free = {n.node_id: n.total_gpus for n in node_list if n.alive}
    running: list[LeaseView] = []
    for i in range(rng.randint(0, 40)):
        gpu_type = rng.choice(TYPES)
        nodes = [n for n in free if n.startswith(gpu_type) and free[n] > 0]
        if not nodes:
            continue
        placement: dict[str, int] = {}
        for node in rng.sample(nodes, min(len(nodes), rng.choice([1, 1, 2]))):
            placement[node] = rng.randint(1, free[node])
            free[node] -= placement[node]
        held = sum(placement.values())
        lo = held if rng.random() < 0.6 else rng.randint(1, held)
        started = now - rng.uniform(0, 8000)
        running.append(
            LeaseView(
                id=f"r{seed}-{i}",
                tenant=rng.choice(names),
                gpu_type=gpu_type,
                gpus=held + rng.choice([0, 0, 0, 2, 4]),
                min_gpus=lo,
                strategy=rng.choice(STRATEGIES),
                preemptible=rng.random() < 0.7,
                priority=rng.choice([0, 0, 1, 2]),
                submitted_at=started - rng.uniform(0, 600),
                duration_s=rng.uniform(600, 20_000),
                started_at=started,
                placement=placement,
                last_checkpoint_at=rng.choice([None, started + 100.0, now - 50.0]),
                preempt_at=now + 20.0 if rng.random() < 0.08 else None,
                restarts=rng.choice([0, 0, 0, 1, 3]),
            )
        )
    pending: list[LeaseView] = []
    for j in range(rng.randint(1, 60)):
        gpus = rng.choice([1, 1, 2, 4, 8, 8, 12, 16, 40])
        gpu_type = rng.choice([*TYPES, *TYPES, "T4"]) if rng.random() < 0.1 else rng.choice(TYPES)
        pending.append(
            LeaseView(
                id=f"p{seed}-{j}",
                tenant=rng.choice(names),
                gpu_type=gpu_type,
                gpus=gpus,
                min_gpus=gpus if rng.random() < 0.7 else max(1, gpus // 2),
                strategy=rng.choice(STRATEGIES),
                preemptible=rng.random() < 0.6,
                priority=rng.choice([0, 0, 1, 2]),
                submitted_at=now - rng.uniform(0, 5000),
                duration_s=rng.uniform(60, 20_000),
                restarts=rng.choice([0, 0, 2]),
            )
        )
    return Snapshot(
        now=now,
        gpu_types={},
        nodes=tuple(replace(n, free_gpus=free[n.node_id]) if n.alive else n for n in node_list),
        tenants=tenants,
        running=tuple(running),
        pending=tuple(pending),
    )


def carry_out(snap: Snapshot, d: Decisions, step_s: float) -> Snapshot:
    """The next cycle's snapshot: decisions applied, time advanced, ended leases gone,
    announced preemptions past their grace requeued."""
    now = snap.now + step_s
    pending = {lv.id: lv for lv in snap.pending}
    running = {lv.id: lv for lv in snap.running}
    for r in d.reject:
        del pending[r.lease_id]
    for p in d.preempt:
        lv = running[p.lease_id]
        running[p.lease_id] = replace(lv, preempt_at=snap.now + p.grace_s)
    for rs in d.resize:
        running[rs.lease_id] = replace(running[rs.lease_id], placement=dict(rs.placement))
    for a in d.admit:
        lv = pending.pop(a.lease_id)
        running[a.lease_id] = replace(lv, started_at=snap.now, placement=dict(a.placement))
    for lid, lv in list(running.items()):
        assert lv.started_at is not None
        if lv.preempt_at is not None and lv.preempt_at <= now:
            del running[lid]
            pending[lid] = replace(
                lv, started_at=None, placement={}, preempt_at=None, restarts=lv.restarts + 1
            )
        elif lv.started_at + lv.duration_s <= now:
            del running[lid]
    taken: dict[str, int] = {}
    for lv in running.values():
        for node, g in lv.placement.items():
            taken[node] = taken.get(node, 0) + g
    nodes = tuple(
        replace(n, free_gpus=n.total_gpus - taken.get(n.node_id, 0)) if n.alive else n
        for n in snap.nodes
    )
    return replace(
        snap, now=now, nodes=nodes, running=tuple(running.values()), pending=tuple(pending.values())
    )


def mixed_cases(seeds: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    for seed in range(seeds):
        first = mixed_snapshot(seed)
        for label, settings in MIXED_SETTINGS.items():
            yield f"mixed/{seed}/{label}", _cycles(first, settings)


def _cycles(first: Snapshot, settings: FairShareSettings, n: int = 5) -> Callable[[], Any]:
    def run() -> list[dict[str, Any]]:
        policy = FairSharePolicy(settings)
        snap = first
        out = []
        for _ in range(n):
            d = policy.schedule(snap)
            out.append(dump(d))
            snap = carry_out(snap, d, 400.0)
        return out

    return run


# -- trace -------------------------------------------------------------------------------------
class _Recorder:
    """A policy that records a digest of each cycle's decisions of the policy it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.digests: list[str] = []

    def schedule(self, snapshot: Snapshot) -> Decisions:
        d: Decisions = self.inner.schedule(snapshot)
        self.digests.append(digest(d))
        return d


def trace_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    for name in ("fairshare", "elastic"):
        yield f"trace/week/{name}", _replay(WEEK, name, None)
    explain = replace(SIM_SETTINGS, elastic=False, explain=True)
    yield "trace/week/fairshare-explain", _replay(WEEK, "fairshare", explain)


def _replay(
    window: tuple[str, str], name: str, settings: FairShareSettings | None
) -> Callable[[], Any]:
    def run() -> dict[str, Any]:
        from fastgpu.sim.cluster import nominal_quotas
        from fastgpu.sim.engine import Simulation

        trace = load_trace(start=window[0], end=window[1])
        cluster = size_for_load(trace, 1.0)
        make, model = POLICIES[name]
        recorder = _Recorder(make() if settings is None else FairSharePolicy(settings))
        span = max(trace.end - trace.start, 1.0)
        sim = Simulation(
            trace,
            cluster,
            nominal_quotas(trace, cluster.capacity),
            recorder,
            name=name,
            model=model,
            bucket_s=max(60.0, span / 400.0),
            skip_full_arrivals=True,
        )
        res = sim.run()
        return {
            "cycles": recorder.digests,
            "result": _result(res),
            "metrics": {
                k: v for k, v in dataclasses.asdict(compute(res, trace)).items() if k != "wall_s"
            },
        }

    return run


def _result(res: SimResult) -> dict[str, Any]:
    out = dataclasses.asdict(res)
    out.pop("wall_s")
    out["jobs"] = [dataclasses.astuple(j) for j in res.jobs]
    return json.loads(json.dumps(out))


# -- main --------------------------------------------------------------------------------------
def cases(mixed_seeds: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    yield from bench_cases()
    yield from mixed_cases(mixed_seeds)
    yield from trace_cases()


def diff(path: str, old: Any, new: Any, out: list[str], limit: int = 20) -> None:
    """Append up to ``limit`` differences between two JSON values to ``out``."""
    if len(out) >= limit:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in old or k not in new:
                out.append(f"{path}/{k}: only in {'new' if k in new else 'golden'}")
            else:
                diff(f"{path}/{k}", old[k], new[k], out, limit)
        return
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{path}: {len(old)} items in golden, {len(new)} now")
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            diff(f"{path}[{i}]", a, b, out, limit)
        return
    if old != new:
        out.append(f"{path}: golden {old!r}, now {new!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", metavar="FILE")
    mode.add_argument("--compare", metavar="FILE")
    ap.add_argument("--mixed-seeds", type=int, default=150)
    ap.add_argument("--only", default="", help="run only cases whose name starts with this")
    args = ap.parse_args()
    golden: dict[str, Any] = {}
    if args.compare:
        golden = json.loads(Path(args.compare).read_text())
    record: dict[str, Any] = {}
    differing = 0
    t0 = time.perf_counter()
    for name, run in cases(args.mixed_seeds):
        if not name.startswith(args.only):
            continue
        t = time.perf_counter()
        value = json.loads(json.dumps(run()))
        took = time.perf_counter() - t
        record[name] = value
        if args.compare:
            if name not in golden:
                print(f"{name}: not in the golden record")
                differing += 1
                continue
            found: list[str] = []
            diff(name, golden[name], value, found)
            if found:
                differing += 1
                print(f"{name}: DIFFERENT")
                for line in found:
                    print(f"  {line}")
            elif took > 1.0:
                print(f"{name}: same ({took:.1f} s)")
        elif took > 1.0:
            print(f"{name}: recorded ({took:.1f} s)")
    if args.record:
        Path(args.record).write_text(json.dumps(record, separators=(",", ":")))
        print(f"recorded {len(record)} cases in {time.perf_counter() - t0:.0f} s")
        return 0
    missing = [k for k in golden if k not in record and k.startswith(args.only)]
    for k in missing:
        print(f"{k}: in the golden record, not run now")
    print(
        f"compared {len(record)} cases in {time.perf_counter() - t0:.0f} s: "
        f"{differing + len(missing)} with differences"
    )
    return 1 if differing or missing else 0


if __name__ == "__main__":
    sys.exit(main())
