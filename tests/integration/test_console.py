"""The web console (``/console/``) of a real ``fastgpu server`` process, in a real browser:
Debian's ``chromium``, headless, driven by Playwright (never ``playwright install``).

One platform for the module (tenant clusters on a pool of 8 logical A100s): tenant ``alpha`` holds
its 2 guaranteed GPUs with a lease whose workload label is an HTML injection, and waits for a
third (``over_quota``); tenant ``beta`` holds 1 GPU. The tests sign in as the admin and as
tenants and compare what the page shows with what the API answers. Screenshots go to the
pytest tmp dir, and also to ``$FASTGPU_SCREENSHOTS`` when it is set.

The header and asset checks need no browser; the browser tests skip, with the reason, when
chromium or playwright is missing (``apt-get install chromium``; ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgpu.console import ASSETS
from tests.integration.platform_fixtures import Platform, pool_platform, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# A workload label is free text (tenant names are [a-z][a-z0-9-]*, so they cannot carry it).
INJECTION = '<img src=x onerror="window.__xss=1">'
UI_TIMEOUT_MS = 20_000


@dataclass
class World:
    platform: Platform
    alpha: str
    beta: str
    held: str  # alpha's RESERVED lease, bound to INJECTION
    waiting: str  # alpha's PENDING lease
    beta_lease: str

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.platform.url, headers=headers, timeout=30, trust_env=False
        )

    def api(self, path: str, token: str | None = None) -> Any:
        with self.http(token or self.platform.admin) as http:
            resp = http.get(f"/api/v1{path}")
            resp.raise_for_status()
            return resp.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for platform in pool_platform(tmp_path_factory):
        admin = platform.client()
        alpha = admin.create_tenant(
            "alpha",
            {"A100": {"nominal": 2, "borrowing_limit": 0}},
            budget={"period": "month", "gpu_hours": 100},
        )["token"]
        beta = platform.tenant("beta", A100=2)
        a = platform.client(alpha)
        held = a.request_lease(2, "A100", "30m", wait=True, timeout=60)
        assert held.state == "RESERVED"
        a.bind_lease(held.id, INJECTION)
        waiting = a.request_lease(1, "A100", "30m")
        wait_until(lambda a=a, w=waiting.id: a.get_lease(w).reason == "over_quota", timeout=20)
        beta_lease = platform.client(beta).request_lease(1, "A100", "30m", wait=True, timeout=60)
        yield World(platform, alpha, beta, held.id, waiting.id, beta_lease.id)


# ==== served files and headers (no browser) =====================================================
def test_console_is_served_with_strict_security_headers(world: World) -> None:
    with world.http() as http:
        page = http.get("/console/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        assert directives["default-src"] == ["'self'"]
        assert directives["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
        assert directives["connect-src"] == ["'self'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert directives["require-trusted-types-for"] == ["'script'"]
        assert "unsafe" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in page.text  # every script is a file

        root = http.get("/", follow_redirects=False)
        assert root.status_code in (302, 307)
        assert root.headers["location"].endswith("/console/")
        js = http.get("/console/app.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert js.headers["content-security-policy"] == csp
        # Only the assets leave the package folder; the API still wants a token.
        assert http.get("/console/__init__.py").status_code == 404
        assert http.get("/console/../../etc/passwd").status_code == 404
        assert http.get("/api/v1/whoami").status_code == 401
        assert http.get("/api/v1/tenants").status_code == 401


def test_console_scripts_never_write_markup() -> None:
    for path in ASSETS.glob("*.js"):
        # Code only: the comments name these sinks to say they are not used.
        lines = path.read_text().splitlines()
        text = "\n".join(x for x in lines if not x.strip().startswith(("//", "/*", "*")))
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path.name} uses {sink}"
        for store in ("localStorage", "document.cookie"):
            assert store not in text, f"{path.name} uses {store}"


# ==== the browser ===============================================================================
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    # As root, Chromium refuses to start with its sandbox.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        yield b
        b.close()


class Console:
    """One browser tab on the console; records CSP violations and page errors."""

    def __init__(self, browser: Any, world: World, shots: list[Path]) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(UI_TIMEOUT_MS)
        self.world = world
        self.shots = shots
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "console",
            lambda m: self.problems.append(m.text) if "Content Security Policy" in m.text else None,
        )
        self.page.goto(f"{world.platform.url}/")

    def sign_in(self, token: str) -> None:
        self.page.fill("#token", token)
        self.page.click("#signin-form button[type=submit]")

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready]", state="attached")

    def cell(self, table: str, key: str, col: str) -> str:
        loc = self.page.locator(f'#{table} tr[data-key="{key}"] td[data-col="{col}"]')
        return str(loc.inner_text()).strip()

    def keys(self, table: str) -> list[str]:
        return [
            str(k)
            for k in self.page.eval_on_selector_all(
                f"#{table} tbody tr", "rows => rows.map(r => r.dataset.key)"
            )
        ]

    def screenshot(self, name: str) -> None:
        for folder in self.shots:
            folder.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser: Any, world: World, tmp_path: Path) -> Iterator[Console]:
    shots = [tmp_path]
    if os.environ.get("FASTGPU_SCREENSHOTS"):
        shots.append(Path(os.environ["FASTGPU_SCREENSHOTS"]))
    c = Console(browser, world, shots)
    yield c
    c.close()
    assert c.problems == [], c.problems


def test_admin_sees_tenants_allocation_and_the_queue(console: Console, world: World) -> None:
    page = console.page
    assert page.url.endswith("/console/")
    console.sign_in(world.platform.admin)
    page.wait_for_selector("body[data-tenants-filled]", state="attached")
    console.wait_ready()
    assert page.inner_text("#who-role") == "admin"

    tenants = {t["id"]: t["name"] for t in world.api("/tenants")["items"]}
    assert set(tenants.values()) == {"alpha", "beta"}
    assert sorted(console.keys("a-tenant-table")) == sorted(tenants)
    names = page.eval_on_selector_all(
        '#a-tenant-table td[data-col="name"]', "cells => cells.map(c => c.textContent)"
    )
    assert sorted(names) == ["alpha", "beta"]

    # Allocation per GPU type: the numbers of GET /status (nothing changes meanwhile).
    status = world.api("/status")
    for row in status["gpu_types"]:
        for col in ("total", "allocated", "free", "pending", "nodes"):
            assert console.cell("a-alloc-table", row["gpu_type"], col) == str(row[col]), col
    a100 = next(r for r in status["gpu_types"] if r["gpu_type"] == "A100")
    assert (a100["total"], a100["allocated"], a100["pending"]) == (8, 3, 1)

    # The queue: alpha's waiting lease with its reason, in words and in detail.
    assert console.keys("a-queue-table") == [world.waiting]
    lease = world.api(f"/leases/{world.waiting}")
    assert console.cell("a-queue-table", world.waiting, "tenant") == "alpha"
    assert console.cell("a-queue-table", world.waiting, "reason").startswith("over quota")
    assert console.cell("a-queue-table", world.waiting, "reason_detail") == lease["reason_detail"]
    assert set(console.keys("a-running-table")) == {world.held, world.beta_lease}

    # The workload label is text: no element was made of it, and its handler never ran.
    assert console.cell("a-running-table", world.held, "workload") == INJECTION
    assert page.locator("img").count() == 0
    assert page.evaluate("() => window.__xss") is None
    console.screenshot("admin")


def test_admin_usage_per_tenant_matches_the_api(console: Console, world: World) -> None:
    console.sign_in(world.platform.admin)
    console.wait_ready()
    page = console.page
    page.select_option("#a-range", "month")
    # Both tenants have held GPUs, so both have usage this month.
    page.wait_for_function(
        "() => document.querySelectorAll('#a-usage-table tbody tr').length === 2"
    )
    usage = world.api("/usage")["items"]
    assert {r["tenant"] for r in usage if r["gpu_hours"] > 0} == {"alpha", "beta"}
    shown = float(console.cell("a-usage-table", "alpha", "gpu_hours").replace(",", ""))
    api_hours = sum(r["gpu_hours"] for r in usage if r["tenant"] == "alpha")
    assert 0 < shown <= api_hours + 0.01  # it grows while the lease runs


def test_tenant_sees_only_its_own_leases_usage_and_budget(console: Console, world: World) -> None:
    console.sign_in(world.alpha)
    console.wait_ready()
    page = console.page
    assert page.inner_text("#who-name") == "alpha"
    assert page.inner_text("#who-role") == "tenant"
    assert not page.is_visible("#admin-view")

    leases = {x["id"] for x in world.api("/leases?live=true", world.alpha)["items"]}
    assert leases == {world.held, world.waiting}
    assert set(console.keys("t-lease-table")) == leases
    assert world.beta_lease not in page.inner_text("body")
    assert "beta" not in page.inner_text("#tenant-view")

    # What it waits for and why.
    assert console.keys("t-waiting-table") == [world.waiting]
    lease = world.api(f"/leases/{world.waiting}", world.alpha)
    assert console.cell("t-waiting-table", world.waiting, "reason").startswith("over quota")
    assert console.cell("t-waiting-table", world.waiting, "reason_detail") == lease["reason_detail"]
    assert console.cell("t-quota-table", "A100", "nominal") == "2"
    assert console.cell("t-quota-table", "A100", "pending") == "1"

    # Usage over time: a bar per 5 minutes of the last hour, the last one holding usage.
    bars = page.eval_on_selector_all(
        "#usage-chart g.bar", "bars => bars.map(b => Number(b.dataset.value))"
    )
    assert len(bars) == 12
    assert bars[-1] > 0 or bars[-2] > 0  # the lease started in this period or the one before
    assert page.locator("#usage-chart rect.series").count() >= 1

    # Budget: its limit from the tenant's record, spent from GET /usage since the month began.
    budget = page.inner_text("#t-budget-body")
    assert "of 100 GPU-hours used this month" in budget
    # The numbers are GET /tenants/alpha/budget's: limit, spent (it grows), state, projection.
    api_budget = world.api("/tenants/alpha/budget", world.alpha)
    meter = page.locator('#t-budget-body .budget[data-unit="gpu_hours"]')
    assert float(meter.get_attribute("data-limit") or 0) == api_budget["limit"]["gpu_hours"] == 100
    shown_spent = float(meter.get_attribute("data-spent") or -1)
    assert 0 < shown_spent <= api_budget["spent"]["gpu_hours"] + 1e-6
    state = page.locator("#t-budget-state")
    assert state.get_attribute("data-state") == api_budget["state"] == "ok"
    projection = page.locator("#t-budget-projection").get_attribute("data-runs-out-at")
    assert bool(projection) == bool(api_budget["runs_out_at"])

    # The injected workload is shown as text, and nothing ran.
    assert console.cell("t-lease-table", world.held, "workload") == INJECTION
    assert page.locator("img").count() == 0
    assert page.evaluate("() => window.__xss") is None

    # The token is in this tab's session storage only: no cookie, no localStorage, no URL.
    assert page.evaluate("() => sessionStorage.getItem('fastgpu.token')") == world.alpha
    assert page.evaluate("() => localStorage.length") == 0
    assert console.context.cookies() == []
    assert world.alpha not in page.url
    console.screenshot("tenant")

    page.click("#signout")
    page.wait_for_selector("#signin", state="visible")
    assert page.evaluate("() => sessionStorage.getItem('fastgpu.token')") is None
    assert not page.is_visible("#tenant-view")
    assert page.locator("#t-lease-table tbody tr").count() == 0


def test_a_wrong_token_is_refused_in_words(console: Console) -> None:
    console.sign_in("fgpu_not-a-real-token")
    error = console.page.locator("#signin-error")
    error.wait_for(state="visible")
    assert "not accepted" in error.inner_text()
    assert console.page.evaluate("() => sessionStorage.getItem('fastgpu.token')") is None
    assert not console.page.is_visible("#tenant-view")
    assert not console.page.is_visible("#admin-view")
    console.screenshot("wrong-token")


def test_a_rotated_token_signs_out_with_the_reason(console: Console, world: World) -> None:
    token = world.platform.tenant("gamma", A100=1)
    console.sign_in(token)
    console.wait_ready()
    world.platform.client().rotate_token("gamma", grace=0)
    # The next refresh (every 5 s; the server may trust a token it saw for a few seconds more)
    # gets a 401 and signs out, saying why.
    error = console.page.locator("#signin-error")
    error.wait_for(state="visible", timeout=30_000)
    assert "rotated" in error.inner_text()
    assert console.page.evaluate("() => sessionStorage.getItem('fastgpu.token')") is None
    console.screenshot("rotated-token")


def test_budget_stop_shows_for_the_tenant_and_flags_the_admin(
    console: Console, world: World
) -> None:
    admin = world.platform.client()
    # 1 A100 at 3.6/h: 0.004 lasts 4 s; action stop.
    budget = {"money": 0.004, "action": "stop", "period": "day"}
    token = admin.create_tenant("capped", {"A100": 1}, budget=budget)["token"]
    capped = world.platform.client(token)
    lease = capped.request_lease(1, "A100", "30m", preemptible=True, wait=True, timeout=60)
    wait_until(lambda: lease.refresh().preempt_at, timeout=60)
    api_budget = capped.budget()
    assert api_budget["state"] == "exhausted"

    console.sign_in(token)
    console.wait_ready()
    page = console.page
    page.wait_for_selector("#t-budget-state", state="attached")
    assert page.locator("#t-budget-state").get_attribute("data-state") == "exhausted"
    meter = page.locator('#t-budget-body .budget[data-unit="money"]')
    assert float(meter.get_attribute("data-limit") or 0) == api_budget["limit"]["money"]
    assert float(meter.get_attribute("data-spent") or 0) >= api_budget["limit"]["money"]
    warned = page.eval_on_selector_all(
        "#t-budget-warnings li", "items => items.map(i => Number(i.dataset.percent))"
    )
    assert warned == [t["percent"] for t in api_budget["thresholds"] if t["crossed"]]
    assert warned == [50, 80, 100]
    stops = page.locator('#t-budget-events li[data-kind="stop"]')
    assert stops.count() == 1
    assert lease.id in stops.inner_text()
    console.screenshot("tenant-budget")
    page.click("#signout")
    page.wait_for_selector("#signin", state="visible")

    console.sign_in(world.platform.admin)
    page.wait_for_selector("body[data-tenants-filled]", state="attached")
    ids = {t["name"]: t["id"] for t in world.api("/tenants")["items"]}
    page.wait_for_function(
        "id => (document.querySelector(`#a-tenant-table tr[data-key='${id}'] "
        "td[data-col='budget_state']`) || {}).textContent?.startsWith('over budget')",
        arg=ids["capped"],
    )
    assert console.cell("a-tenant-table", ids["capped"], "budget_state").startswith("over budget")
    assert console.cell("a-tenant-table", ids["alpha"], "budget_state").startswith("ok")
    assert console.cell("a-tenant-table", ids["beta"], "budget_state") == ""
    console.screenshot("admin-budget")
    lease.release()
