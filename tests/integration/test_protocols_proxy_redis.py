"""check http-proxy against tinyproxy (Debian's tinyproxy) in front of a
real HTTP server (python3 -m http.server), and check redis against
redis-server (Debian's redis-server) with a password."""

from __future__ import annotations

import os
import sys

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, missing_programs, world_dir

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs servers)")]

TINYPROXY = """\
User nobody
Group nogroup
Port {port}
Listen 127.0.0.1
Timeout 5
MaxClients 20
Allow 127.0.0.1
LogFile "{dir}/tinyproxy.log"
LogLevel Info
PidFile "{dir}/tinyproxy.pid"
"""

REDIS_PASSWORD = "s3cret-Redis"


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = tmp_path_factory.mktemp("web")
    (d / "health").write_text("ok\n")
    port = free_port()
    srv = Server("http.server", [sys.executable, "-m", "http.server", str(port),
                                 "--bind", "127.0.0.1", "--directory", str(d)], d, port)
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tinyproxy(web):
    if why := missing_programs("tinyproxy"):
        pytest.skip(why)
    with world_dir("tinyproxy") as d:
        os.chmod(d, 0o777)          # tinyproxy writes its log after dropping to nobody
        port = free_port()
        (d / "tinyproxy.conf").write_text(TINYPROXY.format(port=port, dir=d))
        srv = Server("tinyproxy", ["tinyproxy", "-d", "-c", str(d / "tinyproxy.conf")], d, port)
        try:
            yield srv.start()
        finally:
            srv.stop()


def proxy(url: str, **kw) -> CheckService:
    return CheckService(kind="http-proxy", uri=url, **kw)


def test_proxy_up(tinyproxy, web):
    v = check_once(proxy(f"http://127.0.0.1:{web.port}/health"), tinyproxy.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "http-proxy: code 200"), v


def test_proxy_wrong_code(tinyproxy, web):
    v = check_once(proxy(f"http://127.0.0.1:{web.port}/nosuch"), tinyproxy.port)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail.startswith("http-proxy: code mismatch: got 404, want 200"), v


def test_proxy_up_code(tinyproxy, web):
    v = check_once(proxy(f"http://127.0.0.1:{web.port}/nosuch", code=404), tinyproxy.port)
    assert v.ok, v


def test_proxy_wrong_upstream_down(tinyproxy):
    """The proxy is up but cannot reach the URL: tinyproxy answers 500."""
    v = check_once(proxy(f"http://127.0.0.1:{free_port()}/"), tinyproxy.port)
    assert not v.ok and v.detail.startswith("http-proxy: code mismatch: got 5"), v


def test_proxy_down_after_stop(tinyproxy, web):
    tinyproxy.stop()
    v = check_once(proxy(f"http://127.0.0.1:{web.port}/health"), tinyproxy.port, timeout=2.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    if why := missing_programs("redis-server"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("redis")
    port = free_port()
    srv = Server("redis-server", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
        "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
        "--dir", str(d), "--logfile", ""], d, port)
    try:
        yield srv.start()
    finally:
        srv.stop()


def test_redis_up(redis):
    v = check_once(CheckService(kind="redis", password=REDIS_PASSWORD), redis.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "redis"), v


def test_redis_wrong_password(redis):
    v = check_once(CheckService(kind="redis", password="wrong-pw-123"), redis.port)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail.startswith("redis: AUTH failed: -WRONGPASS"), v
    assert "wrong-pw-123" not in v.detail


def test_redis_wrong_no_auth(redis):
    v = check_once(CheckService(kind="redis"), redis.port)
    assert (v.ok, v.detail) == (False, "redis: PING: -NOAUTH Authentication required.")


def test_redis_wrong_expect(redis):
    v = check_once(CheckService(kind="redis", password=REDIS_PASSWORD, expect="PANG"), redis.port)
    assert (v.ok, v.detail) == (False, "redis: PING answered +PONG, want PANG")


def test_redis_down_after_stop(redis):
    redis.stop()
    v = check_once(CheckService(kind="redis"), redis.port, timeout=2.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
