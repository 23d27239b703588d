"""icmp packets, tls certificate expiry, script exit statuses: pure parts."""

import datetime
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hoststated.checks import check_name, make_check
from hoststated.checks.base import Done, TLSInfo, Target
from hoststated.checks.icmp import (ICMP6_ECHO, ICMP_ECHO, IcmpCheck, checksum, echo_request,
                                    parse_echo_reply)
from hoststated.checks.script import ScriptCheck, verdict
from hoststated.checks.tls import TlsCheck, days_to_expiry
from hoststated.conf import model
from hoststated.states import HostError


def test_echo_request_v4_checksum_verifies():
    pkt = echo_request(0x1234, 7, v6=False)
    assert pkt[0] == ICMP_ECHO and struct.unpack("!HH", pkt[4:8]) == (0x1234, 7)
    assert checksum(pkt) == 0          # a correct checksum sums to zero


def test_echo_request_v6_leaves_checksum_to_kernel():
    pkt = echo_request(1, 2, v6=True)
    assert pkt[0] == ICMP6_ECHO and pkt[2:4] == b"\x00\x00"


def ipv4(payload, ihl=5):
    return bytes([0x40 | ihl]) + b"\x00" * (ihl * 4 - 1) + payload


def test_parse_reply_v4_skips_ip_header_and_options():
    reply = struct.pack("!BBHHH", 0, 0, 0, 0xBEEF, 9) + b"x"
    assert parse_echo_reply(ipv4(reply), v6=False) == (0xBEEF, 9)
    assert parse_echo_reply(ipv4(reply, ihl=6), v6=False) == (0xBEEF, 9)


def test_parse_ignores_requests_errors_and_short_packets():
    assert parse_echo_reply(ipv4(echo_request(1, 1, v6=False)), v6=False) is None
    unreach = struct.pack("!BBHHH", 3, 1, 0, 0, 0)
    assert parse_echo_reply(ipv4(unreach), v6=False) is None
    assert parse_echo_reply(b"\x45\x00", v6=False) is None
    assert parse_echo_reply(b"\x81\x00\x00", v6=True) is None


def test_parse_reply_v6():
    assert parse_echo_reply(struct.pack("!BBHHH", 129, 0, 0, 5, 6), v6=True) == (5, 6)
    assert parse_echo_reply(struct.pack("!BBHHH", 128, 0, 0, 5, 6), v6=True) is None


def make_cert(days: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h.example")])
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=100))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc).timestamp()


def test_days_to_expiry_uses_the_given_clock():
    assert round(days_to_expiry(make_cert(30), NOW)) == 30
    assert days_to_expiry(None, NOW) is None
    assert days_to_expiry(b"garbage", NOW) is None


def test_tls_check_reports_expiry():
    c = TlsCheck()
    c.tls_established(TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", make_cert(10), True, NOW))
    (done,) = c.start()
    assert done.verdict.ok and done.verdict.error == HostError.TLS_CONNECT_OK
    assert done.verdict.detail == "TLSv1.3, certificate expires in 10 days, verified"
    c = TlsCheck()
    c.tls_established(TLSInfo("TLSv1.2", "x", make_cert(-5), False, NOW))
    assert "expired 5 days ago" in c.start()[0].verdict.detail


def test_script_exit_status_relayd_meaning():
    # relayd: a positive return value is success, zero is failure
    assert verdict(1).ok and verdict(1).error == HostError.SCRIPT_OK
    assert verdict(2).ok
    assert not verdict(0).ok and verdict(0).error == HostError.SCRIPT_FAIL
    assert not verdict(-9).ok and verdict(-9).detail == "script killed by signal SIGKILL"
    assert not verdict(None, timed_out=True).ok
    assert verdict(None, timed_out=True).detail == "script timed out"
    # statuses that say the check never ran are failures, not relayd's "up"
    assert not verdict(127).ok and verdict(127).detail == "script not found (exit 127)"
    assert not verdict(126).ok and verdict(126).detail == "script not executable (exit 126)"
    assert verdict(125).ok and verdict(128).ok
    assert verdict(None, exec_error=FileNotFoundError(2, "x", "/nonexistent/chk")).detail \
        == "script not found"
    assert verdict(None, exec_error=PermissionError(13, "x", "/bin/sh")).detail \
        == "script not executable"
    assert verdict(0, output=b"db unreachable\n").detail == "exit 0: db unreachable"


def test_make_check_dispatch():
    t = Target("198.51.100.7", 80, name="web1")
    assert isinstance(make_check(model.CheckIcmp(), t), IcmpCheck)
    s = make_check(model.CheckScript(path="/usr/local/bin/chk"), t)
    assert s == ScriptCheck("/usr/local/bin/chk", "web1") and s.argv()[1] == "web1"
    h = make_check(model.CheckHttp(kind="https", path="/x", code=200), t)
    assert h.tls and h.start()[0].data == b"HEAD /x HTTP/1.0\r\n\r\n"
    assert make_check(model.CheckBinary(send="00", expect="01", tls=True), t).tls


def test_check_names_as_relayd():
    assert check_name(model.CheckHttp(code=200)) == "http code"
    assert check_name(model.CheckHttp(kind="https", digest="a" * 40)) == "http digest use tls"
    assert check_name(model.CheckSendExpect(expect="x")) == "send expect"
    assert check_name(model.CheckIcmp()) == "icmp"
