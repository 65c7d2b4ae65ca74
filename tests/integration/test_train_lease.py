"""Training on a platform lease (the Python driver path): request, bind, train pinned to the
lease's nodes, release; the run's GPU-seconds land in the tenant's usage.

Two GPU nodes of 2 logical A100s; another tenant holds one node, so the lease (and therefore
every worker) must land on the other one.
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


def _stepping_train(total: int, sleep_s: float) -> Any:
    """A train function of ``total`` slow steps on TrainLoop that logs, on rank 0, the world size
    and the step it resumed from at every (re)start. Returned as a closure: Ray pickles it by
    value, so workers need not import this test module."""

    def train(config: dict[str, Any]) -> None:
        import time

        import ray.train
        import torch

        from fastgpu.train import TrainLoop

        loop = TrainLoop.from_config(config)
        model = loop.prepare_model(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        resumed = loop.restore(model=model, optimizer=opt)
        ctx = ray.train.get_context()
        if ctx.get_world_rank() == 0:
            with open(config["log"], "a") as f:
                f.write(json.dumps({"world": ctx.get_world_size(), "start": resumed.step}) + "\n")
        for step in range(resumed.step + 1, total + 1):
            with loop.autocast():
                loss = model(torch.randn(8, 4)).pow(2).mean()
            loop.backward_and_step(loss, opt)
            time.sleep(sleep_s)
            state = {"model": loop.unwrap(model).state_dict()}
            if loop.end_step(
                step, {"loss": float(loss)}, state=lambda s=state: s, final=step == total
            ):
                return

    return train


def test_run_follows_the_lease_when_it_grows(setup: tuple[Platform, str], tmp_path: Path) -> None:
    """Elastic start below max, then growth: the scheduler grows the bound lease when another
    tenant frees GPUs; the run checkpoints, and continues from that checkpoint on 4 workers
    across both nodes."""
    import threading
    import time

    from fastgpu.train import run_on_lease

    platform, url = setup
    holder = Client(token=platform.tenant("holder2", A100=2), address=url)
    held = holder.request_lease(2, "A100", "10m", strategy="STRICT_PACK", wait=True)
    token = platform.tenant("grower", borrowing_limit=2, A100=2)
    client = Client(token=token, address=url)
    log = tmp_path / "segments.jsonl"

    train = _stepping_train(total=60, sleep_s=0.05)

    def free_when_bound() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(x.state == "BOUND" for x in client.list_leases(live=True)):
                held.release()
                return
            time.sleep(0.2)

    helper = threading.Thread(target=free_when_bound, daemon=True)
    helper.start()
    done = run_on_lease(
        train,
        gpus=(1, 4),
        gpu_type="A100",
        duration="10m",
        run_name="grow-test",
        client=client,
        config={"log": str(log)},
        cpus_per_worker=0.25,
        report_every=5,
        checkpoint_every=10,
    )
    helper.join()
    assert [count for count, _ in done.segments] == [2, 4]
    assert len(set(done.segments[0][1])) == 1  # first on the one free node
    assert len(set(done.segments[1][1])) == 2  # then across both
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    assert starts[0] == {"world": 2, "start": 0}
    assert starts[-1]["world"] == 4
    assert starts[-1]["start"] > 0  # continued from the checkpoint taken when asked to stop
    assert done.outcome.metrics["step"] == 60
    assert done.lease.state == "RELEASED"


def test_losing_a_node_shrinks_the_lease_and_the_run_continues(
    setup: tuple[Platform, str], tmp_path: Path
) -> None:
    """Runs last in this module (it removes a node). A bound elastic lease on both nodes loses
    one: the controller shrinks the lease to the survivor instead of failing it, and the run
    continues from its last checkpoint with fewer workers, never below min."""
    import threading
    import time

    from fastgpu.train import run_on_lease

    platform, url = setup
    cluster: Cluster = platform.extra["cluster"]  # type: ignore[attr-defined]
    token = platform.tenant("survivor", borrowing_limit=2, A100=2)
    client = Client(token=token, address=url)
    log = tmp_path / "segments.jsonl"

    train = _stepping_train(total=80, sleep_s=0.1)

    def kill_a_node_mid_run() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if log.exists() and len(list((tmp_path).glob("segments.jsonl"))) and log.read_text():
                time.sleep(3)  # a few steps and a checkpoint in
                (lease,) = [x for x in client.list_leases(live=True) if x.state == "BOUND"]
                victim = next(n for n in cluster.list_all_nodes() if n.node_id == lease.nodes[-1])
                cluster.remove_node(victim)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_node_mid_run, daemon=True)
    killer.start()
    done = run_on_lease(
        train,
        gpus=(1, 4),
        gpu_type="A100",
        duration="10m",
        run_name="node-loss",
        client=client,
        config={"log": str(log)},
        cpus_per_worker=0.25,
        report_every=2,
        checkpoint_every=5,
        max_failures=3,
    )
    killer.join()
    assert done.segments[0][0] == 4
    assert done.segments[-1][0] == 2  # shrunk to the surviving node's GPUs
    assert len(set(done.segments[-1][1])) == 1
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    assert starts[0] == {"world": 4, "start": 0}
    assert starts[-1]["start"] > 0  # continued from a checkpoint
    assert done.outcome.metrics["step"] == 80
    assert done.lease.state == "RELEASED"
    assert done.lease.held_gpus == 2  # the controller shrank it rather than failing it
