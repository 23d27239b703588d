"""The metrics endpoint (control.MetricsServer): GET /metrics and nothing
else, on a real loopback TCP socket; the request head parser on its own."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hoststated import control
from hoststated.control import MetricsServer, http_request

BODY = b"# HELP x y\n# TYPE x gauge\nx 1\n"


@pytest.mark.parametrize("head, want", [
    (b"GET /metrics HTTP/1.1\r\nHost: a", (200, True, False)),
    (b"GET /metrics?x=1 HTTP/1.1", (200, True, False)),
    (b"GET /metrics HTTP/1.1\r\nConnection: close", (200, False, False)),
    (b"GET /metrics HTTP/1.0", (200, False, False)),
    (b"HEAD /metrics HTTP/1.1", (200, True, True)),
    (b"POST /metrics HTTP/1.1", (405, False, False)),
    (b"DELETE / HTTP/1.1", (405, False, False)),
    (b"GET / HTTP/1.1", (404, True, False)),
    (b"GET /metricsx HTTP/1.1", (404, True, False)),
    (b"GET /metrics HTTP/2.0", (505, False, False)),
    (b"GET /metrics", (400, False, False)),
    (b"\x16\x03\x01\x02\x00\x01", (400, False, False)),       # a TLS hello
    (b"GET /metrics HTTP/1.1\r\nContent-Length: 5", (400, False, False)),
    (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked", (400, False, False)),
    (b"GET /metrics HTTP/1.1\r\nno colon", (400, False, False)),
    (b"GET /metrics HTTP/1.1\r\n Folded: x", (400, False, False)),
])
def test_request_heads(head, want):
    assert http_request(head) == want


def serve(test, *, idle: float = 5.0, max_clients: int = 8):
    """Run test(port, server) against a MetricsServer on 127.0.0.1."""
    async def go():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async def render():
            return BODY, "text/plain; version=0.0.4"
        server = MetricsServer(sock, render, idle_timeout=idle, max_clients=max_clients)
        await server.start()
        try:
            return await test(port, server)
        finally:
            server.close()
    return asyncio.run(go())


async def exchange(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    await w.drain()
    out = await asyncio.wait_for(r.read(), 10)
    w.close()
    return out


def test_get_and_head():
    async def t(port, server):
        got = await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY
        assert f"Content-Length: {len(BODY)}".encode() in head
        assert b"Content-Type: text/plain; version=0.0.4" in head
        got = await exchange(port, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
        assert server.scrapes == 2
    serve(t)


def test_keep_alive_serves_several_scrapes_on_one_connection():
    async def t(port, server):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert await r.readexactly(len(BODY)) == BODY
        w.close()
        assert server.scrapes == 3
    serve(t)


@pytest.mark.parametrize("request_, code", [
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"GET /admin HTTP/1.0\r\n\r\n", b"404"),
    (b"BREW /pot HTCPCP/1.0\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"GET /metrics HTTP/1.1\r\nX: y", b"400"),        # cut short, then EOF
])
def test_bad_requests_get_a_short_reply_and_are_closed(request_, code):
    async def t(port, server):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(request_)
        if not request_.endswith(b"\r\n\r\n"):
            w.write_eof()
        await w.drain()
        got = await asyncio.wait_for(r.read(), 10)       # EOF: closed by the server
        w.close()
        assert got.startswith(b"HTTP/1.1 " + code), got[:80]
        assert b"Connection: close" in got and b"Traceback" not in got
        assert len(got) < 300
        assert server.scrapes == 0
    serve(t)


def test_an_idle_client_is_closed_and_others_are_served():
    async def t(port, server):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /met")                 # and nothing more
        await w.drain()
        got = await asyncio.wait_for(exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n"), 10)
        assert got.endswith(BODY)
        assert await asyncio.wait_for(r.read(), 10) == b""    # closed after the idle timeout
        w.close()
    serve(t, idle=0.5)


def test_clients_over_the_budget_are_closed_and_the_rest_served():
    async def t(port, server):
        idle = []
        for _ in range(4):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        # the budget (4) is taken: the next is accepted and closed at once
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        assert server.refused >= 1
        for _, iw in idle:
            iw.close()
        # once they are gone, a scrape is served again
        for _ in range(100):
            if not server.clients:
                break
            await asyncio.sleep(0.05)
        got = await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert got.endswith(BODY)
    serve(t, max_clients=4)


def test_a_render_that_raises_closes_that_client_only(caplog):
    calls = []

    async def render():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return BODY, "text/plain"

    async def go():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = MetricsServer(sock, render)
        await server.start()
        try:
            port = sock.getsockname()[1]
            assert await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n") == b""
            assert (await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")).endswith(BODY)
        finally:
            server.close()
    asyncio.run(go())
    assert "metrics client: RuntimeError: boom" in caplog.text


def test_the_budget_is_the_control_sockets():
    assert issubclass(MetricsServer, control.ControlServer)
    assert control.METRICS_CLIENTS <= control.MAX_CLIENTS
