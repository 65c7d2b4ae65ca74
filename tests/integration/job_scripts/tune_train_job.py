"""A sweep whose trials are Ray Train runs (2 data-parallel workers each, bf16 or fp32), as a
tenant's job under ``fastgpu sweep submit`` with ``train_trials``: each trial calls
``fastgpu.tune.run_train_trial``. Prints ``SWEEP {json}`` with the trials, the best trial and
the Train runs' folders. Used by tests/integration/test_sweeps.py."""

import json
from typing import Any

import ray
from ray import tune

from fastgpu.tune import run_on_lease, run_train_trial

STEPS = 16


def per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch

    from fastgpu.train import TrainLoop

    loop = TrainLoop.from_config(config)
    torch.manual_seed(0)
    model = loop.prepare_model(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
    resumed = loop.restore(model=model, optimizer=opt)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    y = x.sum(dim=1, keepdim=True)
    world = ray.train.get_context().get_world_size()
    for step in range(resumed.step + 1, STEPS + 1):
        with loop.autocast():
            loss = (model(x) - y).pow(2).mean()
        loop.backward_and_step(loss, opt)
        metrics = {"loss": float(loss), "world": world}
        state = {"model": loop.unwrap(model).state_dict()}
        if loop.end_step(step, metrics, state=lambda s=state: s, final=step == STEPS):
            return


def trial(config: dict[str, Any]) -> None:
    run_train_trial(
        per_worker,
        config,
        precision=config["precision"],
        cpus_per_worker=0.25,
        report_every=2,
        checkpoint_every=4,
    )


def main() -> None:
    ray.init()
    space = {"lr": tune.loguniform(1e-3, 5e-2), "precision": tune.choice(["bf16", "fp32"])}
    done = run_on_lease(trial, space)
    out = {"state": done.state, "trials": done.trials, "best": done.best}
    print("SWEEP " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
