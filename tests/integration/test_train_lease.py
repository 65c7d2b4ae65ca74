"""Training on a platform lease (the Python driver path): request, bind, train pinned to the
lease's nodes, release; the run's GPU-seconds land in the tenant's usage.

Two GPU nodes of 2 logical A100s; another tenant holds one node, so the lease (and therefore
every worker) must land on the other one.

This is the legacy shared cluster (``tenant_clusters.enabled: false``). A run that follows its
lease as it grows, shrinks, loses a host or a worker is tested on tenant clusters, the default
(``test_pool_server.py``, ``test_agents.py``); the shared cluster's own side of it (an elastic
lease growing, shrinking, and shrinking to the survivor when a node dies) is tested without
training in ``test_scheduler_live.py`` and ``test_multinode.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from fastgpu.controller.backend import GPU_TYPE_LABEL
from fastgpu.sdk import Client
from tests.integration.platform_fixtures import Platform, platform_on_running_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, str]]:
    """Two GPU nodes and a real ``fastgpu server`` process; yields the platform and its URL."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=2, labels={GPU_TYPE_LABEL: "A100"})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="fastgpu-tests", log_to_driver=False)
    state = tmp_path_factory.mktemp("state")
    try:
        for platform in platform_on_running_ray(state, cluster.address):
            platform.extra = {"cluster": cluster}  # type: ignore[attr-defined]
            yield platform, platform.url
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_run_on_lease_binds_pins_meters_and_releases(
    setup: tuple[Platform, str], tmp_path: Path
) -> None:
    from fastgpu.train import run_on_lease

    platform, url = setup
    other = Client(token=platform.tenant("holder", A100=2), address=url)
    held = other.request_lease(2, "A100", "10m", strategy="STRICT_PACK", wait=True)
    token = platform.tenant("trainer", borrowing_limit=0, A100=2)
    client = Client(token=token, address=url)

    def record_placement(config: dict[str, Any]) -> None:
        """Each worker writes where it runs (a closure: pickled by value for the workers)."""
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        out = Path(config["out"])
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "node": ray.get_runtime_context().get_node_id(),
            # Train shares CUDA_VISIBLE_DEVICES among a node's workers; Ray's own assignment
            # says which GPU is this worker's.
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        ray.train.report({"rank": rank})

    out = tmp_path / "placement"
    done = run_on_lease(
        record_placement,
        gpus=(1, 2),
        gpu_type="A100",
        duration="10m",
        run_name="bind-test",
        client=client,
        config={"out": str(out)},
        cpus_per_worker=0.5,
    )
    (lease,) = client.list_leases()
    assert lease.state == "RELEASED"
    assert lease.data["workload"] == "train:bind-test"
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert len(records) == 2  # started at the lease's 2 GPUs (its max)
    lease_nodes = set(lease.nodes)
    assert len(lease_nodes) == 1
    assert lease_nodes.isdisjoint(held.nodes)  # not the other tenant's node
    assert {r["node"] for r in records} == lease_nodes  # every worker on the lease's node
    assert sorted(g for r in records for g in r["gpus"]) in (["0", "1"], ["2", "3"])
    # Checkpoints and the run live in the tenant's storage; usage was metered while bound.
    assert "trainer" in str(done.outcome.run_dir)
    assert done.segments == [(2, [*lease_nodes] * 2)]
    (usage,) = client.usage()
    assert usage["gpu_seconds"] > 0
    held.release()
