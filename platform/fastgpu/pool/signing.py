"""Signed requests between the server and its hosts' agents: forgery and replay refused.

A request from the server to an agent carries three headers: a timestamp, a random nonce and
an HMAC-SHA256, keyed by the agent's session key, over ``method``, ``path``, the timestamp,
the nonce and the SHA-256 of the body. The agent accepts a request only when the signature
matches (constant-time), the timestamp is within :data:`WINDOW_S` of its clock and the nonce
was not seen within the window (:class:`NonceCache` keeps every nonce until its timestamp
leaves the window, so a replay inside the window is refused by the nonce, one outside it by
the timestamp). The session key is made by the server when the agent registers (with its
per-host token) and kept in memory on both sides only: it never reaches disk, a log or a
command line; a restarted server makes a new one when the agent registers again.

Pure: no I/O but the clock, which is injected.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping

from fastgpu.errors import AuthenticationError

TS_HEADER = "x-fastgpu-timestamp"
NONCE_HEADER = "x-fastgpu-nonce"
SIG_HEADER = "x-fastgpu-signature"
#: How far a request's timestamp may be from the agent's clock (seconds, either way).
WINDOW_S = 30.0


class SignatureError(AuthenticationError):
    """A request to an agent that is unsigned, forged, stale or replayed."""


def new_key() -> str:
    """A fresh session key (hex, 256 bits)."""
    return secrets.token_hex(32)


def _mac(key: str, method: str, path: str, body: bytes, ts: str, nonce: str) -> str:
    digest = hashlib.sha256(body).hexdigest()
    text = "\n".join((method.upper(), path, ts, nonce, digest)).encode()
    return hmac.new(bytes.fromhex(key), text, hashlib.sha256).hexdigest()


def sign(
    key: str,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authenticate this request."""
    ts = f"{time.time() if now is None else now:.3f}"
    nonce = nonce or secrets.token_hex(16)
    return {
        TS_HEADER: ts,
        NONCE_HEADER: nonce,
        SIG_HEADER: _mac(key, method, path, body, ts, nonce),
    }


class NonceCache:
    """Nonces seen within the window; thread-safe. Bounded by the request rate times the
    window (a request a millisecond for 60 s: 60k entries, ~6 MB)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._mu = threading.Lock()

    def add(self, nonce: str, ts: float, now: float) -> bool:
        """Record ``nonce``; False if it was seen (a replay)."""
        with self._mu:
            if len(self._seen) > 1024:
                cutoff = now - 2 * self.window_s
                self._seen = {n: t for n, t in self._seen.items() if t >= cutoff}
            if nonce in self._seen:
                return False
            self._seen[nonce] = ts
            return True

    def __len__(self) -> int:
        return len(self._seen)


class Verifier:
    """Checks the signed requests an agent receives (the key is set once it registered)."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self.key: str | None = None
        self.window_s = window_s
        self.clock = clock
        self.nonces = NonceCache(window_s)

    def verify(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Return if the request is authentic and fresh; raise :class:`SignatureError`."""
        if self.key is None:
            raise SignatureError("this agent is not registered with a server yet")
        lower = {k.lower(): v for k, v in headers.items()}
        ts, nonce, sig = (lower.get(h, "") for h in (TS_HEADER, NONCE_HEADER, SIG_HEADER))
        if not (ts and nonce and sig):
            raise SignatureError(
                f"unsigned request: {TS_HEADER}, {NONCE_HEADER} and {SIG_HEADER} are required"
            )
        try:
            when = float(ts)
        except ValueError:
            raise SignatureError(f"{TS_HEADER} {ts[:40]!r} is not a number") from None
        if len(nonce) > 64:
            raise SignatureError(f"{NONCE_HEADER} is longer than 64 characters")
        expected = _mac(self.key, method, path, body, ts, nonce)
        if not hmac.compare_digest(expected, sig):
            raise SignatureError("bad signature: the request was not signed by this agent's server")
        now = self.clock()
        if abs(now - when) > self.window_s:
            raise SignatureError(
                f"stale request: its timestamp is {now - when:+.1f} s from this agent's clock "
                f"(window {self.window_s:g} s); check both clocks (NTP)"
            )
        if not self.nonces.add(nonce, when, now):
            raise SignatureError("replayed request: this nonce was already used")
