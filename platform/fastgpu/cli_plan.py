"""``fastgpu plan``: the least-cost mix of reserved, on-demand and spot GPUs for a demand.

Wiring apart from logic: :func:`run_plan` reads the spec (``--spec``, or the GPU types of a
platform ``--config`` with offers derived from flags), the demand (``--demand linear:...``,
``--demand csv:PATH``, ``--trace``), makes the plan with its baselines and quota check, writes
``plan.json``, ``plan.md`` and ``plan.png`` under ``--out``, and returns a typed
:class:`PlanReport`; ``plan_app`` (mounted by the main CLI as ``fastgpu plan``) parses options
and prints the report as a table or JSON (``--output json``). Bad input exits 2 with a message
naming what to change. No Ray.

The trace is read with the simulator's reader (``fastgpu.sim.trace``); the planner package
itself does not import the simulator. The planner (scipy) is imported when a plan is made, so
that mounting this command costs every other ``fastgpu`` command nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fastgpu.config import PlatformConfig, load_config
from fastgpu.errors import InvalidRequest
from fastgpu.sim.trace import TraceError, load_trace

if TYPE_CHECKING:
    from fastgpu.planner.demand import Demand
    from fastgpu.planner.model import Plan, PlanSpec


@dataclass
class PlanReport:
    """What a planning run produced."""

    plan: Plan
    #: Files written under ``--out`` by kind (json, markdown, png); empty without ``--out``.
    files: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The plan without per-step series (plan.json under --out has them)."""
        from fastgpu.planner import report

        return {**report.as_dict(self.plan, series=False), "files": self.files}

    def render(self) -> str:
        from fastgpu.planner import report

        lines = [report.render(self.plan)]
        for kind, paths in self.files.items():
            lines += [f"{kind}: {p}" for p in paths]
        return "\n".join(lines)


def spec_from_config(
    config: PlatformConfig,
    reserved_discount: float = 0.4,
    term_hours: float = 730.0,
    spot_discount: float | None = None,
    spot_interruption: float = 0.1,
    gpus_per_node: int = 1,
) -> PlanSpec:
    """A spec from the platform config's GPU types: their price_per_hour is the on-demand
    price, reserved costs ``1 - reserved_discount`` of it, spot (only with a discount)
    ``1 - spot_discount``."""
    from fastgpu.planner.api import parse_spec
    from fastgpu.planner.errors import SpecError

    for name, value in (
        ("--reserved-discount", reserved_discount),
        ("--spot-discount", spot_discount),
    ):
        if value is not None and not 0 <= value < 1:
            raise SpecError(f"{name}: got {value:g}; expected a fraction in [0, 1)")
    types: dict[str, Any] = {}
    for name, gpu in config.gpu_types.items():
        price = gpu.price_per_hour
        offers: dict[str, Any] = {
            "on_demand": {"price_per_hour": price},
            "reserved": {
                "price_per_hour": price * (1 - reserved_discount),
                "term_hours": term_hours,
            },
        }
        if spot_discount is not None:
            offers["spot"] = {
                "price_per_hour": price * (1 - spot_discount),
                "interruption_rate": spot_interruption,
            }
        types[name] = {"perf": gpu.perf, "gpus_per_node": gpus_per_node, **offers}
    return parse_spec({"gpu_types": types}, "the spec made from --config")


def _override(spec: PlanSpec, **changes: Any) -> PlanSpec:
    from fastgpu.planner.api import parse_spec

    given = {k: v for k, v in changes.items() if v is not None}
    if not given:
        return spec
    return parse_spec({**spec.model_dump(), **given}, "the spec with the command line's options")


def _trace_demand(
    spec: PlanSpec, trace: str | None, start: str | None, end: str | None, gpu_type: str | None
) -> Demand:
    from fastgpu.planner.demand import UNNAMED, from_jobs

    tr = load_trace(trace, None, start, end)
    key = gpu_type or UNNAMED
    source = f"trace from {tr.origin}, {len(tr.jobs):,} jobs, unlimited capacity"
    return from_jobs(tr.jobs, tr.end, spec.step_hours, key, source)


def run_plan(
    spec: str | Path | None = None,
    config: str | Path | None = None,
    demand: str | None = None,
    trace: str | None = None,
    start: str | None = None,
    end: str | None = None,
    trace_gpu_type: str | None = None,
    unmet_penalty: float | None = None,
    max_spot_share: float | None = None,
    relax: bool = False,
    time_limit: float | None = None,
    mip_gap: float | None = None,
    reserved_discount: float = 0.4,
    term_hours: float = 730.0,
    spot_discount: float | None = None,
    spot_interruption: float = 0.1,
    gpus_per_node: int = 1,
    baselines: bool = True,
    out: str | Path | None = None,
) -> PlanReport:
    """Read the spec and the demand, make the plan, write reports under ``out`` if given."""
    from fastgpu.planner import report
    from fastgpu.planner.api import load_spec, make_plan
    from fastgpu.planner.demand import parse_demand
    from fastgpu.planner.errors import DemandError, SpecError

    platform = load_config(config) if config is not None else None
    if spec is not None:
        plan_spec = load_spec(spec)
        base_dir: Path | None = Path(spec).parent
    elif platform is not None:
        plan_spec = spec_from_config(
            platform, reserved_discount, term_hours, spot_discount, spot_interruption, gpus_per_node
        )
        base_dir = None
    else:
        raise SpecError("no GPU types to plan for; give --spec FILE or --config FILE")
    plan_spec = _override(
        plan_spec,
        unmet_penalty=unmet_penalty,
        max_spot_share=max_spot_share,
        integer=False if relax else None,
        time_limit_s=time_limit,
        mip_rel_gap=mip_gap,
    )
    if demand is not None and demand.strip() != "trace" and trace is not None:
        raise DemandError(f"Got both --demand {demand} and --trace {trace}; give one")
    text = demand if demand is not None else ("trace" if trace is not None else plan_spec.demand)
    if text is None:
        raise DemandError(
            "no demand; give --demand linear:a=A,b=B,T=STEPS, --demand csv:PATH or --trace, "
            "or demand: in the spec"
        )
    if text.strip() == "trace":
        wanted = _trace_demand(plan_spec, trace, start, end, trace_gpu_type)
    else:
        # A CSV named in the spec is relative to the spec; one on the command line, to here.
        wanted = parse_demand(text, base_dir if text == plan_spec.demand else None)
    plan = make_plan(plan_spec, wanted, platform, with_baselines=baselines)
    files = report.write_all(plan, Path(out)) if out is not None else {}
    return PlanReport(plan=plan, files=files)


plan_app = typer.Typer(
    help="The least-cost mix of reserved, on-demand and spot GPUs for a demand.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@plan_app.callback(invoke_without_command=True)
def plan(
    spec: str = typer.Option(None, "--spec", help="Plan spec (YAML or JSON): types and offers."),
    config: str = typer.Option(
        None,
        "--config",
        help="Platform config: guaranteed quotas are checked against the plan; without --spec "
        "its GPU types are planned for (price_per_hour as the on-demand price).",
    ),
    demand: str = typer.Option(
        None, "--demand", help="linear:a=10,b=20,T=100[,type=NAME], csv:PATH, or trace."
    ),
    trace: str = typer.Option(
        None,
        "--trace",
        help="Trace CSV (Philly format) as demand; 'default': shared/traces/philly.",
    ),
    start: str = typer.Option(None, "--start", help="Trace window start (date or days)."),
    end: str = typer.Option(None, "--end", help="Trace window end (exclusive)."),
    trace_gpu_type: str = typer.Option(
        None, "--trace-gpu-type", help="GPU type the trace's demand is for (needed with several)."
    ),
    unmet_penalty: float = typer.Option(
        None, "--unmet-penalty", help="Price per unmet demand-hour (default: unmet forbidden)."
    ),
    max_spot_share: float = typer.Option(
        None, "--max-spot-share", help="Most spot GPUs as a fraction of all, every step."
    ),
    relax: bool = typer.Option(False, "--relax", help="Fractional nodes (the LP relaxation)."),
    time_limit: float = typer.Option(None, "--time-limit", help="Solver time limit (s)."),
    mip_gap: float = typer.Option(None, "--mip-gap", help="Relative gap to stop at."),
    reserved_discount: float = typer.Option(
        0.4, "--reserved-discount", help="With --config only: reserved price = (1 - this) x."
    ),
    term_hours: float = typer.Option(
        730.0, "--term-hours", help="With --config only: reserved term (hours)."
    ),
    spot_discount: float = typer.Option(
        None, "--spot-discount", help="With --config only: offer spot at (1 - this) x."
    ),
    spot_interruption: float = typer.Option(
        0.1, "--spot-interruption", help="With --config only: spot interruption rate."
    ),
    gpus_per_node: int = typer.Option(1, "--gpus-per-node", help="With --config only."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the baselines."),
    out: str = typer.Option(None, "--out", help="Write plan.json, plan.md and plan.png here."),
    output: str = typer.Option("table", "--output", help="table or json."),
) -> None:
    """Plan capacity and print the table per type and offer, with the baselines."""
    if output not in ("table", "json"):
        raise typer.BadParameter(f"Got {output!r} for --output; expected table or json")
    trace_path: str | None = trace
    if trace == "default":
        trace_path, demand = None, demand or "trace"
    try:
        rep = run_plan(
            spec=spec,
            config=config,
            demand=demand,
            trace=trace_path,
            start=start,
            end=end,
            trace_gpu_type=trace_gpu_type,
            unmet_penalty=unmet_penalty,
            max_spot_share=max_spot_share,
            relax=relax,
            time_limit=time_limit,
            mip_gap=mip_gap,
            reserved_discount=reserved_discount,
            term_hours=term_hours,
            spot_discount=spot_discount,
            spot_interruption=spot_interruption,
            gpus_per_node=gpus_per_node,
            baselines=not no_baselines,
            out=out,
        )
    except (InvalidRequest, TraceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output == "json":
        typer.echo(json.dumps(rep.as_dict(), indent=2))
    else:
        typer.echo(rep.render())


__all__ = ["PlanReport", "plan_app", "run_plan", "spec_from_config"]
