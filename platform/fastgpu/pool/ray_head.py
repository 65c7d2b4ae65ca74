"""What a tenant's nodes change in a plain ``ray start``, through Ray's start hook.

``ray start`` calls the function named by ``RAY_START_HOOK`` with its ``RayParams`` before it
starts any process (Ray 2.60 ``scripts.py``); :func:`configure` is that function for a tenant's
head and raylets (:meth:`TenantCluster.env` sets the variable for them). It runs in the
short-lived ``ray start`` process, so what it changes applies to that one start and nothing
else:

* **Loopback only** (every node, when the cluster's nodes all run on this machine; see
  :func:`fastgpu.pool.tenant_cluster.node_ip`): the node listens on 127.0.0.1 and registers
  that address. Ray binds its gRPC servers and agents on the node's address when it is
  loopback, else on all interfaces or the machine's address. Ray's switch for "one machine"
  is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (:data:`LOOPBACK_ENV`): with it
  ``get_node_ip_address()`` is 127.0.0.1 and ``ray.init("127.0.0.1:port")`` keeps the loopback
  address instead of rewriting it to the machine's (which a loopback-only GCS would refuse).
  The cluster's environment sets it for every process (nodes, keeper, job drivers, their
  workers), and ``fastgpu connect`` exports it. The same switch makes ``ray start`` refuse a
  worker node ("Multi-node Ray clusters are not supported"), a check that runs after this
  hook: for a raylet the hook turns the switch back on in the ``ray start`` process alone, and
  keeps that process's node address on loopback (:func:`_keep_loopback`).
* **No Ray Client server** (head): ``ray start`` always starts one (port 10001 unless told,
  and it rejects a port below 1024, so port 0 cannot turn it off); a ``RayParams`` with no
  client port starts none. Tenants reach their cluster by the GCS address
  (``ray.init(address=...)``) and the Jobs API. Saves ~47 MB per tenant.
* **Dashboard modules** (head): the dashboard (``ray/dashboard/dashboard.py``) takes
  ``--modules-to-load``, which ``ray start`` never passes (only with ``--include-dashboard
  false``, and then nearly none). The hook adds it to the dashboard's command line, leaving out
  the modules that only serve a Prometheus and Grafana the platform does not run for tenants
  (:data:`DROPPED_DASHBOARD_MODULES`). Each module is a process of its own (~20 MB).

All rest on Ray internals (``ray_constants.ENABLE_RAY_CLUSTER``,
``services.get_node_ip_address``, ``RayParams.ray_client_server_port``,
``services.start_ray_process``), checked against the installed Ray by
``tests/unit/test_pool_ray_head.py``.
"""

from __future__ import annotations

import os
from typing import Any

#: The value of ``RAY_START_HOOK`` for a tenant's nodes.
HOOK = f"{__name__}.configure"

#: Ray's switch (``ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR``): "0" in every process of a
#: tenant cluster whose nodes listen on loopback only.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: The address such a cluster's nodes listen on and register.
LOOPBACK = "127.0.0.1"

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


def loopback_env() -> dict[str, str]:
    """The variables every process of a loopback-only cluster runs with (and a driver of it
    needs: ``fastgpu connect`` prints them)."""
    return {LOOPBACK_ENV: "0"}


def dashboard_command(command: list[str]) -> list[str]:
    """The dashboard's command line with the modules of a tenant's head chosen."""
    flag = "--modules-to-load="
    kept = [arg for arg in command if not arg.startswith(flag)]
    return [*kept, flag + ",".join(sorted(DASHBOARD_MODULES))]


def _keep_loopback() -> None:
    """For a raylet's ``ray start``: pass its multi-node check, keep its addresses loopback.

    ``ray start`` for a worker node aborts when ``ENABLE_RAY_CLUSTER`` is off, right after
    this hook; once it is on, ``get_node_ip_address()`` (which resolves the head's
    ``127.0.0.1:port`` and would resolve the node's own address) asks the network for the
    machine's address. This process starts no driver, so the answer it gets instead is what
    the switch off gives every other process of the cluster: the loopback address.
    """
    from ray._private import ray_constants, services

    ray_constants.ENABLE_RAY_CLUSTER = True

    def get_node_ip_address(address: str | None = None) -> str:
        del address
        return LOOPBACK

    services.get_node_ip_address = get_node_ip_address


def configure(ray_params: Any, head: bool) -> None:
    """``RAY_START_HOOK``: loopback only when the cluster says so; for a head, no Ray Client
    server and the dashboard with the modules above."""
    # Not for the processes `ray start` is about to spawn (jobs' drivers run on the head).
    os.environ.pop("RAY_START_HOOK", None)
    if os.environ.get(LOOPBACK_ENV) == "0":
        ray_params.node_ip_address = LOOPBACK
        if not head:
            _keep_loopback()
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
