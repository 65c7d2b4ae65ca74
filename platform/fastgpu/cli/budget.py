"""``fastgpu budget show [TENANT]``: a tenant's budget this period (spent, limit, remaining,
warnings crossed, state, action at the cap, run-out projection, events); the admin without a
tenant gets the overview of every tenant with a budget. Wiring only: the numbers are the API's
(:meth:`fastgpu.sdk.Client.budget`)."""

from __future__ import annotations

from typing import Any

import typer

from fastgpu.cli import render

budget_app = typer.Typer(help="Budgets: spend against the cap, warnings, run-out projection.")


def _client() -> Any:
    from fastgpu.sdk import Client

    return Client()


def _amount(data: dict[str, Any], unit: str) -> str | None:
    spent, limit = data["spent"].get(unit), data["limit"].get(unit)
    if limit is None:
        return None
    return f"{spent:.4g} / {limit:g}"


def budget_rows(data: dict[str, Any]) -> dict[str, Any]:
    """The fields a person reads, in order."""
    crossed = [
        f"{t['percent']:g}% at {t['crossed_at'] or '?'}" for t in data["thresholds"] if t["crossed"]
    ]
    burn = data["burn"]
    return {
        "tenant": data["tenant"],
        "state": data["state"],
        "action at cap": data["action"],
        "period": data["period"] and f"{data['period']} from {data['period_start']}",
        "money spent / limit": _amount(data, "money"),
        "GPU-hours spent / limit": _amount(data, "gpu_hours"),
        "used %": f"{data['used_pct']:.1f}",
        "remaining": {k: v for k, v in data["remaining"].items() if v is not None},
        "burn": f"{burn['gpus_held']} GPUs, {burn['money_per_hour']:.4g}/h",
        "runs out at": data["runs_out_at"] or "not this period at this rate",
        "warnings crossed": ", ".join(crossed) or "none",
    }


@budget_app.command("show")
def show(
    tenant: str | None = typer.Argument(None, help="Tenant (the admin: omit for all)."),
    output: str = typer.Option("table", "--output", "-o", help="table or json."),
) -> None:
    """A tenant's budget this period; the admin without TENANT: every tenant with a budget."""
    if output not in ("table", "json"):
        raise typer.BadParameter(f"got {output!r}; expected table or json", param_hint="--output")
    client = _client()
    if tenant is None and client.whoami()["is_admin"]:
        items = client.budgets()
        if output == "json":
            render.emit_json(items)
            return
        rows = [
            {
                **i,
                "used %": f"{i['used_pct']:.1f}",
                "money": _amount(i, "money"),
                "gpu_hours": _amount(i, "gpu_hours"),
                "warnings": ", ".join(f"{w:g}%" for w in i["warnings"]),
            }
            for i in items
        ]
        cols = ("tenant", "state", "action", "used %", "money", "gpu_hours", "warnings")
        render.table("budgets", rows, (*cols, "runs_out_at"))
        return
    data = client.budget(tenant)
    if output == "json":
        render.emit_json(data)
        return
    render.kv(f"budget of {data['tenant']}", budget_rows(data))
    if data["events"]:
        render.table("events this period", data["events"], ("at", "kind", "detail"))
