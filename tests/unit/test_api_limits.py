"""API hardening (``fastgpu.api.limits``): body limit, per-token rate limit, long-poll slots.

The middlewares run in a small FastAPI app served by a real uvicorn on 127.0.0.1 (a free port,
in a thread: uvicorn installs signal handlers only from the main thread), once per HTTP
implementation, and are called over real sockets with httpx; what needs exact control of the
ASGI messages (how far the app read, a malformed Content-Length that uvicorn itself would
refuse) is driven in-process. The rate limiter runs on an injected clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastgpu import errors
from fastgpu.api.limits import (
    BodyLimitMiddleware,
    RateLimitMiddleware,
    TokenBucketLimiter,
    WaitSlots,
    error_response,
    retry_after_header,
    token_key,
)

LIMIT = 1024
UPLOAD_LIMIT = 8 * 1024
UPLOADS = "/api/v1/uploads"
RATE_PER_S = 1.0
BURST = 3
WAITS_PER_KEY = 2


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Served:
    """The test app's view of what reached it, and the knobs of its server."""

    url: str
    clock: FakeClock
    slots: WaitSlots
    release: threading.Event
    body_seen: dict[str, int] = field(default_factory=dict)
    """Per request id: body bytes the app received (updated chunk by chunk)."""


class Item(BaseModel):
    data: str


def make_app(served: Served) -> FastAPI:
    middleware = [
        Middleware(
            RateLimitMiddleware,
            rate_per_s=RATE_PER_S,
            burst=BURST,
            exempt_paths=["/healthz"],
            clock=served.clock,
        ),
        Middleware(BodyLimitMiddleware, max_bytes=LIMIT, path_limits={UPLOADS: UPLOAD_LIMIT}),
    ]
    app = FastAPI(middleware=middleware)

    @app.exception_handler(errors.FastGPUError)
    async def on_error(_: Request, exc: errors.FastGPUError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message)

    async def count_body(request: Request) -> dict[str, int]:
        rid = request.headers.get("x-request-id", "")
        served.body_seen[rid] = 0
        async for chunk in request.stream():
            served.body_seen[rid] += len(chunk)
        return {"bytes": served.body_seen[rid]}

    app.post("/echo")(count_body)
    app.post(UPLOADS)(count_body)
    app.post(UPLOADS + "/{part}")(count_body)

    @app.post("/item")
    async def item(body: Item) -> dict[str, int]:
        return {"len": len(body.data)}

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/wait/{key}")
    async def wait(key: str) -> dict[str, bool]:
        async with served.slots.hold(key):
            while not served.release.is_set():
                await asyncio.sleep(0.01)
        return {"ok": True}

    return app


@contextmanager
def uvicorn_on_free_port(app: ASGIApp, http: str) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on 127.0.0.1; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for the port
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=http, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    # Server.capture_signals leaves signal handlers alone off the main thread.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    if request.param == "httptools":
        pytest.importorskip("httptools")
    state = Served(
        url="", clock=FakeClock(), slots=WaitSlots(WAITS_PER_KEY), release=threading.Event()
    )
    with uvicorn_on_free_port(make_app(state), request.param) as url:
        state.url = url
        yield state


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=10, trust_env=False) as c:
        yield c


def chunks(total: int, size: int, pause_s: float = 0.0) -> Iterator[bytes]:
    """A body of ``total`` bytes in ``size``-byte pieces: sent chunked, with no Content-Length."""
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b"x" * piece
        sent += piece
        if pause_s:
            time.sleep(pause_s)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


# --- body limit over HTTP --------------------------------------------------------------------


def test_chunked_body_over_limit_gets_413_and_app_never_sees_more_than_limit(
    served: Served, client: httpx.Client
) -> None:
    response = client.post(
        "/echo", content=chunks(3 * LIMIT, 256, pause_s=0.02), headers={"x-request-id": "chunked"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    message = assert_error(response, 413, "too_large")
    assert message == f"request body over {LIMIT} bytes"
    assert served.body_seen["chunked"] <= LIMIT
    print(f"\napp saw {served.body_seen['chunked']} of {3 * LIMIT} bytes before the 413")
    # The connection is still good for the next request.
    assert client.get("/ping").status_code == 200


def test_chunked_body_over_limit_into_a_pydantic_body_is_413_not_400(
    client: httpx.Client,
) -> None:
    # FastAPI turns any error while reading a body into a 400; the middleware's 413 wins.
    body = json.dumps({"data": "x" * 2 * LIMIT}).encode()
    response = client.post("/item", content=chunks(len(body), 200))
    assert_error(response, 413, "too_large")


def test_declared_content_length_over_limit_gets_413_without_the_app(
    served: Served, client: httpx.Client
) -> None:
    response = client.post("/echo", content=b"x" * (LIMIT + 1), headers={"x-request-id": "cl"})
    assert response.request.headers["content-length"] == str(LIMIT + 1)
    assert_error(response, 413, "too_large")
    assert "cl" not in served.body_seen


@pytest.mark.parametrize("expect_continue", [False, True])
def test_huge_content_length_is_answered_at_once_before_any_body(
    served: Served, expect_continue: bool
) -> None:
    # Only the headers are sent: a 413 can only come back if the server answers without the body.
    host, port = served.url.removeprefix("http://").split(":")
    head = f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {10**12}\r\n"
    if expect_continue:
        head += "Expect: 100-continue\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall((head + "\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}}"):
            data = sock.recv(4096)
            assert data, f"connection closed after {raw!r}"
            raw += data
    head_part, _, body = raw.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 413"), raw  # and no "100 Continue" before it
    assert json.loads(body) == {
        "error": {"code": "too_large", "message": f"request body over {LIMIT} bytes"}
    }


@pytest.mark.parametrize("chunked", [False, True])
def test_body_at_the_limit_passes_untouched(
    served: Served, client: httpx.Client, chunked: bool
) -> None:
    rid = f"at-limit-{chunked}"
    content = chunks(LIMIT, 100) if chunked else b"x" * LIMIT
    response = client.post("/echo", content=content, headers={"x-request-id": rid})
    assert response.status_code == 200, response.text
    assert response.json() == {"bytes": LIMIT}
    assert served.body_seen[rid] == LIMIT


@pytest.mark.parametrize("path", [UPLOADS, UPLOADS + "/part-1"])
def test_upload_path_has_its_own_larger_limit(client: httpx.Client, path: str) -> None:
    ok = client.post(path, content=chunks(UPLOAD_LIMIT, 1000))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"bytes": UPLOAD_LIMIT}
    over = client.post(path, content=chunks(UPLOAD_LIMIT + 1, 1000))
    assert assert_error(over, 413, "too_large") == f"request body over {UPLOAD_LIMIT} bytes"
    # A path that merely starts with the same letters keeps the default limit.
    other = client.post(UPLOADS + "x", content=b"x" * (LIMIT + 1))
    assert assert_error(other, 413, "too_large") == f"request body over {LIMIT} bytes"


# --- rate limit over HTTP --------------------------------------------------------------------


def test_token_over_its_burst_gets_429_then_recovers_and_others_are_unaffected(
    served: Served, client: httpx.Client
) -> None:
    alice = {"Authorization": "Bearer alice-token-rate"}
    bob = {"Authorization": "Bearer bob-token-rate"}
    for _ in range(BURST):
        assert client.get("/ping", headers=alice).status_code == 200
    refused = client.get("/ping", headers=alice)
    message = assert_error(refused, 429, "rate_limited")
    assert refused.headers["retry-after"] == "1"
    assert "retry after 1 s" in message
    # The scheme is case-insensitive and surrounding spaces are not a new token.
    assert (
        client.get("/ping", headers={"Authorization": "bearer  alice-token-rate"}).status_code
        == 429
    )

    assert client.get("/ping", headers=bob).status_code == 200

    served.clock.advance(1.0 / RATE_PER_S)
    assert client.get("/ping", headers=alice).status_code == 200
    assert client.get("/ping", headers=alice).status_code == 429


def test_requests_without_a_token_and_exempt_paths_are_not_counted(
    served: Served, client: httpx.Client
) -> None:
    for _ in range(3 * BURST):
        assert client.get("/ping").status_code == 200
        assert client.get("/ping", headers={"Authorization": "Basic abc"}).status_code == 200
    carol = {"Authorization": "Bearer carol-token-exempt"}
    for _ in range(3 * BURST):
        assert client.get("/healthz", headers=carol).status_code == 200
    for _ in range(BURST):
        assert client.get("/ping", headers=carol).status_code == 200
    assert client.get("/ping", headers=carol).status_code == 429


# --- long-poll slots over HTTP ---------------------------------------------------------------


def test_wait_slots_refuse_the_extra_wait_of_one_key_and_allow_another(
    served: Served,
) -> None:
    served.release.clear()

    def get(path: str) -> httpx.Response:
        with httpx.Client(base_url=served.url, timeout=10, trust_env=False) as c:
            return c.get(path)

    with ThreadPoolExecutor(max_workers=WAITS_PER_KEY + 1) as pool:
        try:
            held = [pool.submit(get, "/wait/acme") for _ in range(WAITS_PER_KEY)]
            _until(lambda: served.slots.open_count("acme") == WAITS_PER_KEY)

            extra = get("/wait/acme")
            message = assert_error(extra, 429, "too_many_waits")
            assert f"already {WAITS_PER_KEY} waits open" in message

            other = pool.submit(get, "/wait/globex")
            _until(lambda: served.slots.open_count("globex") == 1)
        finally:
            served.release.set()  # even on failure, so the server can stop
        assert [f.result().status_code for f in [*held, other]] == [200] * (WAITS_PER_KEY + 1)
    assert served.slots.open_count("acme") == 0
    assert served.slots.open_count("globex") == 0


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- in-process: the ASGI messages themselves ------------------------------------------------


@dataclass
class Exchange:
    """One request driven straight into an ASGI app: scripted body pieces, recorded replies."""

    pieces: list[bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    path: str = "/echo"
    root_path: str = ""
    received: int = 0
    """``receive()`` calls that reached the server side."""
    sent: list[Message] = field(default_factory=list)

    def scope(self) -> Scope:
        return {
            "type": "http",
            "method": "POST",
            "path": self.root_path + self.path,
            "root_path": self.root_path,
            "headers": self.headers,
        }

    async def receive(self) -> Message:
        self.received += 1
        if self.received > len(self.pieces):
            return {"type": "http.disconnect"}
        more = self.received < len(self.pieces)
        return {"type": "http.request", "body": self.pieces[self.received - 1], "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def run(self, app: ASGIApp) -> None:
        async def call() -> None:
            await app(self.scope(), self.receive, self.send)

        asyncio.run(call())

    @property
    def status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


class BodyReader:
    """A bare ASGI app that reads the whole body, then answers 200 with its size."""

    def __init__(self, catch: bool = False, respond_first: bool = False) -> None:
        self.catch = catch
        self.respond_first = respond_first
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                message = await receive()
                self.seen += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except Exception:
            if not self.catch:
                raise
            # Like FastAPI: any error while reading the body becomes a 400.
            await error_response(400, "bad_body", "There was an error parsing the body")(
                scope, receive, send
            )
            return
        if not self.respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % self.seen})


@pytest.mark.parametrize("catch", [False, True])
def test_overflow_is_caught_on_the_piece_that_crosses_the_limit(catch: bool) -> None:
    app = BodyReader(catch=catch)
    exchange = Exchange(pieces=[b"x" * 400] * 5)
    exchange.run(BodyLimitMiddleware(app, max_bytes=1000))
    assert app.seen == 800  # the third piece (to 1200 bytes) never reached the app
    assert exchange.received == 3  # and nothing was read after it
    assert exchange.status == 413
    assert exchange.json() == {
        "error": {"code": "too_large", "message": "request body over 1000 bytes"}
    }
    assert len(exchange.sent) == 2  # the app's own answer was dropped


def test_a_body_exactly_at_the_limit_streams_through_in_its_pieces() -> None:
    app = BodyReader()
    exchange = Exchange(pieces=[b"x" * 250] * 4, headers=[(b"content-length", b"1000")])
    exchange.run(BodyLimitMiddleware(app, max_bytes=1000))
    assert (exchange.status, app.seen, exchange.received) == (200, 1000, 4)


def test_overflow_after_the_app_started_answering_cannot_be_a_413() -> None:
    app = BodyReader(respond_first=True)
    exchange = Exchange(pieces=[b"x" * 600] * 2)
    with pytest.raises(Exception, match="request body over 1000 bytes"):
        exchange.run(BodyLimitMiddleware(app, max_bytes=1000))
    assert [m["type"] for m in exchange.sent] == ["http.response.start"]
    assert exchange.status == 200


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (b"1001", "request body over 1000 bytes"),
        (b"9" * 40, "request body over 1000 bytes"),
        (
            b"12abc",
            "Content-Length '12abc' is not a number; send the body size in bytes (at most 1000)",
        ),
        (b"-5", "Content-Length '-5' is not a number; send the body size in bytes (at most 1000)"),
    ],
)
def test_bad_or_large_content_length_is_refused_before_the_app_runs(
    length: bytes, message: str
) -> None:
    app = BodyReader()
    exchange = Exchange(pieces=[b"x"], headers=[(b"content-length", length)])
    exchange.run(BodyLimitMiddleware(app, max_bytes=1000))
    assert exchange.received == 0  # not even once: no "100 Continue", no body read
    assert exchange.status == 413
    assert exchange.json() == {"error": {"code": "too_large", "message": message}}


def test_path_limits_match_route_paths_under_root_path() -> None:
    app = BodyReader()
    exchange = Exchange(pieces=[b"x" * 3000], path=UPLOADS + "/a", root_path="/fastgpu")
    exchange.run(BodyLimitMiddleware(app, max_bytes=1000, path_limits={UPLOADS: 5000}))
    assert (exchange.status, app.seen) == (200, 3000)


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/api/v1/leases", 10),
        ("/api/v1/jobs", 10),
        ("/api/v1/uploads", 50),
        ("/api/v1/uploads/abc", 50),
        ("/api/v1/uploadsx", 10),
        ("/api/v1/uploads/big", 99),
        ("/api/v1/uploads/big/1", 99),
    ],
)
def test_limit_for_takes_the_longest_matching_path(path: str, limit: int) -> None:
    mw = BodyLimitMiddleware(
        BodyReader(),
        max_bytes=10,
        path_limits={"/api/v1/uploads": 50, "/api/v1/uploads/big": 99},
    )
    assert mw.limit_for(path) == limit


def test_a_root_path_limit_covers_every_path() -> None:
    mw = BodyLimitMiddleware(BodyReader(), max_bytes=10, path_limits={"/": 7, "/api/x": 99})
    assert [mw.limit_for(p) for p in ("/", "/api", "/api/x/1", "/api/xy")] == [7, 7, 99, 7]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bytes": -1}, "got -1 for max_bytes; expected an integer >= 0"),
        ({"max_bytes": 1.5}, "got 1.5 for max_bytes"),
        ({"max_bytes": 1, "path_limits": {"/up": True}}, r"got True for path_limits\['/up'\]"),
        ({"max_bytes": 1, "path_limits": {"up": 5}}, "got 'up' in path_limits"),
        ({"max_bytes": 1, "path_limits": {"/up/": 5}}, "no trailing slash"),
    ],
)
def test_body_limit_settings_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BodyLimitMiddleware(BodyReader(), **kwargs)


def test_non_http_scopes_pass_through() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def drop(_: Message) -> None:
        pass

    scope: Scope = {"type": "lifespan"}
    asyncio.run(BodyLimitMiddleware(app, max_bytes=0)(scope, nothing, drop))
    asyncio.run(RateLimitMiddleware(app, rate_per_s=1, burst=1)(scope, nothing, drop))
    assert calls == ["lifespan", "lifespan"]


# --- token buckets ---------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=2, clock=clock)
    assert [limiter.try_acquire("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.try_acquire("k") == pytest.approx(0.5)
    assert limiter.try_acquire("k") == pytest.approx(0.5)  # a refusal takes nothing
    clock.advance(0.25)
    assert limiter.try_acquire("k") == pytest.approx(0.25)
    clock.advance(0.25)
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") > 0
    clock.advance(100)
    assert [limiter.try_acquire("k") for _ in range(3)][:2] == [0.0, 0.0]  # refills to burst only


def test_a_clock_stepping_back_refills_nothing() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, clock=clock)
    assert limiter.try_acquire("k") == 0.0
    clock.advance(-10)
    assert limiter.try_acquire("k") == pytest.approx(1.0)
    clock.advance(10 + 1)
    assert limiter.try_acquire("k") == 0.0


def test_idle_buckets_are_dropped_once_full_again() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=4, clock=clock)
    for key in ("a", "b", "c"):
        limiter.try_acquire(key)
    assert len(limiter) == 3
    clock.advance(3.5)  # less than burst / rate = 4 s idle: kept
    limiter.try_acquire("d")
    assert len(limiter) == 4
    clock.advance(0.5)  # a, b and c now idle 4 s: full again, so dropped
    limiter.try_acquire("d")
    assert len(limiter) == 1
    assert "d" in limiter
    assert "a" not in limiter


def test_buckets_are_capped_at_max_keys_least_recently_used_first() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        limiter.try_acquire(key)
    limiter.try_acquire("a")  # refused, but now the most recently used
    limiter.try_acquire("d")
    assert len(limiter) == 3
    assert "b" not in limiter
    assert all(k in limiter for k in ("a", "c", "d"))
    # The price of the cap: an evicted key starts again with a full bucket.
    assert limiter.try_acquire("b") == 0.0
    for i in range(10_000):
        limiter.try_acquire(f"flood-{i}")
    assert len(limiter) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate_per_s": 0, "burst": 1}, "got 0 for rate_per_s; expected a finite number > 0"),
        ({"rate_per_s": float("nan"), "burst": 1}, "for rate_per_s"),
        ({"rate_per_s": float("inf"), "burst": 1}, "for rate_per_s"),
        ({"rate_per_s": 1, "burst": 0}, "got 0 for burst; expected an integer >= 1"),
        ({"rate_per_s": 1, "burst": 1, "max_keys": 0}, "got 0 for max_keys"),
    ],
)
def test_limiter_settings_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TokenBucketLimiter(**kwargs)


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.0, "1"), (0.001, "1"), (1.0, "1"), (1.01, "2"), (4.0, "4")]
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(wait_s: float, header: str) -> None:
    assert retry_after_header(wait_s) == header


def test_rate_limit_keys_are_token_hashes_never_tokens() -> None:
    mw = RateLimitMiddleware(BodyReader(), rate_per_s=0.25, burst=1, clock=FakeClock())
    first = Exchange(pieces=[b""], headers=[(b"authorization", b"Bearer s3cret-tok")])
    first.run(mw)
    second = Exchange(pieces=[b""], headers=[(b"authorization", b"Bearer s3cret-tok")])
    second.run(mw)
    assert (first.status, second.status) == (200, 429)
    assert dict(second.sent[0]["headers"])[b"retry-after"] == b"4"
    assert len(mw.limiter) == 1
    assert token_key("s3cret-tok") in mw.limiter
    assert token_key("s3cret-tok") == hashlib.sha256(b"s3cret-tok").hexdigest()


# --- long-poll slots -------------------------------------------------------------------------


def test_wait_slots_refuse_the_extra_hold_of_a_key_and_give_back_on_exit() -> None:
    slots = WaitSlots(max_per_key=2)

    async def scenario() -> None:
        async with slots.hold("acme"), slots.hold("acme"):
            assert slots.open_count("acme") == 2
            with pytest.raises(errors.TooManyWaits, match="already 2 waits open"):
                async with slots.hold("acme"):
                    pytest.fail("a third wait must not start")
            assert slots.open_count("acme") == 2
            async with slots.hold("globex"):
                assert slots.open_count("globex") == 1
        assert slots.open_count("acme") == 0

        with pytest.raises(RuntimeError):
            async with slots.hold("acme"):
                raise RuntimeError("the controller call failed")
        assert slots.open_count("acme") == 0

        started = asyncio.Event()

        async def long_poll() -> None:
            async with slots.hold("acme"):
                started.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(long_poll())
        await started.wait()
        assert slots.open_count("acme") == 1
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        assert slots.open_count("acme") == 0

    asyncio.run(scenario())


def test_wait_slots_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="got 0 for max_per_key; expected an integer >= 1"):
        WaitSlots(0)


def test_rate_limit_errors_are_in_the_hierarchy_and_travel() -> None:
    assert issubclass(errors.TooManyWaits, errors.RateLimited)
    assert issubclass(errors.RateLimited, errors.FastGPUError)
    for cls, code in [
        (errors.RateLimited, "rate_limited"),
        (errors.TooManyWaits, "too_many_waits"),
    ]:
        assert (cls.code, cls.http_status) == (code, 429)
        assert errors.ERRORS_BY_CODE[code] is cls
        exc = cls("already 2 waits open")
        assert type(pickle.loads(pickle.dumps(exc))) is cls
        assert type(errors.error_from_dict(exc.to_dict())) is cls
    for line in ("+-- RateLimited ", "|   +-- TooManyWaits "):
        assert line in (errors.__doc__ or "")


# --- one error shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "expected_headers"),
    [
        (404, None, {}),
        (401, None, {"www-authenticate": "Bearer"}),
        (
            401,
            {"WWW-Authenticate": 'Bearer realm="fastgpu"'},
            {"www-authenticate": 'Bearer realm="fastgpu"'},
        ),
        (429, {"Retry-After": "3"}, {"retry-after": "3"}),
    ],
)
def test_error_response_has_the_control_api_shape(
    status: int, headers: dict[str, str] | None, expected_headers: dict[str, str]
) -> None:
    response = error_response(status, "some_code", "what was wrong; what to send instead", headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert json.loads(bytes(response.body)) == {
        "error": {"code": "some_code", "message": "what was wrong; what to send instead"}
    }
    for name, value in expected_headers.items():
        assert response.headers[name] == value
    if status != 401:
        assert "www-authenticate" not in response.headers


# --- cost ------------------------------------------------------------------------------------


def test_middleware_cost_per_request_is_printed() -> None:
    """Time both middlewares around a bare app, in-process; printed, not asserted."""

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped = RateLimitMiddleware(
        BodyLimitMiddleware(bare, max_bytes=LIMIT, path_limits={UPLOADS: UPLOAD_LIMIT}),
        rate_per_s=1e6,
        burst=10**9,
    )
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", b"100"),
        (b"authorization", b"Bearer " + b"t" * 43),
    ]
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/leases",
        "root_path": "",
        "headers": headers,
    }
    body: Message = {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def receive() -> Message:
        return body

    async def send(_: Message) -> None:
        pass

    async def per_request_s(app: ASGIApp, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - start) / n

    async def measure() -> tuple[float, float]:
        await per_request_s(wrapped, 1000)  # warm up
        bare_s, wrapped_s = [], []
        for _ in range(3):  # interleaved, best of three: the machine is shared
            bare_s.append(await per_request_s(bare, 5000))
            wrapped_s.append(await per_request_s(wrapped, 5000))
        return min(bare_s), min(wrapped_s)

    bare_s, wrapped_s = asyncio.run(measure())
    print(
        f"\nmiddleware cost: {1e6 * (wrapped_s - bare_s):.1f} us per request "
        f"(bare app {1e6 * bare_s:.1f} us, with both middlewares {1e6 * wrapped_s:.1f} us; "
        "budget 200 us)"
    )
