"""check sip against SIPp (Debian's sip-tester) as a UAS running a scenario
that answers OPTIONS: one on UDP answering 200, one on TCP answering 486."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, missing_programs

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs sipp)")]

SCENARIO = """\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answer OPTIONS">
  <recv request="OPTIONS" crlf="true"/>
  <send>
    <![CDATA[

      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]hs[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Allow: INVITE, ACK, BYE, CANCEL, OPTIONS
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def start_sipp(d, status: str, transport: str) -> Server:
    port = free_port()
    xml = d / f"options-{port}.xml"
    xml.write_text(SCENARIO.format(status=status))
    argv = ["sipp", "-sf", str(xml), "-i", "127.0.0.1", "-p", str(port), "-nostdin",
            "-t", "u1" if transport == "udp" else "tn", "-max_socket", "100", "-trace_err",
            "-error_file", str(d / f"errors-{port}.log")]
    srv = Server("sipp", argv, d, port)
    return srv.start(srv.wait_udp if transport == "udp" else srv.wait_tcp)


@pytest.fixture(scope="module")
def sipp_udp(tmp_path_factory):
    if why := missing_programs("sipp"):
        pytest.skip(why)
    srv = start_sipp(tmp_path_factory.mktemp("sipp"), "200 OK", "udp")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def sipp_tcp(tmp_path):
    """One per test: SIPp ends its run when a TCP peer resets the connection,
    which the runner's SO_LINGER 0 close does (starts in about 0.1 s)."""
    if why := missing_programs("sipp"):
        pytest.skip(why)
    srv = start_sipp(tmp_path, "486 Busy Here", "tcp")
    try:
        yield srv
    finally:
        srv.stop()


def test_up_udp(sipp_udp):
    v = check_once(CheckService(kind="sip"), sipp_udp.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "sip: SIP/2.0 200 OK"), v


def test_up_tcp_any_final_response(sipp_tcp):
    v = check_once(CheckService(kind="sip", uri="sip:ping@127.0.0.1", transport="tcp"),
                   sipp_tcp.port)
    assert (v.ok, v.detail) == (True, "sip: SIP/2.0 486 Busy Here"), v


def test_wrong_status(sipp_tcp):
    v = check_once(CheckService(kind="sip", transport="tcp", expect="2"), sipp_tcp.port)
    assert (v.ok, v.error, v.detail) == (False, HostError.PROTOCOL_FAIL,
                                         "sip: got SIP/2.0 486 Busy Here, want 2")


def test_down_after_stop(sipp_udp, sipp_tcp):
    sipp_udp.stop()
    sipp_tcp.stop()
    v = check_once(CheckService(kind="sip"), sipp_udp.port, timeout=1.0)
    assert (v.ok, v.error) == (False, HostError.TCP_READ_FAIL), v
    v = check_once(CheckService(kind="sip", transport="tcp"), sipp_tcp.port, timeout=1.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
