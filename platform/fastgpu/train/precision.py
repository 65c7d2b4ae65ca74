"""Mixed precision for training: one ``--precision`` flag, the same code on CPU and GPU.

Vocabulary: *precision* is what the user asks for (``fp32``, ``bf16``, ``fp16``); the *policy*
(:class:`MixedPrecision`) is what it means on the device the worker got: an ``autocast`` context
for the forward pass and, only for fp16, a ``GradScaler`` for the backward pass.

Rules (the why behind each):

- fp32 runs no autocast and no scaler: the reference numerics.
- bf16 uses ``torch.autocast(device_type, dtype=torch.bfloat16)`` on both ``cuda`` and ``cpu``.
  bf16 keeps fp32's exponent range, so gradients do not underflow and no scaler is needed.
  On a GPU without bf16 support (before Ampere) it is refused with a message naming fp16.
- fp16 uses ``torch.autocast(device_type, dtype=torch.float16)`` plus
  ``torch.amp.GradScaler(device_type)``: fp16's narrow range makes small gradients flush to zero
  unless the loss is scaled. On CPU this is allowed (torch >= 2.3 has CPU fp16 autocast and a CPU
  GradScaler) so that the fp16 code path is exercised on CPU-only machines; it is slow there and
  exists for testing, not for speed.
- Logical ("fake") GPUs from ``ray.init(num_gpus=N)`` on a CPU machine have no CUDA: the device is
  ``cpu`` and every rule above applies unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from fastgpu.errors import InvalidRequest


class Precision(str, Enum):
    """Numeric precision of a training run's forward pass."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


_DTYPES: dict[Precision, torch.dtype] = {
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
}


def parse_precision(value: str | Precision) -> Precision:
    """``"bf16"`` -> :attr:`Precision.BF16`; raises InvalidRequest naming the choices."""
    if isinstance(value, Precision):
        return value
    try:
        return Precision(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in Precision)
        raise InvalidRequest(f"precision: got {value!r}; expected one of {choices}") from None


@dataclass(frozen=True)
class MixedPrecision:
    """The precision policy for one device: build with :func:`mixed_precision`."""

    precision: Precision
    device_type: str
    """``"cuda"`` or ``"cpu"``: the autocast device type, not a device index."""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for fp32."""
        return _DTYPES.get(self.precision)

    @property
    def enabled(self) -> bool:
        return self.precision is not Precision.FP32

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Wrap the forward pass and the loss; the backward pass runs outside it."""
        if not self.enabled:
            yield
            return
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            yield

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh ``GradScaler`` for fp16; ``None`` for fp32 and bf16."""
        if self.precision is not Precision.FP16:
            return None
        return torch.amp.GradScaler(self.device_type)


def mixed_precision(precision: str | Precision, device: torch.device | str) -> MixedPrecision:
    """The policy for ``precision`` on ``device`` (``cuda:0``, ``cpu``, ...)."""
    chosen = parse_precision(precision)
    device_type = torch.device(device).type
    if device_type not in ("cuda", "cpu"):
        raise InvalidRequest(f"device: got {str(device)!r}; expected a cuda or cpu device")
    if (
        chosen is Precision.BF16
        and device_type == "cuda"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        raise InvalidRequest(
            f"precision: got 'bf16' but {torch.cuda.get_device_name()} has no bf16 support; "
            "use --precision fp16 (with loss scaling) or fp32"
        )
    return MixedPrecision(precision=chosen, device_type=device_type)
