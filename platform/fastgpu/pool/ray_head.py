"""What a tenant's head leaves out of a plain ``ray start --head``, through Ray's start hook.

``ray start`` calls the function named by ``RAY_START_HOOK`` with its ``RayParams`` before it
starts any process (Ray 2.60 ``scripts.py``); :func:`configure` is that function for a tenant's
head (:meth:`TenantCluster.env` sets the variable for the head only). It runs in the short-lived
``ray start`` process, so what it changes applies to that one start and nothing else:

* **No Ray Client server** (``ray://``): ``ray start`` always starts one (port 10001 unless
  told, and it rejects a port below 1024, so port 0 cannot turn it off); a ``RayParams`` with
  no client port starts none. Tenants reach their cluster by the GCS address
  (``ray.init(address=...)``) and the Jobs API. Saves ~47 MB per tenant.
* **Dashboard modules**: the dashboard (``ray/dashboard/dashboard.py``) takes
  ``--modules-to-load``, which ``ray start`` never passes (only with ``--include-dashboard
  false``, and then nearly none). The hook adds it to the dashboard's command line, leaving out
  the modules that only serve a Prometheus and Grafana the platform does not run for tenants
  (:data:`DROPPED_DASHBOARD_MODULES`). Each module is a process of its own (~20 MB).

Both rest on Ray internals (``RayParams.ray_client_server_port``,
``ray._private.services.start_ray_process``), checked against the installed Ray by
``tests/unit/test_pool_ray_head.py``.
"""

from __future__ import annotations

import os
from typing import Any

#: The value of ``RAY_START_HOOK`` for a tenant's head.
HOOK = f"{__name__}.configure"

#: Dashboard modules a tenant's head runs (class names, Ray 2.60). What each serves:
#: JobHead the Jobs API (``ray job submit``, ``fastgpu job submit``); NodeHead, StateHead,
#: ReportHead the dashboard's cluster, actors, tasks and logs views, ``ray list``/``ray logs``,
#: ``ray status`` details, profiling; EventHead the events agents report (job and autoscaler
#: events); ServeHead Serve's REST API (``serve deploy``, ``serve status``); TrainHead the Train
#: runs view. TaskEventsHead is off unless Ray's config turns it on (then it loads).
DASHBOARD_MODULES = frozenset(
    {
        "JobHead",
        "NodeHead",
        "StateHead",
        "ReportHead",
        "EventHead",
        "ServeHead",
        "TrainHead",
        "TaskEventsHead",
    }
)
#: Left out: MetricsHead writes Grafana and Prometheus configs and answers their health
#: checks; DataHead answers the Data view by querying Prometheus. No Prometheus runs for a
#: tenant's cluster, so both only answered "not available". UsageStatsHead reports usage
#: statistics, which tenant clusters turn off; PlatformEventsHead is off unless configured.
DROPPED_DASHBOARD_MODULES = frozenset(
    {"MetricsHead", "DataHead", "UsageStatsHead", "PlatformEventsHead"}
)


def dashboard_command(command: list[str]) -> list[str]:
    """The dashboard's command line with the modules of a tenant's head chosen."""
    flag = "--modules-to-load="
    kept = [arg for arg in command if not arg.startswith(flag)]
    return [*kept, flag + ",".join(sorted(DASHBOARD_MODULES))]


def configure(ray_params: Any, head: bool) -> None:
    """``RAY_START_HOOK``: no Ray Client server; the dashboard with the modules above."""
    # Not for the processes `ray start` is about to spawn (jobs' drivers run on the head).
    os.environ.pop("RAY_START_HOOK", None)
    if not head:
        return
    ray_params.ray_client_server_port = None

    from ray._private import ray_constants, services

    start = services.start_ray_process

    def start_ray_process(command: list[str], process_type: str, *args: Any, **kw: Any) -> Any:
        if process_type == ray_constants.PROCESS_TYPE_DASHBOARD:
            command = dashboard_command(command)
        return start(command, process_type, *args, **kw)

    services.start_ray_process = start_ray_process
