"""check icmp: echo request / reply, ICMP for IPv4 and ICMPv6 for IPv6, as
relayd (check_icmp.c) chooses by the address family.

Pure packet building and parsing here; the runner's IcmpPinger owns the raw
sockets, sends many hosts in one burst and matches replies by identifier and
sequence. Raw sockets need CAP_NET_RAW, so the parent opens them as root
(privsep.open_raw_sockets) and passes the fds to hce, which keeps using them
unprivileged."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ICMP_ECHO_REPLY = 0
ICMP_ECHO = 8
ICMP6_ECHO = 128
ICMP6_ECHO_REPLY = 129
PAYLOAD = b"hoststated-hce\x00\x00"   # 16 bytes, so replies are recognisable in a capture


@dataclass(frozen=True, slots=True)
class IcmpCheck:
    """Marker for the runner: ping the target's address."""


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, *, v6: bool, payload: bytes = PAYLOAD) -> bytes:
    """An echo request; for ICMPv6 the kernel fills in the checksum (it
    covers a pseudo-header only the kernel knows)."""
    if v6:
        return struct.pack("!BBHHH", ICMP6_ECHO, 0, 0, ident, seq) + payload
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    csum = checksum(head + payload)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes, *, v6: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply, or None for anything else.
    An IPv4 raw socket delivers the IP header too; an ICMPv6 one does not."""
    if not v6:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return None
    kind, code, _csum, ident, seq = struct.unpack_from("!BBHHH", packet)
    if kind != (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY) or code != 0:
        return None
    return ident, seq

