"""Mixed precision on CPU: autocast dtypes, GradScaler only for fp16, bf16 vs fp32 numerics."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch

from fastgpu.errors import InvalidRequest
from fastgpu.train.precision import Precision, mixed_precision, parse_precision

# Measured on the digits example (5 epochs, 115 steps, seed 0, torch 2.13 CPU): per-step loss
# gap to fp32 max 0.0031 / mean 0.00074 (bf16), max 0.0024 / mean 0.00044 (fp16); test accuracy
# identical (0.958). The bounds leave >10x headroom for other CPUs' and GPUs' kernels.
MAX_STEP_LOSS_GAP = 0.05
MEAN_LOSS_GAP = 0.01
ACCURACY_GAP = 0.02


@pytest.mark.parametrize(
    ("name", "dtype", "scaler"),
    [
        ("fp32", torch.float32, False),
        ("bf16", torch.bfloat16, False),
        ("fp16", torch.float16, True),
    ],
)
def test_autocast_dtype_and_scaler(name: str, dtype: torch.dtype, scaler: bool) -> None:
    policy = mixed_precision(name, "cpu")
    layer = torch.nn.Linear(8, 4)
    with policy.autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype
    made = policy.grad_scaler()
    assert (made is not None) == scaler
    if made is not None:
        assert made.is_enabled()


def test_parse_precision_names_the_choices() -> None:
    assert parse_precision(" BF16 ") is Precision.BF16
    with pytest.raises(InvalidRequest, match="fp32, bf16, fp16"):
        parse_precision("fp8")


def test_unknown_device_refused() -> None:
    with pytest.raises(InvalidRequest, match="cuda or cpu"):
        mixed_precision("bf16", "meta")


def test_fp16_step_with_scaler_updates_weights() -> None:
    """The scaler may skip the first steps (a scaled fp16 gradient overflowed: that is its job,
    and it then lowers the scale); within a few steps it must update the weights."""
    torch.manual_seed(0)
    policy = mixed_precision("fp16", "cpu")
    scaler = policy.grad_scaler()
    assert scaler is not None
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        with policy.autocast():
            loss = model(torch.randn(8, 4)).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if not torch.equal(before, model.weight):
            break
    assert not torch.equal(before, model.weight)
    assert torch.isfinite(model.weight).all()


def _curve(precision: str) -> dict:
    import fastgpu.train as ft

    with tempfile.TemporaryDirectory() as root:
        out = ft.run(
            "digits-classifier",
            workers=0,
            tenant="acme",
            run_name=f"amp-{precision}",
            storage_root=root,
            precision=precision,
            checkpoint_every=1000,
            config={"epochs": 5, "seed": 0},
        )
    return out.result.return_value


def test_bf16_and_fp16_loss_curves_agree_with_fp32() -> None:
    reference = _curve("fp32")
    ref = np.array(reference["losses"])
    assert ref[-20:].mean() < 0.3 * ref[:5].mean()  # it learns
    for precision in ("bf16", "fp16"):
        got = _curve(precision)
        gap = np.abs(np.array(got["losses"]) - ref)
        assert len(got["losses"]) == len(ref)
        assert gap.max() < MAX_STEP_LOSS_GAP, (precision, gap.max())
        assert gap.mean() < MEAN_LOSS_GAP, (precision, gap.mean())
        assert abs(got["test_accuracy"] - reference["test_accuracy"]) <= ACCURACY_GAP
