"""Endpoint tokens: their format, their hash, and the check every replica makes.

A token is ``fge_<endpoint id>_<secret>``: the endpoint id (16 hex digits, unique across the
platform) says which endpoint it claims to open, the secret (32 url-safe bytes) proves it.
Only ``sha256(token)`` is stored (the store and, for the replicas, a tenant-level 0600 file of
valid hashes in the tenant's storage: :func:`token_file_body`).

The check (:func:`check`) answers, in this order:

* 401: no bearer token, a malformed one, or a token of this tenant that is not valid (wrong,
  revoked);
* 404: a well-formed token of an endpoint that is not this tenant's: to another tenant this
  endpoint does not exist;
* 403: a valid token of another endpoint of the same tenant;
* 200: a valid token of this endpoint.

Rotation needs no restart: replicas re-read the file when its modification time changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "fge_"
_TOKEN = re.compile(r"^fge_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")


def new_endpoint_id() -> str:
    return secrets.token_hex(8)


def new_token(endpoint_id: str) -> str:
    """A fresh token for ``endpoint_id`` (shown once; store :func:`token_hash`)."""
    return f"{PREFIX}{endpoint_id}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def claimed_endpoint(token: str) -> str | None:
    """The endpoint id a well-formed token names, else None."""
    m = _TOKEN.match(token)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Verdict:
    status: int  # 200, 401, 403 or 404
    message: str

    @property
    def ok(self) -> bool:
        return self.status == 200


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def check(
    token: str | None,
    endpoint_id: str,
    valid: Mapping[str, str],
    tenant_endpoints: frozenset[str] | set[str],
) -> Verdict:
    """The verdict on ``token`` for endpoint ``endpoint_id``.

    ``valid``: token hash -> endpoint id, for every valid token of this tenant's endpoints;
    ``tenant_endpoints``: the ids of this tenant's endpoints (so a token of another tenant's
    endpoint gets 404, never a hint that this endpoint exists).
    """
    if token is None:
        return Verdict(401, "no token; send 'Authorization: Bearer <endpoint token>'")
    claimed = claimed_endpoint(token)
    if claimed is None:
        return Verdict(401, "malformed token; expected 'fge_<endpoint id>_<secret>'")
    if claimed not in tenant_endpoints and claimed != endpoint_id:
        return Verdict(404, "no such endpoint")
    owner = valid.get(token_hash(token))
    if owner is None:
        return Verdict(401, "invalid or revoked token")
    if not hmac.compare_digest(owner, endpoint_id):
        return Verdict(403, "this token opens another endpoint, not this one")
    return Verdict(200, "ok")


def token_file_body(valid: Mapping[str, str], endpoints: set[str] | frozenset[str]) -> str:
    """The JSON replicas read: ``{"tokens": {hash: endpoint id}, "endpoints": [ids]}``."""
    return json.dumps({"tokens": dict(valid), "endpoints": sorted(endpoints)}, sort_keys=True)


def parse_token_file(text: str) -> tuple[dict[str, str], frozenset[str]]:
    """(hash -> endpoint id, endpoint ids) from :func:`token_file_body`'s output."""
    data = json.loads(text)
    tokens = data.get("tokens")
    ids = data.get("endpoints")
    if not isinstance(tokens, dict) or not isinstance(ids, list):
        raise ValueError("token file: expected {'tokens': {...}, 'endpoints': [...]}")
    return {str(k): str(v) for k, v in tokens.items()}, frozenset(str(i) for i in ids)
