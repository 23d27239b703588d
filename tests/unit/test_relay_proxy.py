"""relay_proxy: PROXY protocol v1/v2 headers against byte vectors written out
from HAProxy's doc/proxy-protocol.txt (sections 2.1 and 2.2), and the parser
on every way a header can be cut short or wrong."""

from __future__ import annotations

import pytest

from hoststated.relay_proxy import (SIGNATURE, V1_MAX, ProxyError, ProxyHeader, header,
                                    parse)

# The spec's own v1 example (section 2.1)
SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
# The same connection in v2: signature, \x21 (v2, PROXY), \x11 (TCP over
# IPv4), length 12, then src addr, dst addr, src port, dst port
SPEC_V2 = (b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a" b"\x21\x11\x00\x0c"
           b"\xc0\xa8\x00\x01" b"\xc0\xa8\x00\x0b" b"\xdc\x04" b"\x01\xbb")
V6_SRC, V6_DST = ("2001:db8::1", 40000), ("2001:db8:0:1::53", 443)
V6_V1 = b"PROXY TCP6 2001:db8::1 2001:db8:0:1::53 40000 443\r\n"
V6_V2 = (SIGNATURE + b"\x21\x21\x00\x24"
         + bytes.fromhex("20010db8000000000000000000000001")
         + bytes.fromhex("20010db8000000010000000000000053")
         + b"\x9c\x40" + b"\x01\xbb")


def test_signature_is_the_specs():
    assert SIGNATURE == bytes.fromhex("0d0a0d0a000d0a515549540a")


@pytest.mark.parametrize("version,src,dst,wire", [
    (1, ("192.168.0.1", 56324), ("192.168.0.11", 443), SPEC_V1),
    (2, ("192.168.0.1", 56324), ("192.168.0.11", 443), SPEC_V2),
    (1, V6_SRC, V6_DST, V6_V1),
    (2, V6_SRC, V6_DST, V6_V2),
], ids=["v1-tcp4", "v2-tcp4", "v1-tcp6", "v2-tcp6"])
def test_header_matches_the_spec_and_parses_back(version, src, dst, wire):
    assert header(version, src, dst) == wire
    got, used = parse(wire + b"GET / HTTP/1.1\r\n")
    assert used == len(wire)
    fam = "TCP4" if "." in src[0] else "TCP6"
    assert got == ProxyHeader(version, "PROXY", fam, src, dst)


def test_v1_lengths_of_the_spec():
    # the longest lines the receiver must take (section 2.1)
    big4 = header(1, ("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert big4 == b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(big4) == 56
    f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    big6 = header(1, (f, 65535), (f, 65535))
    assert len(big6) == 104
    assert parse(big6)[0].src == (f, 65535)
    worst = f"PROXY UNKNOWN {f} {f} 65535 65535\r\n".encode()
    assert len(worst) == V1_MAX == 107
    assert parse(worst) == (ProxyHeader(1, "PROXY", "UNKNOWN"), 107)


def test_unknown_and_local():
    assert header(1, None, None) == b"PROXY UNKNOWN\r\n"
    assert header(1, ("192.0.2.1", 1), ("192.0.2.2", 2), local=True) == b"PROXY UNKNOWN\r\n"
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyHeader(1, "PROXY", "UNKNOWN"), 15)
    # v2 LOCAL: \x20, UNSPEC family, no address (section 2.2)
    local = header(2, None, None, local=True)
    assert local == SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local) == (ProxyHeader(2, "LOCAL", "UNKNOWN"), 16)
    # addresses unknown: PROXY with an unspecified family
    unspec = header(2, None, None)
    assert unspec == SIGNATURE + b"\x21\x00\x00\x00"
    assert parse(unspec) == (ProxyHeader(2, "PROXY", "UNKNOWN"), 16)


def test_v2_udp():
    wire = header(2, ("192.0.2.1", 5353), ("198.51.100.1", 53), dgram=True)
    assert wire[12:16] == b"\x21\x12\x00\x0c"
    assert parse(wire)[0] == ProxyHeader(2, "PROXY", "UDP4", ("192.0.2.1", 5353),
                                         ("198.51.100.1", 53))
    wire6 = header(2, V6_SRC, V6_DST, dgram=True)
    assert wire6[12:16] == b"\x21\x22\x00\x24"
    with pytest.raises(ValueError, match="no UDP"):
        header(1, V6_SRC, V6_DST, dgram=True)


def test_v4_mapped_and_mixed_families():
    # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: sent as TCP4
    assert header(1, ("::ffff:192.0.2.7", 1234), ("::ffff:192.0.2.1", 80)) == \
        b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 80\r\n"
    assert header(1, ("::ffff:192.0.2.7", 1234), ("192.0.2.1", 80)) == \
        b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 80\r\n"
    # an IPv4 end beside a real IPv6 one goes v4-mapped
    assert header(1, ("192.0.2.7", 1234), ("2001:db8::1", 80)) == \
        b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1234 80\r\n"
    assert header(1, ("2001:db8::1", 80), ("192.0.2.7", 1234)) == \
        b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.7 80 1234\r\n"


def test_addresses_are_canonical_and_scopes_dropped():
    # getpeername's 4-tuples, upper case, a zone: the canonical text goes out
    assert header(1, ("2001:DB8:0:0::1", 5, 0, 0), ("fe80::1%eth0", 6, 0, 2)) == \
        b"PROXY TCP6 2001:db8::1 fe80::1 5 6\r\n"


@pytest.mark.parametrize("src,dst,err", [
    (("192.0.2.300", 1), ("192.0.2.1", 2), "not an IP address"),
    (("example.test", 1), ("192.0.2.1", 2), "not an IP address"),
    (("192.0.2.1", 65536), ("192.0.2.1", 2), "invalid port"),
    (("192.0.2.1", -1), ("192.0.2.1", 2), "invalid port"),
    (("192.0.2.1", "80"), ("192.0.2.1", 2), "invalid port"),
])
def test_header_refuses_bad_addresses(src, dst, err):
    for v in (1, 2):
        with pytest.raises(ValueError, match=err):
            header(v, src, dst)


def test_header_refuses_unknown_version():
    with pytest.raises(ValueError, match="version"):
        header(3, ("192.0.2.1", 1), ("192.0.2.2", 2))


@pytest.mark.parametrize("wire", [SPEC_V1, SPEC_V2, V6_V1, V6_V2, b"PROXY UNKNOWN\r\n"],
                         ids=["v1-4", "v2-4", "v1-6", "v2-6", "unknown"])
def test_parse_is_incremental(wire):
    # every cut before the end is "need more", never an error, never a header
    for i in range(len(wire)):
        assert parse(wire[:i]) == (None, 0), i
        assert parse(memoryview(wire)[:i]) == (None, 0), i
    assert parse(bytearray(wire))[1] == len(wire)
    assert parse(memoryview(wire))[1] == len(wire)


def test_v2_tlvs_are_skipped_and_kept():
    tlv = b"\x04\x00\x03abc"                 # PP2_TYPE_NOOP, 3 bytes
    wire = SPEC_V2[:14] + b"\x00\x12" + SPEC_V2[16:] + tlv
    got, used = parse(wire + b"payload")
    assert used == len(wire)
    assert got.src == ("192.168.0.1", 56324) and got.tlvs == tlv
    assert parse(wire[:-1]) == (None, 0)


def test_v2_local_ignores_what_it_carries():
    # LOCAL with addresses: accepted, addresses not taken
    wire = SPEC_V2[:12] + b"\x20" + SPEC_V2[13:]
    assert parse(wire) == (ProxyHeader(2, "LOCAL", "TCP4"), len(wire))


def test_v2_unix_falls_back_to_unspec():
    wire = SIGNATURE + b"\x21\x31\x00\xd8" + b"\0" * 216
    assert parse(wire) == (ProxyHeader(2, "PROXY", "UNIX"), 232)


@pytest.mark.parametrize("wire,err", [
    (b"GET / HTTP/1.1\r\n", "not a PROXY"),
    (b"PROXZ", "not a PROXY"),
    (b"\r\n\r\n\x00X", "not a PROXY"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", "bare LF"),
    (b"\nPROXY", "not a PROXY"),
    (b"PROXY TCP4 192.168.0.1\r192.168.0.11 56324 443\r\n", "bare CR"),
    (b"PROXY " + b"A" * 120, "without CRLF"),
    (b"PROXY TCP5 192.168.0.1 192.168.0.11 56324 443\r\n", "unknown protocol"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", "expected 4 fields"),
    (b"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n", "expected 4 fields"),
    (b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n", "invalid IPv4"),
    (b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n", "invalid IPv4"),
    (b"PROXY TCP6 192.168.0.1 2001:db8::1 56324 443\r\n", "invalid IPv6"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n", "invalid port"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n", "invalid port"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 +5 443\r\n", "invalid port"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 \xd9\xa1 443\r\n", "not ASCII"),
    (b"PROXY\r\n", "not a PROXY"),
    (SPEC_V2[:12] + b"\x11", "unknown version"),
    (SPEC_V2[:12] + b"\x31\x11\x00\x0c", "unknown version"),
    (SPEC_V2[:12] + b"\x22\x11\x00\x0c", "unknown command"),
    (SPEC_V2[:12] + b"\x21\x41\x00\x0c", "unknown family"),
    (SPEC_V2[:12] + b"\x21\x13\x00\x0c", "unknown family"),
    (SPEC_V2[:12] + b"\x21\x11\x00\x08" + b"\0" * 8, "needs 12"),
    (SPEC_V2[:12] + b"\x21\x21\x00\x0c" + b"\0" * 12, "needs 36"),
])
def test_parse_refuses(wire, err):
    with pytest.raises(ProxyError, match=err):
        parse(wire)


def test_parse_empty_needs_more():
    assert parse(b"") == (None, 0)
