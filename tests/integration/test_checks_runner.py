"""run_check against real servers on loopback (no root needed)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import sys
import time

import pytest

from hoststated.checks import make_check
from hoststated.checks.base import Target
from hoststated.checks.runner import run_check, ssl_context
from hoststated.conf import model
from hoststated.states import HostError

sys.path.insert(0, os.path.dirname(__file__))
from test_checks_servers import Server, banner, http, make_ca_and_cert, silent  # noqa: E402


def check(m, port, address="127.0.0.1", timeout=0.5, **kw):
    t = Target(address, port, name=address)
    return run_check(make_check(m, t), t, timeout, **kw)


def arun(coro):
    return asyncio.run(coro)


def test_http_code_ok_and_mismatch():
    async def main():
        async with Server(http(302)) as s:
            ok = await check(model.CheckHttp(code=302), s.port)
            bad = await check(model.CheckHttp(code=200), s.port)
            assert s.requests[0] == b"HEAD / HTTP/1.0\r\n\r\n"
            return ok, bad
    ok, bad = arun(main())
    assert ok.ok and ok.error == HostError.HTTP_CODE_OK
    assert str(bad) == "http code mismatch: got 302, want 200"


def test_http_host_header_http11():
    async def main():
        async with Server(http(200)) as s:
            v = await check(model.CheckHttp(path="/h", host="www.example.com", code=200), s.port)
            return v, s.requests
    v, reqs = arun(main())
    assert v.ok
    assert reqs[0] == b"HEAD /h HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"


def test_http_digest_and_body():
    body = b"I am healthy\n"
    async def main():
        async with Server(http(200, body)) as s:
            d = await check(model.CheckHttp(digest=hashlib.md5(body).hexdigest()), s.port)
            b = await check(model.CheckHttp(body="healthy$"), s.port)
            nb = await check(model.CheckHttp(body="^sick"), s.port)
            return d, b, nb
    d, b, nb = arun(main())
    assert d.error == HostError.HTTP_DIGEST_OK and b.error == HostError.HTTP_BODY_OK
    assert nb.error == HostError.HTTP_BODY_FAIL and "healthy" in nb.detail


def test_connect_refused():
    async def main():
        async with Server(silent) as s:
            port = s.port
        return await check(model.CheckTcp(), port)
    v = arun(main())
    assert v.error == HostError.TCP_CONNECT_FAIL and v.detail == "Connection refused"


def test_tcp_ok():
    async def main():
        async with Server(silent) as s:
            return await check(model.CheckTcp(), s.port)
    assert arun(main()).error == HostError.TCP_CONNECT_OK


def test_accepts_and_never_answers():
    async def main():
        async with Server(silent) as s:
            h = await check(model.CheckHttp(code=200), s.port, timeout=0.2)
            b = await check(model.CheckSendExpect(expect="220 *"), s.port, timeout=0.2)
            return h, b
    h, b = arun(main())
    assert h.error == HostError.TCP_READ_TIMEOUT and "no answer within 200ms" in h.detail
    assert b.error == HostError.TCP_READ_TIMEOUT


def test_banner_match_and_mismatch_shows_what_arrived():
    async def main():
        async with Server(banner(b"220 mail.example ESMTP\r\n")) as s:
            ok = await check(model.CheckSendExpect(expect="220 *"), s.port)
        async with Server(banner(b"554 busy\r\n")) as s:
            bad = await check(model.CheckSendExpect(expect="220 *"), s.port, timeout=0.3)
        return ok, bad
    ok, bad = arun(main())
    assert ok.error == HostError.SEND_EXPECT_OK
    # the server keeps the connection open: the timeout reports what arrived
    assert bad.error == HostError.TCP_READ_TIMEOUT
    assert "got '554 busy\\r\\n', want '220 *'" in bad.detail


def test_send_expect_and_binary():
    async def echo(srv, reader, writer):
        data = await reader.read(100)
        srv.requests.append(data)
        writer.write(b"+PONG\r\n" if data == b"PING\r\n" else bytes.fromhex("300c0201"))
        await writer.drain()
        await reader.read(100)
    async def main():
        async with Server(echo) as s:
            a = await check(model.CheckSendExpect(send="PING\r\n", expect="+PONG*"), s.port)
            b = await check(model.CheckBinary(send="3005", expect="300c"), s.port)
            c = await check(model.CheckBinary(send="3005", expect="ffff"), s.port)
            return a, b, c, s.requests
    a, b, c, reqs = arun(main())
    assert a.ok and b.ok and not c.ok and c.detail == "got 300c, want ffff"
    assert reqs[0] == b"PING\r\n" and reqs[1] == bytes.fromhex("3005")


def test_garbage_and_huge_body():
    async def garbage(srv, reader, writer):
        await reader.read(100)
        writer.write(os.urandom(3000))
        await writer.drain()
    async def huge(srv, reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        for _ in range(200):                # 12.8 MB, more than the cap
            writer.write(b"z" * 65536)
            await writer.drain()
    async def main():
        async with Server(garbage) as s:
            g = await check(model.CheckHttp(code=200), s.port)
        async with Server(huge) as s:
            h = await check(model.CheckHttp(digest="a" * 40), s.port, timeout=3)
        return g, h
    g, h = arun(main())
    assert not g.ok and g.error == HostError.HTTP_CODE_ERROR
    assert h.error == HostError.HTTP_DIGEST_FAIL and "over" in h.detail


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_ca_and_cert(str(tmp_path_factory.mktemp("tls")))


def server_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs[1], certs[2])
    return ctx


def test_https_and_tls(certs):
    async def main():
        async with Server(http(200), ssl=server_ctx(certs)) as s:
            h = await check(model.CheckHttp(kind="https", code=200), s.port,
                            ssl_context=ssl_context())
            t = await check(model.CheckTls(), s.port)
            tv = await check(model.CheckTls(verify=True, ca_file=certs[0]), s.port,
                             ssl_context=ssl_context(True, certs[0]))
            tbad = await check(model.CheckTls(verify=True), s.port,
                               ssl_context=ssl_context(True, None))
            return h, t, tv, tbad
    h, t, tv, tbad = arun(main())
    assert h.ok and h.error == HostError.HTTP_CODE_OK
    assert t.ok and t.error == HostError.TLS_CONNECT_OK and "certificate expires in" in t.detail
    assert tv.ok and tv.detail.endswith("verified")
    assert tbad.error == HostError.TLS_CONNECT_FAIL and "certificate" in tbad.detail


def test_tls_against_plain_servers():
    async def main():
        async with Server(silent) as s:
            quiet = await check(model.CheckTls(), s.port, timeout=0.2)
        async with Server(banner(b"SSH-2.0-OpenSSH_9.2\r\n" * 20)) as s:
            junk = await check(model.CheckTls(), s.port)
        return quiet, junk
    quiet, junk = arun(main())
    assert quiet.error == HostError.TLS_CONNECT_TIMEOUT
    assert junk.error in (HostError.TLS_CONNECT_FAIL, HostError.TLS_CONNECT_ERROR) and not junk.ok


def script(tmp_path, body):
    p = tmp_path / "check.sh"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def test_script_exit_status(tmp_path):
    up = script(tmp_path, 'echo "checking $1"; exit 1\n')
    v = arun(check(model.CheckScript(path=up), None, address="198.51.100.12"))
    assert v.ok and v.error == HostError.SCRIPT_OK and v.detail == "exit 1: checking 198.51.100.12"
    down = script(tmp_path, "exit 0\n")
    assert arun(check(model.CheckScript(path=down), None)).error == HostError.SCRIPT_FAIL
    missing = arun(check(model.CheckScript(path=str(tmp_path / "nope")), None))
    assert missing.error == HostError.SCRIPT_FAIL and missing.detail == "script not found"


def test_script_killed_at_timeout_with_its_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    slow = script(tmp_path, f"sleep 30 & echo $! > {pidfile}\nsleep 30\nexit 1\n")
    v = arun(check(model.CheckScript(path=slow), None, timeout=0.5))
    assert v.error == HostError.SCRIPT_FAIL and v.detail == "script timed out"
    child = int(pidfile.read_text())
    for _ in range(500):                     # reaped by init shortly after the kill (<= 10 s)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.02)
    else:
        os.kill(child, 9)
        pytest.fail("the script's background child survived the timeout")


def test_one_script_instance_per_host(tmp_path):
    count = tmp_path / "runs"
    s = script(tmp_path, f"echo x >> {count}; sleep 0.3; exit 1\n")
    async def main():
        return await asyncio.gather(*(check(model.CheckScript(path=s), None, timeout=2)
                                      for _ in range(3)))
    vs = arun(main())
    assert sum(v.ok for v in vs) == 1
    assert count.read_text().count("x") == 1
