"""relayd's `dns protocol` relays (relay_udp.c): DNS over UDP.

Each query is sent to a backend the relay picks, with its 16-bit id replaced
by a random one (unique among the queries in flight); the answer gets the
client's id back and goes to the client's address. An answer is dropped
when its id is not in flight, when it does not come from the backend the
query went to (address and port), or when its query has timed out; a query
leaves the table at its first answer, as relayd closes the session there.

Two parts:
- DnsRelayCore, sans-IO: datagrams and a clock in, datagrams out; the
  table of queries in flight, its bound and its timeouts.
- DnsRelay, an asyncio DatagramProtocol around an already bound UDP socket
  (the parent binds it), which moves datagrams between the sockets.

Backend side: one unconnected UDP socket per relay process and address
family, bound to an ephemeral port, not relayd's socket per query: it costs
two descriptors instead of one per query in flight, so a flood cannot
exhaust the process's descriptors, and with SO_REUSEPORT groups each relay
process has its own socket, so answers come back to the process that holds
the query. What it gives up: the source port is fixed, so an off-path
attacker who can spoof the backend's address has 16 bits (the id) to guess
instead of 32; answers come from backends on the relay's own network.

With `log connection [errors]`, each query is a session of its own in the
log, as in relayd (relay_udp.c opens a session per query): DnsRelayCore
reports how each ended (Ended: answered, timed out, evicted, no backend,
send failed) to an `on_end` callback, and the relay process writes the
line (format_line) in the shape of its TCP session lines.

The bound: when the table is full, the oldest query is dropped to make room
(not the new one refused). Answers normally come in milliseconds, so the
oldest query is the one least likely still to be answered, and its client
retries as DNS clients do; refusing instead would let anyone who sends
queries for a backend that never answers stop the relay for a whole
session timeout (600 s by default).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
from dataclasses import dataclass
from typing import Callable

HEADER = 12                     # a DNS header; anything shorter is dropped
QR = 0x80                       # flags byte 0: set in responses
ID_SPACE = 1 << 16
MAX_INFLIGHT = 4096             # default bound of the table, per relay process
# at most half the id space, so that drawing a free id takes 2 tries at worst
# on average
MAX_INFLIGHT_LIMIT = ID_SPACE // 2
MAX_BUFFERED = 256 * 1024       # bytes a transport may hold before we drop (UDP is lossy)

_ID = struct.Struct("!H")

Address = tuple               # as recvfrom gives it: (ip, port[, flow, scope])
PickBackend = Callable[[Address], "tuple[str, int] | None"]


@dataclass(slots=True)
class Stats:
    """Counters for `show relays` and metrics."""
    queries: int = 0            # queries forwarded to a backend
    answers: int = 0            # answers sent back to a client
    malformed: int = 0          # shorter than a header, or a response sent to the relay
    no_backend: int = 0         # no backend up: dropped, as relayd sends nothing
    unknown: int = 0            # answers for no query in flight (or a late one)
    wrong_source: int = 0       # answers from another address than the query went to
    timeouts: int = 0           # queries that got no answer in the session timeout
    evicted: int = 0            # queries dropped for room (the table was full)
    send_errors: int = 0        # a send failed or its buffer was full


@dataclass(slots=True)
class _Query:
    client: Address
    client_id: int
    backend: tuple[str, int]
    deadline: float
    sid: int = 0                # the session number of the log line
    started: float = 0.0        # the clock's `now` when it came
    size: int = 0               # bytes of the query


@dataclass(frozen=True, slots=True)
class Ended:
    """How one query ended, for its `log connection` line."""
    sid: int
    client: Address
    backend: tuple[str, int] | None
    what: str                   # "done", or the error
    error: bool
    duration: float             # s, on the core's clock
    bytes_in: int               # the query's bytes (client -> backend)
    bytes_out: int              # the answer's bytes (backend -> client)


# relayd's words where it has them (relay_udp.c, relay.c)
DONE = "done"
TIMEOUT = "udp timeout"
EVICTED = "evicted (table full)"
NO_BACKEND = "no host up"
SEND_FAILED = "forward failed"


def format_line(relay: str, e: Ended, active: int) -> str:
    """The log line of one query, as relay.py writes a TCP session's."""
    c = e.client
    dst = f"{e.backend[0]}:{e.backend[1]}" if e.backend is not None else "-"
    return (f"relay {relay}, session {e.sid} ({active} active), {c[0]}:{c[1]} -> {dst}, "
            f"{e.what}, {e.duration:.3f}s, {e.bytes_in} in / {e.bytes_out} out")


@dataclass(frozen=True, slots=True)
class Forward:
    """What DnsRelayCore.query asks the driver to send."""
    backend: tuple[str, int]    # canonical (ip, port)
    data: bytes                 # the query with the relay's id
    id: int                     # that id


def _canonical(addr) -> tuple[str, int] | None:
    """(ip, port) in inet_ntop's spelling, so that a backend written
    "2001:DB8::1" matches the address recvfrom reports; None if not an IP."""
    ip = str(addr[0]).partition("%")[0]
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, ip)), int(addr[1])
        except (OSError, ValueError):
            continue
    return None


class DnsRelayCore:
    """The table of queries in flight. `now` is any monotonic clock in
    seconds (the driver passes loop.time()); nothing here reads a clock or
    touches a socket."""

    def __init__(self, timeout: float, max_inflight: int = MAX_INFLIGHT,
                 rand: Callable[[int], int] = secrets.randbelow,
                 on_end: Callable[[Ended], None] | None = None):
        if timeout <= 0:
            raise ValueError(f"invalid timeout: {timeout}")
        if not 1 <= max_inflight <= MAX_INFLIGHT_LIMIT:
            raise ValueError(f"invalid bound of queries in flight: {max_inflight} "
                             f"(1-{MAX_INFLIGHT_LIMIT})")
        self.timeout = timeout
        self.max_inflight = max_inflight
        self._rand = rand
        # by the relay's id; insertion order is deadline order (one timeout
        # for all), so the first entry is both the oldest and the next to expire
        self._inflight: dict[int, _Query] = {}
        self._canon: dict[tuple, tuple[str, int] | None] = {}
        self.stats = Stats()
        self.on_end = on_end        # each query's end, for `log connection`
        self._sid = 0

    def __len__(self) -> int:
        return len(self._inflight)

    def query(self, client: Address, data: bytes, now: float,
              pick: PickBackend) -> Forward | None:
        """A datagram from a client. `pick(client)` chooses the backend
        (called only for a valid query); None from it drops the query.
        Returns what to send, or None to send nothing."""
        if len(data) < HEADER or data[2] & QR:
            self.stats.malformed += 1
            return None
        self._sid += 1
        chosen = pick(client)
        if chosen is None:
            self.stats.no_backend += 1
            if self.on_end is not None:
                self.on_end(Ended(self._sid, client, None, NO_BACKEND, True, 0.0, len(data), 0))
            return None
        backend = self._canonical(chosen)
        if backend is None:
            raise ValueError(f"pick_backend returned no IP address: {chosen!r}")
        self.expire(now)
        if len(self._inflight) >= self.max_inflight:
            self._end(self._inflight.pop(next(iter(self._inflight))), EVICTED, now)
            self.stats.evicted += 1
        new_id = self._free_id()
        (client_id,) = _ID.unpack_from(data)
        self._inflight[new_id] = _Query(client, client_id, backend, now + self.timeout,
                                        self._sid, now, len(data))
        self.stats.queries += 1
        return Forward(backend, _ID.pack(new_id) + bytes(data[2:]), new_id)

    def answer(self, source: Address, data: bytes, now: float) -> tuple[Address, bytes] | None:
        """A datagram from a backend: (client address, answer with the
        client's id), or None to drop it."""
        if len(data) < HEADER or not data[2] & QR:
            self.stats.malformed += 1
            return None
        (rid,) = _ID.unpack_from(data)
        q = self._inflight.get(rid)
        if q is None:
            self.stats.unknown += 1
            return None
        if q.deadline <= now:           # late: its query has timed out
            del self._inflight[rid]
            self.stats.timeouts += 1
            self._end(q, TIMEOUT, now)
            return None
        if self._canonical(source) != q.backend:
            # kept in flight: a spoofed answer must not cancel the real one
            self.stats.wrong_source += 1
            return None
        del self._inflight[rid]
        self.stats.answers += 1
        self._end(q, DONE, now, len(data))
        return q.client, _ID.pack(q.client_id) + bytes(data[2:])

    def cancel(self, rid: int, now: float = 0.0) -> None:
        """Forget a query whose send failed."""
        q = self._inflight.pop(rid, None)
        if q is not None:
            self.stats.send_errors += 1
            self._end(q, SEND_FAILED, now or q.started)

    def _end(self, q: _Query, what: str, now: float, answer: int = 0) -> None:
        if self.on_end is not None:
            self.on_end(Ended(q.sid, q.client, q.backend, what, what != DONE,
                              max(0.0, now - q.started), q.size, answer))

    def expire(self, now: float) -> int:
        """Drop the queries whose session timeout has passed; how many."""
        n = 0
        table = self._inflight
        while table:
            rid = next(iter(table))
            if table[rid].deadline > now:
                break
            self._end(table.pop(rid), TIMEOUT, now)
            n += 1
        self.stats.timeouts += n
        return n

    def next_deadline(self) -> float | None:
        """When the oldest query times out, None if none is in flight."""
        for q in self._inflight.values():
            return q.deadline
        return None

    def _free_id(self) -> int:
        # a random id not in flight; the table is at most half the id space
        while True:
            rid = self._rand(ID_SPACE)
            if rid not in self._inflight:
                return rid

    def _canonical(self, addr) -> tuple[str, int] | None:
        key = (addr[0], addr[1])
        try:
            return self._canon[key]
        except KeyError:
            pass
        if len(self._canon) >= 1024:      # backends are few; sources may not be
            self._canon.clear()
        c = self._canon[key] = _canonical(addr)
        return c


# --- the asyncio driver ----------------------------------------------------------

class _BackendSide(asyncio.DatagramProtocol):
    """Answers arriving on one of the relay's backend sockets."""

    def __init__(self, relay: "DnsRelay"):
        self.relay = relay

    def datagram_received(self, data: bytes, addr) -> None:
        self.relay._answer(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.relay.core.stats.send_errors += 1


class DnsRelay(asyncio.DatagramProtocol):
    """One `dns protocol` relay in one relay process.

    sock: the listening UDP socket, bound by the parent. pick_backend(client)
    returns (ip, port) of an up backend for the client's address (so that
    the hash modes can use it), or None: the query is dropped.
    session_timeout: seconds a query waits for its answer (the relay's
    `session timeout`). on_end(Ended), if given: each query's end. `await start()` attaches the sockets to the running
    loop; close() closes them, the listening socket included.
    """

    def __init__(self, sock: socket.socket, pick_backend: PickBackend,
                 session_timeout: float, max_inflight: int = MAX_INFLIGHT,
                 on_end: Callable[[Ended], None] | None = None):
        self.sock = sock
        self.pick_backend = pick_backend
        self.core = DnsRelayCore(session_timeout, max_inflight, on_end=on_end)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._front: asyncio.DatagramTransport | None = None
        self._back: dict[int, asyncio.DatagramTransport] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                s = socket.socket(fam, socket.SOCK_DGRAM)
            except OSError:
                continue                  # no IPv6 on this host: no IPv6 backends
            try:
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((any_addr, 0))
                s.setblocking(False)
            except OSError:
                s.close()
                continue
            tr, _ = await loop.create_datagram_endpoint(lambda: _BackendSide(self), sock=s)
            self._back[fam] = tr
        try:
            if not self._back:
                raise OSError("no UDP socket toward the backends")
            self._front, _ = await loop.create_datagram_endpoint(lambda: self, sock=self.sock)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for tr in [self._front, *self._back.values()]:
            if tr is not None:
                tr.close()
        self._front = None
        self._back.clear()

    def backend_ports(self) -> dict[int, int]:
        """The ephemeral port of each backend socket, by family (for tests
        and `show sessions`)."""
        return {fam: tr.get_extra_info("sockname")[1] for fam, tr in self._back.items()}

    # -- datagrams -----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr) -> None:
        loop = self._loop
        fwd = self.core.query(addr, data, loop.time(), self.pick_backend)
        if fwd is None:
            return
        tr = self._back.get(socket.AF_INET6 if ":" in fwd.backend[0] else socket.AF_INET)
        if tr is None or tr.get_write_buffer_size() > MAX_BUFFERED:
            self.core.cancel(fwd.id, loop.time())
            return
        try:
            tr.sendto(fwd.data, fwd.backend)
        except OSError:
            self.core.cancel(fwd.id, loop.time())
            return
        if self._timer is None:
            self._arm()

    def _answer(self, data: bytes, addr) -> None:
        out = self.core.answer(addr, data, self._loop.time())
        if out is None or self._front is None:
            return
        client, reply = out
        if self._front.get_write_buffer_size() > MAX_BUFFERED:
            self.core.stats.send_errors += 1
            return
        try:
            self._front.sendto(reply, client)
        except OSError:
            self.core.stats.send_errors += 1

    def error_received(self, exc: Exception) -> None:
        self.core.stats.send_errors += 1

    # -- timeouts --------------------------------------------------------------

    def _arm(self) -> None:
        when = self.core.next_deadline()
        self._timer = None if when is None else self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.core.expire(self._loop.time())
        self._arm()
