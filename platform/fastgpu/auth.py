"""Tokens and principals.

A token is 32 random bytes (``fgpu_`` + URL-safe base64). Only its SHA-256 is stored: with
256 bits of entropy a slow password hash buys nothing, and lookups stay O(1). The admin token is
made by ``fastgpu up`` and kept 0600 in the state dir; a tenant's token is shown once at creation
(or rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

TOKEN_PREFIX = "fgpu_"
ADMIN = "admin"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator (admin) or one tenant, and with which token."""

    name: str
    is_admin: bool
    tenant_id: str | None = None
    token_id: str | None = None
    token_expires_at: float | None = None

    @property
    def tenant(self) -> str | None:
        return None if self.is_admin else self.name


def write_secret(path: Path, value: str) -> None:
    """Write a secret file readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
