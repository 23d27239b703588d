"""The PROXY protocol (HAProxy's doc/proxy-protocol.txt), version 1 and 2.

A relay that forwards with `proxy-protocol v1|v2` writes `header(...)` to the
backend before the first byte of the client's data, so that the backend
sees the client's address instead of the relay's. `parse()` reads a header
from the front of a stream (the tests, and later a relay that accepts PROXY
from a load balancer in front of it); it is incremental: fed what has
arrived so far, it says "need more", returns the header and how many bytes
it took, or raises ProxyError.

Pure: bytes in, bytes out. `socket` is imported for inet_pton/inet_ntop
only (ipaddress costs 30 times more, and this runs once per connection).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"   # the 12 bytes that open a v2 header
V1_MAX = 107                             # the longest v1 line, CRLF included
V2_FIXED = 16                            # signature, ver_cmd, fam, len

# v2 byte 13: version 2 in the high nibble, the command in the low one
_LOCAL, _PROXY = 0x0, 0x1
# v2 byte 14: address family (high nibble) and transport (low nibble)
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
_ADDR_LEN = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"

_V2_HEAD = struct.Struct("!12sBBH")
_V4 = struct.Struct("!4s4sHH")
_V6 = struct.Struct("!16s16sHH")


class ProxyError(ValueError):
    """A header that does not follow the protocol (the sender's fault): the
    receiver must close the connection."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a header says. src/dst are None when the receiver must use the
    connection's own endpoints: v1 UNKNOWN, v2 LOCAL, and v2 families or
    transports this side does not take (UNSPEC, AF_UNIX), as the spec lets
    a receiver fall back to UNSPEC."""
    version: int                        # 1 or 2
    command: str                        # "PROXY" or "LOCAL" (v2 only)
    family: str                         # "TCP4", "TCP6", "UDP4", "UDP6", "UNIX", "UNKNOWN"
    src: tuple[str, int] | None = None
    dst: tuple[str, int] | None = None
    tlvs: bytes = b""                   # v2: what follows the addresses, unread


# --- sending -------------------------------------------------------------------

def _packed(addr) -> tuple[int, bytes]:
    """(family, packed address) of an (ip, port[, flow, scope]) tuple's ip."""
    ip = str(addr[0])
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, ip)
    except (OSError, ValueError):
        pass
    try:
        # a link-local address carries its scope ("fe80::1%eth0"): not on the wire
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])
    except (OSError, ValueError):
        raise ValueError(f"not an IP address: {ip!r}") from None


def _port(addr) -> int:
    port = addr[1]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port: {port!r}")
    return port


def _same_family(src, dst) -> tuple[int, bytes, bytes]:
    """Both addresses in one family, as the header has room for one.

    A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; when both ends
    are IPv4 (plain or mapped) they are sent as TCP4, which backends expect.
    An IPv4 end beside a real IPv6 one is sent v4-mapped."""
    fs, ps = _packed(src)
    fd, pd = _packed(dst)
    if fs == socket.AF_INET6 and ps[:12] == _V4_MAPPED and \
            (fd == socket.AF_INET or pd[:12] == _V4_MAPPED):
        fs, ps = socket.AF_INET, ps[12:]
    if fd == socket.AF_INET6 and pd[:12] == _V4_MAPPED and fs == socket.AF_INET:
        fd, pd = socket.AF_INET, pd[12:]
    if fs != fd:
        if fs == socket.AF_INET:
            fs, ps = socket.AF_INET6, _V4_MAPPED + ps
        else:
            fd, pd = socket.AF_INET6, _V4_MAPPED + pd
    return fs, ps, pd


def header(version: int, src, dst, *, dgram: bool = False, local: bool = False) -> bytes:
    """The header a relay sends first to a backend, for a connection from
    `src` (the client's (ip, port)) to `dst` (the relay's listening
    (ip, port)). src or dst None: the addresses are unknown (v1 UNKNOWN, v2
    PROXY with an unspecified family). local: v2 LOCAL, for a connection the
    relay opens for itself (a health check); v1 has no LOCAL and sends
    UNKNOWN. dgram: v2 only, the client's transport was UDP."""
    if version == 1:
        if dgram:
            raise ValueError("PROXY v1 has no UDP")
        if local or src is None or dst is None:
            return b"PROXY UNKNOWN\r\n"
        fam, ps, pd = _same_family(src, dst)
        name = "TCP4" if fam == socket.AF_INET else "TCP6"
        return (f"PROXY {name} {socket.inet_ntop(fam, ps)} {socket.inet_ntop(fam, pd)} "
                f"{_port(src)} {_port(dst)}\r\n").encode("ascii")
    if version != 2:
        raise ValueError(f"unknown PROXY protocol version: {version!r}")
    if local:
        return _V2_HEAD.pack(SIGNATURE, 0x20 | _LOCAL, 0, 0)
    if src is None or dst is None:
        return _V2_HEAD.pack(SIGNATURE, 0x20 | _PROXY, 0, 0)
    fam, ps, pd = _same_family(src, dst)
    transport = _DGRAM if dgram else _STREAM
    if fam == socket.AF_INET:
        body = _V4.pack(ps, pd, _port(src), _port(dst))
        af = _AF_INET
    else:
        body = _V6.pack(ps, pd, _port(src), _port(dst))
        af = _AF_INET6
    return _V2_HEAD.pack(SIGNATURE, 0x20 | _PROXY, af << 4 | transport, len(body)) + body


# --- receiving -----------------------------------------------------------------

def parse(data) -> tuple[ProxyHeader | None, int]:
    """Read a header from the start of `data` (bytes-like).

    Returns (header, bytes consumed), or (None, 0) when `data` is a valid
    beginning that needs more bytes. Raises ProxyError when it cannot be
    one: the receiver must not guess that no header was sent."""
    if not len(data):
        return None, 0
    if data[0] == SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == ord("P"):
        return _parse_v1(data)
    raise ProxyError("not a PROXY protocol header")


def _parse_v1(data) -> tuple[ProxyHeader | None, int]:
    lf = bytes(data[:V1_MAX]).find(b"\n")
    if lf < 0:
        head = bytes(data[:6])
        if head != b"PROXY "[:len(head)]:
            raise ProxyError("not a PROXY protocol header")
        if len(data) >= V1_MAX:
            raise ProxyError(f"PROXY v1 line without CRLF in its first {V1_MAX} bytes")
        return None, 0
    if lf == 0 or data[lf - 1] != ord("\r"):
        raise ProxyError("PROXY v1 line ends in a bare LF")
    line = bytes(data[:lf - 1])
    if b"\r" in line:
        raise ProxyError("PROXY v1 line holds a bare CR")
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    if words[0] != "PROXY" or len(words) < 2:
        raise ProxyError("not a PROXY protocol header")
    if words[1] == "UNKNOWN":           # the rest of the line is to be ignored
        return ProxyHeader(1, "PROXY", "UNKNOWN"), lf + 1
    if words[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"PROXY v1: unknown protocol {words[1]!r}")
    if len(words) != 6:
        raise ProxyError(f"PROXY v1 {words[1]}: expected 4 fields, got {len(words) - 2}")
    fam = socket.AF_INET if words[1] == "TCP4" else socket.AF_INET6
    src = (_v1_address(fam, words[2]), _v1_port(words[4]))
    dst = (_v1_address(fam, words[3]), _v1_port(words[5]))
    return ProxyHeader(1, "PROXY", words[1], src, dst), lf + 1


def _v1_address(fam: int, text: str) -> str:
    try:
        return socket.inet_ntop(fam, socket.inet_pton(fam, text))
    except (OSError, ValueError):
        kind = "IPv4" if fam == socket.AF_INET else "IPv6"
        raise ProxyError(f"PROXY v1: invalid {kind} address {text!r}") from None


def _v1_port(text: str) -> int:
    # decimal, no sign, no heading zero (the spec forbids them: octal confusion)
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise ProxyError(f"PROXY v1: invalid port {text!r}")
    return int(text)


def _parse_v2(data) -> tuple[ProxyHeader | None, int]:
    n = len(data)
    head = bytes(data[:12])
    if head != SIGNATURE[:len(head)]:
        raise ProxyError("not a PROXY protocol header")
    if n < V2_FIXED:
        if n > 12 and data[12] >> 4 != 2:
            raise ProxyError(f"PROXY v2: unknown version {data[12] >> 4}")
        return None, 0
    _, ver_cmd, fam, length = _V2_HEAD.unpack_from(data)
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"PROXY v2: unknown version {ver_cmd >> 4}")
    cmd = ver_cmd & 0xF
    if cmd not in (_LOCAL, _PROXY):
        raise ProxyError(f"PROXY v2: unknown command {cmd:#x}")
    af, transport = fam >> 4, fam & 0xF
    if af > _AF_UNIX or transport > _DGRAM:
        raise ProxyError(f"PROXY v2: unknown family/transport {fam:#04x}")
    total = V2_FIXED + length
    if n < total:
        return None, 0
    need = _ADDR_LEN.get(af, 0) if transport != _UNSPEC else 0
    if length < need:
        raise ProxyError(f"PROXY v2: address block of {length} bytes, "
                         f"family {af:#x} needs {need}")
    command = "PROXY" if cmd == _PROXY else "LOCAL"
    if af == _AF_UNSPEC or transport == _UNSPEC:
        family = "UNKNOWN"
    elif af == _AF_UNIX:
        family = "UNIX"
    else:
        family = ("TCP" if transport == _STREAM else "UDP") + ("4" if af == _AF_INET else "6")
    tlvs = bytes(data[V2_FIXED + need:total])
    if cmd == _LOCAL or family in ("UNKNOWN", "UNIX"):
        # the receiver uses the connection's own endpoints (LOCAL must be
        # accepted whatever it carries; UNIX paths are not taken here)
        return ProxyHeader(2, command, family, None, None, tlvs), total
    if af == _AF_INET:
        ps, pd, sp, dp = _V4.unpack_from(data, V2_FIXED)
        f = socket.AF_INET
    else:
        ps, pd, sp, dp = _V6.unpack_from(data, V2_FIXED)
        f = socket.AF_INET6
    src = (socket.inet_ntop(f, ps), sp)
    dst = (socket.inet_ntop(f, pd), dp)
    return ProxyHeader(2, command, family, src, dst, tlvs), total
