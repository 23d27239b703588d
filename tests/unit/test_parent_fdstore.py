"""The relays' listening sockets and systemd's file descriptor store, on real
sockets (loopback, no root): sd_notify with descriptors (FDSTORE=1, FDNAME,
FDSTOREREMOVE) as a notify socket receives them; LISTEN_FDS taken only when
LISTEN_PID is ours; a restart adopts the passed sockets a listener wants
(the same socket, its queue with it) and binds the rest, the store told
only what changed; a reload's dropped listener leaves the store."""

from __future__ import annotations

import os
import socket

import pytest

from hoststated import parent_listen, proc
from hoststated.conf.load import load_text


def config(ports: list[int], prefork: int = 2, udp: int | None = None):
    text = f"prefork {prefork}\ntable <t> {{ 127.0.0.2 }}\n"
    if udp is not None:
        text += "dns protocol d\n"
    for i, port in enumerate(ports):
        text += (f"relay r{i} {{\n\tlisten on 127.0.0.1 port {port}\n"
                 f"{chr(9) + 'protocol d' + chr(10) if port == udp else ''}"
                 f"\tforward to <t> port 80\n}}\n")
    return load_text(text, lookup=False)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def notify(tmp_path, monkeypatch):
    """A notify socket as systemd's: (datagram, descriptors) received."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    def received() -> list[tuple[str, list[int]]]:
        out = []
        sock.setblocking(False)
        try:
            while True:
                msg, fds, _, _ = socket.recv_fds(sock, 4096, 300)
                out.append((msg.decode(), fds))
        except BlockingIOError:
            pass
        return out
    yield received
    sock.close()


def test_fd_names_are_valid_for_listen_fdnames_and_distinct():
    names = {parent_listen.fd_name(k) for k in
             ("192.0.2.1 80", "2001:db8::1 80", "2001%3Adb8 80", "fe80::1%eth0 80")}
    assert len(names) == 4
    for n in names:
        assert ":" not in n and all(" " <= c < "\x7f" for c in n) and len(n) <= 255
    assert parent_listen.fd_name("2001:db8::1 443") == "relay 2001%3Adb8%3A%3A1 443"


def test_fdstore_sends_the_descriptors_with_their_name(notify):
    a, b = socket.socket(), socket.socket()
    assert proc.fdstore("relay 127.0.0.1 80", [a.fileno(), b.fileno()])
    assert proc.fdstore_remove("relay 127.0.0.1 80")
    (msg, fds), (msg2, fds2) = notify()
    assert msg == "FDSTORE=1\nFDNAME=relay 127.0.0.1 80" and len(fds) == 2
    # the same sockets, not copies of their state
    assert {os.fstat(f).st_ino for f in fds} == {os.fstat(s.fileno()).st_ino for s in (a, b)}
    assert (msg2, fds2) == ("FDSTOREREMOVE=1\nFDNAME=relay 127.0.0.1 80", [])
    for f in fds:
        os.close(f)
    a.close()
    b.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert proc.notify_systemd("READY=1") is False
    assert proc.fdstore("x", [0]) is False


def test_listen_fds_only_for_our_pid(monkeypatch):
    # two descriptors where systemd would put them (here from 900, not 3)
    r, w = os.pipe()
    os.dup2(r, 900)
    os.dup2(w, 901)
    os.close(r)
    os.close(w)
    monkeypatch.setattr(proc, "LISTEN_FDS_START", 900)
    try:
        # another process's variables: not ours, left alone, and gone
        monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_FDNAMES", "a:b")
        assert proc.listen_fds() == {}
        assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ
        assert os.get_inheritable(900)
        # ours: by name, in order, close-on-exec
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_FDNAMES", "relay x:relay x")
        assert proc.listen_fds() == {"relay x": [900, 901]}
        assert not os.get_inheritable(900) and not os.get_inheritable(901)
        assert "LISTEN_FDNAMES" not in os.environ
    finally:
        os.close(900)
        os.close(901)


def test_a_restart_adopts_the_stored_sockets_and_binds_the_rest():
    p1, p2 = free_ports(2)
    first = parent_listen.Listeners(2)
    socks = first.bind(config([p1]))
    changes = first.store_changes()
    # a fresh start: both processes' sockets stored under the listener's name
    name1 = parent_listen.fd_name(f"127.0.0.1 {p1}")
    assert [(n, len(f)) for n, f in changes] == [(name1, 2)]
    # a connection that arrives while no daemon runs waits in the queue
    client = socket.create_connection(("127.0.0.1", p1), timeout=2)
    stored = [os.dup(per[f"127.0.0.1 {p1}"].fileno()) for per in socks]
    parent_listen.close_all(socks)
    # the next start: p1 adopted (the same sockets), p2 new, a stale name dropped
    stale = socket.socket()
    passed = {name1: stored, "relay 127.0.0.1 9": [stale.detach()]}
    nxt = parent_listen.Listeners(2, passed)
    socks2 = nxt.bind(config([p1, p2]))
    assert nxt.adopted == 2
    assert [per[f"127.0.0.1 {p1}"].fileno() for per in socks2] == stored
    assert nxt.leftover() == ["relay 127.0.0.1 9"]
    changes = nxt.store_changes(["relay 127.0.0.1 9"])
    name2 = parent_listen.fd_name(f"127.0.0.1 {p2}")
    assert [(n, None if f is None else len(f)) for n, f in changes] == [
        ("relay 127.0.0.1 9", None), (name2, 2)]
    # the waiting connection is in one of the adopted queues
    got = []
    for per in socks2:
        s = per[f"127.0.0.1 {p1}"]
        try:
            got.append(s.accept()[0])
        except BlockingIOError:
            pass
    assert len(got) == 1
    got[0].sendall(b"x")
    assert client.recv(1) == b"x"
    for s in (*got, client):
        s.close()
    # a reload that drops p1: its name leaves the store
    nxt.commit(config([p1, p2]))
    assert nxt.commit(config([p2])) == [name1]
    parent_listen.close_all(socks2)


def test_fewer_processes_after_a_restart_store_their_listener_afresh():
    (p,) = free_ports(1)
    first = parent_listen.Listeners(3)
    socks = first.bind(config([p], prefork=3))
    stored = [os.dup(per[f"127.0.0.1 {p}"].fileno()) for per in socks]
    parent_listen.close_all(socks)
    name = parent_listen.fd_name(f"127.0.0.1 {p}")
    nxt = parent_listen.Listeners(2, {name: stored})
    socks2 = nxt.bind(config([p], prefork=2))
    assert nxt.adopted == 2
    # the store held three: removed, then the two in use stored again
    changes = nxt.store_changes()
    assert [(n, None if f is None else len(f)) for n, f in changes] == [(name, None), (name, 2)]
    parent_listen.close_all(socks2)


def test_a_passed_socket_of_another_kind_is_not_adopted():
    (p,) = free_ports(1)
    name = parent_listen.fd_name(f"127.0.0.1 {p}")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", p))
    nxt = parent_listen.Listeners(1, {name: [udp.detach()]})
    socks = nxt.bind(config([p], prefork=1))            # a TCP relay: bound anew
    assert nxt.adopted == 0
    s = socks[0][f"127.0.0.1 {p}"]
    assert s.type == socket.SOCK_STREAM
    assert nxt.store_changes() == [(name, None), (name, [s.fileno()])]
    parent_listen.close_all(socks)
