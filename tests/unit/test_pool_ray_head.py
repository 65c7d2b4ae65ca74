"""The start hook of a tenant's head (:mod:`fastgpu.pool.ray_head`) against the installed Ray:
the internals it relies on are still there, and the dashboard modules it names are Ray's."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from fastgpu.pool import ray_head


def _dashboard_modules() -> set[str]:
    from ray.dashboard import utils as dashboard_utils
    from ray.dashboard.subprocesses.module import SubprocessModule

    kinds = (dashboard_utils.DashboardHeadModule, SubprocessModule)
    return {m.__name__ for kind in kinds for m in dashboard_utils.get_all_modules(kind)}


def test_every_dashboard_module_of_this_ray_is_kept_or_dropped_by_name() -> None:
    """A name Ray does not have would stop the dashboard (it asserts what it loaded); a module
    a Ray upgrade adds must be decided on."""
    assert ray_head.DASHBOARD_MODULES.isdisjoint(ray_head.DROPPED_DASHBOARD_MODULES)
    assert _dashboard_modules() == ray_head.DASHBOARD_MODULES | ray_head.DROPPED_DASHBOARD_MODULES


def test_the_jobs_api_and_serve_api_modules_are_kept() -> None:
    assert {"JobHead", "ServeHead", "StateHead", "NodeHead"} <= ray_head.DASHBOARD_MODULES


def test_dashboard_command_sets_the_modules_once() -> None:
    cmd = ray_head.dashboard_command(["python", "dashboard.py", "--modules-to-load=UsageStatsHead"])
    flags = [a for a in cmd if a.startswith("--modules-to-load=")]
    assert cmd[:2] == ["python", "dashboard.py"]
    assert flags == ["--modules-to-load=" + ",".join(sorted(ray_head.DASHBOARD_MODULES))]


def test_the_hook_drops_the_client_server_and_picks_dashboard_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._private import parameter, ray_constants, services

    assert ray_constants.RAY_START_HOOK == "RAY_START_HOOK"  # what `ray start` reads
    params = parameter.RayParams(ray_client_server_port=10001)
    started: list[tuple[list[str], str]] = []

    def fake_start(command: list[str], process_type: str, *args: Any, **kw: Any) -> str:
        started.append((command, process_type))
        return "info"

    monkeypatch.setattr(services, "start_ray_process", fake_start)
    monkeypatch.setenv("RAY_START_HOOK", ray_head.HOOK)
    ray_head.configure(params, head=True)
    assert params.ray_client_server_port is None
    assert "RAY_START_HOOK" not in os.environ  # not passed on to the head's processes
    services.start_ray_process(["dash"], ray_constants.PROCESS_TYPE_DASHBOARD, False)
    services.start_ray_process(["gcs"], ray_constants.PROCESS_TYPE_GCS_SERVER, False)
    modules = started[0][0][1].removeprefix("--modules-to-load=").split(",")
    assert "JobHead" in modules
    assert "MetricsHead" not in modules
    assert started[1][0] == ["gcs"]


def test_the_hook_leaves_a_worker_node_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import services

    before = services.start_ray_process
    params = SimpleNamespace(ray_client_server_port=None)
    monkeypatch.setenv("RAY_START_HOOK", ray_head.HOOK)
    ray_head.configure(params, head=False)
    assert services.start_ray_process is before
