"""checks.poller, the fast path, against real sockets on loopback (no root
needed): where a timeout strikes still picks relayd's word, a connect that
has to wait, a send that has to wait, cancel, and many checks at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys

from hoststated.checks import make_check
from hoststated.checks.base import Target
from hoststated.checks.poller import poller_for
from hoststated.checks.runner import run_check, start_check
from hoststated.conf import model
from hoststated.states import HostError

sys.path.insert(0, os.path.dirname(__file__))
from test_checks_servers import Server, http, silent  # noqa: E402


def start(m, port, timeout, address="127.0.0.1"):
    """Start a check on the fast path; a future gets its verdicts (all of them)."""
    loop = asyncio.get_running_loop()
    t = Target(address, port, name=address)
    fut = loop.create_future()
    seen = []

    def on_done(v):
        seen.append(v)
        if not fut.done():
            fut.set_result(v)
    conn = start_check(make_check(m, t), t, timeout, on_done)
    return conn, fut, seen


def full_listener():
    """A listener with a backlog of one that never accepts, filled: the next
    SYN is dropped, so a connect to it stays in SYN_SENT."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    for _ in range(4):                 # the kernel admits backlog + 1, give or take
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    return ls, port, fillers


def test_connect_that_never_completes_is_a_connect_timeout():
    async def main():
        ls, port, fillers = full_listener()
        try:
            h = await run_check(make_check(model.CheckHttp(), Target("127.0.0.1", port)),
                                Target("127.0.0.1", port), 0.3)
            t = await run_check(make_check(model.CheckTcp(), Target("127.0.0.1", port)),
                                Target("127.0.0.1", port), 0.3)
            return h, t
        finally:
            for s in fillers:
                s.close()
            ls.close()
    h, t = asyncio.run(main())
    assert h.error == HostError.TCP_CONNECT_TIMEOUT and h.detail == "no connection within 300ms"
    assert t.error == HostError.TCP_CONNECT_TIMEOUT


def test_send_that_cannot_finish_is_a_write_timeout():
    """A peer that never reads: 16 MB to send fill both socket buffers."""
    async def main():
        async with Server(silent) as s:
            m = model.CheckSendExpect(send="x" * (16 << 20), expect="ok")
            return await run_check(make_check(m, Target("127.0.0.1", s.port)),
                                   Target("127.0.0.1", s.port), 0.5)
    v = asyncio.run(main())
    assert v.error == HostError.TCP_WRITE_TIMEOUT and v.detail == "could not send within 500ms"


def test_each_timeout_strikes_on_its_own():
    """A long timeout queued first does not hold back a short one queued later."""
    async def main():
        async with Server(silent) as s:
            _, slow, _ = start(model.CheckHttp(), s.port, 5.0)
            _, quick, _ = start(model.CheckHttp(), s.port, 0.2)
            v = await asyncio.wait_for(quick, 3.0)
            still = not slow.done()
            return v, still
    v, still = asyncio.run(main())
    assert v.error == HostError.TCP_READ_TIMEOUT and v.detail.startswith("no answer within 200ms")
    assert still


def test_cancel_closes_and_never_calls_back():
    async def main():
        async with Server(silent) as s:
            conn, fut, seen = start(model.CheckHttp(), s.port, 0.2)
            await asyncio.sleep(0.05)
            conn.cancel()
            fd_open = conn.sock is not None
            await asyncio.sleep(0.4)                  # past the timeout: no verdict either
            return fut.done(), seen, fd_open, poller_for(asyncio.get_running_loop()).conns
    done, seen, fd_open, conns = asyncio.run(main())
    assert not done and seen == [] and not fd_open and conns == {}


def test_many_checks_at_once_each_get_one_verdict():
    """Hundreds of checks in flight on one epoll set, up, down and silent
    hosts mixed: every check gets exactly one verdict, the right one."""
    async def main():
        async with Server(http(200)) as up, Server(silent) as quiet:
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))
            dead_port = dead.getsockname()[1]
            dead.close()                              # nothing listens there
            runs = []
            for i in range(300):
                port = (up.port, quiet.port, dead_port)[i % 3]
                runs.append(start(model.CheckHttp(), port, 0.5))
            verdicts = await asyncio.gather(*(fut for _, fut, _ in runs))
            await asyncio.sleep(0.1)
            return verdicts, [len(seen) for _, _, seen in runs], len(up.requests)
    verdicts, counts, served = asyncio.run(main())
    assert counts == [1] * 300
    words = [v.error for v in verdicts]
    assert words[0::3] == [HostError.HTTP_CODE_OK] * 100 and served == 100
    assert words[1::3] == [HostError.TCP_READ_TIMEOUT] * 100
    assert words[2::3] == [HostError.TCP_CONNECT_FAIL] * 100
    assert {v.detail for v in verdicts[2::3]} == {"Connection refused"}


def test_peer_closing_at_once_still_counts_as_connected():
    """A server that accepts and closes at once: a tcp check is up (the
    connect worked), an http check sees the EOF before any status line."""
    async def closer(srv, reader, writer):
        writer.close()

    async def main():
        async with Server(closer) as s:
            t = await run_check(make_check(model.CheckTcp(), Target("127.0.0.1", s.port)),
                                Target("127.0.0.1", s.port), 0.5)
            h = await run_check(make_check(model.CheckHttp(), Target("127.0.0.1", s.port)),
                                Target("127.0.0.1", s.port), 0.5)
            return t, h
    t, h = asyncio.run(main())
    assert t.error == HostError.TCP_CONNECT_OK
    assert h.error in (HostError.HTTP_CODE_ERROR, HostError.TCP_READ_FAIL)


def test_tcp_check_is_half_open():
    """A tcp check ends at the host's SYN-ACK, as HAProxy's: the handshake's
    last ACK is held back (delayed ACKs) and the close's RST goes first, so
    the host's application is never handed a connection. A full connect
    closed by an RST leaves a reset connection in the listener's queue for
    accept(); a half-open one leaves nothing. A tcp check with a PROXY header
    to send still connects in full."""
    async def main():
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        ls.setblocking(False)
        port = ls.getsockname()[1]
        try:
            words = []
            for _ in range(10):
                _, fut, _ = start(model.CheckTcp(), port, 0.5)
                words.append((await fut).error)
            await asyncio.sleep(0.05)
            try:
                ls.accept()[0].close()
                queued = 1
            except BlockingIOError:
                queued = 0
            loop = asyncio.get_running_loop()
            t = Target("127.0.0.1", port, proxy_header=b"PROXY UNKNOWN\r\n")
            fut = loop.create_future()
            start_check(make_check(model.CheckTcp(), t), t, 0.5, fut.set_result)
            proxied = (await fut).error
            await asyncio.sleep(0.05)
            conn, _ = ls.accept()                # the full connect: queued
            conn.close()
            return words, queued, proxied
        finally:
            ls.close()
    words, queued, proxied = asyncio.run(main())
    assert words == [HostError.TCP_CONNECT_OK] * 10
    assert queued == 0, "a tcp check's connection reached the listener's accept queue"
    assert proxied == HostError.TCP_CONNECT_OK


def test_ended_checks_leave_the_timeout_queue_before_their_deadline():
    """A check that ends long before its timeout is not kept in the timeout
    queue until then: the next check started lets it go (else, at 10,000
    http checks a second, some 8,000 ended checks sat there, walked by the
    gc); a check still waiting keeps its place and still times out."""
    async def main():
        async with Server(http(200)) as s, Server(silent) as quiet:
            loop = asyncio.get_running_loop()
            poller = poller_for(loop)
            _, slow, _ = start(model.CheckHttp(), quiet.port, 0.3)   # the head: it waits
            for _ in range(30):
                _, fut, _ = start(model.CheckHttp(), s.port, 5.0)
                assert (await fut).ok
            queued = [c.sock is None for q in poller.queues.values() for c in q]
            timed_out = await slow
            return queued, timed_out
    queued, timed_out = asyncio.run(main())
    assert sorted(queued) == [False, True]           # the slow check, and the last one ended
    assert timed_out.error == HostError.TCP_READ_TIMEOUT


def time_wait_to(port):
    """Sockets in TIME_WAIT whose remote port is `port`: a checker's own
    (the server's side has `port` as its local port)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "06" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    n += 1
    return n


def test_no_check_leaves_time_wait_on_our_side():
    """Every way a fast-path check can end closes without TIME_WAIT on the
    checker's side (an RST, or the passive close after the peer's FIN): at
    thousands of checks a second, 60 s of TIME_WAIT would pile up hundreds
    of thousands of sockets. The answered http check is closed with its
    answer unread (peeked), a body in two pieces is read then peeked, a tcp
    check and a read timeout set SO_LINGER 0, a body up to EOF is the
    passive close."""
    body = b"x" * 3000
    digest = hashlib.sha1(body).hexdigest()

    async def answer_and_hold(srv, reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read(100)                 # until the checker closes

    async def two_pieces(srv, reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        await asyncio.sleep(0.02)              # the head read alone first
        writer.write(body)
        await writer.drain()
        await reader.read(100)

    async def until_eof(srv, reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body)   # no length: the body ends at EOF

    async def hold(srv, reader, writer):
        await reader.read(100)

    async def run(handler, m, want, timeout=2.0, n=20):
        async with Server(handler) as s:
            words = []
            for _ in range(n):
                _, fut, _ = start(m, s.port, timeout)
                words.append((await fut).error)
            # the server's side closes too; only the checker's sockets count
            return words, time_wait_to(s.port), want

    async def main():
        return [
            await run(answer_and_hold, model.CheckHttp(code=200), HostError.HTTP_CODE_OK),
            await run(two_pieces, model.CheckHttp(digest=digest), HostError.HTTP_DIGEST_OK),
            await run(until_eof, model.CheckHttp(digest=digest), HostError.HTTP_DIGEST_OK),
            await run(hold, model.CheckTcp(), HostError.TCP_CONNECT_OK),
            await run(silent, model.CheckHttp(), HostError.TCP_READ_TIMEOUT, timeout=0.05, n=5),
        ]
    for words, tw, want in asyncio.run(main()):
        assert words == [want] * len(words)
        assert tw == 0, f"{tw} sockets in TIME_WAIT after {len(words)} checks ({want})"
