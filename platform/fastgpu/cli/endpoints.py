"""``fastgpu deploy`` and ``fastgpu endpoint list|show|logs|update|delete|tokens``: wiring only,
the work is the API's (:meth:`fastgpu.sdk.Client.deploy`, :meth:`~fastgpu.sdk.Client.endpoint`)."""

from __future__ import annotations

from typing import Any

import typer

from fastgpu.cli import render

endpoint_app = typer.Typer(help="Model endpoints: list, show, logs, update, delete, tokens.")
COLUMNS = ["name", "state", "model", "version", "replicas", "lease_gpus", "url"]


def _client() -> Any:
    from fastgpu.sdk import Client

    return Client()


def _emit(data: Any, output: str, title: str) -> None:
    if output == "json":
        render.emit_json(data)
    elif isinstance(data, list):
        render.table(title, data, COLUMNS)
    else:
        render.kv(title, data)


def deploy(
    model: str = typer.Argument(
        ..., help="A registered model ([tenant/]model:vN or :latest), or a training run's name."
    ),
    name: str = typer.Option(..., "--name", help="The endpoint's name."),
    gpus_per_replica: int = typer.Option(1, "--gpus-per-replica"),
    min_replicas: int = typer.Option(0, "--min-replicas", help="0 scales to zero when idle."),
    max_replicas: int = typer.Option(1, "--max-replicas"),
    max_batch_size: int = typer.Option(8, "--max-batch-size"),
    batch_wait_ms: int = typer.Option(5, "--batch-wait-ms"),
    gpu_type: str | None = typer.Option(None, "--gpu-type"),
    output: str = typer.Option("table", "--output", "-o", help="table or json."),
) -> None:
    """Deploy a model to an authenticated HTTP endpoint; prints its URL and token (once)."""
    opts: dict[str, Any] = {
        "gpus_per_replica": gpus_per_replica,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "max_batch_size": max_batch_size,
        "batch_wait_ms": batch_wait_ms,
    }
    if gpu_type:
        opts["gpu_type"] = gpu_type
    out = _client().deploy(model, name, **opts)
    if output == "json":
        render.emit_json(out)
        return
    typer.echo(f"endpoint {out['name']}: {out['state']} ({out['message']})")
    typer.echo(f"url:   {out['url']}")
    typer.echo(f"token: {out['token']}   (shown once; keep it)")


@endpoint_app.command("list")
def list_(output: str = typer.Option("table", "--output", "-o")) -> None:
    """Your endpoints."""
    _emit(_client().list_endpoints(), output, "endpoints")


@endpoint_app.command("show")
def show(name: str, output: str = typer.Option("table", "--output", "-o")) -> None:
    """One endpoint: state, model, replicas, lease, why."""
    _emit(_client().endpoint(name), output, f"endpoint {name}")


@endpoint_app.command("logs")
def logs(name: str, lines: int = typer.Option(200, "--lines", "-n")) -> None:
    """The last lines of its replicas' logs."""
    typer.echo(_client().endpoint(name, "logs", lines=lines)["logs"])


@endpoint_app.command("update")
def update(
    name: str,
    model: str | None = typer.Option(None, "--model", help="Roll to this model."),
    min_replicas: int | None = typer.Option(None, "--min-replicas"),
    max_replicas: int | None = typer.Option(None, "--max-replicas"),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size"),
    batch_wait_ms: int | None = typer.Option(None, "--batch-wait-ms"),
    output: str = typer.Option("table", "--output", "-o"),
) -> None:
    """Change the model (a rolling update, no failed request) or the scaling."""
    body = {
        k: v
        for k, v in {
            "model": model,
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "max_batch_size": max_batch_size,
            "batch_wait_ms": batch_wait_ms,
        }.items()
        if v is not None
    }
    _emit(_client().endpoint(name, "update", **body), output, f"endpoint {name}")


@endpoint_app.command("delete")
def delete(name: str) -> None:
    """Stop serving and release its GPUs."""
    _client().endpoint(name, "delete")
    typer.echo(f"endpoint {name} deleted")


@endpoint_app.command("tokens")
def tokens(
    name: str,
    issue: bool = typer.Option(False, "--issue", help="Issue a new token (shown once)."),
    revoke: str | None = typer.Option(None, "--revoke", help="Revoke the token with this id."),
    output: str = typer.Option("table", "--output", "-o"),
) -> None:
    """List an endpoint's tokens; --issue a new one, --revoke ID one (no restart either way)."""
    client = _client()
    if issue:
        _emit(client.endpoint(name, "issue_token"), output, "new token (shown once)")
    elif revoke:
        _emit(client.endpoint(name, "revoke_token", token_id=revoke), output, "revoked")
    else:
        data = client.endpoint(name, "tokens")
        if output == "json":
            render.emit_json(data)
        else:
            render.table(f"tokens of {name}", data, ["id", "created_at", "revoked"])
