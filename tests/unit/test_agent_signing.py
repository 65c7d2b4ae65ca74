"""Signed server -> agent requests: a forged, altered, stale or replayed one is refused."""

from __future__ import annotations

import pytest

from fastgpu.pool.signing import (
    NONCE_HEADER,
    SIG_HEADER,
    TS_HEADER,
    SignatureError,
    Verifier,
    new_key,
    sign,
)

BODY = b'{"lease_id": "l1"}'
PATH = "/v1/raylets/start"


def verifier(now: float = 1000.0) -> Verifier:
    v = Verifier(window_s=30.0, clock=lambda: now)
    v.key = KEY
    return v


KEY = new_key()


def test_a_signed_request_passes_once() -> None:
    v = verifier()
    headers = sign(KEY, "POST", PATH, BODY, now=1000.0)
    v.verify("POST", PATH, BODY, headers)
    with pytest.raises(SignatureError, match="replayed"):
        v.verify("POST", PATH, BODY, headers)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda h: {**h, SIG_HEADER: "0" * 64}, "bad signature"),
        (lambda h: {k: v for k, v in h.items() if k != NONCE_HEADER}, "unsigned"),
        (lambda h: {**h, TS_HEADER: "soon"}, "not a number"),
        (lambda h: {**h, TS_HEADER: "1001.000"}, "bad signature"),  # timestamp altered
    ],
)
def test_forged_headers_are_refused(change: object, why: str) -> None:
    headers = sign(KEY, "POST", PATH, BODY, now=1000.0)
    with pytest.raises(SignatureError, match=why):
        verifier().verify("POST", PATH, BODY, change(headers))  # type: ignore[operator]


def test_an_altered_body_path_or_key_is_refused() -> None:
    headers = sign(KEY, "POST", PATH, BODY, now=1000.0)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier().verify("POST", PATH, b'{"lease_id": "l2"}', headers)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier().verify("POST", "/v1/raylets/stop", BODY, headers)
    forged = sign(new_key(), "POST", PATH, BODY, now=1000.0)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier().verify("POST", PATH, BODY, forged)


def test_a_request_outside_the_window_is_refused() -> None:
    headers = sign(KEY, "POST", PATH, BODY, now=1000.0)
    with pytest.raises(SignatureError, match="stale"):
        verifier(now=1031.0).verify("POST", PATH, BODY, headers)
    verifier(now=1029.0).verify("POST", PATH, BODY, headers)


def test_an_unregistered_agent_refuses_everything() -> None:
    v = Verifier()
    with pytest.raises(SignatureError, match="not registered"):
        v.verify("POST", PATH, BODY, sign(KEY, "POST", PATH, BODY))


def test_the_nonce_cache_forgets_nonces_past_the_window() -> None:
    v = verifier()
    for i in range(1100):
        v.nonces.add(f"n{i}", 0.0, 0.0)
    v.nonces.add("late", 1000.0, 1000.0)  # pruning: nonces older than 2 windows go
    assert len(v.nonces) < 10
