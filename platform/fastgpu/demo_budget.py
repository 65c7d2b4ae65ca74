"""The demo's budget step (issue 12): a tenant with a tiny money budget and ``action: stop``
holds a preemptible and a non-preemptible lease; its spend crosses the cap within seconds; the
controller announces the preemptible lease's preemption in the tick that sees it, the workload
(played here by the demo) sees ``preempt_at`` and gives its GPUs back within the grace, and the
non-preemptible lease runs on and is reported. Then the budget as the API shows it (warnings
once each, run-out projection, events) and where the web console is.

Called from :mod:`fastgpu.demo` with the running platform; about 10 s.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from fastgpu.sdk import Client

#: Seconds of spend the budget allows after both leases hold their GPUs.
RUN_S = 6.0


def run(console: Console, admin: Client, api: str) -> None:
    console.rule("[bold cyan]Budgets: a tenant's money budget stops its preemptible lease")
    price = next(
        t["price_per_hour"] for t in admin.status()["gpu_types"] if t["gpu_type"] == "A100"
    )
    money = round(2 * price * RUN_S / 3600.0, 6)
    budget = {"money": money, "action": "stop", "warn_at": [50, 80, 100], "period": "day"}
    token = admin.create_tenant("capped", {"A100": 2}, budget=budget)["token"]
    me = Client(token=token)
    console.print(
        f"tenant capped: budget {money:g} per day (2 A100s at {price:g}/h last ~{RUN_S:g} s), "
        "action at the cap: stop"
    )
    pre = me.request_lease(1, "A100", "30m", preemptible=True, wait=True, timeout=60)
    keep = me.request_lease(1, "A100", "30m", preemptible=False, wait=True, timeout=60)
    b = me.budget()
    console.print(
        f"preemptible {pre.id} and non-preemptible {keep.id} hold their GPUs; burn "
        f"{b['burn']['money_per_hour']:g}/h; budget runs out at {b['runs_out_at']}"
    )
    t0 = time.monotonic()
    while pre.refresh().preempt_at is None:
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"no preemption announced for {pre.id}: {me.budget()}")
        time.sleep(0.1)
    console.print(
        f"cap reached: {pre.id} preemption announced ({pre.data['reason_detail']}); GPUs taken "
        f"at {pre.preempt_at} unless the workload gives them back first"
    )
    pre.release()  # the workload checkpoints and leaves within the grace
    console.print(
        f"{pre.id}: {pre.refresh().state}; {keep.id} (not preemptible): {keep.refresh().state}"
    )
    _show(console, me.budget())
    keep.release()
    console.print(
        f"[bold]web console:[/] {api}/console/ (sign in with a token; the tenant view shows "
        "this budget, its warnings and run-out projection; the admin view flags tenants over "
        "or near budget)"
    )


def _show(console: Console, b: dict[str, Any]) -> None:
    console.print(
        f"budget of {b['tenant']}: state {b['state']}, spent {b['spent']['money']:.6f} of "
        f"{b['limit']['money']:g} ({b['used_pct']:.0f} %)"
    )
    t = Table(title="budget events (each once per period)", title_justify="left")
    for col in ("at", "kind", "detail"):
        t.add_column(col)
    for ev in b["events"]:
        t.add_row(ev["at"], ev["kind"], ev["detail"])
    console.print(t)
