"""What a prediction request body must be, and the answer when it is not.

The generic model server takes ``{"inputs": [[x_1, ..., x_W], ...]}``: a non-empty list of at
most ``max_rows`` rows, each a list of exactly ``width`` finite numbers (the model's
``input_shape``). A body larger than ``max_bytes`` is refused with 413 before it is parsed; a
body that is not that shape gets 422 with what was expected and where it differed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastgpu.errors import FastGPUError

#: The default body limit of an endpoint (bytes): 1 MiB, about 2,000 rows of 64 numbers.
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_ROWS = 1024


class PayloadError(FastGPUError):
    """A request body the model server refuses: ``status`` is 413 or 422."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # pickles across Ray actor boundaries
        return (PayloadError, (self.status, self.message))


def expected(width: int, max_rows: int) -> str:
    return (
        f'expected JSON {{"inputs": [[{width} numbers], ...]}} with 1 to {max_rows} rows of '
        f"exactly {width} finite numbers each"
    )


def check_size(length: int | None, max_bytes: int) -> None:
    if length is not None and length > max_bytes:
        raise PayloadError(413, f"body of {length} bytes; expected at most {max_bytes} bytes")


def parse_inputs(
    body: bytes, width: int, max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES
) -> list[list[float]]:
    """The rows of a request body, or :class:`PayloadError` saying what was expected."""
    check_size(len(body), max_bytes)
    want = expected(width, max_rows)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError(422, f"body is not JSON; {want}") from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise PayloadError(422, f"no 'inputs' field; {want}")
    extra = sorted(set(data) - {"inputs"})
    if extra:
        raise PayloadError(422, f"unknown fields {extra}; {want}")
    rows = data["inputs"]
    if not isinstance(rows, list) or not rows:
        raise PayloadError(422, f"inputs: got {type(rows).__name__}; {want}")
    if len(rows) > max_rows:
        raise PayloadError(413, f"inputs: got {len(rows)} rows; expected at most {max_rows}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise PayloadError(422, f"inputs[{i}]: got {got}; {want}")
        for j, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise PayloadError(422, f"inputs[{i}][{j}]: got {x!r}; {want}")
    return rows
