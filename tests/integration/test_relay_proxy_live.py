"""relay_proxy against a real HAProxy (Debian's package) on loopback, both ways:
- our header(), sent to an HAProxy `bind ... accept-proxy`, which answers
  with the addresses it read (its %[src] %[src_port] %[dst] %[dst_port]);
- HAProxy's own `send-proxy` / `send-proxy-v2` toward a socket of the test,
  read with our parse().
The addresses inside the headers are documentation ones; all traffic is to
127.0.0.1 and ::1."""

from __future__ import annotations

import socket

import pytest

from hoststated.relay_proxy import header, parse
from protocol_servers import Server, free_port, missing_programs

WAIT = 5.0


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory):
    if why := missing_programs("haproxy"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("haproxy")
    ports = {k: free_port() for k in ("recv", "send1", "send2", "send1_6", "send2_6")}
    # the test's own listeners that HAProxy forwards to, with a header
    sinks = {}
    for k in ("send1", "send2"):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        s.settimeout(WAIT)
        sinks[k] = s
    cfg = f"""global
    maxconn 64
defaults
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend recv
    mode http
    bind 127.0.0.1:{ports['recv']} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src] %[src_port] %[dst] %[dst_port]"
frontend send1
    mode tcp
    bind 127.0.0.1:{ports['send1']}
    bind [::1]:{ports['send1_6']}
    default_backend send1
frontend send2
    mode tcp
    bind 127.0.0.1:{ports['send2']}
    bind [::1]:{ports['send2_6']}
    default_backend send2
backend send1
    mode tcp
    server s 127.0.0.1:{sinks['send1'].getsockname()[1]} send-proxy
backend send2
    mode tcp
    server s 127.0.0.1:{sinks['send2'].getsockname()[1]} send-proxy-v2
"""
    (d / "haproxy.cfg").write_text(cfg)
    srv = Server("haproxy", ["haproxy", "-db", "-f", str(d / "haproxy.cfg")], d, ports["recv"])
    try:
        srv.start(srv.wait_tcp)
        yield srv, ports, sinks
    finally:
        srv.stop()
        for s in sinks.values():
            s.close()


def ask_haproxy(port: int, head: bytes) -> tuple[socket.socket, str]:
    c = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    c.sendall(head + b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := c.recv(4096):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200"), data
    return c, data.partition(b"\r\n\r\n")[2].decode()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("src,dst", [
    (("192.0.2.7", 40000), ("198.51.100.1", 443)),
    (("2001:db8::7", 40000), ("2001:db8:1::1", 443)),
], ids=["tcp4", "tcp6"])
def test_haproxy_reads_our_header(haproxy, version, src, dst):
    _, ports, _ = haproxy
    c, body = ask_haproxy(ports["recv"], header(version, src, dst))
    c.close()
    assert body.split() == [src[0], str(src[1]), dst[0], str(dst[1])]


@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_takes_unknown_and_local_as_the_connection(haproxy, version):
    _, ports, _ = haproxy
    head = header(version, None, None, local=version == 2)
    c, body = ask_haproxy(ports["recv"], head)
    me = c.getsockname()
    c.close()
    assert body.split() == ["127.0.0.1", str(me[1]), "127.0.0.1", str(ports["recv"])]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["tcp4", "tcp6"])
def test_we_read_haproxys_header(haproxy, version, family):
    _, ports, sinks = haproxy
    key = f"send{version}" + ("_6" if family == socket.AF_INET6 else "")
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as c:
        c.settimeout(WAIT)
        c.connect((host, ports[key]))
        c.sendall(b"hello after the header")
        conn, _ = sinks[f"send{version}"].accept()
        with conn:
            conn.settimeout(WAIT)
            buf = b""
            while True:
                chunk = conn.recv(4096)
                assert chunk, f"closed after {buf!r}"
                buf += chunk
                got, used = parse(buf)
                if got is not None and len(buf) - used >= len(b"hello after the header"):
                    break
        me = c.getsockname()[:2]
    assert got.version == version and got.command == "PROXY"
    assert got.family == ("TCP4" if family == socket.AF_INET else "TCP6")
    assert got.src == me and got.dst == (host, ports[key])
    assert buf[used:] == b"hello after the header"
