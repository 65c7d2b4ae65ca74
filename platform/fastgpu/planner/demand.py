"""Demand for the planner: the seed's linear form, a CSV time series, or a job trace.

A :class:`Demand` is one or more series of equal length, one value per step, keyed by *class*:
a GPU type name in the gpus form, or a single series in the flops form. The key ``""`` means
"not named": :func:`bind` gives it to the only type (gpus form) or to the aggregate (flops).

From a trace: with unlimited capacity nothing waits, so the GPUs running and waiting in an hour
are the GPUs running: each job holds its GPUs from submit to submit + duration. A step's value
is the GPU-seconds inside it divided by its length (GPU-hours per hour), counted exactly at the
step edges. The horizon is the trace's submission window: past it no new job arrives, so the
tail would understate demand.

Invariants: every value is finite and >= 0; every series has the same length >= 1. Anything
else raises :class:`~fastgpu.planner.errors.DemandError` saying what to change.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fastgpu.planner.errors import DemandError
from fastgpu.planner.model import PlanSpec

#: The key of a series nobody named (bound to a class by :func:`bind`).
UNNAMED = ""
#: The one class of the flops form.
FLOPS = "flops"
#: CSV columns read as the time index (and otherwise ignored).
INDEX_COLUMNS = frozenset({"t", "step", "hour", "time", "timestamp"})
#: The longest series accepted (ten years of hourly steps).
MAX_STEPS = 87_600


@dataclass(frozen=True)
class Demand:
    """Demand per class per step (see the module docstring for the units)."""

    series: Mapping[str, np.ndarray]
    source: str

    @property
    def steps(self) -> int:
        return len(next(iter(self.series.values())))

    def total(self) -> np.ndarray:
        return np.sum(np.vstack(list(self.series.values())), axis=0)

    def scaled(self, factor: float) -> Demand:
        return Demand({k: v * factor for k, v in self.series.items()}, f"{self.source} x {factor}")


def make_demand(series: Mapping[str, Iterable[float]], source: str = "given") -> Demand:
    """Check and freeze series (lists or arrays); negative, NaN or ragged input is an error."""
    if not series:
        raise DemandError("demand has no series; give at least one")
    out: dict[str, np.ndarray] = {}
    length = None
    for key, values in series.items():
        arr = np.asarray(list(values), dtype=float)
        if arr.ndim != 1 or arr.size == 0:
            raise DemandError(f"demand of {key or 'the series'}: expected at least one step")
        if arr.size > MAX_STEPS:
            raise DemandError(
                f"demand of {key or 'the series'} has {arr.size:,} steps; at most {MAX_STEPS:,}"
                " (use longer steps)"
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise DemandError(
                f"demand of {key or 'the series'} at step {bad[0]} is {arr[bad[0]]}; "
                "expected a finite number"
            )
        neg = np.flatnonzero(arr < 0)
        if neg.size:
            raise DemandError(
                f"demand of {key or 'the series'} at step {neg[0]} is {arr[neg[0]]:g}; demand "
                "must be >= 0"
            )
        if length is not None and arr.size != length:
            raise DemandError(
                f"demand series differ in length ({length} and {arr.size} steps for "
                f"{key or 'the series'}); give every series the same steps"
            )
        length = arr.size
        arr.setflags(write=False)
        out[key] = arr
    return Demand(out, source)


def linear(a: float, b: float, horizon: int, key: str = UNNAMED) -> Demand:
    """The seed's ``D(t) = a t + b`` for t = 0..T (T + 1 steps)."""
    if not (isinstance(horizon, int) and 0 <= horizon < MAX_STEPS):
        raise DemandError(f"linear demand: got T={horizon!r}; expected a whole number >= 0")
    t = np.arange(horizon + 1, dtype=float)
    values = a * t + b
    neg = np.flatnonzero(values < 0)
    if neg.size:
        raise DemandError(
            f"linear demand {a:g}*t+{b:g} is {values[neg[0]]:g} at t={neg[0]}; demand must be "
            ">= 0 over t = 0..T: raise b, or shorten T"
        )
    return make_demand({key: values}, f"linear a={a:g}, b={b:g}, T={horizon}")


def from_csv(path: str | Path) -> Demand:
    """A CSV with a header: an optional index column (t, step, hour, time, timestamp), then one
    column per class (a GPU type name; ``demand`` or ``flops`` for an unnamed series)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise DemandError(
            f"cannot read demand CSV {p}: {exc.strerror}; pass a readable file"
        ) from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DemandError(f"demand CSV {p} is empty; expected a header and one row per step")
    header = [h.strip() for h in rows[0]]
    columns = [i for i, h in enumerate(header) if h.lower() not in INDEX_COLUMNS]
    if not columns:
        raise DemandError(f"demand CSV {p} has no demand column (only {header})")
    values: dict[int, list[float]] = {i: [] for i in columns}
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        for i in columns:
            cell = row[i].strip() if i < len(row) else ""
            try:
                values[i].append(float(cell))
            except ValueError:
                raise DemandError(
                    f"demand CSV {p} line {n}, column {header[i]!r}: got {cell!r}; expected a "
                    "number >= 0"
                ) from None
    names = {i: UNNAMED if header[i].lower() in {"demand", FLOPS} else header[i] for i in columns}
    if len(set(names.values())) != len(names):
        raise DemandError(f"demand CSV {p} names a class twice in {header}")
    return make_demand({names[i]: values[i] for i in columns}, f"csv {p.name}")


class JobLike(Protocol):
    """What :func:`from_jobs` reads of a job (``fastgpu.sim.trace.Job`` fits)."""

    @property
    def submit(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def gpus(self) -> int: ...


def from_jobs(
    jobs: Iterable[JobLike],
    horizon_s: float,
    step_hours: float = 1.0,
    key: str = UNNAMED,
    source: str = "trace",
) -> Demand:
    """GPUs running per step when every job starts at its submit time (unlimited capacity),
    over [0, horizon_s) in steps of ``step_hours``."""
    step_s = step_hours * 3600.0
    n = max(1, math.ceil(horizon_s / step_s - 1e-9))
    if n > MAX_STEPS:
        raise DemandError(f"trace horizon is {n:,} steps; at most {MAX_STEPS:,} (longer steps)")
    listed = list(jobs)
    starts = np.array([j.submit for j in listed], dtype=float)
    ends = starts + np.array([j.duration for j in listed], dtype=float)
    gpus = np.array([j.gpus for j in listed], dtype=float)
    edges = np.arange(n + 1, dtype=float) * step_s
    # Running GPU-seconds up to x: F(x) = sum_{s < x} g (x - s) - sum_{e < x} g (x - e).
    area = _ramp(starts, gpus, edges) - _ramp(ends, gpus, edges)
    per_step = np.diff(area) / step_s
    return make_demand({key: np.maximum(per_step, 0.0)}, source)


def _ramp(points: np.ndarray, weights: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``sum_i w_i * max(0, x - p_i)`` at every x."""
    order = np.argsort(points)
    p, w = points[order], weights[order]
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cwp = np.concatenate([[0.0], np.cumsum(w * p)])
    k = np.searchsorted(p, xs, side="left")
    return cw[k] * xs - cwp[k]


_LINEAR = re.compile(r"^linear:(.*)$")


def parse_linear(text: str) -> Demand:
    """``linear:a=10,b=20,T=100[,type=A100]``."""
    m = _LINEAR.match(text.strip())
    body = m.group(1) if m else ""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in {"a", "b", "T", "type"}:
            raise DemandError(
                f"--demand {text!r}: got {part!r}; expected linear:a=A,b=B,T=STEPS[,type=GPU]"
            )
        fields[name.strip()] = value.strip()
    try:
        a, b = float(fields.get("a", "0")), float(fields.get("b", "0"))
        horizon = int(fields["T"])
    except (KeyError, ValueError):
        raise DemandError(
            f"--demand {text!r}: expected numbers a and b and a whole T, e.g. "
            "linear:a=10,b=20,T=100"
        ) from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise DemandError(f"--demand {text!r}: a and b must be finite numbers")
    return linear(a, b, horizon, fields.get("type", UNNAMED))


def parse_demand(text: str, base_dir: Path | None = None) -> Demand:
    """``linear:...`` or ``csv:PATH`` (or a path ending in .csv); ``trace`` is the caller's
    (it needs the simulator's reader, which the planner does not import)."""
    text = text.strip()
    if text.startswith("linear:"):
        return parse_linear(text)
    if text.startswith("csv:") or text.lower().endswith(".csv"):
        path = Path(text.removeprefix("csv:"))
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return from_csv(path)
    raise DemandError(f"--demand {text!r}: expected linear:a=A,b=B,T=STEPS, csv:PATH or trace")


def bind(spec: PlanSpec, demand: Demand) -> Demand:
    """The demand keyed the way ``spec`` solves it: GPU type names (gpus form, each known to
    the spec) or the one :data:`FLOPS` series."""
    if spec.demand_unit == "flops":
        if len(demand.series) != 1:
            raise DemandError(
                f"the flops form takes one demand series; got {len(demand.series)} "
                f"({', '.join(k or 'unnamed' for k in demand.series)})"
            )
        (values,) = demand.series.values()
        return Demand({FLOPS: values}, demand.source)
    out: dict[str, np.ndarray] = {}
    for key, values in demand.series.items():
        name = key
        if key == UNNAMED:
            if len(spec.gpu_types) != 1:
                raise DemandError(
                    "the demand names no GPU type and the spec has "
                    f"{len(spec.gpu_types)} ({', '.join(spec.gpu_types)}); name one (a CSV "
                    "column, linear:...,type=NAME or --trace-gpu-type)"
                )
            name = next(iter(spec.gpu_types))
        if name not in spec.gpu_types:
            raise DemandError(
                f"demand for GPU type {name!r}, which the spec does not offer "
                f"({', '.join(spec.gpu_types)}); add it to gpu_types or rename the series"
            )
        out[name] = values
    return Demand(out, demand.source)


__all__ = [
    "FLOPS",
    "UNNAMED",
    "Demand",
    "JobLike",
    "bind",
    "from_csv",
    "from_jobs",
    "linear",
    "make_demand",
    "parse_demand",
    "parse_linear",
]
