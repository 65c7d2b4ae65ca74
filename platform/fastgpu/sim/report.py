"""Reports of a side-by-side run: a markdown table, CSV files and PNG plots.

Responsibility: present :class:`~fastgpu.sim.runner.SideBySide` for people (markdown) and for
tools (CSV, JSON-ready dicts). PNGs need matplotlib (a FastGPU dependency); without it the
plots are skipped and the report says so.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

from fastgpu.sim.metrics import Metrics
from fastgpu.sim.runner import SideBySide

_COLUMNS: list[tuple[str, str, str]] = [
    # (field, header, format)
    ("policy", "policy", "{}"),
    ("avg_jct_s", "avg JCT (h)", "h"),
    ("median_jct_s", "median JCT (h)", "h"),
    ("p99_jct_s", "p99 JCT (h)", "h"),
    ("avg_queue_s", "avg queue (s)", "{:,.0f}"),
    ("median_queue_s", "median queue (s)", "{:,.0f}"),
    ("p99_queue_s", "p99 queue (h)", "h"),
    ("utilization", "util", "{:.3f}"),
    ("util_bound", "util bound", "{:.3f}"),
    ("makespan_s", "makespan (d)", "d"),
    ("violation_gpu_h", "guarantee viol. (GPU-h)", "{:,.0f}"),
    ("preemptions", "preempt.", "{:,}"),
    ("lost_gpu_h", "lost (GPU-h)", "{:,.0f}"),
    ("resizes", "resizes", "{:,}"),
    ("jain_fairness", "Jain", "{:.3f}"),
    ("rejected", "rejected", "{:,}"),
    ("unfinished", "unfinished", "{:,}"),
    ("wall_s", "sim time (s)", "{:.1f}"),
]


def _fmt(value: Any, fmt: str) -> str:
    if fmt == "h":
        return f"{value / 3600.0:,.2f}"
    if fmt == "d":
        return f"{value / 86400.0:,.1f}"
    return fmt.format(value)


def describe(run: SideBySide) -> str:
    t = run.trace
    days = (t.end - t.start) / 86400.0
    return (
        f"{len(t.jobs):,} jobs submitted over {days:.1f} days from {t.origin}; cluster "
        f"{run.cluster.nodes} nodes x {run.cluster.gpus_per_node} GPUs = "
        f"{run.cluster.capacity} GPUs; offered load {run.load:.2f}"
    )


def markdown_table(metrics: list[Metrics]) -> str:
    head = "| " + " | ".join(h for _, h, _ in _COLUMNS) + " |"
    rule = "|" + "|".join("---" if f == "policy" else "---:" for f, _, _ in _COLUMNS) + "|"
    rows = [
        "| " + " | ".join(_fmt(getattr(m, f), fmt) for f, _, fmt in _COLUMNS) + " |"
        for m in metrics
    ]
    return "\n".join([head, rule, *rows])


def markdown(run: SideBySide, plots: list[str] | None = None) -> str:
    lines = ["# Simulation report", "", describe(run), "", markdown_table(run.metrics), ""]
    if plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots], ""]
    elif plots is not None:
        lines += ["(plots skipped: matplotlib is not installed)", ""]
    return "\n".join(lines)


def as_dict(run: SideBySide) -> dict[str, Any]:
    return {
        "trace": {
            "jobs": len(run.trace.jobs),
            "origin": run.trace.origin,
            "window_s": run.trace.end - run.trace.start,
        },
        "cluster": dataclasses.asdict(run.cluster),
        "offered_load": run.load,
        "metrics": [dataclasses.asdict(m) for m in run.metrics],
    }


def write_csv(run: SideBySide, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.csv"
    fields = [f.name for f in dataclasses.fields(Metrics)]
    with summary.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for m in run.metrics:
            w.writerow(dataclasses.asdict(m))
    tenants = out / "tenants.csv"
    with tenants.open("w", newline="") as f:
        w2 = csv.writer(f)
        w2.writerow(["policy", "tenant", "nominal_gpus", "gpu_hours", "violation_gpu_hours"])
        for res in run.results:
            for tenant in sorted(res.tenant_gpu_s):
                w2.writerow(
                    [
                        res.policy,
                        tenant,
                        res.nominal.get(tenant, 0),
                        f"{res.tenant_gpu_s[tenant] / 3600.0:.1f}",
                        f"{res.violation_gpu_s.get(tenant, 0.0) / 3600.0:.1f}",
                    ]
                )
    return [summary, tenants]


def write_plots(run: SideBySide, out: Path) -> list[str] | None:
    """JCT CDF per policy, utilisation over time, per-tenant share over time (one per policy).
    None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in run.results:
        jct = sorted(j.end - j.submit for j in res.jobs if j.end is not None)
        if jct:
            ys = [(i + 1) / len(jct) for i in range(len(jct))]
            ax.plot([max(x, 1.0) for x in jct], ys, label=res.policy)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s, log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("JCT CDF")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = out / "jct_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(8, 4))
    for res in run.results:
        xs = [i * res.bucket_s / 86400.0 for i in range(len(res.util_series))]
        ax.plot(xs, res.util_series, label=res.policy, linewidth=0.8)
    ax.set_xlabel("days since window start")
    ax.set_ylabel("allocated / capacity")
    ax.set_title("Utilisation over time")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = out / "utilization.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    for res in run.results:
        tenants = sorted(res.share_series, key=lambda t: -res.nominal.get(t, 0))
        if not tenants or not res.util_series:
            continue
        xs = [i * res.bucket_s / 86400.0 for i in range(len(res.util_series))]
        fig, ax = plt.subplots(figsize=(8, 4))
        stacks = [res.share_series[t][: len(xs)] for t in tenants]
        ax.stackplot(xs, *stacks, labels=tenants)
        ax.set_xlabel("days since window start")
        ax.set_ylabel("share of cluster")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Per-tenant share over time: {res.policy}")
        ax.legend(fontsize=6, ncol=2, loc="upper right")
        path = out / f"share_{res.policy}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def write_all(run: SideBySide, out: Path, plots: bool = True) -> dict[str, list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    csvs = [str(p) for p in write_csv(run, out)]
    pngs = write_plots(run, out) if plots else []
    md = out / "report.md"
    md.write_text(markdown(run, pngs))
    return {"markdown": [str(md)], "csv": csvs, "png": pngs or []}
