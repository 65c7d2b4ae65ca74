"""``fastgpu model``: the model registry (list, show, register, delete)."""

from __future__ import annotations

import json
from typing import Any

import typer

from fastgpu.cli import render

model_app = typer.Typer(help="Registered models: tenant/name:vN.", no_args_is_help=True)
COLUMNS = ("ref", "size_bytes", "metrics", "lineage", "created_at")
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


def _client() -> Any:
    from fastgpu.sdk import Client

    return Client()


def _row(m: dict[str, Any]) -> dict[str, Any]:
    short = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m["metrics"].items()}
    return {**m, "metrics": json.dumps(short)[:60], "lineage": json.dumps(m["lineage"])[:60]}


def _pairs(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        from fastgpu.errors import InvalidRequest

        raise InvalidRequest(f"{flag}: got {text!r}; expected a JSON object like '{{\"lr\": 1}}'")
    return value


@model_app.command("list")
def model_list(
    name: str | None = typer.Option(None, "--name", help="One model's versions."),
    tenant: str | None = typer.Option(None, "--tenant", help="Whose models (admin)."),
    as_json: bool = JsonOpt,
) -> None:
    """Your models' live versions (the admin: everyone's, or --tenant's)."""
    rows = _client().list_models(name=name, tenant=tenant)
    if as_json:
        render.emit_json(rows)
    else:
        render.table("models", [_row(r) for r in rows], COLUMNS)


@model_app.command("show")
def model_show(
    ref: str = typer.Argument(help="NAME[:vN|:latest]"), as_json: bool = JsonOpt
) -> None:
    """One version: files, hash, config, metrics, lineage."""
    data = _client().get_model(ref)
    if as_json:
        render.emit_json(data)
    else:
        render.kv(data["ref"], {k: v for k, v in data.items() if k != "ref"})


@model_app.command("register")
def model_register(
    name: str,
    checkpoint: str = typer.Argument(help="A checkpoint folder on this machine."),
    config: str | None = typer.Option(None, "--config", help="JSON object."),
    metrics: str | None = typer.Option(None, "--metrics", help="JSON object."),
    run: str | None = typer.Option(None, "--run", help="The training run it came from."),
    as_json: bool = JsonOpt,
) -> None:
    """Publish a checkpoint folder into your storage and register it as the next version
    (run where the platform's storage is: on its machine, or inside a job)."""
    data = _client().register_model(
        name,
        checkpoint,
        config=_pairs(config, "--config"),
        metrics=_pairs(metrics, "--metrics"),
        lineage={"run": run} if run else {},
    )
    if as_json:
        render.emit_json(data)
    else:
        render.console.print(f"registered {data['ref']} ({data['content_hash'][:12]})")


@model_app.command("delete")
def model_delete(ref: str = typer.Argument(help="NAME:vN"), as_json: bool = JsonOpt) -> None:
    """Delete one version (its files too, unless another version has the same files)."""
    data = _client().delete_model(ref)
    if as_json:
        render.emit_json(data)
    else:
        render.console.print(f"deleted {data['ref']}")
