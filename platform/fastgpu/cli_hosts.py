"""``fastgpu host`` (the operator's view of agent-run hosts) and ``fastgpu agent`` (the
daemon on each GPU host). Command logic is the SDK's and the agent's; this is wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fastgpu.cli import render
from fastgpu.validation import parse_duration

host_app = typer.Typer(help="GPU hosts run by agents (multi-host pools).", no_args_is_help=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON.")
COLUMNS = ["name", "state", "gpu_type", "devices", "raylets", "leases", "last_heartbeat_s_ago"]


def _client() -> Any:
    from fastgpu.sdk import Client

    return Client()


def _one(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        render.emit_json(data)
    else:
        render.kv(title, data)


@host_app.command("add")
def host_add(
    name: str = typer.Argument(..., help="The host's name."), as_json: bool = JsonOpt
) -> None:
    """Declare a host; print its token once (give it to its agent in a 0600 file)."""
    got = _client().add_host(name)
    if as_json:
        render.emit_json(got)
        return
    render.console.print(f"host [bold]{got['name']}[/] token (shown once): {got['token']}")
    render.console.print(
        "on the host: write it to a file only root can read (chmod 600) and run "
        f"`fastgpu agent --name {got['name']} --token-file FILE --server URL ...`"
    )


@host_app.command("list")
def host_list(as_json: bool = JsonOpt) -> None:
    """Every host with its state, devices, raylets and leases."""
    hosts = _client().list_hosts()
    if as_json:
        render.emit_json(hosts)
        return
    render.table("hosts", hosts, COLUMNS)


@host_app.command("show")
def host_show(name: str, as_json: bool = JsonOpt) -> None:
    _one(_client().get_host(name), as_json, f"host {name}")


@host_app.command("drain")
def host_drain(
    name: str,
    deadline: str = typer.Option(None, "--deadline", help="At most this long, e.g. 30m."),
    wait: bool = typer.Option(False, "--wait", help="Return when the host is DRAINED."),
    as_json: bool = JsonOpt,
) -> None:
    """Stop new placements on the host and move its leases off (their grace, or the
    deadline); with --wait, report when nothing is left there."""
    import time

    client = _client()
    got = client.drain_host(name, parse_duration(deadline) if deadline else None)
    while wait and got["state"] == "DRAINING":
        time.sleep(1.0)
        got = client.get_host(name)
    _one(got, as_json, f"host {name}")


@host_app.command("undrain")
def host_undrain(name: str, as_json: bool = JsonOpt) -> None:
    _one(_client().undrain_host(name), as_json, f"host {name}")


def agent(
    name: str = typer.Option(..., "--name", help="This host's name (`fastgpu host add`)."),
    server: str = typer.Option(..., "--server", help="The server's URL."),
    token_file: Path = typer.Option(..., "--token-file", help="The host token (0600 file)."),
    gpu_type: str = typer.Option(..., "--gpu-type", help="GPU type of this host."),
    devices: str = typer.Option(..., "--devices", help="Device ids it lends, e.g. 0,1,2,3."),
    listen: str = typer.Option("127.0.0.1", "--listen", help="Address to bind."),
    port: int = typer.Option(0, "--port", help="Port (0: a free one)."),
    advertise: str = typer.Option(None, "--advertise", help="URL the server calls."),
    root: Path = typer.Option(None, "--root", help="Tenants' raylet homes (short path)."),
    isolation: str = typer.Option("auto", "--isolation", help="auto, os_users, single_user."),
) -> None:
    """Run the agent of this GPU host (foreground; see docs/agents.md for a systemd unit)."""
    from fastgpu.agent.daemon import AgentSettings, main

    settings = AgentSettings(
        name=name,
        server=server,
        token_file=token_file,
        gpu_type=gpu_type,
        devices=[int(d) for d in devices.split(",") if d.strip()],
        listen=listen,
        port=port,
        advertise=advertise,
        root=root,
        isolation=isolation,
    )
    raise typer.Exit(main(settings))


cluster_app = typer.Typer(help="cluster.yaml: the pool's description.", no_args_is_help=True)


@cluster_app.command("validate")
def cluster_validate(path: Path = typer.Argument(Path("cluster.yaml"))) -> None:
    """Check a cluster.yaml; print what it describes, or the field that is wrong."""
    from fastgpu.domain.cluster_file import load_cluster_file

    spec = load_cluster_file(path)
    gpus = sum(len(h.device_ids()) for h in spec.hosts)
    mode = "agents" if spec.agents else "this machine"
    render.console.print(f"{path}: valid; {len(spec.hosts)} hosts, {gpus} GPUs, run by {mode}")


@cluster_app.command("schema")
def cluster_schema() -> None:
    """Print cluster.yaml's JSON schema."""
    from fastgpu.domain.cluster_file import cluster_json_schema

    print(cluster_json_schema(), end="")
