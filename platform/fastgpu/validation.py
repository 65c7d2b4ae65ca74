"""Shared input rules and error wording for every boundary (config, SDK, HTTP, CLI).

Durations are written as ``90s``, ``30m``, ``2h``, ``1d`` or combinations (``1h30m``); a bare
number means seconds. Every message names the field, the value received and what is expected.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from fastgpu.errors import InvalidRequest

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
NAME_RULE = "lower-case letters, digits and '-', starting with a letter, at most 63 characters"
GPU_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
GPU_TYPE_RULE = "letters, digits, '.', '_' and '-', at most 32 characters"

MAX_GPUS_PER_LEASE = 4096
MAX_DURATION_S = 30 * 24 * 3600
#: The shortest lease anyone may ask for (the config may raise it): a lease costs seconds of
#: set-up, so a shorter one is a mistake ("0.000001s"), not a request.
MIN_DURATION_S = 1.0
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(
    value: str | int | float, field: str = "duration", max_s: float = MAX_DURATION_S
) -> float:
    """Seconds in ``value`` (``"30m"``, ``"1h30m"``, ``"90"``, ``90``).

    Raises InvalidRequest when it is malformed, not positive or longer than ``max_s`` (30 days
    unless given).
    """
    if isinstance(value, bool):
        raise InvalidRequest(f"{field}: got {value!r}; expected a duration such as '30m' or '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
        if seconds != seconds:  # NaN
            raise InvalidRequest(f"{field}: got {value!r}; expected a number of seconds")
    else:
        text = str(value).strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise InvalidRequest(
                    f"{field}: got {value!r}; expected a duration such as '90s', '30m', '2h', "
                    "'1d' or '1h30m'"
                )
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not seconds > 0:
        raise InvalidRequest(f"{field}: got {value!r}; expected a duration greater than 0")
    if seconds > max_s:
        raise InvalidRequest(
            f"{field}: got {value!r}; expected at most {format_duration(max_s)} ({max_s:g} s)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``; the inverse of :func:`parse_duration` for whole seconds."""
    remaining = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            out.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(out) or "0s"


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``field: got VALUE; expected ...``."""
    lines = []
    for err in exc.errors():
        where = _loc(tuple(err.get("loc", ())))
        if prefix:
            where = f"{prefix}.{where}" if where != "(root)" else prefix
        kind = err.get("type", "")
        msg = err.get("msg", "")
        if kind == "extra_forbidden":
            lines.append(f"{where}: unknown field; remove it (check the spelling)")
            continue
        if kind == "missing":
            lines.append(f"{where}: missing; this field is required")
            continue
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = msg.removeprefix("Value error, ")
        for lead in ("Input should be ", "Value should be ", "String should "):
            if msg.startswith(lead):
                msg = msg[len(lead) :]
                break
        msg = msg[:1].lower() + msg[1:] if msg else "a valid value"
        lines.append(f"{where}: got {shown}; expected {msg}")
    return "\n".join(lines)


def invalid_from(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    return InvalidRequest(describe_validation_error(exc, prefix))
