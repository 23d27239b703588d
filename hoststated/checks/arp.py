"""check arp (migrate, issue 14: the ALOHA director's and ldirectord's
arpcheck): an ARP request to a host on the director's own segment; the host
is up when it answers for its address.

Pure frame building and parsing here, and the matching of replies to the
probes waiting for them; hce_arp.ArpPinger owns the socket. The socket is a
raw AF_PACKET one (CAP_NET_RAW), so the parent opens it as root before the
privilege drop (privsep.open_arp_socket) and hce keeps using it. Which
interface, source MAC and source address a host is asked from is found at
config time (conf.load: the kernel's route to the host must be a directly
connected one) and reaches hce as the host's `link`.

Nothing authenticates an ARP reply: anything on the segment can answer for
the host (hoststated.conf(5) says so)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
ETH_HEADER = struct.Struct("!6s6sH")
ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
FRAME_MIN = 60                # an Ethernet frame's minimum without its FCS: padded


@dataclass(frozen=True, slots=True)
class ArpCheck:
    """One probe: ask `address` from interface `ifname` (MAC `mac`, IPv4
    `source`)."""
    address: str
    ifname: str
    mac: str                  # "aa:bb:cc:dd:ee:ff"
    source: str


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def request_frame(mac: str, source: str, target: str) -> bytes:
    """An Ethernet broadcast ARP request (RFC 826) from (mac, source) asking
    who has `target`, padded to the minimum frame size."""
    src_mac = mac_bytes(mac)
    spa = ipaddress.IPv4Address(source).packed
    tpa = ipaddress.IPv4Address(target).packed
    frame = (ETH_HEADER.pack(BROADCAST, src_mac, ETH_P_ARP)
             + ARP_BODY.pack(ARPHRD_ETHER, ETH_P_IP, 6, 4, ARPOP_REQUEST,
                             src_mac, spa, b"\x00" * 6, tpa))
    return frame.ljust(FRAME_MIN, b"\x00")


@dataclass(frozen=True, slots=True)
class Reply:
    sender_ip: str
    sender_mac: str
    target_ip: str
    target_mac: str


def parse_reply(frame: bytes) -> Reply | None:
    """The ARP reply an Ethernet frame carries (for IPv4 over Ethernet), or
    None for anything else (requests included)."""
    if len(frame) < ETH_HEADER.size + ARP_BODY.size:
        return None
    _dst, _src, ethertype = ETH_HEADER.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP_BODY.unpack_from(
        frame, ETH_HEADER.size)
    if (htype, ptype, hlen, plen, op) != (ARPHRD_ETHER, ETH_P_IP, 6, 4, ARPOP_REPLY):
        return None
    return Reply(str(ipaddress.IPv4Address(spa)), mac_text(sha),
                 str(ipaddress.IPv4Address(tpa)), mac_text(tha))


@dataclass(slots=True)
class Pending:
    """The probes waiting for a reply: a reply on interface `ifname` answers
    every probe sent from there for its sender address to our address and
    MAC (a reply to someone else's request, seen on the segment, does not
    count). Tokens are the caller's (hce_arp: futures)."""
    waiting: dict[tuple[str, str], dict[object, ArpCheck]] = field(default_factory=dict)

    def add(self, check: ArpCheck, token: object) -> None:
        self.waiting.setdefault((check.ifname, check.address), {})[token] = check

    def discard(self, check: ArpCheck, token: object) -> None:
        key = (check.ifname, check.address)
        probes = self.waiting.get(key)
        if probes is not None:
            probes.pop(token, None)
            if not probes:
                del self.waiting[key]

    def match(self, ifname: str, frame: bytes) -> list[object]:
        """The tokens a frame received on `ifname` answers (removed)."""
        reply = parse_reply(frame)
        if reply is None:
            return []
        probes = self.waiting.get((ifname, reply.sender_ip))
        if not probes:
            return []
        done = [t for t, c in probes.items()
                if c.source == reply.target_ip and c.mac == reply.target_mac]
        for t in done:
            del probes[t]
        if not probes:
            del self.waiting[(ifname, reply.sender_ip)]
        return done

    def __len__(self) -> int:
        return sum(len(v) for v in self.waiting.values())
