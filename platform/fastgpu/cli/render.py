"""Printing command results: a rich table for people, JSON for scripts (``--output json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    console.print(t)


def kv(title: str, data: dict[str, Any]) -> None:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for key, value in data.items():
        t.add_row(
            key,
            ""
            if value is None
            else json.dumps(value)
            if isinstance(value, dict | list)
            else str(value),
        )
    console.print(t)


LEASE_COLUMNS = ("id", "tenant", "state", "gpus", "gpu_type", "reason", "expires_at")
USAGE_COLUMNS = ("tenant", "gpu_type", "gpu_seconds", "gpu_hours", "cost")
TENANT_COLUMNS = ("name", "quotas", "weight", "priority", "queueing")


def tenant_row(t: dict[str, Any]) -> dict[str, Any]:
    quotas = ", ".join(
        f"{g}={q['nominal']}"
        + (f"(+{q['borrowing_limit']})" if q.get("borrowing_limit") is not None else "")
        for g, q in (t.get("quotas") or {}).items()
    )
    return {**t, "quotas": quotas}
