"""``fastgpu sim``: replay a job trace through several scheduling policies side by side.

Wiring apart from logic: :func:`run_sim` does the work and returns a typed :class:`SimReport`;
``sim_app`` (a typer sub-app the main CLI mounts as ``fastgpu sim``) parses options and prints
the report as a table for people or JSON (``--output json``) for scripts. No Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from fastgpu.sim import report as sim_report
from fastgpu.sim.cluster import ClusterSpec, size_for_load
from fastgpu.sim.runner import DEFAULT_POLICIES, POLICIES, SideBySide, run_side_by_side
from fastgpu.sim.trace import TraceError, load_trace


@dataclass
class SimReport:
    """What a simulation run produced."""

    run: SideBySide
    #: Files written under ``--out`` by kind (markdown, csv, png); empty without ``--out``.
    files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return sim_report.markdown_table(self.run.metrics)

    def as_dict(self) -> dict[str, Any]:
        return {**sim_report.as_dict(self.run), "files": self.files}

    def render(self) -> str:
        lines = [sim_report.describe(self.run), "", self.table]
        for kind, paths in self.files.items():
            for p in paths:
                lines.append(f"{kind}: {p}")
        return "\n".join(lines)


def run_sim(
    trace: str | None = None,
    vc_nodes: str | None = None,
    start: str | None = None,
    end: str | None = None,
    nodes: int | None = None,
    gpus_per_node: int = 8,
    load: float | None = None,
    policies: str | list[str] | tuple[str, ...] = DEFAULT_POLICIES,
    seed: int = 0,
    out: str | Path | None = None,
    plots: bool = True,
) -> SimReport:
    """Load the trace window, size the cluster (``nodes`` or target ``load``, default 1.0),
    run the policies side by side, and write reports under ``out`` if given."""
    tr = load_trace(trace, vc_nodes, start, end)
    if nodes is not None and load is not None:
        raise ValueError("Got both --nodes and --load; give one (the other is derived)")
    if nodes is not None:
        if nodes < 1:
            raise ValueError(f"Got {nodes} for --nodes; expected an integer >= 1")
        cluster = ClusterSpec(nodes=nodes, gpus_per_node=gpus_per_node)
    else:
        cluster = size_for_load(tr, 1.0 if load is None else load, gpus_per_node)
    names = [p.strip() for p in policies.split(",")] if isinstance(policies, str) else policies
    run = run_side_by_side(tr, cluster, [n for n in names if n], seed=seed)
    files = sim_report.write_all(run, Path(out), plots=plots) if out is not None else {}
    return SimReport(run=run, files=files)


sim_app = typer.Typer(
    help="Replay a GPU job trace through scheduling policies side by side.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@sim_app.callback(invoke_without_command=True)
def sim(
    trace: str = typer.Option(
        None, "--trace", help="Trace CSV (Philly format); default: shared/traces/philly."
    ),
    vc_nodes: str = typer.Option(
        None, "--vc-nodes", help="CSV of tenant (vc) -> node_num; default: next to the trace."
    ),
    start: str = typer.Option(
        None, "--start", help="Window start: a date (2017-10-01) or days since trace start."
    ),
    end: str = typer.Option(None, "--end", help="Window end (exclusive), same forms as --start."),
    nodes: int = typer.Option(None, "--nodes", help="Cluster nodes (else sized by --load)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs per node."),
    load: float = typer.Option(
        None, "--load", help="Target offered load to size the cluster (default 1.0)."
    ),
    policies: str = typer.Option(
        ",".join(DEFAULT_POLICIES), "--policies", help=f"Comma list of {', '.join(POLICIES)}."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed (runs are deterministic for a seed)."),
    out: str = typer.Option(None, "--out", help="Write report.md, CSVs and PNGs here."),
    output: str = typer.Option("table", "--output", help="table or json."),
) -> None:
    """Run the simulation and print the side-by-side table."""
    if output not in ("table", "json"):
        raise typer.BadParameter(f"Got {output!r} for --output; expected table or json")
    try:
        rep = run_sim(
            trace=trace,
            vc_nodes=vc_nodes,
            start=start,
            end=end,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            load=load,
            policies=policies,
            seed=seed,
            out=out,
        )
    except (TraceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output == "json":
        typer.echo(json.dumps(rep.as_dict(), indent=2))
    else:
        typer.echo(rep.render())


__all__ = ["SimReport", "run_sim", "sim_app"]
