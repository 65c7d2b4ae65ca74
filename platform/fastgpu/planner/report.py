"""Reports of a plan: a markdown table per type and offer, baselines, quota findings, a JSON-ready
dict, and a PNG of the capacity provisioned by offer over the demand curve.

PNGs use matplotlib with the Agg backend (no display); without matplotlib the plot is skipped
and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fastgpu.planner.model import OFFERS, Plan

_OFFER_LABEL = {"reserved": "reserved", "on_demand": "on demand", "spot": "spot"}
_COLORS = {"reserved": "#4c72b0", "on_demand": "#dd8452", "spot": "#55a868"}


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def describe(plan: Plan) -> str:
    total = np.sum(np.array(list(plan.demand.values())), axis=0)
    unit = "GPUs" if plan.demand_unit == "gpus" else "perf units"
    gap = "" if plan.mip_gap is None else f", within {plan.mip_gap:.2%} of the bound"
    return (
        f"{plan.steps:,} steps of {plan.step_hours:g} h ({plan.source}); demand mean "
        f"{total.mean():,.1f}, peak {total.max():,.1f} {unit}. Cost {plan.total_cost:,.2f} "
        f"({plan.status}, {plan.method}{gap}; solved in {plan.solve_s:.2f} s)"
    )


def offers_table(plan: Plan) -> str:
    rows = [
        "| type | offer | nodes mean | nodes peak | GPU-hours bought | usable GPU-hours | cost "
        "| share of cost |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = plan.total_cost or 1.0
    for line in plan.lines:
        rows.append(
            f"| {line.gpu_type} | {_OFFER_LABEL[line.offer]} | {line.mean_nodes:,.2f} | "
            f"{line.peak_nodes:,.0f} | {line.gpu_hours:,.0f} | {line.usable_gpu_hours:,.0f} | "
            f"{line.cost:,.2f} | {line.cost / total:.1%} |"
        )
    if plan.unmet_total > 0 or plan.unmet_cost > 0:
        rows.append(
            f"| (unmet) | {plan.unmet_total:,.1f} demand-hours | | | | | "
            f"{plan.unmet_cost:,.2f} | {plan.unmet_cost / total:.1%} |"
        )
    rows.append(f"| **total** | | | | | | **{plan.total_cost:,.2f}** | 100% |")
    return "\n".join(rows)


def baselines_table(plan: Plan) -> str:
    rows = [
        "| plan | cost | planner saves | unmet (demand-hours) |",
        "|---|---:|---:|---:|",
        f"| planner ({plan.method}) | {plan.total_cost:,.2f} | | {plan.unmet_total:,.1f} |",
    ]
    for b in plan.baselines:
        saves = ""
        if b.cost:
            saves = f"{1 - plan.total_cost / b.cost:.1%}"
        unmet = "" if b.unmet is None else f"{b.unmet:,.1f}"
        note = f" ({b.note})" if b.note else ""
        rows.append(f"| {b.label}{note} | {_money(b.cost)} | {saves} | {unmet} |")
    return "\n".join(rows)


def markdown(plan: Plan, png: str | None = None) -> str:
    lines = ["# Capacity plan", "", describe(plan), "", offers_table(plan), ""]
    if plan.baselines:
        lines += ["## Against simple rules", "", baselines_table(plan), ""]
    if plan.quota_findings:
        lines += ["## Guaranteed quotas", ""]
        lines += [f"- {f.message}" for f in plan.quota_findings]
        lines.append("")
    if png:
        lines += [f"![capacity]({Path(png).name})", ""]
    return "\n".join(lines)


def render(plan: Plan) -> str:
    """The text a person reads on the terminal."""
    parts = [describe(plan), "", offers_table(plan)]
    if plan.baselines:
        parts += ["", baselines_table(plan)]
    for f in plan.quota_findings:
        parts += ["", f"quota: {f.message}"]
    return "\n".join(parts)


def as_dict(plan: Plan, series: bool = True) -> dict[str, Any]:
    """The plan as JSON-ready data; without ``series`` the per-step lists are left out."""
    data = plan.model_dump()
    for line, dumped in zip(plan.lines, data["lines"], strict=True):
        dumped["mean_nodes"] = line.mean_nodes
        dumped["peak_nodes"] = line.peak_nodes
        if not series:
            dumped.pop("nodes")
    if not series:
        data.pop("demand")
        data.pop("unmet")
    return data


def write_plot(plan: Plan, path: Path) -> bool:
    """Usable capacity by offer, stacked, over the demand; one panel per type when there are
    several (gpus form). False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    types = list(dict.fromkeys(line.gpu_type for line in plan.lines))
    panels: list[str | None] = [None]
    if plan.demand_unit == "gpus" and len(types) > 1:
        panels += types
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    # One edge more than steps, each value repeated at its step's end: the last step shows.
    xs = np.arange(plan.steps + 1) * plan.step_hours
    unit = "GPUs" if plan.demand_unit == "gpus" else "perf units"
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        stacks, labels, colors = [], [], []
        for offer in OFFERS:
            usable = np.zeros(plan.steps)
            for line in plan.lines:
                if line.offer != offer or (panel is not None and line.gpu_type != panel):
                    continue
                usable += _usable_per_step(plan, line.gpu_type, offer)
            if usable.any():
                stacks.append(usable)
                labels.append(_OFFER_LABEL[offer])
                colors.append(_COLORS[offer])
        stacks = [np.append(s, s[-1]) for s in stacks]
        if stacks:
            ax.stackplot(xs, *stacks, labels=labels, colors=colors, alpha=0.8, step="post")
        if panel is None:
            demand = np.sum(np.array(list(plan.demand.values())), axis=0)
            title = "All types" if len(panels) > 1 else "Capacity by offer"
        else:
            demand = np.array(plan.demand.get(panel, np.zeros(plan.steps)))
            title = f"{panel} (demand of its own type; it may also serve slower types)"
        ax.step(
            xs,
            np.append(demand, demand[-1]),
            where="post",
            color="black",
            linewidth=0.9,
            label="demand",
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(f"usable {unit}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("hours since the start of the horizon")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _usable_per_step(plan: Plan, gpu_type: str, offer: str) -> np.ndarray:
    """Usable capacity per step of one line, in the demand's unit."""
    line = plan.line(gpu_type, offer)  # type: ignore[arg-type]
    if line is None:
        return np.zeros(plan.steps)
    kept = line.usable_gpu_hours / line.gpu_hours if line.gpu_hours else 1.0
    per_node = line.gpus_per_node * kept
    values = np.array(line.nodes) * per_node
    if plan.demand_unit == "flops":
        values = values * plan.perf.get(gpu_type, 1.0)
    return values


def write_all(plan: Plan, out: Path) -> dict[str, list[str]]:
    """plan.json (with the per-step series), plan.md and plan.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / "plan.png"
    plotted = write_plot(plan, png)
    md = out / "plan.md"
    md.write_text(markdown(plan, str(png) if plotted else None))
    js = out / "plan.json"
    js.write_text(json.dumps(as_dict(plan), indent=1))
    files = {"json": [str(js)], "markdown": [str(md)], "png": [str(png)] if plotted else []}
    return files


__all__ = [
    "as_dict",
    "baselines_table",
    "describe",
    "markdown",
    "offers_table",
    "render",
    "write_all",
    "write_plot",
]
