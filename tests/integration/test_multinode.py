"""Placement across nodes and node loss, on a multi-node cluster (ray.cluster_utils.Cluster),
with a real server process driving it; the test talks to it through the SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from fastgpu.controller.backend import GPU_TYPE_LABEL
from fastgpu.errors import LeaseRejected
from fastgpu.sdk import Client
from tests.integration.platform_fixtures import Platform, platform_on_running_ray, wait_until

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster_platform(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, Platform, list[Any]]]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    workers = [
        cluster.add_node(num_cpus=1, num_gpus=4, labels={GPU_TYPE_LABEL: "A100"}) for _ in range(2)
    ]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="fastgpu-tests", log_to_driver=False)
    try:
        yield from (
            (cluster, platform, workers)
            for platform in platform_on_running_ray(
                tmp_path_factory.mktemp("state"), cluster.address
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


def _ask(client: Client, gpus: int, **kw: Any) -> dict[str, Any]:
    """Request without waiting; the lease as stored, REJECTED ones included."""
    rid = f"t-{uuid.uuid4().hex}"
    try:
        return client.request_lease(gpus, request_id=rid, **kw).data
    except LeaseRejected:
        (row,) = [x.data for x in client.list_leases() if x.data["request_id"] == rid]
        return row


def test_gang_placement_fragmentation_and_node_loss(
    cluster_platform: tuple[Cluster, Platform, list[Any]],
) -> None:
    cluster, platform, workers = cluster_platform
    client = platform.client(platform.tenant("multi", A100=8))

    never = _ask(client, 5, strategy="STRICT_PACK", duration="5m")
    assert never["state"] == "REJECTED"
    assert never["reason"] == "infeasible"
    assert "4 per node" in never["reason_detail"]

    spread = client.request_lease(2, strategy="SPREAD", duration="5m", wait=True, timeout=30)
    assert spread.state == "RESERVED"
    assert len(set(spread.nodes)) == 2  # one GPU on each node

    # 3 + 3 GPUs are free: STRICT_PACK of 4 is blocked by fragmentation, not capacity.
    frag = _ask(client, 4, strategy="STRICT_PACK", duration="5m")
    assert frag["state"] == "PENDING"
    assert frag["reason"] == "fragmentation"
    client.release_lease(frag["id"])

    # A bound elastic lease with a GPU on each node (its workload may go on with one).
    elastic = client.request_lease(
        2, min_gpus=1, strategy="SPREAD", duration="5m", wait=True, timeout=30
    )
    assert len(set(elastic.nodes)) == 2
    client.bind_lease(elastic.id, "train:survivor")

    packed = client.request_lease(4, duration="5m", wait=True, timeout=30)
    assert packed.state == "RESERVED"
    assert len(set(packed.nodes)) == 2  # 2 + 2: no node had 4 free, PACK may span

    # Lose a node: every lease with a GPU there fails with node_lost, its GPUs leave capacity;
    # the bound elastic lease shrinks to the survivor instead (its minimum still holds).
    victim_node = next(w for w in workers if w.node_id in packed.nodes)
    cluster.remove_node(victim_node)
    failed = wait_until(
        lambda: (got := client.get_lease(packed.id).data)["state"] == "FAILED" and got,
        timeout=40,
    )
    assert failed["reason"] == "node_lost"
    assert client.get_lease(spread.id).state == "FAILED"
    # (Once the failed leases' GPUs are free, the elastic policy may grow it back there.)
    kept = wait_until(
        lambda: victim_node.node_id not in (x := client.get_lease(elastic.id)).nodes and x
    )
    assert kept.state == "BOUND"
    assert kept.held_gpus >= 1
    status = platform.client().status()
    (a100,) = [t for t in status["gpu_types"] if t["gpu_type"] == "A100"]
    assert a100["total"] == 4
    # Only the elastic lease holds GPUs (it may grow between the two reads).
    assert a100["allocated"] in {kept.held_gpus, client.get_lease(elastic.id).held_gpus}
    client.release_lease(elastic.id)
    # The surviving node still serves new leases.
    again = client.request_lease(4, strategy="STRICT_PACK", duration="5m", wait=True, timeout=30)
    assert again.state == "RESERVED"
    again.release()
