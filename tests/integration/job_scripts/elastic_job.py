"""Elastic training on a pool lease, as a tenant's Ray job: ``run_on_lease`` with a slow
stepping train function that logs each (re)start's world size and resumed step to
``<tenant storage>/elastic.jsonl`` (readable by the test), then prints the run's segments.
A step number in ``elastic.stop_at`` beside that log (the test writes it once it has seen
what it waits for) ends the run at that step instead of ``STEPS``: each step costs a report or
a checkpoint in Ray Train, so the steps after a test's last event are what a test waits for.
A test may shorten ``RESIZE_MONITOR_S`` (unset: TrainSpec's default, 60 s), how often an
elastic segment looks for room to grow, for speed only (when a grown lease's new raylets are
not yet in Ray Train's view at a segment's first scaling decision, it starts on fewer workers
and grows at its next look). Ray Train takes the reports every TrainSpec ``report_poll_s``
(0.5 s). Used by tests/integration/test_pool_server.py and bench/bench_elastic.py."""

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import ray

import fastgpu as fgpu
from fastgpu.train import run_on_lease

TOTAL = int(os.environ.get("STEPS", "120"))
SLEEP_S = float(os.environ.get("STEP_S", "0.25"))
MONITOR = (
    {"elastic_resize_monitor_interval_s": float(os.environ["RESIZE_MONITOR_S"])}
    if "RESIZE_MONITOR_S" in os.environ
    else {}
)


def train(config: dict[str, Any]) -> None:
    import ray.train
    import torch

    from fastgpu.train import TrainLoop

    loop = TrainLoop.from_config(config)
    model = loop.prepare_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    resumed = loop.restore(model=model, optimizer=opt)
    ctx = ray.train.get_context()
    stop_at = Path(config["log"]).with_suffix(".stop_at")

    def total() -> int:
        try:
            return int(stop_at.read_text())
        except (OSError, ValueError):
            return TOTAL

    for step in itertools.count(resumed.step + 1):
        last = step >= total()
        with loop.autocast():
            loss = model(torch.randn(8, 4)).pow(2).mean()
        loop.backward_and_step(loss, opt)
        if ctx.get_world_rank() == 0 and step == resumed.step + 1:
            with open(config["log"], "a") as f:
                line = {"world": ctx.get_world_size(), "start": resumed.step, "t": time.time()}
                f.write(json.dumps(line) + "\n")
        time.sleep(SLEEP_S)
        state = {"model": loop.unwrap(model).state_dict()}
        stop = loop.end_step(step, {"loss": float(loss)}, state=lambda s=state: s, final=last)
        if stop or last:
            return


#: TrainSpec fields of the run (bench/bench_elastic.py runs the raw baseline with the same).
SPEC = {"cpus_per_worker": 0.25, "report_every": 4, "checkpoint_every": 8}


def main() -> None:
    ray.init()
    client = fgpu.Client()
    me = client.whoami()
    log = Path(me["storage_root"]) / me["storage_key"] / "elastic.jsonl"
    low, _, high = os.environ["FASTGPU_GPUS"].partition(":")
    done = run_on_lease(
        train,
        gpus=(int(low), int(high or low)),
        gpu_type=os.environ["FASTGPU_GPU_TYPE"],
        duration=float(os.environ["FASTGPU_DURATION"]),
        run_name="elastic",
        client=client,
        request_id=os.environ["FASTGPU_LEASE_REQUEST_ID"],
        config={"log": str(log)},
        **SPEC,
        **MONITOR,
    )
    print(json.dumps({"segments": done.segments, "step": done.outcome.metrics.get("step")}))


if __name__ == "__main__":
    main()
