"""Hardening for the control API: body size, request rate and open long-polls, per caller.

Three guards, each usable alone, none with state outside this process:

``BodyLimitMiddleware``
    Pure ASGI. Counts the bytes of ``http.request`` messages as the server hands them over and
    answers 413 as soon as the count passes the limit; the message that crosses it never
    reaches the app, so the app never sees more than the limit. A declared ``Content-Length``
    over the limit, or one that is not a number, is answered before the app runs, and before
    the server sends ``100 Continue``, so a client that waits for it never uploads the body.
    Nothing is buffered here: bodies up to the limit stream through untouched.
``RateLimitMiddleware`` over ``TokenBucketLimiter``
    Pure ASGI. One token bucket per bearer token (``rate_per_s`` refill, ``burst`` capacity);
    a request finding its bucket empty gets 429 with ``Retry-After``. Requests without a token
    pass: the app answers them 401 itself.
``WaitSlots``
    ``async with slots.hold(key):`` around a long-poll; the ``max_per_key + 1``-th concurrent
    hold of one key raises :class:`~fastgpu.errors.TooManyWaits` (HTTP 429).

Vocabulary: a *key* is what a limit is counted per. For tokens it is always
:func:`token_key`, the SHA-256 hex of the token, so no map here ever holds a raw token. The
*route path* is the request path without the ASGI ``root_path``, the path routes are declared
with; per-path settings match it.

Invariants:

* Every refusal has the API's one error shape, built by :func:`error_response`:
  ``{"error": {"code": ..., "message": ...}}``.
* Memory is bounded: ``TokenBucketLimiter`` holds at most ``max_keys`` buckets and drops a
  bucket as soon as it has been idle long enough to be full again, which changes no decision;
  ``WaitSlots`` holds only keys with a wait open.
* All state is touched from the event loop without an ``await`` between read and write, so no
  lock is needed; none of it is thread-safe.

Wiring (Starlette runs the middleware added last first, so the rate limit is outermost)::

    app.add_middleware(BodyLimitMiddleware, max_bytes=64 * 1024,
                       path_limits={"/api/v1/uploads": 20 * 1024 * 1024})
    app.add_middleware(RateLimitMiddleware, rate_per_s=50.0, burst=200,
                       exempt_paths=("/api/v1/healthz",))

so a caller over its rate is refused before its body is read.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastgpu.errors import RateLimited, TooManyWaits

Clock = Callable[[], float]

TOO_LARGE = "too_large"
"""Error code of a 413 from :class:`BodyLimitMiddleware`."""

# Any Content-Length this long is over every limit; also keeps int() off huge digit strings.
_MAX_LENGTH_DIGITS = 18


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The API's one error response: ``{"error": {"code": code, "message": message}}``.

    A 401 carries ``WWW-Authenticate: Bearer`` unless ``headers`` sets it. The response is
    also an ASGI app, which is how the middlewares here send it.
    """
    merged = dict(headers) if headers else {}
    if status == 401:
        merged.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status, headers=merged or None
    )


def token_key(token: str) -> str:
    """The key a bearer token is counted under: the SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _route_path(scope: Scope) -> str:
    """The request path without ``root_path``, as Starlette matches routes."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def _bearer_token(scope: Scope) -> str | None:
    """The token of the first ``Authorization`` header when it is ``Bearer <token>``.

    Parsed as FastAPI's ``HTTPBearer`` does (scheme case-insensitive, token stripped), so the
    key counted here is the key of the token the app authenticates.
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            return token
    return None


# --- body size ---------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    """Raised into the app by the wrapped ``receive``.

    It leaves the middleware only when the app had already started its response.
    """


class BodyLimitMiddleware:
    """Answer 413 to a request whose body passes its limit, counting bytes as they arrive.

    ``max_bytes`` is the limit of every path not in ``path_limits``. A ``path_limits`` key
    applies to that route path and to everything below it (``"/api/v1/uploads"`` covers
    ``"/api/v1/uploads/abc"``, not ``"/api/v1/uploadsx"``); the longest key wins.
    Limits may be larger or smaller than ``max_bytes``.

    If the app has already started its response when the body passes the limit, no 413 can be
    sent: the app's response goes on, and the server closes the connection if it ends
    unfinished. After a 413 the server reads and discards whatever body the client still sends.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        path_limits = dict(path_limits or {})
        _check_bytes("max_bytes", max_bytes)
        for path, limit in path_limits.items():
            if not path.startswith("/") or (path.endswith("/") and path != "/"):
                raise ValueError(
                    f"got {path!r} in path_limits; expected a route path with no trailing "
                    "slash, like '/api/v1/uploads'"
                )
            _check_bytes(f"path_limits[{path!r}]", limit)
        self.app = app
        self.max_bytes = max_bytes
        # (path, path + "/", limit), longest path first so the first match is the most specific.
        self._path_limits = [
            (path, path.rstrip("/") + "/", limit)
            for path, limit in sorted(path_limits.items(), key=lambda kv: -len(kv[0]))
        ]

    def limit_for(self, path: str) -> int:
        """The body limit, in bytes, of a route path."""
        for exact, below, limit in self._path_limits:
            if path == exact or path.startswith(below):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(_route_path(scope)) if self._path_limits else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    message = (
                        f"Content-Length {value.decode('latin-1')[:40]!r} is not a number; "
                        f"send the body size in bytes (at most {limit})"
                    )
                    await error_response(413, TOO_LARGE, message)(scope, receive, send)
                    return
                if len(value) > _MAX_LENGTH_DIGITS or int(value) > limit:
                    await _too_large(limit, scope, receive, send)
                    return
        guard = _BodyGuard(receive, send, limit)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            # Whatever the app made of our _BodyTooLarge (FastAPI turns it into a 400, anyio
            # task groups wrap it) is ours to answer; any other error is the app's.
            if not guard.exceeded or guard.started:
                raise
        if guard.exceeded and not guard.started:
            await _too_large(limit, scope, receive, send)


def _check_bytes(what: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"got {n!r} for {what}; expected an integer >= 0 (bytes)")


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(413, TOO_LARGE, f"request body over {limit} bytes")
    await response(scope, receive, send)


class _BodyGuard:
    """The ``receive`` and ``send`` one request's app sees under :class:`BodyLimitMiddleware`."""

    __slots__ = ("_receive", "_send", "exceeded", "limit", "received", "started")

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self.started = False

    async def receive(self) -> Message:
        if self.exceeded:
            raise _BodyTooLarge(f"request body over {self.limit} bytes")
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise _BodyTooLarge(f"request body over {self.limit} bytes")
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded and not self.started:
            return  # the app's answer to _BodyTooLarge; the middleware sends the 413 instead
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


# --- request rate ------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    tokens: float
    """Requests the key may make now; between 0 and burst."""
    stamp: float
    """Clock reading when ``tokens`` was last brought up to date."""


class TokenBucketLimiter:
    """Token buckets per key: ``burst`` requests at once, then ``rate_per_s`` a second.

    Buckets live in least-recently-used order. A bucket idle for ``burst / rate_per_s``
    seconds is full, the same as no bucket, so it is dropped at the next call; beyond
    ``max_keys`` buckets the least recently used is dropped even if not full, which gives that
    key a fresh burst. Cost per call: one dict lookup and amortised O(1) eviction.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if not rate_per_s > 0 or math.isinf(rate_per_s):
            raise ValueError(f"got {rate_per_s!r} for rate_per_s; expected a finite number > 0")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"got {burst!r} for burst; expected an integer >= 1")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"got {max_keys!r} for max_keys; expected an integer >= 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._refill_s = burst / self.rate_per_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """Buckets held now (keys seen recently and not yet full again)."""
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a bucket now (one that is not full again yet)."""
        return key in self._buckets

    def try_acquire(self, key: str) -> float:
        """Take one request from ``key``'s bucket.

        Returns 0.0 when the request is allowed (and counted), otherwise the seconds until it
        would be; a refused request takes nothing.
        """
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(float(self.burst), now)
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket.stamp
            if elapsed > 0:  # a clock that steps back refills nothing
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
                bucket.stamp = now
        self._evict(now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.stamp < self._refill_s:
                break
            buckets.popitem(last=False)
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` for a wait: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))


class RateLimitMiddleware:
    """Answer 429 to a bearer token over its rate; see :class:`TokenBucketLimiter`.

    Requests without ``Authorization: Bearer`` and requests to ``exempt_paths`` (exact route
    paths) pass uncounted. ``limiter`` holds the buckets, for inspection.
    """

    def __init__(
        self,
        app: ASGIApp,
        rate_per_s: float,
        burst: int,
        exempt_paths: Iterable[str] = (),
        *,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self.limiter = TokenBucketLimiter(rate_per_s, burst, max_keys=max_keys, clock=clock)
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope) not in self.exempt_paths:
            token = _bearer_token(scope)
            if token is not None:
                wait_s = self.limiter.try_acquire(token_key(token))
                if wait_s > 0:
                    after = retry_after_header(wait_s)
                    message = (
                        f"over {self.limiter.rate_per_s:g} requests/s for this token "
                        f"(burst {self.limiter.burst}); retry after {after} s"
                    )
                    response = error_response(
                        429, RateLimited.code, message, {"Retry-After": after}
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# --- open long-polls ---------------------------------------------------------------------


class WaitSlots:
    """At most ``max_per_key`` waits open at once per key, for one event loop.

    ``async with slots.hold(key):`` takes a slot or raises
    :class:`~fastgpu.errors.TooManyWaits` at once (it never queues); the slot is given back
    when the block exits, by return, error or cancellation. Keys with no wait open take no
    memory. For a bearer token, hold ``token_key(token)``.
    """

    def __init__(self, max_per_key: int) -> None:
        if isinstance(max_per_key, bool) or not isinstance(max_per_key, int) or max_per_key < 1:
            raise ValueError(f"got {max_per_key!r} for max_per_key; expected an integer >= 1")
        self.max_per_key = max_per_key
        self._open: dict[str, int] = {}

    def open_count(self, key: str) -> int:
        """Waits of ``key`` open now."""
        return self._open.get(key, 0)

    def hold(self, key: str) -> _Slot:
        """An async context manager holding one of ``key``'s slots while its block runs."""
        return _Slot(self, key)

    def _take(self, key: str) -> None:
        n = self._open.get(key, 0)
        if n >= self.max_per_key:
            raise TooManyWaits(
                f"already {n} waits open for this caller, the most allowed; let one finish, "
                "or ask again without waiting (wait=0) and poll"
            )
        self._open[key] = n + 1

    def _give_back(self, key: str) -> None:
        n = self._open[key] - 1
        if n:
            self._open[key] = n
        else:
            del self._open[key]


class _Slot:
    __slots__ = ("_key", "_slots")

    def __init__(self, slots: WaitSlots, key: str) -> None:
        self._slots = slots
        self._key = key

    async def __aenter__(self) -> None:
        self._slots._take(self._key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._slots._give_back(self._key)
