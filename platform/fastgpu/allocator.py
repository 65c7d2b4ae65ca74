"""The seed's interface: :class:`Allocator` books GPUs, :class:`Device` says where tensors go.

    import fastgpu as fgpu

    with fgpu.Allocator() as allocator:            # token from $FASTGPU_TOKEN
        resource_request = allocator.request_resource(2, perf=10.0, time=100)
        device = fgpu.Device("cpu")                # or Device("cuda"), or Device(): GPU if any
        device.set_device(0)                       # GPU 0 of those Ray gave this process
        model.to(device)
        ...
        resource_request.release()
    # leaving the block releases whatever is still held

``request_resource`` arguments:

* ``perf``: a number is the minimum per-GPU performance, on the scale of the config's
  ``gpu_types.<name>.perf``; the server picks the cheapest type that meets it (with
  ``gpu_type`` too, it checks that type does). A string is a GPU type name: what ``perf`` meant
  before types had perf figures, kept so older scripts run unchanged.
* ``time``: a number is minutes; a string is a duration (``"30m"``, ``"2h"``, ``"1h30m"``).

:class:`Device` is a ``str`` (``"cpu"`` or ``"cuda"``), because torch takes a device string
everywhere it takes a device (``model.to``, ``tensor.to``, ``torch.zeros(device=...)``) and
``torch.device`` cannot be subclassed. ``"cuda"`` carries no index on purpose: torch reads it as
the process's current CUDA device, which :func:`set_device` (or Ray Train) picks, so
``device.set_device(1)`` changes where ``model.to(device)`` goes without changing the string.

GPU indexes count the GPUs this process may use in ``CUDA_VISIBLE_DEVICES`` order: inside a
task or actor on a lease (``lease.scheduling_strategy(i)``) Ray sets that variable to the
lease's GPUs, and CUDA numbers them 0..n-1 in the same order. Without CUDA, picking a GPU is a
no-op, so a script written for GPUs still runs on a CPU machine.
"""

from __future__ import annotations

import math
import os
from types import TracebackType

from fastgpu.domain.gpu_choice import check_perf
from fastgpu.errors import FastGPUError, InvalidRequest
from fastgpu.sdk import _ENDED, Client, Lease
from fastgpu.validation import MAX_DURATION_S

_MAX_MINUTES = MAX_DURATION_S / 60


class Allocator:
    """Books leases for one caller and releases what is still held when the block ends."""

    def __init__(
        self,
        token: str | None = None,
        address: str | None = None,
        *,
        client: Client | None = None,
    ) -> None:
        """``token``/``address`` as for :class:`Client` (``$FASTGPU_TOKEN``,
        ``$FASTGPU_ADDRESS``); ``client`` uses that one instead, and it is not closed here."""
        self._owns_client = client is None
        self.client = client if client is not None else Client(token=token, address=address)
        self._leases: list[Lease] = []

    def request_resource(
        self,
        gpu_count: int,
        perf: float | str | None = None,
        time: float | str | None = None,
        *,
        gpu_type: str | None = None,
        preemptible: bool = False,
        strategy: str = "PACK",
        timeout: float | None = None,
    ) -> Lease:
        """Reserve ``gpu_count`` GPUs of at least ``perf`` each for ``time`` minutes (see the
        module doc for the string forms), waiting until they are held (at most ``timeout``
        seconds, then :class:`~fastgpu.WaitTimeout`; the request stays queued)."""
        min_perf: float | None = None
        if isinstance(perf, str):
            if gpu_type is not None and gpu_type != perf:
                raise InvalidRequest(
                    f"perf: got the GPU type name {perf!r} and gpu_type {gpu_type!r}; name the "
                    "type once, or give perf as a number (the minimum per-GPU performance)"
                )
            gpu_type = perf
        elif perf is not None:
            min_perf = check_perf(perf)
        lease = self.client.request_lease(
            gpu_count,
            gpu_type,
            _duration(time),
            perf=min_perf,
            preemptible=preemptible,
            strategy=strategy,
            wait=True,
            timeout=timeout,
        )
        self._leases.append(lease)
        return lease

    def release_all(self) -> None:
        """Release every lease booked here that has not ended; errors on one skip it."""
        for lease in self._leases:
            try:
                if lease.refresh().state not in _ENDED:
                    lease.release()
            except FastGPUError:
                continue
        self._leases.clear()

    def close(self) -> None:
        self.release_all()
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Allocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _duration(time: float | str | None) -> float | str | None:
    """What the API's ``duration`` takes: strings pass through, minutes become seconds."""
    if time is None or isinstance(time, str):
        return time
    if (
        isinstance(time, bool)
        or not isinstance(time, int | float)
        or not math.isfinite(time)
        or not 0 < time <= _MAX_MINUTES
    ):
        raise InvalidRequest(
            f"time: got {time!r}; expected minutes as a number > 0 and at most "
            f"{_MAX_MINUTES:g} (30 days), or a duration such as '30m' or '2h'"
        )
    return float(time) * 60


class Device(str):
    """Where tensors go: ``"cpu"`` or ``"cuda"`` (the current CUDA device), usable as is in
    ``model.to(device)``, ``tensor.to(device)`` and ``device=`` arguments.

    ``Device()`` is ``"cuda"`` when CUDA is available, else ``"cpu"``; ``Device("cuda")`` without
    CUDA raises :class:`InvalidRequest`. Pick the GPU with :meth:`set_device`, not an index in
    the string, so that the one ``Device`` keeps meaning the GPU chosen last.
    """

    __slots__ = ()

    def __new__(cls, kind: str | None = None) -> Device:
        if kind is None:
            return super().__new__(cls, "cuda" if _cuda_available() else "cpu")
        if kind == "cpu":
            return super().__new__(cls, "cpu")
        if kind == "cuda":
            if not _cuda_available():
                raise InvalidRequest(
                    "Device: got 'cuda', but this process has no usable GPU "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); "
                    "use Device() to fall back to the CPU, or run inside a task on the lease"
                )
            return super().__new__(cls, "cuda")
        if isinstance(kind, str) and kind.startswith("cuda:"):
            raise InvalidRequest(
                f"Device: got {kind!r}; expected 'cuda' and then "
                f"set_device({kind.removeprefix('cuda:')}) to pick the GPU"
            )
        raise InvalidRequest(f"Device: got {kind!r}; expected 'cpu', 'cuda' or nothing (auto)")

    def __repr__(self) -> str:
        return f"Device({str(self)!r})"

    def set_device(self, index: int) -> Device:
        """Make GPU ``index`` of this process's GPUs the one ``"cuda"`` means (see
        :func:`set_device`); a no-op on a ``"cpu"`` device. Returns this device."""
        _check_index(index)
        if self == "cuda":
            set_device(index)
        return self


def set_device(index: int) -> None:
    """Make GPU ``index`` (0-based, ``CUDA_VISIBLE_DEVICES`` order: the GPUs Ray gave this
    process) the current CUDA device, like ``torch.cuda.set_device``; a no-op without CUDA."""
    _check_index(index)
    if not _cuda_available():
        return
    gpus = _visible_gpus()
    if index >= len(gpus):
        raise InvalidRequest(
            f"set_device: got {index}; this process has {len(gpus)} GPU(s) "
            f"({', '.join(gpus) or 'none'}); expected 0..{len(gpus) - 1}"
        )
    import torch

    # CUDA numbers the visible GPUs 0..n-1 in CUDA_VISIBLE_DEVICES order, so our index is
    # torch's ordinal.
    torch.cuda.set_device(index)


def _check_index(index: object) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidRequest(f"set_device: got {index!r}; expected a GPU index, an integer >= 0")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _visible_gpus() -> list[str]:
    """IDs of the GPUs this process may use, in CUDA's order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


__all__ = ["Allocator", "Device", "set_device"]
