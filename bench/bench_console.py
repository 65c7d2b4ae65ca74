"""Console first paint: the admin page with 1,000 tenants in headless Chromium, against the same
page served as a static file (no scripts, no API calls).

    python bench/bench_console.py [--runs 5] [--tenants 1000] [--held 4]

Set-up: a real ``fastgpu server`` process (as ``fastgpu up`` runs it) with tenant clusters on a
pool of one host of ``--held`` logical A100s; 1,000 tenants created through the API (nominal 1
A100 each), ``--held`` of them holding a lease (each a raylet of the tenant's own Ray cluster:
its head, the raylet and the keeper run until the end) and 20 more waiting (``no_capacity``),
so every card of the admin page has rows. On the shared cluster this was 16 held leases; on
tenant clusters each is a cluster of its own (~0.8 GB, a head start), so the default is 4.
The browser is Debian's ``chromium`` driven by Playwright (never ``playwright install``).

Each run is a fresh browser context (empty cache) whose tab is already signed in as the admin
(the token put in ``sessionStorage`` before the page's scripts run) and opens ``/console/``.
Measured from navigation start, as the page reports it (``performance``):

* **first contentful paint**: the ``first-contentful-paint`` paint entry;
* **all tenants painted**: the console's mark ``fastgpu:tenants-painted``, a task queued
  from the frame callback after the table was filled with every tenant (all pages of
  ``GET /tenants`` and ``GET /status`` joined), i.e. just after that frame was painted.

Raw baseline, same browser, same run: the page as the console rendered it (1,000 rows), saved
as one static HTML file with its style sheet and no script, served by Python's
``http.server``; its "all tenants painted" is the same frame trick after ``DOMContentLoaded``.
Runs of the two paths are interleaved. Goal: all tenants painted < 1 s. Prints a markdown
table (medians; min-max) and the ratio to the baseline. No Ray of the bench's own: the
baseline is the static page, and the platform's Ray is the tenants' clusters. Needs root for
tenants' own users (else single-user).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="fgbc")
os.environ["RAY_TMPDIR"] = _TMP
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
Path(_TMP).chmod(0o711)  # tenants pass through it to their own dirs
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from _server import BenchServer  # noqa: E402
from fastgpu.controller.clusters import TenantClusters  # noqa: E402
from fastgpu.pool import processes  # noqa: E402
from fastgpu.pool.runtime import remove_platform_users  # noqa: E402

GOAL_MS = 1000.0
WAITING = 20

# Runs in the page before its own scripts (CDP-injected, so the page's CSP does not apply).
# The token goes where the sign-in form would put it; the static page gets its paint mark.
INIT_SCRIPT = """
(() => {
  const token = %s;
  if (token) sessionStorage.setItem("fastgpu.token", token);
  else document.addEventListener("DOMContentLoaded", () =>
    requestAnimationFrame(() => setTimeout(() => performance.mark("fastgpu:tenants-painted"))));
})();
"""

READ_MARKS = """() => ({
  fcp: (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime,
  painted: (performance.getEntriesByName("fastgpu:tenants-painted")[0] || {}).startTime,
  rows: document.querySelectorAll("#a-tenant-table tbody tr").length,
})"""


def populate(url: str, admin: str, tenants: int, held: int) -> None:
    """Tenants through the API; ``held`` hold a GPU (once their raylets joined), some wait."""
    t0 = time.perf_counter()
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=60, trust_env=False
    ) as http:
        for i in range(tenants):
            body: dict[str, Any] = {"name": f"team-{i:04d}", "quotas": {"A100": {"nominal": 1}}}
            if i % 10 == 0:
                body["budget"] = {"period": "month", "gpu_hours": 500}
            http.post("/api/v1/tenants", json=body).raise_for_status()
        for i in range(held + WAITING):
            lease = {"gpus": 1, "gpu_type": "A100", "duration": "1h", "tenant": f"team-{i:04d}"}
            http.post("/api/v1/leases", json=lease).raise_for_status()
        deadline = time.monotonic() + 120 + 30 * held
        while True:  # the held leases' clusters start: a head and a raylet each
            rows = http.get("/api/v1/leases", params={"live": True, "limit": 500}).json()
            states = [r["state"] for r in rows["items"]]
            if states.count("RESERVED") >= held:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{states.count('RESERVED')} of {held} leases reserved")
            time.sleep(0.5)
    print(
        f"created {tenants} tenants and {held + WAITING} leases, {held} reserved, in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )


def serve_static(folder: Path) -> tuple[http.server.HTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a context closed while its favicon was on the way: not the bench's business

    handler = functools.partial(Quiet, directory=str(folder))
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/index.html"


def open_once(browser: Any, url: str, token: str | None) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(INIT_SCRIPT % ("null" if token is None else repr(token)))
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_function(
            "() => performance.getEntriesByName('fastgpu:tenants-painted').length > 0 &&"
            " performance.getEntriesByName('first-contentful-paint').length > 0",
            timeout=60_000,
        )
        marks: dict[str, float] = page.evaluate(READ_MARKS)
        return marks
    finally:
        context.close()


def snapshot(browser: Any, url: str, token: str, into: Path) -> None:
    """The console's admin page as rendered, saved as a static page with no script."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(INIT_SCRIPT % repr(token))
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-tenants-filled]", state="attached", timeout=60_000)
    html = re.sub(r"<script\b[^>]*>.*?</script>", "", page.content(), flags=re.S)
    context.close()
    into.mkdir(parents=True, exist_ok=True)
    (into / "index.html").write_text(html)
    from fastgpu.console import ASSETS

    for name in ("style.css", "favicon.svg"):
        shutil.copy(ASSETS / name, into / name)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--held", type=int, default=4, help="leases held (tenant clusters)")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("Debian's chromium is not installed (apt-get install -y chromium); skipped")
        return 0
    from playwright.sync_api import sync_playwright

    pool = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": list(range(args.held))}]}
    server = BenchServer(
        Path(_TMP) / "state",
        pool=pool,
        storage_root=str(Path(_TMP) / "storage"),
    )
    clusters = TenantClusters(server.config)
    try:
        populate(server.url, server.admin, args.tenants, args.held)
        console_url = f"{server.url}/console/"
        launch_args = ["--no-sandbox"] if os.geteuid() == 0 else []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=launch_args)
            snapshot(browser, console_url, server.admin, Path(_TMP) / "static")
            static, static_url = serve_static(Path(_TMP) / "static")
            paths = {
                "console (API calls)": (console_url, server.admin),
                "raw static page": (static_url, None),
            }
            for url, token in paths.values():  # warm up: the server, the browser, the OS cache
                open_once(browser, url, token)
            got: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            for _ in range(args.runs):
                for name, (url, token) in paths.items():
                    marks = open_once(browser, url, token)
                    if marks["rows"] < args.tenants:
                        raise SystemExit(f"{name}: {marks['rows']} rows; expected {args.tenants}")
                    got[name].append(marks)
            browser.close()
            static.shutdown()
    finally:
        server.stop()
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)
        shutil.rmtree(_TMP, ignore_errors=True)

    base = statistics.median(m["painted"] for m in got["raw static page"])
    print(
        f"\nConsole admin page, {args.tenants} tenants ({args.held} holding a lease on tenant "
        f"clusters, {WAITING} waiting), headless Chromium, {args.runs} runs per path (fresh "
        "context each), ms from navigation start: median (min-max)\n"
    )
    print("| page | first contentful paint | all tenants painted | x raw | goal < 1 s |")
    print("|---|---|---|---|---|")
    for name, runs in got.items():
        painted = [m["painted"] for m in runs]
        met = "met" if statistics.median(painted) < GOAL_MS else "not met"
        print(
            f"| {name} | {summary([m['fcp'] for m in runs])} | {summary(painted)} | "
            f"{statistics.median(painted) / base:.2f} | {met if 'console' in name else ''} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
