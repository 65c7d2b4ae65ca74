"""Job traces: loading the Philly job table and its virtual-cluster sizes.

Responsibility: turn a CSV of jobs (``timestamp,duration,num_gpus,gpu_time,cluster``) into
immutable :class:`Job` values in submit order, optionally cut to a time window. Times become
seconds since the trace origin (the first submit in the file), so the simulator never handles
calendar dates. The ``cluster`` column is the tenant (a Philly virtual cluster, "VC").

Invariants: jobs are sorted by (submit, file order); ids are the 0-based row numbers of the
file (stable across windows); durations are at least 1 s; GPUs at least 1.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

TRACE_FILE = "philly-2017-09-10.csv"
VC_FILE = "philly-vc-nodes.csv"


class TraceError(ValueError):
    """A trace file or window that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    #: Seconds since the trace origin.
    submit: float
    gpus: int
    #: Seconds the job ran in the trace (its work at ``gpus`` GPUs).
    duration: float
    #: Whether the policy may preempt it; None: the simulation's JobModel decides.
    preemptible: bool | None = None

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * self.duration


@dataclass(frozen=True)
class Trace:
    jobs: tuple[Job, ...]
    #: Tenant -> nodes of its virtual cluster (only the tenants the VC file lists).
    vc_nodes: dict[str, int]
    #: Wall-clock time of second 0 (ISO text), for reports.
    origin: str
    #: The simulated window [start, end) in seconds since the origin (submit times).
    start: float
    end: float

    @property
    def tenants(self) -> list[str]:
        return sorted({j.tenant for j in self.jobs} | set(self.vc_nodes))

    def offered_gpu_seconds(self) -> float:
        return sum(j.gpu_seconds for j in self.jobs)


def default_trace_dir() -> Path:
    """``shared/traces/philly`` next to the repository (``../shared``) or inside it."""
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared", repo / "shared"):
        d = candidate / "traces" / "philly"
        if (d / TRACE_FILE).exists():
            return d
    return repo.parent / "shared" / "traces" / "philly"


def _parse_time(text: str, origin: datetime) -> float:
    """A window bound: a date/datetime (``2017-10-01``, ``2017-10-01 12:00``) or a number of
    days since the origin (``7``, ``7.5``)."""
    try:
        return float(text) * 86400.0
    except ValueError:
        pass
    try:
        return (datetime.fromisoformat(text) - origin).total_seconds()
    except ValueError:
        raise TraceError(
            f"Got {text!r} for a window bound; expected a date such as 2017-10-01, a datetime "
            "such as '2017-10-01 12:00', or days since the trace start such as 7"
        ) from None


def load_vc_nodes(path: Path) -> dict[str, int]:
    with path.open(newline="") as f:
        return {row["vc"]: int(row["node_num"]) for row in csv.DictReader(f)}


def load_trace(
    path: str | Path | None = None,
    vc_path: str | Path | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Trace:
    """Read a Philly-format job table; keep jobs submitted in [start, end)."""
    p = Path(path) if path else default_trace_dir() / TRACE_FILE
    if not p.exists():
        raise TraceError(f"trace file {p} does not exist; pass --trace PATH")
    vp = Path(vc_path) if vc_path else p.parent / VC_FILE
    vc_nodes = load_vc_nodes(vp) if vp.exists() else {}
    rows: list[tuple[datetime, int, str, int, float]] = []
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceError(f"trace file {p} is empty")
        col = {name: i for i, name in enumerate(header)}
        missing = {"timestamp", "duration", "num_gpus", "cluster"} - set(col)
        if missing:
            raise TraceError(f"trace file {p} lacks columns {sorted(missing)}")
        it, idu, ig, ic = col["timestamp"], col["duration"], col["num_gpus"], col["cluster"]
        for n, row in enumerate(reader):
            rows.append(
                (
                    datetime.fromisoformat(row[it]),
                    n,
                    row[ic],
                    max(1, int(float(row[ig]))),
                    max(1.0, float(row[idu])),
                )
            )
    if not rows:
        raise TraceError(f"trace file {p} has no jobs")
    rows.sort(key=lambda r: (r[0], r[1]))
    origin = rows[0][0]
    lo = _parse_time(start, origin) if start else 0.0
    last = (rows[-1][0] - origin).total_seconds()
    hi = _parse_time(end, origin) if end else last + 1.0
    if hi <= lo:
        raise TraceError(f"window end ({end}) must be after its start ({start})")
    jobs = []
    for ts, n, tenant, gpus, duration in rows:
        t = (ts - origin).total_seconds()
        if lo <= t < hi:
            jobs.append(Job(str(n), tenant, t - lo, gpus, duration))
    if not jobs:
        raise TraceError(f"no job was submitted in the window [{start}, {end})")
    return Trace(
        jobs=tuple(jobs),
        vc_nodes=vc_nodes,
        origin=(origin + timedelta(seconds=lo)).isoformat(sep=" "),
        start=0.0,
        end=hi - lo,
    )


def trace_from_jobs(jobs: list[Job], vc_nodes: dict[str, int] | None = None) -> Trace:
    """A hand-made trace (tests): jobs in any order, times already in seconds."""
    ordered = tuple(sorted(jobs, key=lambda j: (j.submit, j.id)))
    end = max(j.submit for j in ordered) + 1.0 if ordered else 1.0
    return Trace(ordered, dict(vc_nodes or {}), "0", 0.0, end)
