"""The endpoints' hop: ``/t/<tenant>/<name>/<rest>`` forwarded to the tenant's Serve proxy.

A plain ASGI middleware, outermost in the API's stack (:func:`fastgpu.api.app.create_app` adds
it last), so an inference request never meets FastAPI's routing, dependency injection or
pydantic: per request it parses the path, looks the endpoint up in the services' route cache
(:meth:`~fastgpu.service.endpoints.EndpointService.route`, a dict read; set on deploy, on an
update's switch and on delete), reads the body under the endpoint's limit and sends it over a
kept-alive connection from :class:`UpstreamPool`, a small HTTP/1.1 client on asyncio's
transports with httptools' C parser (httpx spent more CPU per request in its own machinery
than the rest of the hop together). Everything else goes to the API unchanged.

Invariants:

* Nothing is forwarded for an endpoint the route cache and the store do not know: an
  unknown tenant or name is 404 here, before the body is read. The upstream address comes
  only from the route of ``(tenant, name)`` in the request's own path, so a request can only
  reach the Serve proxy of the tenant that path names; the replica then checks the endpoint's
  token (401/403/404), exactly as for a process connecting to Serve's port directly.
* A body over :data:`MAX_BODY_BYTES` (the model server's own limit) is 413 as it streams in,
  and a token over its rate is 429 (:mod:`fastgpu.api.limits`, the API's own guards with the
  API's settings).
* A request is resent at most once: after Serve's own 404 (the application an update just
  retired), a 5xx (a replica that died under it) or a new connection broken before a whole
  answer; an inference has no side effect to repeat, and the body (at most 1 MiB) is kept
  for it. A kept-alive connection that Serve closed while idle is not a resend: the request
  goes on a new connection. A refused connection is 503 with ``Retry-After`` (the tenant's
  Serve is starting); no answer in :data:`READ_TIMEOUT_S` is 504. An endpoint scaled to zero
  answers when its first replica does: the wait is Serve's queue.
* Answers stream back as they arrive, except Serve's 404 and 5xx, which are read whole to
  decide whether to resend.

Vocabulary: *upstream* is the tenant's Serve proxy on 127.0.0.1; a *route* is its port and the
application serving now (``<name>-v<N>``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import Callable
from typing import Any, cast

import httptools
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastgpu.api.limits import BodyLimitMiddleware, RateLimitMiddleware
from fastgpu.endpoints.payload import DEFAULT_MAX_BYTES
from fastgpu.validation import NAME_PATTERN

PREFIX = "/t/"
MAX_BODY_BYTES = DEFAULT_MAX_BYTES
"""The largest request body forwarded: the model server's own limit (1 MiB)."""
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 300.0
"""How long an answer may take, first replica of an endpoint scaled to zero included."""
MAX_IDLE_PER_PORT = 128

Route = tuple[int, str]
"""(Serve port, application) of an endpoint now."""
RouteLookup = Callable[[str, str], "Route | None"]

_HOP = frozenset(
    (
        b"host",
        b"content-length",
        b"connection",
        b"transfer-encoding",
        b"keep-alive",
        b"expect",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
    )
)
# uvicorn writes its own date and server headers.
_HOP_BACK = _HOP | {b"date", b"server"}
_NAME = re.compile(NAME_PATTERN).fullmatch
_PAUSE_AT = 1 << 20  # buffered answer bytes at which reading from Serve pauses


class UpstreamError(Exception):
    """The hop to Serve failed; the base of the errors below, each with its answer.

    ::

        UpstreamError
        ├── Unreachable   no connection to Serve's port (503: Serve is starting)
        ├── Broken        Serve closed or broke the connection before a whole answer (resent
        │                 once, then 502)
        └── NoAnswer      no answer within READ_TIMEOUT_S (504, not resent)
    """

    def __reduce__(self) -> tuple[Any, ...]:  # plain messages: they pickle as they are
        return (type(self), (str(self),))


class Unreachable(UpstreamError):
    """Serve's port refused the connection or did not accept it in CONNECT_TIMEOUT_S."""


class Broken(UpstreamError):
    """Serve closed or broke the connection before a whole answer.

    ``fresh``: the connection was new (its first request), so Serve was listening when it
    was sent; a kept-alive connection may just have been closed for idling.
    """

    def __init__(self, message: str, fresh: bool = True) -> None:
        super().__init__(message)
        self.fresh = fresh

    def __reduce__(self) -> tuple[Any, ...]:
        return (Broken, (str(self), self.fresh))


class NoAnswer(UpstreamError):
    """Serve took longer than READ_TIMEOUT_S to answer."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to Serve, one request at a time.

    The answer's head resolves :attr:`head`; body bytes queue in ``_chunks`` until read with
    :meth:`chunk`; reading pauses while more than ``_PAUSE_AT`` bytes wait.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            self._loop.create_future()
        )
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- the request -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write one whole request; the answer comes to :attr:`head` and :meth:`chunk`."""
        assert self.transport is not None
        self.uses += 1
        self._timer = self._loop.call_later(READ_TIMEOUT_S, self._timed_out)
        self.transport.write(data)

    async def chunk(self) -> bytes | None:
        """The next piece of the answer's body; None at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < _PAUSE_AT and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def body(self) -> bytes:
        parts = []
        while (data := await self.chunk()) is not None:
            parts.append(data)
        return b"".join(parts)

    def reusable(self) -> bool:
        """Whether the answer is complete and Serve keeps the connection open."""
        return self._complete and self._keep_alive and not self.closed

    def reset(self) -> None:
        """Ready for the next request on this connection (after :meth:`reusable`)."""
        self._parser = httptools.HttpResponseParser(self)
        self.head = self._loop.create_future()
        self._headers = []
        self._complete = self._keep_alive = False

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"Serve's answer did not parse: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self._complete:
            why = f": {exc}" if exc else ""
            self._fail(Broken(f"Serve closed the connection{why}", fresh=self.uses == 1))

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if not self.head.done():
            self.head.set_result((self._parser.get_status_code(), self._headers))

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()  # valid only in this callback
        self._complete = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    # -- internals -----------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved here: a caller that stopped waiting logs nothing
        self._wake()

    def _timed_out(self) -> None:
        self._fail(NoAnswer(f"Serve did not answer within {READ_TIMEOUT_S:g} s"))
        self.close()


class UpstreamPool:
    """Kept-alive connections to Serve proxies on 127.0.0.1, per port; no limit on how many
    are open, at most :data:`MAX_IDLE_PER_PORT` kept idle per port."""

    def __init__(self) -> None:
        self._idle: dict[int, list[_Connection]] = {}

    async def acquire(self, port: int) -> _Connection:
        """An idle connection to ``port``, or a new one (:class:`Unreachable` when Serve does
        not accept it)."""
        idle = self._idle.get(port)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, "127.0.0.1", port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"127.0.0.1:{port}: {type(exc).__name__}: {exc}") from exc
        return conn

    def discard(self, port: int) -> None:
        """Close the idle connections to ``port`` (its Serve closed one: likely all)."""
        for conn in self._idle.pop(port, []):
            conn.close()

    def release(self, port: int, conn: _Connection) -> None:
        """Back to the pool when its answer was read whole and Serve keeps it open; closed
        otherwise."""
        if conn.reusable():
            idle = self._idle.setdefault(port, [])
            if len(idle) < MAX_IDLE_PER_PORT:
                conn.reset()
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _split(raw_path: bytes) -> tuple[str, str, bytes] | None:
    """(tenant, name, rest) of ``/t/<tenant>/<name>[/<rest>]``, None unless tenant and name
    are names (:data:`~fastgpu.validation.NAME_PATTERN`: nothing to decode, and junk costs no
    look-up); rest stays as the client encoded it."""
    parts = raw_path.split(b"/", 4)  # b"", b"t", tenant, name, rest
    if len(parts) < 4:
        return None
    tenant, name = parts[2].decode("latin-1"), parts[3].decode("latin-1")
    if not (_NAME(tenant) and _NAME(name)):
        return None
    return tenant, name, parts[4] if len(parts) == 5 else b""


def _request_bytes(
    method: str, port: int, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: 127.0.0.1:"]
    lines.append(str(port).encode("ascii"))
    lines.append(b"\r\n")
    for name, value in headers:
        if name.lower() not in _HOP:
            lines += (name, b": ", value, b"\r\n")
    lines += (b"content-length: ", str(len(body)).encode("ascii"), b"\r\n\r\n", body)
    return b"".join(lines)


class EndpointProxy:
    """ASGI middleware: ``/t/...`` forwarded to the endpoint's Serve, the rest to ``app``.

    ``routes(tenant, name)`` is the endpoint's route, None when it does not exist. ``rate_per_s``
    and ``burst`` limit each bearer token as the API does.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: RouteLookup,
        rate_per_s: float,
        burst: int,
        pool: UpstreamPool | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.pool = pool or UpstreamPool()
        guarded: ASGIApp = BodyLimitMiddleware(self._forward, max_bytes=MAX_BODY_BYTES)
        self._guarded = RateLimitMiddleware(guarded, rate_per_s=rate_per_s, burst=burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self._guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "POST"):
            await _answer(
                send, 405, "method not allowed; use POST (or GET)", {"Allow": "GET, POST"}
            )
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        parsed = _split(raw.partition(b"?")[0])
        route = self.routes(parsed[0], parsed[1]) if parsed is not None else None
        if parsed is None or route is None:
            await _answer(send, 404, "no such endpoint")
            return
        tenant, name, rest = parsed
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        query = scope.get("query_string", b"")
        headers = scope["headers"]
        for attempt in range(2):
            port, app = route
            target = b"/" + app.encode("ascii") + b"/" + rest + (b"?" + query if query else b"")
            try:
                conn, status, head = await self._exchange(
                    port, _request_bytes(method, port, target, headers, body)
                )
                if status != 404 and status < 500:
                    # from here on the client has the answer's head: never resent
                    await self._relay(port, conn, status, head, send)
                    return
                content = await self._whole(port, conn)
            except Unreachable:
                await _answer(send, 503, _STARTING, {"Retry-After": "2"})
                return
            except NoAnswer as exc:
                await _answer(send, 504, str(exc))
                return
            except Broken as exc:
                if attempt == 0:
                    continue  # once more, on a new connection
                await _answer(send, 502, f"the endpoint's server did not answer ({exc})")
                return
            unrouted = status == 404 and b"/-/routes" in content
            if status == 404 and not unrouted:
                await _send_whole(send, status, head, content)
                return
            # Serve's own 404 (the application is not routed) or a 5xx (an application being
            # removed, a replica that died under the request: a raylet restarted by a resize):
            # sent once more, to the serving version.
            now = self.routes(tenant, name)
            if (now is None or now == route) and unrouted:
                await _answer(send, 503, "the endpoint is starting; retry in a few seconds",
                              {"Retry-After": "2"})  # fmt: skip
                return
            if now is not None:
                route = now
            if attempt == 0:
                continue
            await _send_whole(send, status, head, content)
            return

    async def _exchange(
        self, port: int, request: bytes
    ) -> tuple[_Connection, int, list[tuple[bytes, bytes]]]:
        """Send ``request`` and wait for the answer's head. A kept-alive connection that Serve
        closed before answering is replaced by a new one, which is not a resend."""
        while True:
            conn = await self.pool.acquire(port)
            conn.send(request)
            try:
                status, head = await conn.head
            except Broken as exc:
                if exc.fresh:
                    raise
                self.pool.discard(port)  # the others idled as long: a new connection
                continue
            except BaseException:
                conn.close()
                raise
            return conn, status, head

    async def _whole(self, port: int, conn: _Connection) -> bytes:
        try:
            content = await conn.body()
        except BaseException:
            conn.close()
            raise
        self.pool.release(port, conn)
        return content

    async def _relay(
        self,
        port: int,
        conn: _Connection,
        status: int,
        head: list[tuple[bytes, bytes]],
        send: Send,
    ) -> None:
        """Stream the answer to the client as it arrives."""
        out = [(k, v) for k, v in head if k not in _HOP_BACK]
        length = next((v for k, v in head if k == b"content-length"), None)
        if length is not None and not any(k == b"transfer-encoding" for k, _ in head):
            out.append((b"content-length", length))
        await send({"type": "http.response.start", "status": status, "headers": out})
        try:
            while (data := await conn.chunk()) is not None:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except UpstreamError:
            # Too late to resend: the client has part of the answer; returning without its
            # end makes uvicorn close the client's connection, so the client sees it cut.
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        await send({"type": "http.response.body", "body": b""})
        self.pool.release(port, conn)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (kept: a resend needs it); None when the client went away."""
    parts = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _send_whole(
    send: Send, status: int, head: list[tuple[bytes, bytes]], content: bytes
) -> None:
    out = [(k, v) for k, v in head if k not in _HOP_BACK]
    out.append((b"content-length", str(len(content)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": content})


async def _answer(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """``{"error": message}``, the shape of the model server's own refusals."""
    body = json.dumps({"error": message}).encode("utf-8")
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


_STARTING = "the endpoint's server is starting; retry in a few seconds"
