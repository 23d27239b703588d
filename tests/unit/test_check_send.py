"""send/expect, binary send/expect, tcp and tls conversations: bytes in, verdict out."""

import pytest

from hoststated.checks.base import Done, Send, TLSInfo, escape
from hoststated.checks.send import BinarySendExpectCheck, SendExpectCheck, glob_to_regex
from hoststated.checks.tcp import TcpCheck
from hoststated.states import HostError


def verdict_of(actions):
    (done,) = [a for a in actions if isinstance(a, Done)]
    return done.verdict


@pytest.mark.parametrize("pattern,data,match", [
    ("SSH-2.0-*", b"SSH-2.0-OpenSSH_9.2\r\n", True),
    ("220 *", b"220 mail ESMTP\r\n", True),
    ("220 *", b"554 go away\r\n", False),
    ("+OK*", b"+OK ready\r\n", True),
    ("a?c", b"abc", True),
    ("a?c", b"abbc", False),
    ("[0-9][0-9][0-9] *", b"250 ok", True),
    ("[!5]*", b"250", True),
    ("[!5]*", b"550", False),
    ("a\\*", b"a*", True),
    ("a\\*", b"ab", False),
    ("*/*", b"x/y", True),          # fnmatch(3) without FNM_PATHNAME
    ("*ok*", b"line1\nok\n", True),  # * crosses newlines
])
def test_glob(pattern, data, match):
    assert bool(glob_to_regex(pattern).match(data)) is match


def test_nothing_sends_nothing_and_reads_banner():
    c = SendExpectCheck(None, "220 *")
    assert c.start() == []
    assert verdict_of(c.receive(b"220 smtp ready\r\n")).error == HostError.SEND_EXPECT_OK


def test_send_then_expect_over_several_reads():
    c = SendExpectCheck("PING\r\n", "+PONG*")
    assert c.start() == [Send(b"PING\r\n")]
    assert c.receive(b"+PO") == []
    assert verdict_of(c.receive(b"NG\r\n")).ok


def test_mismatch_at_eof_shows_what_arrived_escaped():
    c = SendExpectCheck(None, "220 *")
    c.receive(b"554 no\r\n\x00")
    v = verdict_of(c.eof())
    assert not v.ok and v.error == HostError.SEND_EXPECT_FAIL
    assert v.detail == "got '554 no\\r\\n\\x00', want '220 *'"


def test_progress_for_timeouts_and_truncation():
    c = SendExpectCheck(None, "220 *")
    c.receive(b"x" * 100)
    assert c.progress().startswith("got 'xxxx") and "'..." in c.progress()


def test_never_matching_flood_capped():
    c = SendExpectCheck(None, "220 *")
    acts = []
    for _ in range(100):
        acts = c.receive(b"z" * 1000)
        if acts:
            break
    assert verdict_of(acts).error == HostError.SEND_EXPECT_FAIL


def test_binary():
    c = BinarySendExpectCheck("30 0c 02 01 01", "300c")
    assert c.start() == [Send(bytes.fromhex("300c020101"))]
    assert c.receive(b"\x30") == []
    assert verdict_of(c.receive(b"\x0c\x99")).ok
    c = BinarySendExpectCheck(None, "ff00")
    v = verdict_of(c.receive(b"\xfe\x00"))
    assert not v.ok and v.detail == "got fe00, want ff00"
    v = verdict_of(BinarySendExpectCheck(None, "ff00").eof())
    assert v.detail == "got nothing, want ff00"


def test_tcp_passes_on_connect():
    assert verdict_of(TcpCheck().start()).error == HostError.TCP_CONNECT_OK


def test_escape():
    assert escape(b"ab\r\n") == "'ab\\r\\n'"
    assert escape(b"a'b") == "'a\\'b'"
    assert escape(b"x" * 10, 4) == "'xxxx'..."


def test_fresh_copies_start_empty():
    proto = SendExpectCheck("PING", "+PONG*")
    a = proto.fresh()
    assert a.start() == [Send(b"PING")]
    assert verdict_of(a.receive(b"+PONG\r\n")).ok
    b = proto.fresh()                              # a's reply is not b's
    assert b.receive(b"-ERR") == []
    assert b.progress() == "got '-ERR', want '+PONG*'"
    bp = BinarySendExpectCheck("01", "0203")
    x = bp.fresh()
    assert x.receive(b"\x02") == []
    y = bp.fresh()
    assert verdict_of(y.receive(b"\x02\x03")).ok
    t = TcpCheck()
    assert t.fresh() is t                          # no state: the same object serves
