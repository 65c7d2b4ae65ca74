"""Exceptions raised by FastGPU, one hierarchy for every entry point.

    FastGPUError                 base; ``code`` is a stable machine-readable string
    +-- InvalidRequest           bad input: the caller must change what it sent (HTTP 422, CLI 2)
    |   +-- ConfigError          a configuration file is invalid
    +-- AuthenticationError      no token, or a token nobody holds (HTTP 401)
    +-- PermissionDenied         a valid token that may not do this (HTTP 403)
    +-- NotFound                 no such object visible to the caller (HTTP 404)
    +-- Conflict                 the object's state forbids the call (HTTP 409)
    |   +-- LeaseRejected        the lease can never be granted (infeasible); ``reason`` says why
    +-- WaitTimeout              a wait ran out before the lease held its GPUs (still pending)
    +-- RateLimited              too many requests for now; retry after a pause (HTTP 429)
    |   +-- TooManyWaits         too many long-polls open at once for one caller
    +-- Unavailable              the controller or cluster is not reachable (HTTP 503)

Every exception pickles (they cross Ray actor boundaries) and its message says what was wrong
and what is expected instead. Another tenant's object answers ``NotFound``, never
``PermissionDenied``: existence is not disclosed across tenants.
"""

from __future__ import annotations


class FastGPUError(Exception):
    """Base class of every FastGPU error."""

    code = "error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[FastGPUError], tuple[str]]:
        return (type(self), (self.message,))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidRequest(FastGPUError):
    code = "invalid_request"
    http_status = 422


class ConfigError(InvalidRequest):
    code = "invalid_config"


class AuthenticationError(FastGPUError):
    code = "unauthenticated"
    http_status = 401


class PermissionDenied(FastGPUError):
    code = "permission_denied"
    http_status = 403


class NotFound(FastGPUError):
    code = "not_found"
    http_status = 404


class Conflict(FastGPUError):
    code = "conflict"
    http_status = 409


class LeaseRejected(Conflict):
    code = "lease_rejected"


class WaitTimeout(FastGPUError):
    code = "timeout"
    http_status = 408


class RateLimited(FastGPUError):
    code = "rate_limited"
    http_status = 429


class TooManyWaits(RateLimited):
    code = "too_many_waits"


class Unavailable(FastGPUError):
    code = "unavailable"
    http_status = 503


ERRORS_BY_CODE: dict[str, type[FastGPUError]] = {
    cls.code: cls
    for cls in (
        FastGPUError,
        InvalidRequest,
        ConfigError,
        AuthenticationError,
        PermissionDenied,
        NotFound,
        Conflict,
        LeaseRejected,
        WaitTimeout,
        RateLimited,
        TooManyWaits,
        Unavailable,
    )
}


def error_from_dict(payload: dict[str, str]) -> FastGPUError:
    """Rebuild an error sent over HTTP by :meth:`FastGPUError.to_dict`."""
    cls = ERRORS_BY_CODE.get(payload.get("code", ""), FastGPUError)
    return cls(payload.get("message", "unknown error"))
