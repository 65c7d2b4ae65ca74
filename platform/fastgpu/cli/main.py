"""``fastgpu``: the command line. Wiring only; each command calls the SDK or the launcher and
prints a typed result (table, or JSON with ``--output json``).

Exit codes: 0 ok; 1 failed or denied (not found, conflict, unavailable, timeout); 2 bad usage
or invalid input. The caller is whoever ``FASTGPU_TOKEN`` belongs to (the local admin token by
default); ``FASTGPU_ADDRESS`` points at the API.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from typing import Any

import typer

from fastgpu.cli import render
from fastgpu.cli.budget import budget_app
from fastgpu.cli.endpoints import deploy as deploy_endpoint
from fastgpu.cli.endpoints import endpoint_app
from fastgpu.errors import FastGPUError, InvalidRequest, WaitTimeout

app = typer.Typer(
    name="fastgpu",
    help="FastGPU: a multi-tenant, metered GPU platform on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(help="Tenants and their quotas (admin).", no_args_is_help=True)
lease_app = typer.Typer(help="GPU leases.", no_args_is_help=True)
config_app = typer.Typer(help="The configuration file.", no_args_is_help=True)
job_app = typer.Typer(help="Ray jobs run on your leases.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(lease_app, name="lease")
app.add_typer(config_app, name="config")
app.add_typer(job_app, name="job")


def _mount_sim() -> None:
    from fastgpu.cli_sim import sim_app

    app.add_typer(sim_app, name="sim")


_mount_sim()


def _mount_plan() -> None:
    from fastgpu.cli_plan import plan_app

    app.add_typer(plan_app, name="plan")


_mount_plan()
app.add_typer(budget_app, name="budget")
app.add_typer(endpoint_app, name="endpoint")
app.command("deploy")(deploy_endpoint)


def _mount_models() -> None:
    from fastgpu.cli_models import model_app

    app.add_typer(model_app, name="model")


_mount_models()


def _mount_sweeps() -> None:
    from fastgpu.cli_sweeps import sweep_app

    app.add_typer(sweep_app, name="sweep")


_mount_sweeps()


def _mount_hosts() -> None:
    from fastgpu.cli_hosts import agent, cluster_app, host_app

    app.add_typer(host_app, name="host")
    app.add_typer(cluster_app, name="cluster")
    app.command("agent")(agent)


_mount_hosts()


class Output(str, Enum):
    table = "table"
    json = "json"


OutputOpt = typer.Option(Output.table, "--output", "-o", help="table or json.")


def _client() -> Any:
    from fastgpu.sdk import Client

    return Client()


def _show(data: Any, output: Output, title: str) -> None:
    """One result: JSON for scripts, a field/value table for people."""
    if output == Output.json:
        render.emit_json(data)
    else:
        render.kv(title, data)


def _parse_pairs(text: str | None, flag: str) -> dict[str, int]:
    """``A100=4,H100=2`` -> {"A100": 4, "H100": 2}."""
    if not text:
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise InvalidRequest(
                f"{flag}: got {part.strip()!r}; expected TYPE=N with N a whole number >= 0, "
                "e.g. A100=4,H100=2"
            )
        out[name.strip()] = int(value)
    return out


def _parse_gpus(text: str) -> tuple[int, int | None]:
    """``4`` -> (4, None); ``2:4`` -> (4, 2)."""
    lo, sep, hi = text.partition(":")
    try:
        if sep:
            low, high = int(lo), int(hi)
            return high, low
        return int(text), None
    except ValueError:
        raise InvalidRequest(
            f"--gpus: got {text!r}; expected a whole number (4) or a range MIN:MAX (2:4)"
        ) from None


def _quotas(quota: str | None, borrow: str | None, lend: str | None) -> dict[str, Any]:
    nominal = _parse_pairs(quota, "--quota")
    b = _parse_pairs(borrow, "--borrowing-limit")
    lnd = _parse_pairs(lend, "--lending-limit")
    for flag, extra in (("--borrowing-limit", b), ("--lending-limit", lnd)):
        for name in extra:
            if name not in nominal:
                raise InvalidRequest(f"{flag}: {name} has no --quota {name}=N; give its quota too")
    return {
        name: {
            "nominal": n,
            **({"borrowing_limit": b[name]} if name in b else {}),
            **({"lending_limit": lnd[name]} if name in lnd else {}),
        }
        for name, n in nominal.items()
    }


# -- cluster ------------------------------------------------------------------------------------
def _removed(flag: str) -> None:
    """A flag of the shared cluster: refused, saying what to do instead (not typer's bare "No
    such option")."""
    from fastgpu.config import SHARED_CLUSTER_REMOVED

    raise typer.BadParameter(f"no longer exists: {SHARED_CLUSTER_REMOVED}", param_hint=flag)


@app.command()
def up(
    gpus: int = typer.Option(
        8, "--gpus", help="GPUs of this machine to lend (when the config has no pool)."
    ),
    gpu_type: str = typer.Option("A100", "--gpu-type", help="GPU type of those GPUs."),
    nodes: int = typer.Option(1, "--nodes", help="Hosts to split those GPUs over."),
    config: str = typer.Option(None, "--config", help="Platform config YAML."),
    cluster: str = typer.Option(
        None, "--cluster", help="cluster.yaml: the pool (hosts, GPU types, agents)."
    ),
    output: Output = OutputOpt,
    shared_cluster: bool = typer.Option(False, "--shared-cluster", hidden=True),
) -> None:
    """Start the server (controller and API) over the pool (idempotent); each tenant's Ray
    cluster starts when the tenant first needs it."""
    from fastgpu.local import up as do_up

    if shared_cluster:
        _removed("--shared-cluster")

    with render.err_console.status("starting the local FastGPU platform..."):
        result = do_up(
            gpus=gpus,
            gpu_type=gpu_type,
            nodes=nodes,
            config_path=config,
            cluster_path=cluster,
        )
    if output == Output.json:
        render.emit_json(result)
        return
    tokens = result.pop("new_tenant_tokens")
    render.kv("FastGPU is up", result)
    for name, token in tokens.items():
        render.console.print(f"tenant [bold]{name}[/] token (shown once): {token}")


@app.command()
def server(
    config: str = typer.Option(..., "--config", help="Platform config YAML (with its pool)."),
    ray_address: str = typer.Option(None, "--ray-address", hidden=True),
) -> None:
    """Run the control-plane server in the foreground (`fastgpu up` starts it for you)."""
    from fastgpu.server import main as serve

    if ray_address is not None:
        _removed("--ray-address")

    raise typer.Exit(serve(config))


@app.command()
def down(output: Output = OutputOpt) -> None:
    """Stop the local server and every tenant's cluster (the store and tokens stay)."""
    from fastgpu.local import down as do_down

    result = do_down()
    _show(result, output, "FastGPU is down")


@app.command()
def status(output: Output = OutputOpt) -> None:
    """Capacity and allocation per GPU type and tenant."""
    data = _client().status()
    if output == Output.json:
        render.emit_json(data)
        return
    render.table(
        "GPU types",
        data["gpu_types"],
        ("gpu_type", "total", "allocated", "free", "pending", "nodes", "price_per_hour"),
    )
    render.table(
        "Tenants",
        data["tenants"],
        ("tenant", "gpu_type", "nominal", "borrowing_limit", "allocated", "pending", "leases"),
    )


@app.command()
def whoami(output: Output = OutputOpt) -> None:
    """Who the current token belongs to."""
    data = _client().whoami()
    _show(data, output, "caller")


#: Ray's switch that keeps a driver's ``127.0.0.1`` GCS address on loopback (else Ray rewrites
#: it to the machine's address, where a loopback-only cluster does not listen); the name is
#: ``fastgpu.pool.ray_head.LOOPBACK_ENV``, which every process of such a cluster runs with.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect_env(address: str, dashboard_url: str, token_path: str) -> dict[str, str]:
    """The variables ``fastgpu connect`` prints for a cluster at ``address`` (GCS) whose Ray
    token is in ``token_path``: what `ray job submit` and ``ray.init()`` need."""
    env = {
        "RAY_ADDRESS": address,
        "RAY_API_SERVER_ADDRESS": dashboard_url,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": token_path,
    }
    host = address.rpartition(":")[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):  # a cluster that listens on loopback only
        env[RAY_LOOPBACK_ENV] = "0"
    return env


@app.command()
def connect(
    tenant: str = typer.Option(None, "--tenant", help="The tenant (admin only)."),
    token_file: str = typer.Option(
        None, "--token-file", help="Where to keep the Ray token (0600); default in FASTGPU_HOME."
    ),
    output: Output = OutputOpt,
) -> None:
    """Your own Ray cluster: saves its Ray token to a 0600 file and prints the variables
    that make `ray job submit` and `ray.init()` use it (the token never on a command line)."""
    from pathlib import Path

    from fastgpu.auth import write_secret
    from fastgpu.config import default_state_dir

    data = _client().cluster(tenant)
    path = Path(token_file) if token_file else default_state_dir() / f"ray_token.{data['tenant']}"
    write_secret(path, data.pop("ray_token"))
    env = connect_env(data["address"], data["dashboard_url"], str(path.resolve()))
    if output == Output.json:
        render.emit_json({**data, "ray_token_file": str(path.resolve()), "env": env})
        return
    for key, value in env.items():
        print(f"export {key}={value}")
    if data.get("isolation") == "single_user":
        print(
            "# warning: this platform runs tenants without isolation (single_user)", file=sys.stderr
        )


# -- tenants ------------------------------------------------------------------------------------
@tenant_app.command("create")
def tenant_create(
    name: str = typer.Argument(..., help="Tenant name."),
    quota: str = typer.Option(None, "--quota", help="Nominal quota, TYPE=N[,TYPE=N]."),
    borrowing_limit: str = typer.Option(None, "--borrowing-limit", help="TYPE=N[,TYPE=N]."),
    lending_limit: str = typer.Option(None, "--lending-limit", help="TYPE=N[,TYPE=N]."),
    weight: float = typer.Option(None, "--weight", help="Fair-share weight."),
    priority: int = typer.Option(None, "--priority", help="Priority."),
    output: Output = OutputOpt,
) -> None:
    """Create a tenant; prints its token once."""
    quotas = _quotas(quota, borrowing_limit, lending_limit)
    data = _client().create_tenant(name, quotas, weight=weight, priority=priority)
    if output == Output.json:
        render.emit_json(data)
        return
    render.table("tenant created", [render.tenant_row(data)], render.TENANT_COLUMNS)
    render.console.print(f"token (shown once, keep it secret): {data['token']}")


@tenant_app.command("list")
def tenant_list(output: Output = OutputOpt) -> None:
    """List tenants."""
    rows = _client().list_tenants()
    if output == Output.json:
        render.emit_json(rows)
    else:
        render.table("tenants", [render.tenant_row(r) for r in rows], render.TENANT_COLUMNS)


@tenant_app.command("show")
def tenant_show(name: str, output: Output = OutputOpt) -> None:
    """Show one tenant."""
    data = _client().get_tenant(name)
    _show(data, output, f"tenant {name}")


@tenant_app.command("update")
def tenant_update(
    name: str,
    quota: str = typer.Option(None, "--quota", help="Nominal quota, TYPE=N[,TYPE=N]."),
    borrowing_limit: str = typer.Option(None, "--borrowing-limit", help="TYPE=N[,TYPE=N]."),
    lending_limit: str = typer.Option(None, "--lending-limit", help="TYPE=N[,TYPE=N]."),
    weight: float = typer.Option(None, "--weight", help="Fair-share weight."),
    priority: int = typer.Option(None, "--priority", help="Priority."),
    output: Output = OutputOpt,
) -> None:
    """Change a tenant's quotas, weight or priority."""
    changes: dict[str, Any] = {}
    if quota or borrowing_limit or lending_limit:
        if not quota:
            client = _client()
            current = client.get_tenant(name)["quotas"]
            quota = ",".join(f"{g}={q['nominal']}" for g, q in current.items())
        changes["quotas"] = _quotas(quota, borrowing_limit, lending_limit)
    if weight is not None:
        changes["weight"] = weight
    if priority is not None:
        changes["priority"] = priority
    if not changes:
        raise InvalidRequest("nothing to change; give --quota, --weight or --priority")
    data = _client().update_tenant(name, **changes)
    _show(data, output, f"tenant {name}")


@tenant_app.command("delete")
def tenant_delete(name: str, output: Output = OutputOpt) -> None:
    """Delete a tenant without live leases (its usage history stays)."""
    data = _client().delete_tenant(name)
    if output == Output.json:
        render.emit_json(data)
    else:
        render.console.print(f"tenant {name} deleted")


GraceOpt = typer.Option(
    None, "--grace", help="How long the old tokens keep working (e.g. 1h; 0: stop now)."
)
ExpiresOpt = typer.Option(None, "--expires-in", help="The new token stops after this (e.g. 90d).")


@tenant_app.command("rotate-token")
def tenant_rotate(
    name: str,
    grace: str = GraceOpt,
    expires_in: str = ExpiresOpt,
    output: Output = OutputOpt,
) -> None:
    """Issue a new token for a tenant; the old ones stop after the grace period."""
    data = _client().rotate_token(name, grace=grace, expires_in=expires_in)
    if output == Output.json:
        render.emit_json(data)
    else:
        render.console.print(f"new token for {name} (shown once): {data['token']}")


@tenant_app.command("tokens")
def tenant_tokens(name: str, output: Output = OutputOpt) -> None:
    """A tenant's tokens (ids, expiry, labels; never the tokens themselves)."""
    rows = _client().list_tokens(name)
    if output == Output.json:
        render.emit_json(rows)
    else:
        render.table(f"tokens of {name}", rows, ("id", "label", "created_at", "expires_at"))


@tenant_app.command("revoke-token")
def tenant_revoke(name: str, token_id: str, output: Output = OutputOpt) -> None:
    """Stop one token at once (by the id `tenant tokens` shows)."""
    _show(_client().revoke_token(name, token_id), output, f"revoked token {token_id}")


admin_app = typer.Typer(help="The operator's own token.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


@admin_app.command("rotate-token")
def admin_rotate(
    grace: str = GraceOpt, expires_in: str = ExpiresOpt, output: Output = OutputOpt
) -> None:
    """Issue a new admin token (written to the local state dir); the old ones stop after the
    grace period."""
    from fastgpu.auth import write_secret
    from fastgpu.config import default_state_dir
    from fastgpu.sdk import ADMIN_TOKEN_FILE

    data = _client().rotate_token("admin", grace=grace, expires_in=expires_in)
    path = default_state_dir() / ADMIN_TOKEN_FILE
    if path.exists():
        write_secret(path, data["token"])
    if output == Output.json:
        render.emit_json(data)
    else:
        render.console.print(f"new admin token (shown once; saved to {path}): {data['token']}")


@admin_app.command("tokens")
def admin_tokens(output: Output = OutputOpt) -> None:
    """The admin tokens (ids, expiry, labels)."""
    rows = _client().list_tokens("admin")
    if output == Output.json:
        render.emit_json(rows)
    else:
        render.table("admin tokens", rows, ("id", "label", "created_at", "expires_at"))


@admin_app.command("revoke-token")
def admin_revoke(token_id: str, output: Output = OutputOpt) -> None:
    """Stop one admin token at once (not the last one)."""
    _show(_client().revoke_token("admin", token_id), output, f"revoked token {token_id}")


# -- leases -------------------------------------------------------------------------------------
@lease_app.command("request")
def lease_request(
    gpus: str = typer.Option(..., "--gpus", help="GPUs: N, or MIN:MAX for an elastic lease."),
    gpu_type: str = typer.Option(None, "--gpu-type", help="GPU type."),
    duration: str = typer.Option(None, "--duration", help="e.g. 30m, 2h (default: 1h)."),
    preemptible: bool = typer.Option(
        False,
        "--preemptible",
        help="May be preempted; only preemptible leases borrow GPUs behind other tenants' quota.",
    ),
    priority: int = typer.Option(0, "--priority", help="Priority among your own leases."),
    strategy: str = typer.Option("PACK", "--strategy", help="PACK, STRICT_PACK or SPREAD."),
    tenant: str = typer.Option(None, "--tenant", help="The tenant (admin only)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the GPUs are held."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds to wait with --wait."),
    output: Output = OutputOpt,
) -> None:
    """Request a lease."""
    n, low = _parse_gpus(gpus)
    if timeout is not None and not wait:
        raise InvalidRequest("--timeout needs --wait")
    if timeout is not None and not 0 < timeout <= 86400:
        raise InvalidRequest(f"--timeout: got {timeout}; expected seconds in (0, 86400]")
    client = _client()
    lease = client.request_lease(
        n,
        gpu_type,
        duration,
        min_gpus=low,
        preemptible=preemptible,
        priority=priority,
        strategy=strategy,
        tenant=tenant,
        wait=False,
    )
    if wait:
        lease = _wait_with_progress(lease, timeout, quiet=output == Output.json)
    elif lease.state == "REJECTED":
        _print_lease(lease.data, output)
        raise FastGPUError(f"lease rejected ({lease.reason}): {lease.reason_detail}")
    _print_lease(lease.data, output)


def _wait_with_progress(lease: Any, timeout: float | None, quiet: bool) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    step = 2.0
    with render.err_console.status("waiting...") as spinner:
        while not lease.held:
            if lease.state == "REJECTED" or lease.state not in ("PENDING", "ADMITTED"):
                break
            if not quiet:
                spinner.update(
                    f"lease {lease.id} {lease.state}: {lease.reason} {lease.reason_detail or ''}"
                )
            left = step if deadline is None else min(step, deadline - time.monotonic())
            if left <= 0:
                _print_lease(lease.data, Output.json if quiet else Output.table)
                raise WaitTimeout(
                    f"lease {lease.id} still {lease.state} ({lease.reason}); it stays queued "
                    f"until released: fastgpu lease release {lease.id}"
                )
            lease.data = lease._client.get_lease(lease.id, wait=left).data
    if not lease.held:
        _print_lease(lease.data, Output.json if quiet else Output.table)
        raise FastGPUError(
            f"lease {lease.id} is {lease.state} ({lease.reason}): {lease.reason_detail}"
        )
    return lease


def _print_lease(data: dict[str, Any], output: Output) -> None:
    _show(data, output, f"lease {data['id']}")


@lease_app.command("list")
def lease_list(
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant (admin)."),
    live: bool = typer.Option(False, "--live", help="Only leases that have not ended."),
    output: Output = OutputOpt,
) -> None:
    """List leases."""
    rows = [lease.data for lease in _client().list_leases(tenant=tenant, live=live)]
    if output == Output.json:
        render.emit_json(rows)
    else:
        render.table("leases", rows, render.LEASE_COLUMNS)


@lease_app.command("show")
def lease_show(lease_id: str, output: Output = OutputOpt) -> None:
    """Show one lease."""
    _print_lease(_client().get_lease(lease_id).data, output)


@lease_app.command("release")
def lease_release(lease_id: str, output: Output = OutputOpt) -> None:
    """Release a lease (its GPUs go back at once)."""
    _print_lease(_client().release_lease(lease_id).data, output)


# -- jobs ---------------------------------------------------------------------------------------
JOB_COLUMNS = ("id", "status", "entrypoint", "message")


def command_and_env(
    args: list[str], env: list[str] | None, example: str
) -> tuple[str, dict[str, str]]:
    """The command after ``--`` (one shell-quoted string) and the ``--env KEY=VALUE`` pairs of a
    submission (``fastgpu job submit``, ``fastgpu sweep submit``)."""
    import shlex

    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise InvalidRequest(f"give the command after --, e.g. -- {example}")
    extra: dict[str, str] = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"--env: got {item!r}; expected KEY=VALUE")
        extra[key] = value
    return shlex.join(args), extra


@job_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def job_submit(
    ctx: typer.Context,
    gpus: str = typer.Option(None, "--gpus", help="Lease for the job: N or MIN:MAX."),
    gpu_type: str = typer.Option(None, "--gpu-type", help="GPU type."),
    duration: str = typer.Option(None, "--duration", help="Lease duration, e.g. 2h."),
    working_dir: str = typer.Option(
        None, "--working-dir", help="Folder uploaded (zipped) with the job; unset: none."
    ),
    env: list[str] = typer.Option(None, "--env", help="KEY=VALUE for the job (repeatable)."),
    output: Output = OutputOpt,
) -> None:
    """Submit a Ray job as your tenant: fastgpu job submit --gpus 2:4 -- python train.py ..."""
    command, extra = command_and_env(ctx.args, env, "python jobs/train_classifier.py")
    lease: dict[str, Any] = {}
    if gpus is not None:
        n, low = _parse_gpus(gpus)
        lease = {"gpus": n, "min_gpus": low, "gpu_type": gpu_type, "duration": duration}
    data = _client().submit_job(command, working_dir=working_dir, env=extra, **lease)
    _show(data, output, f"job {data['id']}")


@job_app.command("list")
def job_list(output: Output = OutputOpt) -> None:
    """Your jobs."""
    rows = _client().list_jobs()
    if output == Output.json:
        render.emit_json(rows)
    else:
        render.table("jobs", rows, JOB_COLUMNS)


@job_app.command("status")
def job_status(job_id: str, output: Output = OutputOpt) -> None:
    """A job's state and its lease (with the reason while it waits)."""
    data = _client().job_status(job_id)
    if output == Output.json:
        render.emit_json(data)
        return
    lease = data.pop("lease") or {}
    render.kv(f"job {job_id}", data)
    if lease:
        render.kv(
            "lease",
            {k: lease.get(k) for k in ("id", "state", "held_gpus", "reason", "reason_detail")},
        )


@job_app.command("logs")
def job_logs(
    job_id: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
) -> None:
    """A job's output."""
    client = _client()
    shown = 0
    while True:
        text = client.job_logs(job_id)
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        if not follow or client.job_status(job_id)["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            if follow:
                sys.stdout.write(client.job_logs(job_id)[shown:])
            return
        time.sleep(1.0)


@job_app.command("stop")
def job_stop(job_id: str, output: Output = OutputOpt) -> None:
    """Stop a job."""
    data = _client().stop_job(job_id)
    _show(data, output, f"job {job_id}")


# -- usage and config ---------------------------------------------------------------------------
usage_app = typer.Typer(help="Usage: GPU-hours and cost.")
app.add_typer(usage_app, name="usage")


class Period(str, Enum):
    hour = "hour"
    day = "day"
    week = "week"
    month = "month"


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


REPORT_COLUMNS = ("period", "tenant", "gpu_type", "workload", "gpu_hours", "cost")


@usage_app.callback(invoke_without_command=True)
def usage(
    ctx: typer.Context,
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant."),
    since: str = typer.Option(None, "--since", help="ISO 8601 start, e.g. 2026-01-01T00:00Z."),
    until: str = typer.Option(None, "--until", help="ISO 8601 end (exclusive); default: now."),
    by: Period = typer.Option(None, "--by", help="Buckets: hour, day, week (ISO) or month."),
    group: str = typer.Option(
        None, "--group", help="Group by, comma-separated: tenant,gpu_type,workload."
    ),
    fmt: Format = typer.Option(None, "--format", help="table, json or csv (a report)."),
    output: Output = OutputOpt,
) -> None:
    """GPU-seconds and cost per tenant and GPU type; with --by, --group, --until or --format,
    a report by period (UTC) and group over [--since, --until)."""
    if ctx.invoked_subcommand is not None:
        return
    if since is not None:
        from fastgpu.timeutil import parse_iso

        parse_iso(since, "--since")
    if by is None and group is None and until is None and fmt is None:
        rows = _client().usage(tenant=tenant, since=since)
        if output == Output.json:
            render.emit_json(rows)
        else:
            render.table("usage", rows, render.USAGE_COLUMNS)
        return
    report = _client().usage_report(
        by=group if group is not None else "tenant",
        period=by.value if by is not None else None,
        since=since,
        until=until,
        tenant=tenant,
    )
    fmt = fmt or (Format.json if output == Output.json else Format.table)
    columns = [c for c in REPORT_COLUMNS if c in ("gpu_hours", "cost") or _grouped(c, report)]
    if fmt == Format.json:
        render.emit_json(report)
    elif fmt == Format.csv:
        _emit_csv(report["rows"], [*columns[:-2], "gpu_seconds", "gpu_hours", "cost"])
    else:
        title = f"usage {report['since']} .. {report['until']}"
        total = {"gpu_hours": report["gpu_hours"], "cost": report["cost"]}
        render.table(title, [*report["rows"], {columns[0]: "total", **total}], columns)


def _grouped(column: str, report: dict[str, Any]) -> bool:
    return report["period"] is not None if column == "period" else column in report["by"]


def _emit_csv(rows: list[dict[str, Any]], columns: list[str]) -> None:
    import csv

    out = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    out.writeheader()
    out.writerows(rows)


@usage_app.command("statement")
def usage_statement(
    month: str = typer.Option(None, "--month", help="The month, e.g. 2026-11."),
    week: str = typer.Option(None, "--week", help="A date in the ISO week, e.g. 2026-11-05."),
    day: str = typer.Option(None, "--day", help="The day, e.g. 2026-11-05."),
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant (admin)."),
    output: Output = OutputOpt,
) -> None:
    """A statement per tenant: GPU-hours and cost by GPU type and workload, and the total."""
    given = [(p, v) for p, v in (("month", month), ("week", week), ("day", day)) if v]
    if len(given) != 1:
        raise InvalidRequest("Got none or several of --month/--week/--day; expected one")
    period, at = given[0]
    data = _client().usage_statement(at, period=period, tenant=tenant)
    if output == Output.json:
        render.emit_json(data)
        return
    for st in data["tenants"]:
        total = {"gpu_type": "total", "gpu_hours": st["gpu_hours"], "cost": st["cost"]}
        render.table(
            f"{st['tenant']}: {data['since']} .. {data['until']}",
            [*st["lines"], total],
            ("gpu_type", "workload", "gpu_hours", "cost"),
        )
    if not data["tenants"]:
        render.console.print(f"no usage from {data['since']} to {data['until']}")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the platform config file."""
    from fastgpu.config import config_json_schema

    print(config_json_schema())


@config_app.command("validate")
def config_validate(path: str) -> None:
    """Check a config file; prints what is wrong, field by field."""
    from fastgpu.config import load_config

    cfg = load_config(path)
    render.console.print(
        f"{path} is valid: {len(cfg.gpu_types)} GPU type(s), {len(cfg.tenants)} tenant(s)"
    )


def run() -> None:
    """Entry point: usage errors exit 2 (click's standalone mode); FastGPU errors print one
    clear message and exit 2 for invalid input, 1 for everything else."""
    try:
        app()
    except FastGPUError as exc:
        render.err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(2 if isinstance(exc, InvalidRequest) else 1)


if __name__ == "__main__":
    run()
