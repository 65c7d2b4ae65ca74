"""The end-to-end demo (``make demo``): two tenants share 8 logical GPUs, each in its own Ray
cluster.

It starts the platform: the control-plane server, a plain process outside Ray serving the HTTP
API on 127.0.0.1, over a pool of two hosts with 4 logical A100s each (on this machine). No Ray
cluster runs until a tenant needs one; then the server starts that tenant's own (as its own
system user when this runs as root). Through the public SDK over HTTP it then: creates two
tenants, takes a lease with the seed's ``Allocator``, fills a quota so the next request queues
with its reason, lets a short lease expire and shows its GPUs come back, shows that one tenant
cannot see the other's lease, prints usage and cost, and lets a budget stop a lease
(:mod:`.demo_budget`). Then a tenant's job, in its own cluster, tries to reach the other tenant
and the platform (:mod:`.demo_isolation`), runs a hyperparameter sweep, registers the best
model and deploys it as an authenticated endpoint (:mod:`.demo_tune`). Everything stops at the
end (the store stays in the demo's state dir).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()

#: The demo platform: two hosts of 4 logical A100s; the API on its default port.
CONFIG = """\
gpu_types: {{A100: {{price_per_hour: 2.0, perf: 312}}}}
state_dir: {state}
tenant_clusters: {{isolation: {isolation}}}
pool:
  hosts:
    - {{name: host-0, gpu_type: A100, devices: [0, 1, 2, 3]}}
    - {{name: host-1, gpu_type: A100, devices: [4, 5, 6, 7]}}
"""


def _step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def _leases_table(rows: list[dict[str, Any]]) -> None:
    t = Table(show_header=True)
    for col in ("id", "tenant", "state", "gpus", "hosts", "reason"):
        t.add_column(col)
    waiting = []
    for r in rows:
        hosts = sorted(set(r.get("nodes") or []))
        t.add_row(r["id"], r["tenant"], r["state"], str(r["gpus"]), ", ".join(hosts),
                  r.get("reason") or "")  # fmt: skip
        if r.get("reason_detail"):
            waiting.append(f"{r['id']} waits: {r['reason_detail']}")
    console.print(t)
    for line in waiting:
        console.print(line)


def _status(client: Any) -> None:
    data = client.status()
    t = Table(title="pool", title_justify="left")
    for col in ("gpu_type", "total", "allocated", "free", "pending"):
        t.add_column(col)
    for g in data["gpu_types"]:
        t.add_row(*[str(g[c]) for c in ("gpu_type", "total", "allocated", "free", "pending")])
    console.print(t)


def _config(state: Path, base: Path) -> tuple[Path, Any]:
    """Write the demo platform's config; return it with its tenant clusters' manager. When
    tenants' system users could not run this checkout's Python (a checkout in a private home,
    say), fall back to one user and say what that does not isolate."""
    from fastgpu.config import load_config
    from fastgpu.controller.clusters import TenantClusters
    from fastgpu.errors import ConfigError

    cfg = base / "demo.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(CONFIG.format(state=state, isolation="auto"))
    clusters = TenantClusters(load_config(cfg))
    _clean(state, clusters)
    try:
        clusters.prepare()
    except ConfigError as exc:
        console.print(
            f"[bold yellow]tenants' own system users cannot run here[/]: {exc}\n"
            "the demo runs every tenant's cluster as this user instead (isolation: "
            "single_user), so the attack below will get through; see docs/threat-model.md"
        )
        cfg.write_text(CONFIG.format(state=state, isolation="single_user"))
        clusters = TenantClusters(load_config(cfg))
    return cfg, clusters


def _clean(state: Path, clusters: Any, keep_store: bool = False) -> None:
    """A previous run's platform, its tenants' dirs and system users, and (unless
    ``keep_store``) its state dir: gone."""
    from fastgpu.local import down
    from fastgpu.pool.runtime import remove_platform_users

    down(state)
    remove_platform_users(clusters.platform)
    shutil.rmtree(clusters.root, ignore_errors=True)
    if not keep_store:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    base = Path(os.environ.get("FASTGPU_HOME") or Path.home() / ".fastgpu")
    state = base / "demo"
    os.environ["FASTGPU_HOME"] = str(state)

    from fastgpu.local import down, up

    cfg, clusters = _config(state, base)
    _step("1. Start the platform: the server, over a pool of 2 hosts x 4 logical A100s")
    t0 = time.monotonic()
    info = up(config_path=str(cfg), gpus=8)
    console.print(
        f"API at {info['api']} (loopback only), served by the control-plane process "
        f"{info['server_pid']} outside Ray; no Ray cluster yet: each tenant gets its own "
        f"when it first needs one (isolation: [bold]{clusters.isolation}[/]); "
        f"up in {time.monotonic() - t0:.1f} s"
    )

    from fastgpu import Allocator, Client, NotFound

    try:
        admin = Client()
        _step("2. The admin creates two tenants with 4 guaranteed A100s each (no borrowing)")
        vision = admin.create_tenant("vision", {"A100": {"nominal": 4, "borrowing_limit": 0}})
        nlp = admin.create_tenant("nlp", {"A100": {"nominal": 4, "borrowing_limit": 0}})
        console.print("tokens are shown once and stored hashed; tenants: vision, nlp")
        v = Client(token=vision["token"])
        n = Client(token=nlp["token"])

        _step(
            "3. vision takes 2 GPUs with the seed's Allocator (perf >= 10, 30 minutes): its "
            "own Ray cluster starts, and a raylet with the 2 GPUs joins it"
        )
        t0 = time.monotonic()
        with Allocator(vision["token"]) as allocator:
            lease = allocator.request_resource(2, perf=10.0, time=30)
            console.print(
                f"lease {lease.id}: {lease.state} on {lease.data['nodes']} in "
                f"{time.monotonic() - t0:.1f} s (cold start); vision's cluster: "
                f"{v.cluster()['address']}, its placement group {lease.placement_group_name}"
            )

            _step("4. vision fills its quota (2 more); a 5th GPU queues with a reason")
            more = v.request_lease(2, "A100", "30m", wait=True, timeout=120)
            queued = v.request_lease(1, "A100", "30m")
            _leases_table([x.data for x in v.list_leases(live=True)])

            _step("5. nlp takes its 4 GPUs for 8 seconds in its own cluster: the pool is full")
            short = n.request_lease(4, "A100", "8s", wait=True, timeout=180)
            _status(admin)
            console.print(f"nlp lease {short.id} expires at {short.expires_at}")

            _step("6. Isolation at the API: nlp cannot see vision's lease")
            try:
                n.get_lease(lease.id)
            except NotFound as exc:
                console.print(f"nlp -> vision's lease: [bold]not found[/] ({exc})")

            _step("7. nlp's lease expires; its raylet stops and its GPUs come back")
            t0 = time.monotonic()
            while short.refresh().state != "EXPIRED":
                time.sleep(0.2)
            console.print(f"{short.id}: {short.state} after {time.monotonic() - t0:.1f} s more")
            _status(admin)

            _step("8. vision releases 2 GPUs: its queued request is admitted")
            more.release()
            queued.wait(timeout=120)
            _leases_table([x.data for x in v.list_leases(live=True)])
        console.print("leaving the Allocator block released its lease")
        queued.release()

        _step("9. Usage and cost (GPU-seconds x price per GPU-hour)")
        t = Table()
        for col in ("tenant", "gpu_type", "gpu_seconds", "cost"):
            t.add_column(col)
        for row in admin.usage():
            t.add_row(
                row["tenant"], row["gpu_type"], f"{row['gpu_seconds']:.1f}", f"{row['cost']:.4f}"
            )
        console.print(t)
        from fastgpu import demo_budget

        demo_budget.run(console, admin, info["api"])

        from fastgpu import demo_isolation

        _step("10. Tenant clusters: a job of vision, in vision's cluster, attacks nlp")
        demo_isolation.run(console, clusters, state, v, n)
    finally:
        _step("11. Stop the platform")
        stopped = down(state)
        console.print(
            f"stopped the server and the tenants' clusters ({stopped['stopped_processes']} "
            "processes)"
        )
        _clean(state, clusters, keep_store=True)
    console.print(f"[bold green]demo finished[/] (the store stays in {state})")


if __name__ == "__main__":
    main()
