"""check dns against dnsmasq (Debian's dnsmasq-base), over UDP and TCP."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, missing_programs

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs dnsmasq)")]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    if why := missing_programs("dnsmasq"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("dnsmasq")
    (d / "empty.conf").write_text("")   # not /dev/null: on some images it is a file
    port = free_port()
    srv = Server("dnsmasq", [
        "dnsmasq", "--keep-in-foreground", f"--conf-file={d}/empty.conf", f"--port={port}",
        "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
        "--user=root", f"--pid-file={d}/pid", "--local=/example.test/",
        "--host-record=www.example.test,192.0.2.10",
        "--host-record=v6.example.test,2001:db8::10",
        "--mx-host=example.test,mail.example.test,10",
        "--txt-record=example.test,hello world",
        "--log-queries", f"--log-facility={d}/dnsmasq.log"], d, port)
    try:
        srv.start(srv.wait_tcp)
        yield srv
    finally:
        srv.stop()


def dns(**kw) -> CheckService:
    return CheckService(kind="dns", **kw)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_up_a_record(dnsmasq, transport):
    v = check_once(dns(query="www.example.test", qtype="A", expect="192.0.2.10",
                       transport=transport), dnsmasq.port)
    assert v.ok, v


def test_up_other_types(dnsmasq):
    assert check_once(dns(query="v6.example.test", qtype="AAAA", expect="2001:db8::10"),
                      dnsmasq.port).ok
    assert check_once(dns(query="example.test", qtype="MX", expect="mail.example.test"),
                      dnsmasq.port).ok
    assert check_once(dns(query="example.test", qtype="TXT", expect="hello world"),
                      dnsmasq.port).ok


def test_wrong_answer(dnsmasq):
    v = check_once(dns(query="www.example.test", qtype="A", expect="192.0.2.99"), dnsmasq.port)
    assert not v.ok and v.error is HostError.PROTOCOL_FAIL
    assert v.detail == "dns: A www.example.test is 192.0.2.10, want 192.0.2.99"


def test_wrong_no_record(dnsmasq):
    v = check_once(dns(query="www.example.test", qtype="AAAA"), dnsmasq.port)
    assert (v.ok, v.error, v.detail) == (False, HostError.PROTOCOL_FAIL,
                                         "dns: no AAAA record for www.example.test")


def test_wrong_nxdomain(dnsmasq):
    v = check_once(dns(query="nosuch.example.test", qtype="A"), dnsmasq.port)
    assert (v.ok, v.detail) == (False, "dns: NXDOMAIN for A nosuch.example.test")


def test_down(tmp_path):
    port = free_port()          # nothing listens there: an ICMP port unreachable
    v = check_once(dns(query="www.example.test"), port, timeout=1.0)
    assert not v.ok and v.error in (HostError.TCP_READ_FAIL, HostError.TCP_READ_TIMEOUT), v
    v = check_once(dns(query="www.example.test", transport="tcp"), port, timeout=1.0)
    assert not v.ok and v.error is HostError.TCP_CONNECT_FAIL, v


def test_down_after_stop(dnsmasq):
    """Last in the module: the server stops, the check goes down."""
    dnsmasq.stop()
    v = check_once(dns(query="www.example.test", expect="192.0.2.10"), dnsmasq.port, timeout=1.0)
    assert not v.ok and v.error is HostError.TCP_READ_FAIL, v
