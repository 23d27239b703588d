"""Passive failure detection (issue 15): sans-IO.

The kernel side (l4ip's idea): pfe's nftables table holds rules that log,
through NFLOG group NFLOG_GROUP, the TCP RSTs and ICMP port/host
unreachables that a passive table's hosts send towards clients on
connections the table translated (`ct direction reply ct status dnat`),
from a host's own address and port, arriving on the interface that routes
back to that host (`fib saddr . iif oif exists`: an RST spoofed from the
client side with a host's address arrives elsewhere). Engine ipvs (NAT)
has the same rules in a table of its own, without the conntrack condition
(IPVS keeps its connections out of conntrack; kernel/nft.py says more).
The parent opens and
binds the netlink socket as root (bind_requests), hce reads it and hands
the datagrams to Passive.feed; nothing here does I/O or reads a clock.

Attribution: an event counts against a host only when the packet's source
is that host's address and port (for an ICMP error: the outer source is the
host's address, and the datagram it quotes was sent to that address and
port), among the targets of passive tables (targets()); the kernel rule
already required the conntrack reply direction (nftables) or the reverse
path (both engines). Then a window of `limit`
events within `window` seconds per host, and the table's action.

Safety: the netlink socket's receive buffer is the bounded queue (an
overrun is ENOBUFS: overrun()); hce reads a bounded number of datagrams per
wakeup; events beyond RATE_MAX a second are dropped and counted; for
OVERRUN_HOLD seconds after an overrun (events were lost, and the flood that
caused it may be anything), a window that fills only asks for a check now
(action fast) instead of marking a host down.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

from hoststated.conf.model import Config, Passive

NFLOG_GROUP = 18515          # the NFLOG group of pfe's passive rules
PREFIX_RESET = "hsp r "      # the log prefixes: what the rule matched
PREFIX_UNREACH = "hsp u "
KERNEL_RATE = 5000           # log statements a second the kernel rules allow (all hosts)
RATE_MAX = 5000              # events a second hce acts on; more are dropped (counted)
OVERRUN_HOLD = 5.0           # s after an overrun in which no window marks a host down
READ_BUDGET = 64             # datagrams read per wakeup of hce's reader
RCVBUF = 1 << 20             # the socket's receive buffer, set by the parent
COPY_RANGE = 128             # bytes of each packet copied: the headers only
FLUSH_TIMEOUT = 1            # 1/100 s: the kernel sends what it holds this often
QTHRESH = 64                 # ... or when this many packets wait

# netlink and nfnetlink_log (linux/netlink.h, linux/netfilter/nfnetlink_log.h)
NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_PACKET_HDR, NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX = 1, 4, 9, 10
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_PF_BIND, NFULNL_CFG_CMD_PF_UNBIND = 1, 3, 4
NFULNL_COPY_PACKET = 2
AF_INET, AF_INET6 = 2, 10
_NLA_TYPE = 0x3FFF           # without NLA_F_NESTED, NLA_F_NET_BYTEORDER

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


# --- the netlink socket's setup (the parent sends these as root) ---------------

def _attr(kind: int, data: bytes) -> bytes:
    n = _NLA.size + len(data)
    return _NLA.pack(n, kind) + data + b"\0" * (-n % 4)


def _config(seq: int, family: int, group: int, attrs: bytes) -> bytes:
    body = struct.pack("=BB", family, 0) + struct.pack(">H", group) + attrs   # nfgenmsg
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_requests(group: int = NFLOG_GROUP, qthresh: int = QTHRESH,
                   timeout: int = FLUSH_TIMEOUT) -> list[bytes]:
    """The config messages that bind `group` to the socket that sends them:
    the address families (needed by kernels before 3.17, harmless after),
    the group with packet copies of COPY_RANGE bytes, the flush timeout and
    queue threshold (one datagram carries up to QTHRESH packets)."""
    out = []
    seq = 1
    for family in (AF_INET, AF_INET6):
        for cmd in (NFULNL_CFG_CMD_PF_UNBIND, NFULNL_CFG_CMD_PF_BIND):
            out.append(_config(seq, family, 0, _attr(NFULA_CFG_CMD, bytes([cmd]))))
            seq += 1
    attrs = (_attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
             + _attr(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0))
             + _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", timeout))
             + _attr(NFULA_CFG_QTHRESH, struct.pack(">I", qthresh)))
    out.append(_config(seq, 0, group, attrs))
    return out


def ack_error(data: bytes) -> int | None:
    """The errno of a netlink ack (0: success); None when `data` holds no ack.
    PF_UNBIND/PF_BIND may be refused on recent kernels (they do nothing
    there); the caller decides which errors matter."""
    for mtype, _, payload in messages(data):
        if mtype == NLMSG_ERROR and len(payload) >= 4:
            return -struct.unpack_from("=i", payload)[0]
    return None


# --- parsing ------------------------------------------------------------------

def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, payload) of each netlink message in one datagram; a
    truncated tail ends the walk (it is never read past)."""
    off, end = 0, len(data)
    while off + _NLMSG.size <= end:
        n, mtype, flags, _, _ = _NLMSG.unpack_from(data, off)
        if n < _NLMSG.size or off + n > end:
            return
        yield mtype, flags, data[off + _NLMSG.size:off + n]
        off += (n + 3) & ~3


def attrs(data: bytes, off: int = 0) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    end = len(data)
    while off + _NLA.size <= end:
        n, kind = _NLA.unpack_from(data, off)
        if n < _NLA.size or off + n > end:
            break
        out[kind & _NLA_TYPE] = data[off + _NLA.size:off + n]
        off += (n + 3) & ~3
    return out


class Logged(NamedTuple):
    """One packet NFLOG reported."""
    group: int
    prefix: str
    indev: int
    payload: bytes            # the network header on (COPY_RANGE bytes at most)
    family: int               # AF_INET or AF_INET6 (nfgenmsg)


def logged(data: bytes) -> list[Logged]:
    """The packets of one datagram from the NFLOG socket (other messages,
    such as acks, are skipped)."""
    out = []
    for mtype, _, payload in messages(data):
        if mtype != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET or len(payload) < 4:
            continue
        family = payload[0]
        group = struct.unpack_from(">H", payload, 2)[0]
        a = attrs(payload, 4)
        pkt = a.get(NFULA_PAYLOAD)
        if pkt is None:
            continue
        prefix = a.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
        indev = a.get(NFULA_IFINDEX_INDEV)
        out.append(Logged(group, prefix, struct.unpack(">I", indev)[0] if indev and
                          len(indev) == 4 else 0, pkt, family))
    return out


class Sighting(NamedTuple):
    """What a logged packet says: `kind` ("reset" or "unreachable") sent by
    `source`:`port` (the host: for an ICMP error, the address and port the
    quoted datagram was sent to) towards `client`."""
    kind: str
    source: str
    port: int
    client: str


def _ip(packet: bytes) -> tuple[int, int, str, str, bytes] | None:
    """(version, protocol, source, destination, transport bytes)."""
    if not packet:
        return None
    v = packet[0] >> 4
    if v == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        frag = struct.unpack_from(">H", packet, 6)[0] & 0x1FFF
        if frag:
            return None               # not a first fragment: no transport header
        return (4, packet[9], str(ipaddress.IPv4Address(packet[12:16])),
                str(ipaddress.IPv4Address(packet[16:20])), packet[ihl:])
    if v == 6 and len(packet) >= 40:
        # extension headers are not walked: a reset or an ICMPv6 error
        # sent by a host's stack carries none
        return (6, packet[6], str(ipaddress.IPv6Address(packet[8:24])),
                str(ipaddress.IPv6Address(packet[24:40])), packet[40:])
    return None


_TCP, _ICMP, _ICMP6 = 6, 1, 58
_UNREACH4 = {1, 3}           # host, port unreachable
_UNREACH6 = {3, 4}           # address, port unreachable


def sighting(packet: bytes) -> Sighting | None:
    """The sighting in one logged packet, or None when it is not a TCP RST
    nor an ICMP/ICMPv6 port or host unreachable that a host sent about a
    datagram it was sent (the kernel rule matched more loosely on purpose:
    this is the second look)."""
    ip = _ip(packet)
    if ip is None:
        return None
    version, proto, src, dst, l4 = ip
    if proto == _TCP:
        if len(l4) < 14 or not l4[13] & 0x04:
            return None
        return Sighting("reset", src, struct.unpack_from(">H", l4, 0)[0], dst)
    if (proto, version) in ((_ICMP, 4), (_ICMP6, 6)) and len(l4) >= 8:
        icmp_type, code = l4[0], l4[1]
        if version == 4 and (icmp_type != 3 or code not in _UNREACH4):
            return None
        if version == 6 and (icmp_type != 1 or code not in _UNREACH6):
            return None
        inner = _ip(l4[8:])
        if inner is None or inner[0] != version or inner[3] != src or len(inner[4]) < 4:
            return None                # not about a datagram sent to the sender
        if inner[1] not in (_TCP, 17, 132):
            return None
        return Sighting("unreachable", src, struct.unpack_from(">H", inner[4], 2)[0], dst)
    return None


# --- what counts against whom -------------------------------------------------

def _norm(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


KERNEL_ENGINES = ("nftables", "ipvs")     # the engines whose rules log replies


def targets(config: Config, engines: tuple[str, ...] = KERNEL_ENGINES
            ) -> dict[tuple[str, int], tuple[int, ...]]:
    """(host address, port) -> ids of the hosts of passive tables that the
    kernel can observe there: the main and backup tables of redirects under
    `engines` forwarding with NAT (nftables' DNAT, IPVS's masquerading), at
    the port the kernel translates to (a host's port 0: a listen port range
    with no table port, which the kernel rules do not cover)."""
    out: dict[tuple[str, int], list[int]] = {}
    for r in config.redirects:
        if (r.engine or config.global_.engine) not in engines:
            continue
        listen_port = next((ln.port for ln in r.listen if ln.port and not ln.port_end), 0)
        for fwd in (r.forward, r.backup):
            if fwd is None or fwd.method != "nat":
                continue
            t = config.table(fwd.table)
            if t is None or t.options.passive is None:
                continue
            for h in t.hosts:
                addr = _norm(h.address) if h.address else None
                port = fwd.port or h.port or t.port or listen_port or 0
                if addr is None or not port:
                    continue
                ids = out.setdefault((addr, port), [])
                if h.id not in ids:
                    ids.append(h.id)
    return {k: tuple(v) for k, v in out.items()}


def options(config: Config) -> dict[int, Passive]:
    """host id -> its table's passive options."""
    return {h.id: t.options.passive for t in config.tables if t.options.passive is not None
            for h in t.hosts}


# --- the decision --------------------------------------------------------------

class Decision(NamedTuple):
    host_id: int
    action: str               # "down", "fast" or "fail"
    detail: str               # "3 resets from host in 1 s"


_PLURAL = {"reset": "resets", "unreachable": "unreachables"}
_EVENT_OPTION = {"reset": "resets", "unreachable": "unreachables", "error": "errors"}


def detail(kinds: Iterable[str], window: int) -> str:
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    parts = [f"{n} {_PLURAL.get(k, k + 's') if n != 1 else k}" for k, n in counts.items()]
    return f"{', '.join(parts)} from host in {window} s"


@dataclass
class Stats:
    """Counters for show summary and the metrics (cumulative)."""
    datagrams: int = 0
    packets: int = 0              # logged packets read
    events: int = 0               # sightings attributed to a host
    unattributed: int = 0         # sightings of no passive host (or not a sighting)
    dropped: int = 0              # over RATE_MAX
    overruns: int = 0             # ENOBUFS on the socket
    decisions: int = 0            # windows that filled
    per_host: dict[int, int] = field(default_factory=dict)   # events per host id


class Detector:
    """Per host, the window of its last events; decide() when it fills.

    `now` is a parameter everywhere (monotonic seconds)."""

    def __init__(self, config: Config) -> None:
        self.stats = Stats()
        self._windows: dict[int, deque] = {}
        self._overrun_until = -1.0
        self._second = -1.0
        self._in_second = 0
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.targets = targets(config)
        self.options = options(config)
        # a reload keeps the windows of hosts that stay passive
        self._windows = {h: w for h, w in self._windows.items() if h in self.options}
        self.stats.per_host = {h: n for h, n in self.stats.per_host.items()
                               if h in self.options}

    def overrun(self, now: float) -> None:
        """The socket overran: events were lost; for OVERRUN_HOLD seconds a
        full window only asks for a check."""
        self.stats.overruns += 1
        self._overrun_until = now + OVERRUN_HOLD

    @property
    def wanted(self) -> bool:
        """Whether any host is watched by the kernel rules."""
        return bool(self.targets)

    def datagram(self, data: bytes, now: float) -> list[Decision]:
        """One datagram from the NFLOG socket."""
        self.stats.datagrams += 1
        out = []
        for p in logged(data):
            self.stats.packets += 1
            if p.group != NFLOG_GROUP or p.prefix not in (PREFIX_RESET, PREFIX_UNREACH):
                self.stats.unattributed += 1
                continue
            s = sighting(p.payload)
            if s is None or (s.kind == "reset") != (p.prefix == PREFIX_RESET):
                self.stats.unattributed += 1
                continue
            ids = self.targets.get((s.source, s.port))
            if not ids:
                self.stats.unattributed += 1
                continue
            for hid in ids:
                d = self.event(hid, s.kind, now)
                if d is not None:
                    out.append(d)
        return out

    def event(self, host_id: int, kind: str, now: float) -> Decision | None:
        """One event ("reset", "unreachable", "error") against a host."""
        opts = self.options.get(host_id)
        if opts is None or not getattr(opts, _EVENT_OPTION.get(kind, ""), False):
            self.stats.unattributed += 1
            return None
        sec = now // 1
        if sec != self._second:
            self._second, self._in_second = sec, 0
        self._in_second += 1
        if self._in_second > RATE_MAX:
            self.stats.dropped += 1
            return None
        self.stats.events += 1
        self.stats.per_host[host_id] = self.stats.per_host.get(host_id, 0) + 1
        w = self._windows.get(host_id)
        if w is None:
            w = self._windows[host_id] = deque(maxlen=opts.limit)
        w.append((now, kind))
        while w and w[0][0] <= now - opts.window:
            w.popleft()
        if len(w) < opts.limit:
            return None
        kinds = [k for _, k in w]
        w.clear()
        self.stats.decisions += 1
        action = opts.action
        if now < self._overrun_until and action != "fast":
            action = "fast"           # not trusted blindly: the check decides
        return Decision(host_id, action, detail(kinds, opts.window))

    def forget(self, host_id: int) -> None:
        """A host changed state by its checks: its window starts again."""
        self._windows.pop(host_id, None)
