"""Lease grant and release latency: FastGPU vs raw Ray placement groups, same cluster, same run.

Platform path (what a tenant's driver does): SDK over HTTP -> ``fastgpu server`` (a separate
process, outside Ray) -> placement group, waiting until the lease is RESERVED; release
likewise. Raw path: ``placement_group(...)`` + ``ray.get(pg.ready())`` and
``remove_placement_group``, from this driver.

    python bench/bench_leases.py [--cycles 200] [--gpus 2]

Prints p50/p99 per path and the ratio to raw Ray. Not a test: numbers are reported, not asserted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

_TMP = tempfile.mkdtemp(prefix="fgb")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_TMPDIR", _TMP)
os.environ.setdefault("FASTGPU_HOME", os.path.join(_TMP, "home"))

import ray  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    cycles: int, grant: Callable[[], object], release: Callable[[object], None]
) -> tuple[list[float], list[float]]:
    g, r = [], []
    for _ in range(cycles):
        t0 = time.perf_counter()
        handle = grant()
        t1 = time.perf_counter()
        release(handle)
        t2 = time.perf_counter()
        g.append((t1 - t0) * 1000)
        r.append((t2 - t1) * 1000)
    return g, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args()

    from pathlib import Path

    from _server import BenchServer
    from fastgpu.controller.backend import GPU_TYPE_LABEL

    ray.init(
        num_cpus=2,
        num_gpus=8,
        include_dashboard=False,
        labels={GPU_TYPE_LABEL: "A100"},
        log_to_driver=False,
    )
    # The server is its own process, outside Ray, as `fastgpu up` runs it.
    server = BenchServer(Path(os.environ["FASTGPU_HOME"]))
    sdk = server.tenant_client("bench", 8)
    n = args.gpus

    def raw_grant() -> object:
        pg = placement_group([{"GPU": 1}] * n, strategy="PACK")
        ray.get(pg.ready())
        return pg

    def raw_release(pg: object) -> None:
        remove_placement_group(pg)  # type: ignore[arg-type]

    def sdk_grant() -> object:
        return sdk.request_lease(n, "A100", "10m", wait=True)

    def sdk_release(lease: object) -> None:
        lease.release()  # type: ignore[attr-defined]

    # Warm up every path, then interleave rounds so drift hits all paths alike.
    for grant, release in (
        (raw_grant, raw_release),
        (sdk_grant, sdk_release),
    ):
        measure(5, grant, release)
    results: dict[str, tuple[list[float], list[float]]] = {
        "raw Ray": ([], []),
        "FastGPU SDK (HTTP)": ([], []),
    }
    rounds = 10
    per = max(1, args.cycles // rounds)
    for _ in range(rounds):
        for name, (grant, release) in {
            "raw Ray": (raw_grant, raw_release),
            "FastGPU SDK (HTTP)": (sdk_grant, sdk_release),
        }.items():
            g, r = measure(per, grant, release)
            results[name][0].extend(g)
            results[name][1].extend(r)

    raw_g50 = statistics.median(results["raw Ray"][0])
    raw_r50 = statistics.median(results["raw Ray"][1])
    cycles = per * rounds
    print(f"\nLease grant (request -> GPUs held) and release, {n} GPUs, {cycles} cycles/path, ms")
    head = ("path", "grant p50", "grant p99", "x raw", "release p50", "release p99", "x raw")
    print(f"{head[0]:<22}" + "".join(f"{h:>13}" for h in head[1:]))
    for name, (g, r) in results.items():
        g50, r50 = statistics.median(g), statistics.median(r)
        cells = (g50, pct(g, 0.99), g50 / raw_g50, r50, pct(r, 0.99), r50 / raw_r50)
        print(f"{name:<22}" + "".join(f"{c:>13.2f}" for c in cells))
    server.stop()
    ray.shutdown()
    shutil.rmtree(_TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
