"""dns and radius checks on wire messages: DNS answers built by dnspython as
dnsmasq sends them, RADIUS packets from RFC 2865 section 7.1 and answers
signed the way FreeRADIUS signs them."""

from __future__ import annotations

import hashlib
import hmac
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from hoststated.checks.base import Done, Send
from hoststated.checks.dns import DnsCheck
from hoststated.checks.radius import (ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT,
                                      MESSAGE_AUTHENTICATOR, REPLY_MESSAGE, RadiusCheck,
                                      attribute, hide_password, parse_attributes)
from hoststated.states import HostError


def verdict(actions):
    assert len(actions) == 1 and isinstance(actions[0], Done), actions
    return actions[0].verdict


# --- dns ------------------------------------------------------------------

def answer(check: DnsCheck, *records: str, rcode=dns.rcode.NOERROR, qid=None,
           flags=0) -> bytes:
    query = dns.message.from_wire(check.query()[2:] if check.transport == "tcp"
                                  else check.query())
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.AA | flags
    resp.set_rcode(rcode)
    for text in records:
        resp.answer.append(dns.rrset.from_text(*text.split(" ", 4)))
    if qid is not None:
        resp.id = qid
    return resp.to_wire()


def test_dns_query_is_a_dns_message():
    c = DnsCheck("www.example.test", "aaaa", query_id=4242)
    [send] = c.start()
    q = dns.message.from_wire(send.data)
    assert q.id == 4242 and str(q.question[0]) == "www.example.test. IN AAAA"
    assert q.flags & dns.flags.RD


def test_dns_tcp_length_prefix():
    c = DnsCheck("www.example.test", transport="tcp", query_id=7)
    data = c.query()
    assert int.from_bytes(data[:2], "big") == len(data) - 2


def test_dns_up_and_expect():
    c = DnsCheck("www.example.test", expect="192.0.2.10", query_id=1)
    v = verdict(c.receive(answer(c, "www.example.test. 0 IN A 192.0.2.10")))
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK,
                                         "dns: A www.example.test 192.0.2.10")


def test_dns_expect_through_cname():
    c = DnsCheck("www.example.test", expect="192.0.2.10", query_id=1)
    wire = answer(c, "www.example.test. 0 IN CNAME web.example.test.",
                  "web.example.test. 0 IN A 192.0.2.10")
    assert verdict(c.receive(wire)).ok


def test_dns_mx_and_txt_forms():
    c = DnsCheck("example.test", "MX", expect="Mail.Example.Test", query_id=1)
    assert verdict(c.receive(answer(c, "example.test. 0 IN MX 10 mail.example.test."))).ok
    c = DnsCheck("example.test", "MX", expect="10 mail.example.test.", query_id=1)
    assert verdict(c.receive(answer(c, "example.test. 0 IN MX 10 mail.example.test."))).ok
    c = DnsCheck("example.test", "TXT", expect="hello world", query_id=1)
    assert verdict(c.receive(answer(c, 'example.test. 0 IN TXT "hello world"'))).ok


def test_dns_wrong_answer():
    c = DnsCheck("www.example.test", expect="192.0.2.99", query_id=1)
    v = verdict(c.receive(answer(c, "www.example.test. 0 IN A 192.0.2.10")))
    assert (v.ok, v.error, v.detail) == (
        False, HostError.PROTOCOL_FAIL, "dns: A www.example.test is 192.0.2.10, want 192.0.2.99")


def test_dns_no_record_and_nxdomain():
    c = DnsCheck("www.example.test", "AAAA", query_id=1)
    assert verdict(c.receive(answer(c))).detail == "dns: no AAAA record for www.example.test"
    c = DnsCheck("nosuch.example.test", query_id=1)
    assert verdict(c.receive(answer(c, rcode=dns.rcode.NXDOMAIN))).detail == \
        "dns: NXDOMAIN for A nosuch.example.test"
    c = DnsCheck("x.test", query_id=1)
    assert verdict(c.receive(answer(c, rcode=dns.rcode.REFUSED))).detail == \
        "dns: REFUSED for A x.test"


def test_dns_udp_ignores_other_ids_tcp_does_not():
    c = DnsCheck("www.example.test", query_id=1)
    assert c.receive(answer(c, "www.example.test. 0 IN A 192.0.2.10", qid=2)) == []
    c = DnsCheck("www.example.test", transport="tcp", query_id=1)
    wire = answer(c, "www.example.test. 0 IN A 192.0.2.10", qid=2)
    v = verdict(c.receive(len(wire).to_bytes(2, "big") + wire))
    assert v.detail == "dns: answer does not match the query id"


def test_dns_tcp_in_pieces():
    c = DnsCheck("www.example.test", transport="tcp", query_id=9)
    wire = answer(c, "www.example.test. 0 IN A 192.0.2.10")
    data = len(wire).to_bytes(2, "big") + wire
    assert c.receive(data[:1]) == [] and c.receive(data[1:10]) == []
    assert verdict(c.receive(data[10:])).ok


def test_dns_truncated_and_malformed():
    c = DnsCheck("www.example.test", query_id=1)
    v = verdict(c.receive(answer(c, flags=dns.flags.TC)))
    assert v.detail == "dns: answer for www.example.test truncated (try `tcp`)"
    v = verdict(DnsCheck("x.test", query_id=1).receive(b"\x00\x01\x81"))
    assert not v.ok and v.detail.startswith("dns: malformed answer")


def test_dns_bad_type():
    v = verdict(DnsCheck("x.test", "BOGUS").start())
    assert not v.ok and v.detail.startswith("dns: cannot ask for BOGUS x.test")


# --- radius ---------------------------------------------------------------

RFC_AUTH = bytes.fromhex("0f403f9473978057bd83d5cb98f4227a")


def test_password_hiding_rfc2865_example():
    # RFC 2865 7.1: user nemo, password arctangent, secret xyzzy5461
    assert hide_password(b"arctangent", b"xyzzy5461", RFC_AUTH).hex() == \
        "0dbe708d93d413ce3196e43f782a0aee"
    assert len(hide_password(b"", b"s", RFC_AUTH)) == 16
    assert len(hide_password(b"x" * 17, b"s", RFC_AUTH)) == 32


def test_rfc2865_access_accept_verifies():
    c = RadiusCheck("xyzzy5461", "nemo", "arctangent", identifier=0, authenticator=RFC_AUTH)
    accept = bytes.fromhex("0200002686fe220e7624ba2a1005f6bf9b55e0b2"
                           "0606000000010f06000000000e06c0a80103")
    v = verdict(c.receive(accept))
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "radius: access accepted")


def request_fields(c: RadiusCheck):
    [send] = c.start()
    assert isinstance(send, Send)
    pkt = send.data
    code, ident, length = struct.unpack("!BBH", pkt[:4])
    return code, ident, length, pkt


def test_request_layout_and_message_authenticator():
    c = RadiusCheck("s3cret", "alice", "pw", nas_identifier="lb1", identifier=5,
                    authenticator=RFC_AUTH)
    code, ident, length, pkt = request_fields(c)
    assert (code, ident, length) == (1, 5, len(pkt))
    attrs = dict(parse_attributes(pkt[20:]))
    assert attrs[1] == b"alice" and attrs[32] == b"lb1"
    assert attrs[2] == hide_password(b"pw", b"s3cret", RFC_AUTH)
    assert b"pw" not in pkt and b"s3cret" not in pkt
    zeroed = pkt[:-16] + b"\0" * 16
    assert hmac.new(b"s3cret", zeroed, hashlib.md5).digest() == attrs[MESSAGE_AUTHENTICATOR]


def reply(c: RadiusCheck, code: int, attrs: bytes = b"", secret: bytes | None = None,
          with_ma: bool = True) -> bytes:
    secret = secret or c._secret
    if with_ma:
        attrs += attribute(MESSAGE_AUTHENTICATOR, b"\0" * 16)
    head = struct.pack("!BBH", code, c.identifier, 20 + len(attrs))
    if with_ma:
        mac = hmac.new(secret, head + c.authenticator + attrs, hashlib.md5).digest()
        attrs = attrs[:-16] + mac
    auth = hashlib.md5(head + c.authenticator + attrs + secret).digest()
    return head + auth + attrs


def test_accept_reject_challenge():
    c = RadiusCheck("s", "u", "p", identifier=1, authenticator=RFC_AUTH)
    assert verdict(c.receive(reply(c, ACCESS_ACCEPT))).ok
    v = verdict(c.receive(reply(c, ACCESS_REJECT)))
    assert (v.ok, v.error, v.detail) == (False, HostError.PROTOCOL_FAIL, "radius: access rejected")
    v = verdict(c.receive(reply(c, ACCESS_REJECT, attribute(REPLY_MESSAGE, b"account locked"))))
    assert v.detail == "radius: access rejected: account locked"
    v = verdict(c.receive(reply(c, ACCESS_CHALLENGE)))
    assert v.detail == "radius: access challenge (more than a password wanted)"


def test_wrong_secret_and_tampering():
    c = RadiusCheck("s", "u", "p", identifier=1, authenticator=RFC_AUTH)
    v = verdict(c.receive(reply(c, ACCESS_ACCEPT, secret=b"other", with_ma=False)))
    assert v.detail == "radius: response authenticator mismatch (wrong secret?)"
    good = bytearray(reply(c, ACCESS_ACCEPT, attribute(REPLY_MESSAGE, b"hi")))
    good[-20] ^= 1                  # flip a bit inside the Reply-Message
    assert not verdict(c.receive(bytes(good))).ok


def test_other_ids_and_garbage():
    c = RadiusCheck("s", "u", "p", identifier=1, authenticator=RFC_AUTH)
    other = bytearray(reply(c, ACCESS_ACCEPT))
    other[1] = 2
    assert c.receive(bytes(other)) == []
    assert verdict(c.receive(b"\x02\x01")).detail == "radius: short answer (2 bytes)"
    bad = bytearray(reply(c, ACCESS_ACCEPT))
    bad[2:4] = (4000).to_bytes(2, "big")
    assert verdict(c.receive(bytes(bad))).detail == "radius: malformed answer (length 4000)"
