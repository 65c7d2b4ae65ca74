"""The endpoints' hop (fastgpu.api.endpoint_proxy) against a scripted Serve on 127.0.0.1:
what is forwarded and where, what is never forwarded, the resend-once rules, the limits, and
kept-alive connections (reused; one Serve closed while idle is replaced without a resend)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvloop

from fastgpu.api.endpoint_proxy import MAX_BODY_BYTES, EndpointProxy, Route

Answer = tuple[int, dict[str, str], bytes]
CLOSE: Answer = (0, {}, b"")
"""A scripted answer: the connection is closed without one."""


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class FakeServe:
    """A Serve proxy on a free port: each request is recorded and answered by ``script`` (or
    200 with a JSON echo of its target and body)."""

    script: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _conns: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> FakeServe:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()

    def drop_idle(self) -> None:
        """Close every open connection, as Serve's keep-alive timeout does."""
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        conn = self._conns
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(Seen(method, target, headers, body, conn))
                if self.script and self.script[0] is CLOSE:
                    self.script.pop(0)
                    break  # closed without an answer
                if self.script:
                    status, extra, content = self.script.pop(0)
                else:
                    status, extra = 200, {"content-type": "application/json"}
                    content = json.dumps({"target": target, "body": body.decode()}).encode()
                out = [f"HTTP/1.1 {status} X", f"content-length: {len(content)}"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + content)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def inner(scope: Any, receive: Any, send: Any) -> None:
    """The API behind the proxy: it answers 299 to anything that reaches it."""
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"api"})


@dataclass
class Bench:
    client: httpx.AsyncClient
    fakes: dict[str, FakeServe]
    proxy: EndpointProxy
    table: dict[tuple[str, str], Route]
    """The route lookup's answers: (tenant, name) -> (port, app)."""


LOOP: list[str] = ["asyncio"]


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> None:
    """Every test on asyncio's loop and on uvloop's, which the server runs (its transports
    are not asyncio classes)."""
    LOOP[0] = request.param


def run(
    routes: dict[tuple[str, str], tuple[str, str]],
    body: Callable[[Bench], Awaitable[None]],
    rate: tuple[float, int] = (1000.0, 1000),
) -> None:
    """``body`` against a proxy whose routes name fake Serves (``routes``: (tenant, name) ->
    (fake, app)), one fake per name used."""

    async def main() -> None:
        fakes = {fake: await FakeServe().start() for fake, _ in routes.values()}
        table = {k: (fakes[fake].port, app) for k, (fake, app) in routes.items()}
        proxy = EndpointProxy(
            inner, lambda t, n: table.get((t, n)), rate_per_s=rate[0], burst=rate[1]
        )
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://platform") as client:
            await body(Bench(client, fakes, proxy, table))
        proxy.pool.close()
        for f in fakes.values():
            await f.stop()

    if LOOP[0] == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


TOKEN = {"Authorization": "Bearer fge_x_y"}


def test_forwards_method_path_query_body_and_token_to_the_serving_app() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        r = await client.post(
            "/t/acme/digits/a/b%20c?x=1&y=%2F",
            content=b'{"inputs": [[1]]}',
            headers={**TOKEN, "Connection": "close", "X-Custom": "kept"},
        )
        assert r.status_code == 200
        assert r.json() == {"target": "/digits-v3/a/b%20c?x=1&y=%2F", "body": '{"inputs": [[1]]}'}
        seen = fakes["a"].seen[0]
        assert seen.method == "POST"
        assert seen.headers["authorization"] == "Bearer fge_x_y"
        assert seen.headers["x-custom"] == "kept"
        assert seen.headers["host"] == f"127.0.0.1:{fakes['a'].port}"
        assert "connection" not in seen.headers  # hop-by-hop: the client's, not Serve's
        r = await client.get("/t/acme/digits/")
        assert (r.status_code, fakes["a"].seen[1].target) == (200, "/digits-v3/")
        r = await client.get("/api/v1/healthz")
        assert (r.status_code, r.text) == (299, "api")  # not ours: the API's

    run({("acme", "digits"): ("a", "digits-v3")}, body)


@pytest.mark.parametrize(
    "path",
    [
        "/t/acme/nope/",  # no such endpoint
        "/t/beta/digits/",  # another tenant's name: its own (absent) endpoint, not acme's
        "/t/acme/",
        "/t/",
        "/t/ACME/digits/",  # not a name
        "/t/acme/dig%69ts/",  # encoded: not a name either
    ],
)
def test_never_forwards_for_an_endpoint_that_does_not_exist(path: str) -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        r = await client.post(path, content=b"{}", headers=TOKEN)
        assert r.status_code == 404
        assert r.json() == {"error": "no such endpoint"}
        assert fakes["a"].seen == []

    run({("acme", "digits"): ("a", "digits-v1")}, body)


def test_each_tenant_reaches_only_its_own_serve() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        assert (await client.post("/t/acme/m/", content=b"1")).status_code == 200
        assert (await client.post("/t/beta/m/", content=b"2")).status_code == 200
        assert [s.body for s in fakes["a"].seen] == [b"1"]
        assert [s.body for s in fakes["b"].seen] == [b"2"]

    routes = {("acme", "m"): ("a", "m-v1"), ("beta", "m"): ("b", "m-v1")}
    run(routes, body)


def test_bodies_over_the_limit_are_413_and_never_forwarded() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        r = await client.post("/t/acme/m/", content=b"x" * (MAX_BODY_BYTES + 1), headers=TOKEN)
        assert r.status_code == 413

        async def chunks() -> Any:  # no Content-Length: counted as it streams
            for _ in range(MAX_BODY_BYTES // 65536 + 1):
                yield b"x" * 65536

        r = await client.post("/t/acme/m/", content=chunks(), headers=TOKEN)
        assert r.status_code == 413
        assert fakes["a"].seen == []
        r = await client.post("/t/acme/m/", content=b"x" * MAX_BODY_BYTES, headers=TOKEN)
        assert r.status_code == 200

    run({("acme", "m"): ("a", "m-v1")}, body)


def test_a_token_over_its_rate_is_429() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        assert (await client.post("/t/acme/m/", headers=TOKEN)).status_code == 200
        r = await client.post("/t/acme/m/", headers=TOKEN)
        assert (r.status_code, r.headers["retry-after"]) == (429, "100")
        assert len(fakes["a"].seen) == 1

    run({("acme", "m"): ("a", "m-v1")}, body, rate=(0.01, 1))


def test_only_get_and_post() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        r = await client.put("/t/acme/m/", content=b"1")
        assert (r.status_code, r.headers["allow"]) == (405, "GET, POST")
        assert fakes["a"].seen == []

    run({("acme", "m"): ("a", "m-v1")}, body)


UNROUTED: Answer = (
    404,
    {},
    b"Path '/m-v1/' not found. Ping http://127.0.0.1:1/-/routes for routes.",
)


def test_a_retired_version_is_resent_once_to_the_serving_one() -> None:
    async def body(b: Bench) -> None:
        client, fake = b.client, b.fakes["a"]
        lookups = {"n": 0}

        def lookup(tenant: str, name: str) -> Route | None:
            # the update switches the route right after the proxy read it
            lookups["n"] += 1
            return (fake.port, "m-v1" if lookups["n"] == 1 else "m-v2")

        b.proxy.routes = lookup
        fake.script.append(UNROUTED)
        r = await client.post("/t/acme/m/", content=b"1")
        assert r.status_code == 200, r.text
        assert [s.target for s in fake.seen] == ["/m-v1/", "/m-v2/"]
        # Serve's own 404 on the route still serving: starting, retry later
        fake.script.append(UNROUTED)
        r = await client.post("/t/acme/m/", content=b"1")
        assert (r.status_code, r.headers["retry-after"]) == (503, "2")
        assert len(fake.seen) == 3

    run({("acme", "m"): ("a", "m-v1")}, body)


def test_a_5xx_is_resent_once_then_answered() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        fakes["a"].script += [(500, {}, b"died"), (502, {}, b"died again")]
        r = await client.post("/t/acme/m/", content=b"1")
        assert (r.status_code, r.text) == (502, "died again")
        assert len(fakes["a"].seen) == 2
        fakes["a"].script.append((500, {}, b"once"))
        assert (await client.post("/t/acme/m/", content=b"1")).status_code == 200
        # the replica's own refusals are answers, not resent
        fakes["a"].script += [(401, {}, b"no"), (404, {}, b"not yours")]
        assert (await client.post("/t/acme/m/")).status_code == 401
        assert (await client.post("/t/acme/m/")).text == "not yours"
        assert len(fakes["a"].seen) == 6

    run({("acme", "m"): ("a", "m-v1")}, body)


def test_a_closed_port_is_503_with_retry_after() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        port = fakes["a"].port
        await fakes["a"].stop()
        b.table[("acme", "m")] = (port, "m-v1")
        r = await client.post("/t/acme/m/")
        assert (r.status_code, r.headers["retry-after"]) == (503, "2")

    run({("acme", "m"): ("a", "m-v1")}, body)


def test_connections_are_kept_alive_and_a_closed_idle_one_is_replaced() -> None:
    async def body(b: Bench) -> None:
        client, fakes = b.client, b.fakes
        for _ in range(3):
            assert (await client.post("/t/acme/m/", content=b"1")).status_code == 200
        assert {s.connection for s in fakes["a"].seen} == {1}
        fakes["a"].drop_idle()  # Serve's keep-alive timeout
        await asyncio.sleep(0.05)
        assert (await client.post("/t/acme/m/", content=b"2")).status_code == 200
        assert [s.body for s in fakes["a"].seen] == [b"1", b"1", b"1", b"2"]  # no resend
        # concurrent requests each get a connection; all go back to the pool
        rs = await asyncio.gather(*(client.post("/t/acme/m/") for _ in range(5)))
        assert all(r.status_code == 200 for r in rs)
        assert len(b.proxy.pool._idle[fakes["a"].port]) == 5

    run({("acme", "m"): ("a", "m-v1")}, body)


def test_a_connection_closed_without_an_answer() -> None:
    async def body(b: Bench) -> None:
        client, fake = b.client, b.fakes["a"]
        assert (await client.post("/t/acme/m/", content=b"1")).status_code == 200
        # a kept-alive connection Serve closes as the request arrives: a new one, at once
        fake.script.append(CLOSE)
        assert (await client.post("/t/acme/m/", content=b"2")).status_code == 200
        assert [(s.body, s.connection) for s in fake.seen] == [(b"1", 1), (b"2", 1), (b"2", 2)]
        # closed on new connections too: sent once more, then 502
        fake.script += [CLOSE, CLOSE, CLOSE]
        r = await client.post("/t/acme/m/", content=b"3")
        assert r.status_code == 502, r.text
        assert [s.body for s in fake.seen].count(b"3") == 3  # the kept-alive one, then 2 new

    run({("acme", "m"): ("a", "m-v1")}, body)


def test_an_answer_streams_back_in_pieces() -> None:
    async def body(b: Bench) -> None:
        big = bytes(range(256)) * 12_000  # ~3 MB: reading Serve pauses and resumes
        b.fakes["a"].script.append((200, {"content-type": "application/octet-stream"}, big))
        r = await b.client.get("/t/acme/m/")
        assert (r.status_code, r.content, r.headers["content-length"]) == (200, big, str(len(big)))
        assert r.headers["content-type"] == "application/octet-stream"

    run({("acme", "m"): ("a", "m-v1")}, body)
