"""``fastgpu sweep``: Ray Tune sweeps on your leases (submit, list, status, logs, stop)."""

from __future__ import annotations

from typing import Any

import typer

from fastgpu.cli import render

sweep_app = typer.Typer(help="Hyperparameter sweeps (Ray Tune) on leases.", no_args_is_help=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


def _client() -> Any:
    from fastgpu.sdk import Client

    return Client()


@sweep_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def sweep_submit(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="The sweep's name; the same name resumes it."),
    gpus: str = typer.Option(..., "--gpus", help="The sweep's lease: N or MIN:MAX GPUs."),
    gpu_type: str = typer.Option(None, "--gpu-type", help="GPU type."),
    duration: str = typer.Option(None, "--duration", help="Lease duration, e.g. 2h."),
    trials: int = typer.Option(8, "--trials", help="Trials to sample."),
    gpus_per_trial: int = typer.Option(1, "--gpus-per-trial", help="GPUs of each trial."),
    cpus_per_trial: float = typer.Option(0.5, "--cpus-per-trial", help="CPUs of each trial."),
    metric: str = typer.Option("val_loss", "--metric", help="The metric trials report."),
    mode: str = typer.Option("min", "--mode", help="min or max."),
    search: str = typer.Option("optuna", "--search", help="optuna, random or grid."),
    scheduler: str = typer.Option("asha", "--scheduler", help="asha or fifo."),
    max_t: int = typer.Option(20, "--max-t", help="Reports per trial (ASHA's horizon)."),
    grace_period: int = typer.Option(2, "--grace-period", help="Reports before ASHA stops."),
    register_as: str = typer.Option(None, "--register-as", help="Register the best as MODEL."),
    working_dir: str = typer.Option(None, "--working-dir", help="Folder uploaded with it."),
    env: list[str] = typer.Option(None, "--env", help="KEY=VALUE (repeatable)."),
    as_json: bool = JsonOpt,
) -> None:
    """Submit a sweep: fastgpu sweep submit --name s --gpus 2:8 --trials 32 -- python tune.py"""
    from fastgpu.cli.main import _parse_gpus, command_and_env

    command, extra = command_and_env(ctx.args, env, "python tune_classifier.py")
    n, low = _parse_gpus(gpus)
    sweep = {
        "name": name,
        "trials": trials,
        "gpus_per_trial": gpus_per_trial,
        "cpus_per_trial": cpus_per_trial,
        "metric": metric,
        "mode": mode,
        "search": search,
        "scheduler": scheduler,
        "max_t": max_t,
        "grace_period": grace_period,
        "register_as": register_as,
    }
    data = _client().submit_job(
        command,
        gpus=n,
        min_gpus=low,
        gpu_type=gpu_type,
        duration=duration,
        working_dir=working_dir,
        env=extra,
        sweep={k: v for k, v in sweep.items() if v is not None},
    )
    if as_json:
        render.emit_json(data)
    else:
        render.console.print(f"sweep {name} submitted as job {data['id']} ({data['status']})")


@sweep_app.command("list")
def sweep_list(as_json: bool = JsonOpt) -> None:
    """Your sweeps' jobs."""
    rows = _client().list_sweeps()
    if as_json:
        render.emit_json(rows)
    else:
        render.table("sweeps", rows, ("sweep", "id", "status", "message"))


@sweep_app.command("status")
def sweep_status(name: str, as_json: bool = JsonOpt) -> None:
    """A sweep's latest job, its lease, submissions and registered models."""
    data = _client().sweep_status(name)
    if as_json:
        render.emit_json(data)
        return
    job = data["job"]
    lease = job.get("lease") or {}
    render.kv(
        f"sweep {name}",
        {
            "job": job["id"],
            "status": job["status"],
            "lease": lease.get("id"),
            "lease_state": lease.get("state"),
            "held_gpus": lease.get("held_gpus"),
            "reason": lease.get("reason"),
            "submissions": len(data["submissions"]),
            "models": ", ".join(data["models"]) or "-",
        },
    )


@sweep_app.command("logs")
def sweep_logs(name: str) -> None:
    """The sweep's latest job's logs (Tune's progress table, the best trial)."""
    print(_client().sweep_logs(name), end="")


@sweep_app.command("stop")
def sweep_stop(name: str, as_json: bool = JsonOpt) -> None:
    """Stop the sweep; its experiment stays, and submitting the same name resumes it."""
    data = _client().stop_sweep(name)
    if as_json:
        render.emit_json(data)
    else:
        render.console.print(f"sweep {name}: job {data['id']} {data['status']}")
