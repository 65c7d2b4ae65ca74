"""Model references: ``name``, ``name:v3``, ``name:latest``, ``tenant/name:v3``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastgpu.errors import InvalidRequest
from fastgpu.validation import NAME_PATTERN, NAME_RULE

_NAME = NAME_PATTERN.strip("^$")
_REF = re.compile(rf"^(?:(?P<tenant>{_NAME})/)?(?P<name>{_NAME})(?::(?P<version>v[0-9]+|latest))?$")
REF_RULE = "[TENANT/]MODEL[:vN|:latest], e.g. 'vision/classifier:v3' (names: " + NAME_RULE + ")"


@dataclass(frozen=True)
class ModelRef:
    tenant: str | None
    name: str
    #: None: the latest live version.
    version: int | None

    def __str__(self) -> str:
        owner = f"{self.tenant}/" if self.tenant else ""
        return f"{owner}{self.name}:{'latest' if self.version is None else f'v{self.version}'}"


def parse_ref(text: str) -> ModelRef:
    """A reference, or InvalidRequest saying what is expected."""
    m = _REF.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidRequest(f"model: got {text!r}; expected {REF_RULE}")
    version = m.group("version")
    number = None if version in (None, "latest") else int(version[1:])
    if number is not None and number < 1:
        raise InvalidRequest(f"model: got {text!r}; versions start at v1")
    return ModelRef(m.group("tenant"), m.group("name"), number)
