"""Tune the example classifier (issue 4's digits MLP) over learning rate, width, weight decay
and precision, as a sweep on a lease: submit it with

    fastgpu sweep submit --name digits --gpus 2 --trials 8 --gpus-per-trial 1 \
        --metric val_loss --mode min --register-as digits --working-dir jobs \
        -- python tune_classifier.py

Each trial trains a few epochs on the shipped digits data (scikit-learn's wheel: no download)
and reports ``val_loss`` and ``val_accuracy`` with a checkpoint every epoch, in the format
``fastgpu.train.classifier.load_for_inference`` (and so a deployment) loads. ASHA stops poor
trials early; Optuna proposes the next ones. ``EPOCHS`` and ``EPOCH_SLEEP_S`` (seconds added
per epoch, for tests that need a sweep to last) come from the environment.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

EPOCHS = int(os.environ.get("EPOCHS", "8"))
EPOCH_SLEEP_S = float(os.environ.get("EPOCH_SLEEP_S", "0"))


def trainable(config: dict[str, Any]) -> None:
    import torch
    from ray import tune
    from torch import nn

    from fastgpu.train.checkpoints import load_state, read_manifest, write_checkpoint_files
    from fastgpu.train.classifier import MODEL_NAME, DigitsMLP, load_digits_split

    torch.manual_seed(0)
    data = load_digits_split(0)
    width = int(config["width"])
    arch = {"in_features": 64, "hidden": [width, max(width // 2, 8)], "num_classes": 10,
            "dropout": 0.1}  # fmt: skip
    model = DigitsMLP(**arch)
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"])
    )
    bf16 = config["precision"] == "bf16"
    start = 0
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = load_state(Path(d))
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start = int(read_manifest(Path(d))["step"])
    metadata = {
        "model": MODEL_NAME,
        "model_config": arch,
        "label_names": data.label_names,
        "normalization": {"mean": data.mean, "std": data.std},
        "input_shape": [64],
        "precision": config["precision"],
        "train_config": dict(config),
    }
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1)
    for epoch in range(start, EPOCHS):
        model.train()
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(data.x_test).float()
            val_loss = float(loss_fn(logits, data.y_test))
            val_acc = float((logits.argmax(1) == data.y_test).float().mean())
        time.sleep(EPOCH_SLEEP_S)
        metrics = {"val_loss": val_loss, "val_accuracy": val_acc, "epoch": epoch + 1}
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint_files(
                Path(d),
                step=epoch + 1,
                state={"model": model.state_dict(), "optimizer": opt.state_dict()},
                metrics=metrics,
                metadata=metadata,
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def param_space() -> dict[str, Any]:
    from ray import tune

    return {
        "lr": tune.loguniform(1e-4, 3e-2),
        "width": tune.choice([32, 64, 128]),
        "weight_decay": tune.loguniform(1e-6, 1e-2),
        "precision": tune.choice(["fp32", "bf16"]),
    }


def main(argv: list[str] | None = None) -> None:
    """Under ``fastgpu sweep submit`` the sweep comes from the job; with ``ray job submit``
    straight to your cluster, give it here (``--name digits --gpus 2 --trials 8``)."""
    import argparse

    import ray

    from fastgpu.tune import run_on_lease

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="The sweep's name (resubmit it to resume).")
    parser.add_argument("--gpus", help="N or MIN:MAX GPUs for the sweep's lease.")
    parser.add_argument("--gpu-type", default=None)
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--register-as", default=None)
    args = parser.parse_args(argv)
    gpus = None
    if args.gpus:
        low, _, high = args.gpus.partition(":")
        gpus = (int(low), int(high or low))
    ray.init()
    done = run_on_lease(
        trainable,
        param_space(),
        gpus=gpus,
        gpu_type=args.gpu_type,
        duration=args.duration,
        name=args.name,
        trials=args.trials,
        register_as=args.register_as,
    )
    summary = {"state": done.state, "segments": done.segments, "trials": done.trials,
               "best": done.best, "model": (done.model or {}).get("ref"),
               "tune_s": done.tune_s, "gpu_s": done.gpu_s}  # fmt: skip
    print("SWEEP " + json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
