"""Which GPU type a lease gets when it states the speed it needs instead of a type name.

Vocabulary: ``perf`` is a per-GPU performance figure on one scale for every type
(``gpu_types.<name>.perf`` in the config, e.g. dense BF16 TFLOPS); a lease's ``perf`` is the
minimum it accepts. A type with perf 0 is unrated and never meets a minimum.

The rule (pure: no store, no Ray; the service layer calls it while parsing a lease request):

* ``gpu_type`` only: that type, if the cluster offers it.
* ``perf`` only: the cheapest type (price per GPU-hour) whose perf is at least the minimum,
  among ``allowed`` when given (the types the tenant has quota for). Equal prices go to the
  faster type, then to the name, so the choice never depends on dict order.
* both: the named type, which must meet the minimum (``allowed`` does not apply: naming a type
  is the caller's choice, judged by the quota rules like any named request).
* none meets the minimum: :class:`InvalidRequest` naming the best perf on offer and each type's
  figure, so the caller knows what to ask for instead.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from fastgpu.config import GpuTypeSpec
from fastgpu.errors import InvalidRequest


def check_perf(value: object, field: str = "perf") -> float:
    """``value`` as a minimum perf: a finite number > 0 (not a bool), else InvalidRequest."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequest(
            f"{field}: got {value!r}; expected a number > 0, the minimum per-GPU performance "
            "on the scale of the config's gpu_types.<name>.perf"
        )
    return float(value)


def choose_gpu_type(
    gpu_types: Mapping[str, GpuTypeSpec],
    *,
    gpu_type: str | None,
    perf: float | None,
    allowed: Collection[str] | None = None,
) -> str:
    """The GPU type a request for ``gpu_type`` and/or minimum ``perf`` gets (see module doc)."""
    if gpu_type is not None and gpu_type not in gpu_types:
        raise InvalidRequest(
            f"gpu_type: got {gpu_type!r}; expected one of {', '.join(sorted(gpu_types))}"
        )
    if perf is None:
        if gpu_type is None:
            raise InvalidRequest(
                f"gpu_type or perf: missing; name a GPU type ({', '.join(sorted(gpu_types))}) "
                "or give perf, the minimum per-GPU performance"
            )
        return gpu_type
    minimum = check_perf(perf)
    if gpu_type is not None:
        have = gpu_types[gpu_type].perf
        if have < minimum:
            raise InvalidRequest(
                f"perf: got {minimum:g}, but GPU type {gpu_type} has {_figure(have)}; lower perf, "
                f"or drop gpu_type to get the cheapest type that meets it ({_figures(gpu_types)})"
            )
        return gpu_type

    candidates = {
        name: spec for name, spec in gpu_types.items() if allowed is None or name in allowed
    }
    meets = [
        (spec.price_per_hour, -spec.perf, name)
        for name, spec in candidates.items()
        if spec.perf >= minimum
    ]
    if meets:
        return min(meets)[2]
    raise InvalidRequest(
        _none_meets(gpu_types, candidates, minimum, restricted=allowed is not None)
    )


def _none_meets(
    gpu_types: Mapping[str, GpuTypeSpec],
    candidates: Mapping[str, GpuTypeSpec],
    minimum: float,
    *,
    restricted: bool,
) -> str:
    if restricted and not candidates:
        head = f"perf: got {minimum:g}, but you have quota for no GPU type"
    else:
        pool = candidates if restricted else gpu_types
        whose = "you have quota for" if restricted else "in the cluster"
        best = max(s.perf for s in pool.values())
        head = f"perf: got {minimum:g}, but no GPU type {whose} meets it ({_figures(pool)}); "
        if best > 0:
            head += f"expected perf <= {best:g}"
        else:
            head += "none has a perf figure (gpu_types.<name>.perf in the config)"
    if not restricted:
        return head
    elsewhere = sorted(n for n, s in gpu_types.items() if n not in candidates and s.perf >= minimum)
    if elsewhere:
        return f"{head}; {', '.join(elsewhere)} would, with quota for it"
    return f"{head}; no GPU type in the cluster meets it either ({_figures(gpu_types)})"


def _figure(perf: float) -> str:
    return f"perf {perf:g}" if perf > 0 else "no perf figure (unrated)"


def _figures(gpu_types: Mapping[str, GpuTypeSpec]) -> str:
    """``H100 989, A100 312, T4 unrated``: fastest first."""
    ranked = sorted(gpu_types.items(), key=lambda kv: (-kv[1].perf, kv[0]))
    return ", ".join(f"{n} {s.perf:g}" if s.perf > 0 else f"{n} unrated" for n, s in ranked)


__all__ = ["check_perf", "choose_gpu_type"]
