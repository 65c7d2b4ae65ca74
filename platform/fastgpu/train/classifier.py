"""The built-in example model: an MLP that classifies scikit-learn's 8x8 handwritten digits.

The data (1,797 images, 10 classes) ships inside the scikit-learn wheel, so nothing is downloaded
at run time. The split is stratified and seeded; inputs are standardised with the training
split's per-pixel mean and standard deviation, which the checkpoint records so that a deployment
applies exactly the same transform (see :func:`load_for_inference`).

Every checkpoint's manifest carries ``metadata`` with what serving needs::

    {"model": "digits-mlp", "model_config": {...}, "label_names": ["0", ..., "9"],
     "normalization": {"mean": [64 floats], "std": [64 floats]}, "input_shape": [64]}

Data-parallel: each worker reads its shard through a ``DistributedSampler`` (rank, world size
from Ray Train); a resumed run skips the samples of the interrupted epoch it had already seen,
recomputed for the new world size so an elastic resize neither repeats nor drops data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fastgpu.train.checkpoints import checkpoint_info, load_state
from fastgpu.train.loop import TrainLoop

MODEL_NAME = "digits-mlp"

DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "hidden": [128, 64],
    "dropout": 0.1,
    "seed": 0,
    "test_fraction": 0.2,
}


@dataclass(frozen=True)
class DigitsData:
    """Standardised train/test split and the transform that produced it."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float]
    std: list[float]
    label_names: list[str]


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # always-blank border pixels
    return DigitsData(
        x_train=torch.from_numpy((x_train - mean) / std),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy((x_test - mean) / std),
        y_test=torch.from_numpy(y_test),
        mean=mean.tolist(),
        std=std.tolist(),
        label_names=[str(name) for name in digits.target_names],
    )


class DigitsMLP(nn.Module):
    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] | list[int] = (128, 64),
        num_classes: int = 10,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def model_config(config: Mapping[str, Any], data: DigitsData) -> dict[str, Any]:
    """The constructor arguments of :class:`DigitsMLP`, as stored in checkpoints."""
    return {
        "in_features": int(data.x_train.shape[1]),
        "hidden": [int(h) for h in config["hidden"]],
        "num_classes": len(data.label_names),
        "dropout": float(config["dropout"]),
    }


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loop: TrainLoop) -> float:
    model.eval()
    with loop.autocast():
        logits = model(x.to(loop.device))
    model.train()
    return float((logits.argmax(dim=1).cpu() == y).float().mean())


StepHook = Callable[[int, TrainLoop], None]


def train_fn(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train per-worker function; start it with ``fastgpu.train.run("digits-classifier")``.

    Config keys (defaults in :data:`DEFAULTS`): epochs, batch_size (per worker), lr, weight_decay,
    hidden, dropout, seed, test_fraction, and ``on_step`` (optional ``hook(step, loop)`` called
    after every optimizer step: the seam tests and benchmarks use for timing and fault injection).
    Returns the loss history (per-step losses of this worker) and the final test accuracy.
    """
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    hook: StepHook | None = config.get("on_step")
    loop = TrainLoop.from_config(config)
    torch.manual_seed(int(cfg["seed"]))
    data = load_digits_split(int(cfg["seed"]), float(cfg["test_fraction"]))
    arch = model_config(cfg, data)
    model = loop.prepare_model(DigitsMLP(**arch))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )
    metadata = {
        "model": MODEL_NAME,
        "model_config": arch,
        "label_names": data.label_names,
        "normalization": {"mean": data.mean, "std": data.std},
        "input_shape": [arch["in_features"]],
        "precision": loop.settings.precision,
        "train_config": {k: cfg[k] for k in DEFAULTS},
    }
    resumed = loop.restore(model=model, optimizer=optimizer)

    dataset = TensorDataset(data.x_train, data.y_train)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=loop.world_size, rank=loop.rank, shuffle=True, seed=int(cfg["seed"])
    )
    batch_size = int(cfg["batch_size"])
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False)
    global_batch = batch_size * loop.world_size
    steps_per_epoch = math.ceil(len(sampler) / batch_size)

    step = resumed.step
    epoch = int(resumed.extra.get("epoch", 0))
    samples_done = int(resumed.extra.get("samples_in_epoch", 0))
    accuracy = float(resumed.extra.get("test_accuracy", 0.0))
    losses: list[float] = []
    loss_fn = nn.CrossEntropyLoss()
    started = time.monotonic()
    stopped = False

    def state() -> dict[str, Any]:
        extra = {"epoch": epoch, "samples_in_epoch": samples_done, "test_accuracy": accuracy}
        return loop.state_dict(model, optimizer, extra)

    while epoch < int(cfg["epochs"]):
        sampler.set_epoch(epoch)
        skip = samples_done // global_batch  # batches of this epoch seen before a restart
        for index, (x, y) in enumerate(loader):
            if index < skip:
                continue
            with loop.autocast():
                loss = loss_fn(model(x.to(loop.device)), y.to(loop.device))
            loop.backward_and_step(loss, optimizer)
            step += 1
            samples_done = min((index + 1) * global_batch, len(dataset))
            losses.append(float(loss.detach()))
            if index + 1 == steps_per_epoch:
                epoch, samples_done = epoch + 1, 0
                accuracy = evaluate(model, data.x_test, data.y_test, loop)
            metrics = {
                "loss": losses[-1],
                "epoch": epoch,
                "test_accuracy": accuracy,
                "elapsed_s": time.monotonic() - started,
            }
            if hook is not None:
                hook(step, loop)
            if loop.end_step(step, metrics, state=state, metadata=metadata):
                stopped = True
                break
        if stopped:
            break
        if skip >= steps_per_epoch:  # resumed exactly at an epoch boundary
            epoch, samples_done = epoch + 1, 0
    if stopped:  # deadline: the "stop" checkpoint holds this step; resubmit to continue
        return {"losses": losses, "test_accuracy": accuracy, "steps": step,
                "start_step": resumed.step, "stopped": True}  # fmt: skip
    accuracy = evaluate(model, data.x_test, data.y_test, loop)
    final_metrics = {"loss": losses[-1] if losses else float("nan"), "test_accuracy": accuracy}
    final_metrics["epoch"] = epoch
    loop.end_step(step, final_metrics, state=state, metadata=metadata, final=True)
    return {
        "losses": losses,
        "test_accuracy": accuracy,
        "steps": step,
        "start_step": resumed.step,
        "stopped": False,
    }


def load_for_inference(
    checkpoint: Path | str, device: torch.device | str = "cpu"
) -> tuple[DigitsMLP, dict[str, Any]]:
    """Rebuild the model of a checkpoint (weights + config) for serving; returns it in eval mode
    with the checkpoint's metadata (label names, normalization)."""
    path = Path(checkpoint)
    info = checkpoint_info(path)
    if info.metadata.get("model") != MODEL_NAME:
        raise ValueError(f"checkpoint: {str(path)!r} does not hold a {MODEL_NAME} model")
    model = DigitsMLP(**info.metadata["model_config"])
    model.load_state_dict(load_state(path, map_location=device)["model"])
    return model.to(device).eval(), info.metadata


@torch.no_grad()
def predict(model: nn.Module, metadata: Mapping[str, Any], pixels: Any) -> list[str]:
    """Label names for raw 8x8 images (0-16 grey levels, shape ``(n, 64)``)."""
    norm = metadata["normalization"]
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32)).reshape(-1, len(norm["mean"]))
    x = (x - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])
    device = next(model.parameters()).device
    labels = metadata["label_names"]
    return [labels[i] for i in model(x.to(device)).argmax(dim=1).tolist()]
