"""The control API as a Ray Serve application on the cluster's HTTP proxy (127.0.0.1 by default)."""

from __future__ import annotations

from typing import Any

from ray import serve

from fastgpu.api.app import create_app
from fastgpu.config import PlatformConfig
from fastgpu.controller.actor import ControllerClient

APP_NAME = "fastgpu-api"

_client = ControllerClient()
api = create_app(_client.acall)


@serve.deployment(name="fastgpu-api", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class ApiServer:
    """Serve replica hosting the FastAPI app; all state lives in the controller actor."""


def deploy_api(config: PlatformConfig) -> str:
    """Start Serve's proxy on the configured host/port and deploy the API; return its URL."""
    serve.start(http_options={"host": config.api.host, "port": config.api.port})
    deployment: Any = ApiServer
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{config.api.host}:{config.api.port}"


def undeploy_api() -> None:
    try:
        serve.delete(APP_NAME)
    except Exception:  # Serve not running: nothing to remove
        pass
