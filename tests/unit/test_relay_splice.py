"""relay_splice on loopback: a real RelayProcess (its _serve, Acceptor,
splice sessions and session table) in this test's event loop, real sockets
and real splice(2), with blocking clients and backends in threads. On
asyncio's loop and on uvloop's (the relay's, when installed).

- 24 MiB each way through an echo backend, half-closed by the client,
  arrive intact (sha256 both ways), spliced; the figures count every byte;
  the session ends and leaves no pipe or reader behind;
- a few bytes are copied (recv/send), no pipe taken;
- a failed connect moves to the next host;
- a backend that resets mid-transfer ends the session with an error and
  the client sees the stream end, not hang;
- a backend that reads nothing holds the client back (backpressure): the
  session's buffer is its pipe, not the client's 32 MiB;
- abort() (the session timeout) closes both sides;
- a PROXY v1 header reaches the backend before the client's bytes;
- `tcp { no splice }` serves the listener with the Protocol path, and a
  reload that turns splice on keeps the listening socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import threading

import pytest

from hoststated import relay_splice
from hoststated.conf.load import load_text
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel
from hoststated.relay import RelayProcess

LOOPS = ["asyncio"]
try:
    import uvloop
    LOOPS.append("uvloop")
except ImportError:                     # the relay extra is not installed
    uvloop = None

CONF = """
table <t> {{ {hosts} }}
{protocol}
relay r {{
	listen on 127.0.0.1 port {port}
	{use}
	forward to <t> port {bport}{proxy}
}}
"""


def run(loop_name, coro):
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    with asyncio.Runner(loop_factory=lambda: loop) as r:
        return r.run(coro)


class Backend:
    """A listening socket on 127.0.0.1 and a thread serving each
    connection with `serve(conn)`."""

    def __init__(self, serve, addr="127.0.0.1"):
        self.sock = socket.create_server((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def close(self):
        self.sock.close()


def echo(c: socket.socket) -> None:
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()


async def relay(text_conf: str, port_sock: socket.socket) -> RelayProcess:
    config = load_text(text_conf, lookup=False)
    a, _b = socket.socketpair()
    c, _d = socket.socketpair()
    key = messages.listener_key("127.0.0.1", port_sock.getsockname()[1])
    init = messages.Init(config=config.model_dump(), generation=1, uid=0, gid=0,
                         listen_fds={key: port_sock.detach()})
    proc = RelayProcess(Channel(a, "parent"), Channel(c, "hce"), init)
    proc._keep = (_b, _d)
    await proc._serve()
    return proc


def listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def conf(port, bport, hosts="127.0.0.1", splice=True, proxy=""):
    return CONF.format(hosts=hosts, port=port, bport=bport, proxy=proxy,
                       protocol="" if splice else "tcp protocol p { tcp { no splice } }",
                       use="" if splice else "protocol p")


async def until(pred, what, timeout=10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def bulk_client(port: int, n: int) -> dict:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent, got = hashlib.sha256(), hashlib.sha256()
    count = [0]

    def reader():
        while True:
            d = s.recv(1 << 16)
            if not d:
                break
            got.update(d)
            count[0] += len(d)
    t = threading.Thread(target=reader)
    t.start()
    rng = random.Random(5)
    left = n
    while left:
        chunk = rng.randbytes(min(left, 1 << 16))
        s.sendall(chunk)
        sent.update(chunk)
        left -= len(chunk)
    s.shutdown(socket.SHUT_WR)
    t.join(60)
    s.close()
    return {"sent": sent.hexdigest(), "got": got.hexdigest(), "back": count[0]}


@pytest.mark.parametrize("loop_name", LOOPS)
def test_bulk_echo_is_intact_and_half_close_passes(loop_name):
    async def go():
        b = Backend(echo)
        ls = listener()
        port = ls.getsockname()[1]
        proc = await relay(conf(port, b.port), ls)
        assert isinstance(proc.servers[f"127.0.0.1 {port}"], relay_splice.Acceptor)
        loop = asyncio.get_running_loop()
        n = 24 << 20
        task = loop.run_in_executor(None, bulk_client, port, n)
        await until(lambda: proc.sessions, "the session")
        s = next(iter(proc.sessions.values()))
        assert isinstance(s, relay_splice.SpliceSession)
        out = await task
        assert out["back"] == n and out["got"] == out["sent"], out
        await until(lambda: not proc.sessions, "the session's end")
        assert s.bytes_in == n and s.bytes_out == n and s.error is None
        assert s.up.piped and s.down.piped          # a bulk flow: spliced
        rt = proc.relays[1]
        assert (rt.figures.active, rt.figures.total, rt.figures.errors) == (0, 1, 0)
        assert proc.pipes.big == 0                  # a grown pipe is closed at the end
        assert s.up.pipe is None and s.down.pipe is None
        for p in proc.pipes.free:                   # pooled pipes are empty
            with pytest.raises(BlockingIOError):
                os.read(p[0], 1)
        proc.servers.popitem()[1].close()
        proc.pipes.close()
        b.close()
    run(loop_name, go())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_refused_connect_moves_to_the_next_host(loop_name):
    async def go():
        b = Backend(echo, "127.0.0.2")
        ls = listener()
        port = ls.getsockname()[1]
        # 127.0.0.1 has nothing on b.port: refused
        proc = await relay(conf(port, b.port, hosts="127.0.0.1 127.0.0.2"), ls)
        loop = asyncio.get_running_loop()
        for _ in range(4):                          # roundrobin: each host first in turn
            out = await loop.run_in_executor(None, bulk_client, port, 1000)
            assert out["back"] == 1000 and out["got"] == out["sent"]
        await until(lambda: not proc.sessions, "the sessions' end")
        assert proc.relays[1].figures.errors == 0
        proc.servers.popitem()[1].close()
        b.close()
    run(loop_name, go())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_backend_reset_mid_transfer_ends_the_session(loop_name):
    started = threading.Event()

    def reset_after_some(c: socket.socket) -> None:
        if started.is_set():
            echo(c)                                 # the sessions after that one
            return
        got = 0
        while got < 1 << 20:
            got += len(c.recv(1 << 16))
        c.sendall(b"x" * 100000)
        started.set()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()                                   # RST: linger 0

    def client(port: int) -> tuple[int, str]:
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        got = 0
        why = "eof"
        try:
            s.sendall(b"y" * (1 << 20))
            started.wait(10)
            s.sendall(b"y" * (4 << 20))             # into a session that is gone
            while True:
                d = s.recv(1 << 16)
                if not d:
                    break
                got += len(d)
        except OSError as e:
            why = type(e).__name__
        s.close()
        return got, why

    async def go():
        b = Backend(reset_after_some)
        ls = listener()
        port = ls.getsockname()[1]
        proc = await relay(conf(port, b.port), ls)
        loop = asyncio.get_running_loop()
        got, why = await loop.run_in_executor(None, client, port)
        assert got <= 100000, got
        await until(lambda: not proc.sessions, "the session's end")
        assert proc.relays[1].figures.errors == 1
        # and the relay goes on serving
        out = await loop.run_in_executor(None, bulk_client, port, 1 << 20)
        assert out["back"] == 1 << 20 and out["got"] == out["sent"]
        proc.servers.popitem()[1].close()
        b.close()
    run(loop_name, go())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_backend_that_reads_nothing_holds_the_client_back(loop_name):
    hold = threading.Event()
    # what the kernel may hold without us: the relay's and the backend's
    # receive buffers and both senders' (autotuned up to tcp_rmem's and
    # tcp_wmem's max: 32 MiB and 4 MiB on some machines), and a pipe's worth;
    # a relay that did not hold the client back lets it send all of CAP
    kernel = sum(2 * int(open(f"/proc/sys/net/ipv4/{k}").read().split()[2])
                 for k in ("tcp_rmem", "tcp_wmem")) + (4 << 20)
    cap = kernel + (64 << 20)

    def sink(c: socket.socket) -> None:
        hold.wait(30)
        c.close()

    async def go():
        b = Backend(sink)
        ls = listener()
        port = ls.getsockname()[1]
        proc = await relay(conf(port, b.port), ls)
        loop = asyncio.get_running_loop()
        sent = [0]

        def client():
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            chunk = b"z" * (1 << 16)
            import time
            end = time.monotonic() + 20
            while sent[0] < cap and time.monotonic() < end and not hold.is_set():
                try:
                    sent[0] += s.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
            return s
        fut = loop.run_in_executor(None, client)
        await until(lambda: proc.sessions and next(iter(proc.sessions.values())).up
                    is not None and not next(iter(proc.sessions.values())).up.reading,
                    "the client side paused")
        s = next(iter(proc.sessions.values()))
        await asyncio.sleep(0.3)
        before = s.bytes_in
        await asyncio.sleep(0.3)
        assert s.bytes_in == before                 # nothing more read meanwhile
        # held: what a copy could not send, or a pipe's worth; a pipe holds
        # cap // 4096 buffers, which TCP fills with up to one of its 32 KiB
        # page frags each (SKB_FRAG_PAGE_ORDER 3), not a 4 KiB page
        if s.up.piped:
            assert 0 < s.up.queued <= s.up.cap * 8 and s.up.cap <= relay_splice.BIG
        else:
            assert 0 < len(s.up.pending) <= relay_splice.COPY and s.up.pipe is None
        hold.set()
        csock = await fut
        assert sent[0] < kernel, (sent[0], kernel)  # the client was held back
        await until(lambda: not proc.sessions, "the session's end")
        csock.close()
        proc.servers.popitem()[1].close()
        b.close()
    run(loop_name, go())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_abort_closes_both_sides_and_proxy_header_goes_first(loop_name):
    seen = []
    done = threading.Event()

    def record(c: socket.socket) -> None:
        data = b""
        while True:
            d = c.recv(4096)
            if not d:
                break
            data += d
        seen.append(data)
        done.set()

    def client(port):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"hello")
        d = s.recv(10)                              # until the relay closes it
        s.close()
        return d

    async def go():
        b = Backend(record)
        ls = listener()
        port = ls.getsockname()[1]
        proc = await relay(conf(port, b.port, proxy=" proxy-protocol v1"), ls)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, client, port)
        await until(lambda: proc.sessions and next(iter(proc.sessions.values())).bytes_in == 5,
                    "the client's bytes relayed")
        rows = proc.session_rows()
        assert len(rows) == 1 and rows[0].status == "running" and rows[0].bytes_in == 5
        assert rows[0].backend == "127.0.0.1" and rows[0].backend_port == b.port
        s = next(iter(proc.sessions.values()))
        assert not s.up.piped                       # 5 bytes: copied, no pipe taken
        assert s.up.pipe is None and not proc.pipes.free
        s.abort()
        assert await fut == b""
        assert await loop.run_in_executor(None, done.wait, 10)
        assert seen[0].startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
        assert seen[0].endswith(f" {port}\r\nhello".encode())
        assert not proc.sessions and proc.relays[1].figures.errors == 1
        proc.servers.popitem()[1].close()
        b.close()
    run(loop_name, go())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_no_splice_is_the_protocol_path_and_a_reload_switches_on_one_socket(loop_name):
    async def go():
        b = Backend(echo)
        ls = listener()
        port = ls.getsockname()[1]
        lfd = ls.fileno()
        proc = await relay(conf(port, b.port, splice=False), ls)
        key = f"127.0.0.1 {port}"
        assert not isinstance(proc.servers[key], relay_splice.Acceptor)
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(None, bulk_client, port, 1 << 20)
        assert out["back"] == 1 << 20 and out["got"] == out["sent"]
        # the reload: same listener, splice now
        proc._apply(load_text(conf(port, b.port), lookup=False))
        await proc._serve()
        server = proc.servers[key]
        assert isinstance(server, relay_splice.Acceptor)
        # the same listening socket (a duplicate of its descriptor)
        assert server.sock.getsockname() == ("127.0.0.1", port) and server.fd != lfd
        out = await loop.run_in_executor(None, bulk_client, port, 1 << 20)
        assert out["back"] == 1 << 20 and out["got"] == out["sent"]
        # and back
        proc._apply(load_text(conf(port, b.port, splice=False), lookup=False))
        await proc._serve()
        assert not isinstance(proc.servers[key], relay_splice.Acceptor)
        out = await loop.run_in_executor(None, bulk_client, port, 1 << 20)
        assert out["back"] == 1 << 20 and out["got"] == out["sent"]
        proc.servers.popitem()[1].close()
        b.close()
    run(loop_name, go())


def test_tcp_splice_passes_the_truth_checks_and_the_last_one_written_counts():
    from hoststated.relay import splice_option
    text = conf(8000, 80).replace("relay r", "tcp protocol s { tcp { splice } }\nrelay r") \
        .replace("forward to", "protocol s\n\tforward to")
    c = load_text(text, lookup=False)           # runnable: -n's checks
    assert c.protocols[0].tcp == ("splice",)
    assert splice_option(()) is True            # relayd's default
    assert splice_option(("no splice",)) is False
    assert splice_option(("no splice", "nodelay", "splice")) is True
