"""Model endpoints (issue 11) against raw Ray Serve, side by side in one run.

- **raw**: a plain local Ray cluster, ``serve.run`` of the same model (the digits classifier's
  checkpoint, the same loader and ``@serve.batch`` settings), no authentication, called on
  Serve's own port.
- **fastgpu**: a server with tenant clusters (a pool of 3 logical A100s); the model registered
  in the tenant's registry and deployed with ``deploy``; called through the platform's URL
  ``/t/<tenant>/<name>/`` with the endpoint's token (the replica checks it), and, to split the
  platform's hop from the check, straight at the tenant's Serve port with the token.

Measured: closed-loop throughput and p50/p99 latency (``--clients`` concurrent clients, one row
per request, ``--seconds`` each, after a warm-up) and the ratio to raw, then p50 with one client
(no queue: the latency a hop adds by itself); the cold start from zero replicas (request ->
answer, including a lease, a raylet and a replica); scale-up from 1 to 3 replicas under a step
load (step -> 3 replicas running, and the lease's GPUs); a rolling update
under load (failed requests, p99 during the update). Raw runs first, then the platform, on the
same machine and client. Needs root for tenants' own users.

Where the CPU goes: during each throughput measurement the CPU time (user + system) of the
client (this process), the platform's server, Serve's proxy and the replica is read from
``/proc`` before and after, and printed as CPU milliseconds per request; ``other`` is the rest
of the machine's busy time (Ray's own daemons, other work). With ``--profile FILE`` the server
process is sampled with py-spy while the platform URL is measured (collapsed stacks in FILE,
the hottest frames printed).

    python bench/bench_serve.py [--seconds 15 --clients 8] [--quick] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="fgs")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
Path(_TMP).chmod(0o711)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
# raw Serve's workers import serve_apps and fastgpu as this driver does
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "platform")])

import httpx  # noqa: E402
import psutil  # noqa: E402

from _server import BenchServer  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

POOL = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1, 2]}]}
ROW = [0.0] * 64
BATCH, WAIT_MS = 8, 5


def checkpoint(folder: Path, seed: int) -> Path:
    """A digits classifier checkpoint (random weights: the serving cost is the same)."""
    import torch

    from fastgpu.train.checkpoints import CheckpointStore
    from fastgpu.train.classifier import DEFAULTS, DigitsMLP, load_digits_split, model_config

    torch.manual_seed(seed)
    data = load_digits_split()
    cfg = model_config(DEFAULTS, data)
    meta = {
        "model": "digits-mlp",
        "model_config": cfg,
        "label_names": data.label_names,
        "normalization": {"mean": data.mean, "std": data.std},
        "input_shape": [64],
    }
    path = CheckpointStore(folder).save(
        1, {"model": DigitsMLP(**cfg).state_dict()}, reason="final", metadata=meta
    )
    return Path(path)


# ---- the load ----------------------------------------------------------------------------------
async def _drive(url: str, token: str | None, clients: int, seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat: list[float] = []
    failed = 0
    why: dict[str, int] = {}
    models: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as http:
        end = time.monotonic() + seconds

        async def one() -> None:
            nonlocal failed
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    r = await http.post(url, json={"inputs": [ROW]}, headers=headers)
                    ok = r.status_code == 200
                    if ok:
                        models.append(r.json().get("model", ""))
                    else:
                        key = f"{r.status_code} {r.text[:80]}"
                        why[key] = why.get(key, 0) + 1
                except httpx.HTTPError as exc:
                    ok = False
                    why[type(exc).__name__] = why.get(type(exc).__name__, 0) + 1
                lat.append(time.perf_counter() - t0)
                failed += not ok

        await asyncio.gather(*(one() for _ in range(clients)))
    lat.sort()
    n = len(lat)
    return {
        "requests": n,
        "failed": failed,
        "rps": n / seconds,
        "p50_ms": 1e3 * lat[n // 2] if n else 0.0,
        "p99_ms": 1e3 * lat[min(n - 1, int(0.99 * n))] if n else 0.0,
        "models": models,
        "why": why,
    }


def drive(url: str, token: str | None, clients: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(_drive(url, token, clients, seconds))


# ---- where the CPU goes ------------------------------------------------------------------------
ROLES = ("client", "server", "serve proxy", "replica", "other")


def _role(proc: psutil.Process, server_pid: int | None) -> str | None:
    if proc.pid == os.getpid():
        return "client"
    if proc.pid == server_pid:
        return "server"
    try:
        title = " ".join(proc.cmdline()[:1])
    except (psutil.Error, OSError):
        return None
    if "ProxyActor" in title:
        return "serve proxy"
    if "ServeReplica" in title:
        return "replica"
    return None


def _cpu(server_pid: int | None) -> tuple[dict[int, tuple[str, float]], float]:
    """CPU seconds (user + system) of each process with a role, and the machine's busy time."""
    per: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter():
        role = _role(proc, server_pid)
        if role is None:
            continue
        try:
            t = proc.cpu_times()
        except (psutil.Error, OSError):
            continue
        per[proc.pid] = (role, t.user + t.system)
    m = psutil.cpu_times()
    busy = m.user + m.nice + m.system + m.irq + m.softirq + getattr(m, "steal", 0.0)
    return per, busy


def cpu_split(
    before: tuple[dict[int, tuple[str, float]], float],
    after: tuple[dict[int, tuple[str, float]], float],
    requests: int,
) -> dict[str, float]:
    """CPU milliseconds per request of each role between two :func:`_cpu` readings."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (role, t1) in after[0].items():
        used[role] += t1 - before[0].get(pid, (role, 0.0))[1]
    used["other"] = max(0.0, after[1] - before[1] - sum(used.values()))
    return {role: 1e3 * v / max(1, requests) for role, v in used.items()}


def measure(
    url: str,
    token: str | None,
    args: argparse.Namespace,
    server_pid: int | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    drive(url, token, args.clients, 3)  # warm-up
    spy = None
    if profile is not None and server_pid is not None:
        cmd = [args.py_spy, "record", "-p", str(server_pid), "-r", "200", "-f", "raw"]
        cmd += ["-d", str(int(args.seconds)), "-o", str(profile), "--nonblocking"]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = _cpu(server_pid)
    out = drive(url, token, args.clients, args.seconds)
    out["cpu_ms"] = cpu_split(before, _cpu(server_pid), out["requests"])
    if spy is not None:
        spy.wait(60)
    # one client: the latency a hop adds with no queue in front of it
    out["p50_1_ms"] = drive(url, token, 1, max(3.0, args.seconds / 3))["p50_ms"]
    return out


def hottest(profile: Path, top: int = 25) -> str:
    """The frames most often on the stack (inclusive) and at its top (self) in py-spy's
    collapsed output."""
    incl: dict[str, int] = {}
    self_: dict[str, int] = {}
    total = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the process/thread
        total += int(count)
        for f in set(frames):
            incl[f] = incl.get(f, 0) + int(count)
        if frames:
            self_[frames[-1]] = self_.get(frames[-1], 0) + int(count)
    rows = [f"server samples: {total}", "inclusive:"]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"  {100 * n / max(1, total):5.1f}%  {f[:150]}")
    rows.append("self:")
    for f, n in sorted(self_.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"  {100 * n / max(1, total):5.1f}%  {f[:150]}")
    return "\n".join(rows)


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)
    return value


# ---- raw Serve ---------------------------------------------------------------------------------
def raw(ckpt: Path, args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from fastgpu.local import free_port

    @serve.deployment(max_ongoing_requests=2 * BATCH)
    class Raw:
        def __init__(self, checkpoint: str) -> None:
            from serve_apps.model_server import load

            self._predict, self._width, self._name = load(checkpoint)

        @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=WAIT_MS / 1000)
        async def batched(self, requests: list[list[list[float]]]) -> list[list[Any]]:
            rows = [r for req in requests for r in req]
            out = self._predict(rows)
            split, i = [], 0
            for req in requests:
                split.append(out[i : i + len(req)])
                i += len(req)
            return split

        async def __call__(self, request: Request) -> JSONResponse:
            from fastgpu.endpoints.payload import parse_inputs

            rows = parse_inputs(await request.body(), self._width)
            return JSONResponse({"outputs": await self.batched(rows), "model": self._name})

    port = free_port()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            Raw.options(ray_actor_options={"num_cpus": 0, "num_gpus": 1}).bind(str(ckpt)),  # type: ignore[attr-defined]
            name="raw",
            route_prefix="/raw",
        )
        return measure(f"http://127.0.0.1:{port}/raw/", None, args)
    finally:
        serve.shutdown()
        ray.shutdown()


# ---- the platform ------------------------------------------------------------------------------
def platform(root: Path, ckpts: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from fastgpu.sdk import Client

    server = BenchServer(
        root / "state",
        pool=POOL,
        storage_root=str(root / "storage"),
        tenant_clusters={"idle_timeout_s": 600},
        controller={"tick_interval_s": 0.25, "min_duration_s": 1.0},
        endpoints={"idle_s": 5, "downscale_delay_s": 3, "reconcile_interval_s": 0.5},
    )
    clusters = TenantClusters(server.config)
    out: dict[str, Any] = {}
    try:
        admin = Client(token=server.admin, address=server.url)
        quota = {"A100": {"nominal": 1, "borrowing_limit": 2}}
        t = Client(token=admin.create_tenant("acme", quota)["token"], address=server.url)
        info = t.cluster()
        for i, ck in enumerate(ckpts):
            uri = Path(t.register_model("digits", ck)["uri"])
            for p in [uri.parent, uri, *uri.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
            print(f"registered digits:v{i + 1}", flush=True)

        # cold start: the first deploy (min 0), then again after scale to zero
        t0 = time.monotonic()
        ep = t.deploy(
            "digits:v1", "digits", min_replicas=0, max_replicas=3, max_batch_size=BATCH,
            batch_wait_ms=WAIT_MS, gpu_type="A100",
        )  # fmt: skip
        url, token = ep["url"], ep["token"]
        hdr = {"Authorization": f"Bearer {token}"}
        body = {"inputs": [ROW]}

        def answered() -> bool:
            r = httpx.post(url, json=body, headers=hdr, timeout=300, trust_env=False)
            return r.status_code == 200

        _wait(answered, 300, "the first answer", 0.5)
        out["cold_deploy_s"] = time.monotonic() - t0
        _wait(lambda: t.endpoint("digits")["lease_id"] is None, 180, "scale to zero", 0.5)
        t0 = time.monotonic()
        _wait(answered, 300, "the answer after zero", 0.5)
        out["cold_zero_s"] = time.monotonic() - t0
        print(f"cold start: deploy {out['cold_deploy_s']:.1f} s, after zero "
              f"{out['cold_zero_s']:.1f} s", flush=True)  # fmt: skip

        # throughput and latency at one replica: through the platform, and at Serve's port
        t.endpoint("digits", "update", min_replicas=1, max_replicas=1)
        _wait(lambda: t.endpoint("digits")["replicas"] == 1, 120, "one replica")
        out["platform"] = measure(url, token, args, server.proc.pid, args.profile)
        details = ServeSubmissionClient(
            info["dashboard_url"], headers={"Authorization": f"Bearer {info['ray_token']}"}
        ).get_serve_details()
        port = details["http_options"]["port"]
        app = f"digits-v{t.endpoint('digits')['version']}"
        out["serve_port"] = measure(f"http://127.0.0.1:{port}/{app}/", token, args, server.proc.pid)
        if args.quick:
            return out

        # scale-up 1 -> 3 under a step load (the lease borrows two idle GPUs)
        t.endpoint("digits", "update", max_replicas=3)
        time.sleep(2)
        t0 = time.monotonic()
        marks: dict[str, float] = {}

        def watch() -> None:
            while time.monotonic() - t0 < args.step_s:
                e = t.endpoint("digits")
                if e["lease_gpus"] >= 3 and "lease3" not in marks:
                    marks["lease3"] = time.monotonic() - t0
                if e["replicas"] >= 3 and "replicas3" not in marks:
                    marks["replicas3"] = time.monotonic() - t0
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        step = drive(url, token, 4 * args.clients, args.step_s)
        watcher.join()
        out["step"] = {**step, **marks}
        print(f"step load: {marks} {step['rps']:.0f} req/s", flush=True)

        # back to one replica, then a rolling update under load
        t.endpoint("digits", "update", max_replicas=2)
        _wait(lambda: t.endpoint("digits")["replicas"] == 1, 180, "one replica again", 0.5)
        result: dict[str, Any] = {}

        def load() -> None:
            result.update(drive(url, token, args.clients, args.update_s))

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(3)
        t0 = time.monotonic()
        t.endpoint("digits", "update", model="digits:v2")
        _wait(lambda: t.endpoint("digits")["updating_to"] is None, 300, "the update", 0.5)
        out["update_s"] = time.monotonic() - t0
        loader.join()
        out["update"] = result
        done = t.endpoint("digits")
        out["update_model"] = f"{done['model']} ({done['message']})"
        return out
    finally:
        server.stop()
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--step-s", type=float, default=60.0)
    parser.add_argument("--update-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="Throughput only: no step load.")
    parser.add_argument("--profile", type=Path, help="py-spy the server to this file.")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    args = parser.parse_args()
    try:
        ckpts = [checkpoint(Path(_TMP) / f"ck{i}", i) for i in (1, 2)]
        base = raw(ckpts[0], args)
        ours = platform(Path(_TMP) / "fg", ckpts, args)
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)
    print(f"\nendpoints vs raw Ray Serve ({args.clients} clients, {args.seconds:g} s, 1 replica)")
    print(
        f"{'path':<44}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x raw':>8}{'p50 +ms':>9}"
        f"{'1 client p50':>14}{'+ms':>7}"
    )
    for name, r in (
        ("raw Serve, no auth", base),
        ("fastgpu: platform URL, token", ours["platform"]),
        ("fastgpu: tenant's Serve port, token", ours["serve_port"]),
    ):
        print(
            f"{name:<44}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['rps'] / base['rps']:>7.2f}x{r['p50_ms'] - base['p50_ms']:>+9.1f}"
            f"{r['p50_1_ms']:>14.2f}{r['p50_1_ms'] - base['p50_1_ms']:>+7.2f}"
        )
    print("\nCPU ms per request (user + system), by process")
    print(f"{'path':<44}" + "".join(f"{role:>12}" for role in ROLES) + f"{'total':>9}")
    for name, r in (
        ("raw Serve, no auth", base),
        ("fastgpu: platform URL, token", ours["platform"]),
        ("fastgpu: tenant's Serve port, token", ours["serve_port"]),
    ):
        cpu = r["cpu_ms"]
        print(
            f"{name:<44}" + "".join(f"{cpu[role]:>12.2f}" for role in ROLES)
            + f"{sum(cpu.values()):>9.2f}"
        )  # fmt: skip
    if args.profile is not None and args.profile.exists():
        print("\n" + hottest(args.profile))
    if args.quick:
        return 0
    step, upd = ours["step"], ours["update"]
    print(f"\ncold start, deploy -> first answer:        {ours['cold_deploy_s']:.1f} s")
    print(f"cold start from zero replicas -> answer:    {ours['cold_zero_s']:.1f} s")
    print(
        f"scale-up 1 -> 3 under a step load ({4 * args.clients} clients): lease at 3 GPUs after "
        f"{step.get('lease3', float('nan')):.1f} s, 3 replicas after "
        f"{step.get('replicas3', float('nan')):.1f} s; {step['rps']:.0f} req/s, "
        f"{step['failed']} failed {step['why'] or ''}"
    )
    print(
        f"rolling update under load ({args.clients} clients): {upd['failed']} failed of "
        f"{upd['requests']}, p99 {upd['p99_ms']:.0f} ms (p50 {upd['p50_ms']:.1f} ms), rolled in "
        f"{ours['update_s']:.1f} s to {ours['update_model']} {upd['why'] or ''}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
