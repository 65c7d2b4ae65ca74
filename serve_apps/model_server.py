"""The generic model server: one Ray Serve deployment per endpoint version.

It loads a checkpoint folder (a training run's final checkpoint, or a registered model's, whose
files' hash it verifies first), and
answers ``POST /`` with ``{"inputs": [[...], ...]}`` -> ``{"outputs": [...], "model": ...}``.
Every request is checked *inside the replica* (:mod:`fastgpu.endpoints.tokens`): Serve's HTTP
proxy has no auth hook and any process on the machine can reach its port, so the replica is
the one place a request cannot get past. Measured on Ray 2.60: a gateway deployment in front
halved throughput; this check costs a dict look-up and a ``stat``.

Requests are batched with ``@serve.batch`` (size and wait configured per endpoint); the
endpoint's ``max_ongoing_requests`` is at least the batch size so a batch can fill.

A pattern for user models: a loader maps the checkpoint manifest's ``model`` name to
``(predict(rows) -> outputs, input width)``; add yours to :data:`LOADERS`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from fastgpu.endpoints.payload import DEFAULT_MAX_BYTES, PayloadError, check_size, parse_inputs
from fastgpu.endpoints.tokens import bearer, check, parse_token_file

Predict = Callable[[list[list[float]]], list[Any]]


def _digits(checkpoint: Path) -> tuple[Predict, int]:
    import torch

    from fastgpu.train.classifier import load_for_inference, predict

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, metadata = load_for_inference(checkpoint, device=device)
    width = int(metadata["input_shape"][0])
    return (lambda rows: predict(model, metadata, rows)), width


#: Manifest ``metadata.model`` -> loader. The built-in example is the digits classifier.
LOADERS: dict[str, Callable[[Path], tuple[Predict, int]]] = {"digits-mlp": _digits}


def load(checkpoint: str, expected_hash: str | None = None) -> tuple[Predict, int, str]:
    """(predict, input width, model name) of a checkpoint folder, or a ValueError that says
    what is wrong (the platform shows it and keeps the previous version serving).

    ``expected_hash``: a registered model's SHA-256; its files are verified first, in this
    (the tenant's own) process, so files changed since registration never load."""
    from fastgpu.train.checkpoints import checkpoint_info

    path = Path(checkpoint)
    if expected_hash is not None:
        from fastgpu.registry.files import verify

        try:
            verify(path, expected_hash)
        except Exception as exc:
            raise ValueError(f"refusing to load {checkpoint!r}: {exc}") from None
    try:
        info = checkpoint_info(path)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {checkpoint!r}: {exc}") from None
    name = str(info.metadata.get("model", ""))
    loader = LOADERS.get(name)
    if loader is None:
        raise ValueError(
            f"checkpoint {checkpoint!r} holds model {name!r}; this server knows {sorted(LOADERS)}"
        )
    predict, width = loader(path)
    return predict, width, name


class TokenFile:
    """The tenant's valid endpoint-token hashes, re-read when the file changes (rotation
    without a restart)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: int | None = None
        self.valid: dict[str, str] = {}
        self.endpoints: frozenset[str] = frozenset()

    def refresh(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            self.valid, self.endpoints, self._mtime = {}, frozenset(), None
            return
        if mtime != self._mtime:
            with open(self.path, encoding="utf-8") as f:
                self.valid, self.endpoints = parse_token_file(f.read())
            self._mtime = mtime


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(name="ModelServer")
class ModelServer:
    def __init__(
        self,
        checkpoint: str,
        endpoint_id: str,
        token_file: str,
        max_batch_size: int = 8,
        batch_wait_ms: int = 5,
        max_bytes: int = DEFAULT_MAX_BYTES,
        model_label: str = "",
        expected_hash: str | None = None,
    ) -> None:
        self._predict, self._width, self._name = load(checkpoint, expected_hash)
        self._endpoint = endpoint_id
        self._tokens = TokenFile(token_file)
        self._max_bytes = max_bytes
        self._label = model_label or self._name
        self.batched.set_max_batch_size(max_batch_size)
        self.batched.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)
        self.batches = 0

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def batched(self, requests: list[list[list[float]]]) -> list[list[Any]]:
        rows = [r for req in requests for r in req]
        out = self._predict(rows)
        self.batches += 1
        split, i = [], 0
        for req in requests:
            split.append(out[i : i + len(req)])
            i += len(req)
        return split

    async def __call__(self, request: Request) -> JSONResponse:
        self._tokens.refresh()
        verdict = check(
            bearer(request.headers.get("authorization")),
            self._endpoint,
            self._tokens.valid,
            self._tokens.endpoints,
        )
        if not verdict.ok:
            return _error(verdict.status, verdict.message)
        if request.method == "GET":
            return JSONResponse({"model": self._label, "input_width": self._width})
        try:
            length = request.headers.get("content-length")
            check_size(int(length) if length and length.isdigit() else None, self._max_bytes)
            body = await request.body()
            rows = parse_inputs(body, self._width, max_bytes=self._max_bytes)
        except PayloadError as exc:
            return _error(exc.status, exc.message)
        t0 = time.perf_counter()
        outputs = await self.batched(rows)
        return JSONResponse(
            {"outputs": outputs, "model": self._label, "ms": (time.perf_counter() - t0) * 1e3}
        )


def build(args: dict[str, Any]) -> Any:
    """The application builder Serve's config API calls (``import_path``): ``args`` are
    :class:`ModelServer`'s keyword arguments."""
    return ModelServer.bind(**args)
