"""relay_dns.DnsRelay on loopback: real UDP sockets, Debian's dnsmasq as the
backends, dnspython as the client; plus a recording backend (a plain UDP
socket in the test) to see the ids the relay sends and to answer late,
from the wrong place, or not at all.

The relay object is made here with a socket the test binds, as the parent
will bind it; the relay's event loop runs in a thread of the test."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import dns.message
import dns.rrset
import pytest

from hoststated.relay_dns import DnsRelay
from protocol_servers import Server, free_port, missing_programs

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs dnsmasq)")]

WAIT = 5.0                      # s a client waits for an answer that must come


def start_dnsmasq(d, address: str, answer: str, answer6: str) -> Server:
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.conf").write_text("")   # not /dev/null: on some images it is a file
    port = free_port()
    srv = Server("dnsmasq", [
        "dnsmasq", "--keep-in-foreground", f"--conf-file={d}/empty.conf", f"--port={port}",
        f"--listen-address={address}", "--bind-interfaces", "--no-resolv", "--no-hosts",
        "--user=root", f"--pid-file={d}/pid", "--local=/example.test/",
        f"--host-record=www.example.test,{answer},{answer6}",
        f"--log-facility={d}/dnsmasq.log"], d, port)
    srv.start(srv.wait_udp if ":" not in address else lambda: wait_udp6(srv))
    return srv


def wait_udp6(srv: Server) -> None:
    """Server.wait_udp for a server on ::1: its port in /proc/net/udp6."""
    deadline = time.monotonic() + 30
    hexport = f":{srv.port:04X}"
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited with {srv.proc.returncode}:\n{srv.output()}")
        with open("/proc/net/udp6") as f:
            if any(line.split()[1].endswith(hexport) for line in list(f)[1:]):
                return
        time.sleep(0.05)
    raise RuntimeError(f"dnsmasq not bound to udp6 {srv.port}:\n{srv.output()}")


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    if why := missing_programs("dnsmasq"):
        pytest.skip(why)
    base = tmp_path_factory.mktemp("relay-dns")
    a = start_dnsmasq(base / "a", "127.0.0.1", "192.0.2.10", "2001:db8::10")
    b = start_dnsmasq(base / "b", "127.0.0.1", "192.0.2.20", "2001:db8::20")
    c = start_dnsmasq(base / "c", "::1", "192.0.2.30", "2001:db8::30")
    try:
        yield a, b, c
    finally:
        for s in (a, b, c):
            s.stop()


class Running:
    """A DnsRelay on a socket bound here, its loop in a thread."""

    def __init__(self, pick, timeout: float = 10.0, family=socket.AF_INET,
                 address: str = "127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()[:2]
        self.relay = DnsRelay(self.sock, pick, timeout)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.relay.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(WAIT)
        self.stats = self.relay.core.stats

    def close(self) -> None:
        def stop():
            self.relay.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(stop)
        self.thread.join(WAIT)
        self.loop.close()

    def wait_for(self, what) -> None:
        deadline = time.monotonic() + WAIT
        while not what():
            assert time.monotonic() < deadline, "the relay did not get there"
            time.sleep(0.01)


def client(family=socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    s.settimeout(WAIT)
    return s


def ask(sock, relay_addr, qid: int, name="www.example.test", qtype="A"):
    q = dns.message.make_query(name, qtype)
    q.id = qid
    sock.sendto(q.to_wire(), relay_addr)
    return q


def read(sock) -> dns.message.Message:
    data, _ = sock.recvfrom(4096)
    return dns.message.from_wire(data)


def addresses(msg) -> set[str]:
    return {r.address for rrset in msg.answer for r in rrset}


def test_answers_mapped_back_over_two_backends(backends):
    a, b, _ = backends
    turn = iter([("127.0.0.1", a.port), ("127.0.0.1", b.port)] * 10)
    r = Running(lambda c: next(turn))
    try:
        with client() as c:
            got = {}
            for qid in (0x0101, 0x0202, 0x0303, 0x0404):
                q = ask(c, r.addr, qid)
                m = read(c)
                assert m.id == qid and q.is_response(m)   # same id, same question
                got[qid] = addresses(m)
            # roundrobin over the two dnsmasq: each answered its own record
            assert got == {0x0101: {"192.0.2.10"}, 0x0202: {"192.0.2.20"},
                           0x0303: {"192.0.2.10"}, 0x0404: {"192.0.2.20"}}
        assert (r.stats.queries, r.stats.answers) == (4, 4)
        assert len(r.relay.core) == 0
    finally:
        r.close()


def test_many_clients_in_flight_same_id(backends):
    a, _, _ = backends
    r = Running(lambda c: ("127.0.0.1", a.port))
    clients = [client() for _ in range(20)]
    try:
        # all send before any reads: 20 queries in flight with one client id
        for c in clients:
            ask(c, r.addr, 0x7777)
        for c in clients:
            m = read(c)
            assert m.id == 0x7777 and addresses(m) == {"192.0.2.10"}
        assert r.stats.answers == 20
    finally:
        for c in clients:
            c.close()
        r.close()


def test_ipv6_relay_and_backend(backends):
    _, _, c6 = backends
    r = Running(lambda c: ("::1", c6.port), family=socket.AF_INET6, address="::1")
    try:
        with client(socket.AF_INET6) as c:
            ask(c, r.addr, 0x6666, qtype="AAAA")
            m = read(c)
            assert m.id == 0x6666 and addresses(m) == {"2001:db8::30"}
    finally:
        r.close()


def test_no_backend_sends_nothing(backends):
    a, _, _ = backends
    up = iter([None, ("127.0.0.1", a.port)])
    r = Running(lambda c: next(up))
    try:
        with client() as c:
            ask(c, r.addr, 0x0001)          # no backend up: dropped
            ask(c, r.addr, 0x0002)
            # the first thing the client gets is the second query's answer
            assert read(c).id == 0x0002
        assert r.stats.no_backend == 1
    finally:
        r.close()


class Recorder:
    """A backend that records what it receives and answers when told."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.addr = self.sock.getsockname()

    def recv(self) -> tuple[bytes, tuple]:
        return self.sock.recvfrom(4096)

    def answer(self, data: bytes, to, ip="192.0.2.99", via: socket.socket | None = None):
        q = dns.message.from_wire(data)
        resp = dns.message.make_response(q)
        resp.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", ip))
        (via or self.sock).sendto(resp.to_wire(), to)


@pytest.fixture
def recorder():
    rec = Recorder()
    yield rec
    rec.sock.close()


def test_ids_are_random_and_restored(recorder):
    r = Running(lambda c: recorder.addr)
    try:
        with client() as c:
            seen = []
            for _ in range(200):
                ask(c, r.addr, 0x0000)
                data, src = recorder.recv()
                seen.append(int.from_bytes(data[:2], "big"))
                recorder.answer(data, src)
                m = read(c)
                assert m.id == 0x0000 and addresses(m) == {"192.0.2.99"}
        # the backend saw the relay's ids, not the client's: spread, not a counter
        assert len(set(seen)) > 190
        assert len({i >> 8 for i in seen}) > 100
        assert sum(1 for x, y in zip(seen, seen[1:]) if y == x + 1) < 5
        # from the relay's own backend socket, not the listening one
        assert src[1] in r.relay.backend_ports().values() and src[1] != r.addr[1]
    finally:
        r.close()


def test_spoofed_and_late_answers_dropped(recorder):
    r = Running(lambda c: recorder.addr, timeout=0.5)
    try:
        with client() as c, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoof:
            spoof.bind(("127.0.0.1", 0))
            # an answer with the right id from another port than the backend's
            ask(c, r.addr, 0x1111)
            data, src = recorder.recv()
            recorder.answer(data, src, ip="192.0.2.66", via=spoof)
            r.wait_for(lambda: r.stats.wrong_source == 1)
            recorder.answer(data, src)          # the real one still gets through
            m = read(c)
            assert m.id == 0x1111 and addresses(m) == {"192.0.2.99"}
            # no answer within the session timeout: the query expires, and
            # the answer that comes after is dropped
            ask(c, r.addr, 0x2222)
            data, src = recorder.recv()
            r.wait_for(lambda: r.stats.timeouts == 1)
            assert len(r.relay.core) == 0
            recorder.answer(data, src, ip="192.0.2.77")
            r.wait_for(lambda: r.stats.unknown == 1)
            ask(c, r.addr, 0x3333)
            data, src = recorder.recv()
            recorder.answer(data, src)
            m = read(c)                         # the first thing the client gets
            assert m.id == 0x3333 and addresses(m) == {"192.0.2.99"}
    finally:
        r.close()


def test_garbage_from_a_client_is_dropped(recorder):
    r = Running(lambda c: recorder.addr)
    try:
        with client() as c:
            c.sendto(b"\x00" * 11, r.addr)                  # shorter than a header
            c.sendto(b"\x12\x34\x81\x80" + b"\0" * 8, r.addr)   # a response
            ask(c, r.addr, 0x4444)
            data, src = recorder.recv()                     # only the real query
            assert dns.message.from_wire(data).question[0].name.to_text() == \
                "www.example.test."
            recorder.answer(data, src)
            assert read(c).id == 0x4444
        assert r.stats.malformed == 2 and r.stats.queries == 1
    finally:
        r.close()
