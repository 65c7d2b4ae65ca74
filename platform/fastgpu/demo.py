"""The end-to-end demo (``make demo``): two tenants share 8 logical GPUs on a local cluster.

It starts the platform (Ray with token auth on fixed, checked ports, and the control-plane
server, a plain process outside Ray serving the HTTP API on 127.0.0.1),
then, through the public SDK over HTTP: creates two tenants, runs Ray tasks inside a lease,
fills a quota so the next request queues with its reason, lets a short lease expire and shows
its GPUs come back, shows that one tenant cannot see the other's lease, and prints usage and
cost. It stops the cluster at the end (the store stays in the demo's state dir). Then
:mod:`fastgpu.demo_isolation` runs a second platform with tenant clusters (issue 9): a tenant's
job in its own cluster fails to reach the other tenant and the platform.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def _step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def _leases_table(rows: list[dict[str, object]]) -> None:
    t = Table(show_header=True)
    for col in ("id", "tenant", "state", "gpus", "reason", "reason_detail"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            *[
                "" if r.get(c) is None else str(r.get(c))
                for c in ("id", "tenant", "state", "gpus", "reason", "reason_detail")
            ]
        )
    console.print(t)


def _status(client: object) -> None:
    data = client.status()  # type: ignore[attr-defined]
    t = Table(title="cluster", title_justify="left")
    for col in ("gpu_type", "total", "allocated", "free", "pending"):
        t.add_column(col)
    for g in data["gpu_types"]:
        t.add_row(*[str(g[c]) for c in ("gpu_type", "total", "allocated", "free", "pending")])
    console.print(t)


def main() -> None:
    base = Path(os.environ.get("FASTGPU_HOME") or Path.home() / ".fastgpu")
    state = base / "demo"
    os.environ["FASTGPU_HOME"] = str(state)

    from fastgpu.local import down, up

    down(state)  # a previous demo's cluster, if any
    shutil.rmtree(state, ignore_errors=True)

    _step("1. Start the platform: local Ray (8 logical A100s, token auth) and the server")
    t0 = time.monotonic()
    info = up(gpus=8, gpu_type="A100", nodes=1)
    console.print(
        f"API at {info['api']} (loopback only), served by the control-plane process "
        f"{info['server_pid']} outside Ray; up in {time.monotonic() - t0:.1f} s"
    )

    import ray

    from fastgpu.local import ray_env

    # This demo is also a Ray driver (to run tasks inside a lease), with the cluster's token.
    os.environ.update(ray_env(state))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    ray.init(address=info["ray_address"], namespace="demo", log_to_driver=False)

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
            "3. vision takes 2 GPUs with the seed's Allocator (perf >= 10, 30 minutes) and "
            "runs Ray tasks inside the lease"
        )
        with Allocator(vision["token"]) as allocator:
            lease = allocator.request_resource(2, perf=10.0, time=30)
            console.print(
                f"lease {lease.id}: {lease.state}, placement group {lease.placement_group_name}"
            )

            @ray.remote(num_gpus=1, num_cpus=0)
            def gpu_task(i: int) -> str:
                return f"task {i} on GPU {os.environ.get('CUDA_VISIBLE_DEVICES')}"

            outs = ray.get(
                [
                    gpu_task.options(scheduling_strategy=lease.scheduling_strategy(i)).remote(i)
                    for i in range(2)
                ]
            )
            for line in outs:
                console.print("  " + line)

            _step("4. vision fills its quota (2 more); a 5th GPU queues with a reason")
            more = v.request_lease(2, "A100", "30m", wait=True)
            queued = v.request_lease(1, "A100", "30m")
            _leases_table([x.data for x in v.list_leases(live=True)])

            _step("5. nlp takes its 4 GPUs for 6 seconds: the cluster is full")
            short = n.request_lease(4, "A100", "6s", wait=True)
            _status(admin)
            console.print(f"nlp lease {short.id} expires at {short.expires_at}")

            _step("6. Isolation: nlp cannot see vision's lease")
            try:
                n.get_lease(lease.id)
            except NotFound as exc:
                console.print(f"nlp -> vision's lease: [bold]not found[/] ({exc})")

            _step("7. nlp's lease expires; its GPUs come back")
            t0 = time.monotonic()
            while short.refresh().state != "EXPIRED":
                time.sleep(0.2)
            console.print(f"{short.id}: {short.state} after {time.monotonic() - t0:.1f} s more")
            _status(admin)

            _step("8. vision releases 2 GPUs: its queued request is admitted")
            more.release()
            queued.wait(timeout=30)
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
    finally:
        ray.shutdown()
        _step("10. Stop the cluster")
        down(state)

    from fastgpu import demo_isolation

    _step("11. Tenant clusters: each tenant its own Ray cluster; a job attacks the other")
    demo_isolation.run(console, base)
    console.print("[bold green]demo finished[/]")


if __name__ == "__main__":
    main()
