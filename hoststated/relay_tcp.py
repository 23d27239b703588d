"""One relay session: a client connection and its backend connection, as
two asyncio Protocols joined by a Session.

Bytes go transport to transport with the kernel's buffers as the only
queue: when one side's transport holds more than its high-water mark
(pause_writing), the other side stops reading until it drains
(resume_writing), so a slow client or a slow backend costs a bounded
amount of memory per session, never the whole body (relay-bench.md: this
shape, not streams, is what reaches HAProxy's cost per request).

An EOF is passed on as a half-close (write_eof) where the other transport
can (plain TCP; TLS cannot) and the session ends when both directions are
done, or at once when either side is lost. An optional filter (the HTTP
relay, relay_http) sits between the sides: it sees every byte and returns
what to send on, what to answer itself, and which side to close.

Backend choice and retries: the relay gives the session a list of hosts to
try (relay_select); a connect that fails or times out moves to the next
within the session's connect deadline.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any, Callable

from hoststated import relay_proxy

SO_ORIGINAL_DST = 80          # <linux/netfilter_ipv4.h>; not in the socket module
IP6T_SO_ORIGINAL_DST = 80
HIGH_WATER = 256 << 10        # bytes a transport may hold before the other side pauses
CONNECT_TIMEOUT = 10.0        # s for one connect to a backend (capped by the session timeout)


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where a connection redirected by nftables (dnat/redirect) was going:
    conntrack's SO_ORIGINAL_DST (relayd's `nat lookup`, DIOCNATLOOK on pf)."""
    import ipaddress
    import struct
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, addr = struct.unpack_from("!2xH4s", raw)
            return str(ipaddress.IPv4Address(addr)), port
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port, = struct.unpack_from("!2xH", raw)
        return str(ipaddress.IPv6Address(raw[8:24])), port
    except OSError:
        return None


def set_options(transport, opts) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for level, name, value in opts:
        if level == socket.IPPROTO_IP and sock.family != socket.AF_INET:
            continue                    # ip ttl/minttl: IPv4 (relayd's too)
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            pass                        # a socket already closed by its peer



def passive_kind(e: BaseException) -> str:
    """What a failed connect says about the host (issue 15): refused or
    reset (an RST), unreachable (no route to it), else an error."""
    no = getattr(e, "errno", None)
    if no in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "reset"
    if no in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"

class Side(asyncio.Protocol):
    """One connection of a session; every event goes to the session."""

    __slots__ = ("session", "transport", "eof", "is_client", "gone")

    def __init__(self, session: Session, is_client: bool):
        self.session = session
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.gone = False               # a backend the session left (HTTP routing)

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)
        opts = self.session.relay.sockopts
        if opts:
            set_options(transport, opts)
        if self.is_client:
            self.session.client_made(self)

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return                      # what a left backend still sends is dropped
        s = self.session
        s.last = time.monotonic()
        if self.is_client:
            s.bytes_in += len(data)
            s.from_client(data)
        else:
            s.bytes_out += len(data)
            s.from_server(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.gone:
            return False
        return self.session.eof(self)

    def connection_lost(self, exc) -> None:
        if not self.gone:
            self.session.lost(self, exc)

    def pause_writing(self) -> None:
        other = self.session.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.session.other(self)
        if other is not None and other.transport is not None and not other.eof:
            other.transport.resume_reading()


class Session:
    """What the relay process keeps of one session (also its `show
    sessions` row). `relay` is the relay process's runtime object for the
    relay: it gives the hosts to try and counts the session in and out."""

    def __init__(self, sid: int, relay: Any, filter_factory: Callable | None = None):
        self.id = sid
        self.relay = relay
        self.client: Side | None = None
        self.server: Side | None = None
        self.target = None                  # relay_select.Target connected to
        self.started = time.time()
        self.last = time.monotonic()
        self.bytes_in = self.bytes_out = 0
        self.closed = False
        self.filter = None
        self._filter_factory = filter_factory
        self._pending: list[bytes] = []     # client bytes the filter let through before connect
        self.client_addr: tuple = ("", 0)
        self.local_addr: tuple = ("", 0)
        self.error: str | None = None
        self._held = False                  # client reading paused by the filter
        self.route: str | None = None       # HTTP routing: the table of the moment
        self._connecting: asyncio.Future | None = None
        self.tag: str | None = None         # an upgraded HTTP session's (the filter's before)

    def client_socket(self):
        return self.client.transport.get_extra_info("socket")

    # --- the client side ---------------------------------------------------

    def client_made(self, side: Side) -> None:
        self.client = side
        t = side.transport
        self.client_addr = t.get_extra_info("peername") or ("", 0)
        self.local_addr = t.get_extra_info("sockname") or ("", 0)
        if self._filter_factory is not None:
            self.filter = self._filter_factory(self)
        self.relay.session_started(self)
        if self.filter is not None and self.filter.routing:
            # relayd's late connect: the first request's rules choose the table
            return
        t.pause_reading()
        self._connecting = asyncio.ensure_future(self._connect())

    def _route(self, route: str) -> None:
        """HTTP routing: this request goes to the table `route` names ("":
        the relay's own), on a backend of its own if it is another table."""
        if self.server is not None:
            old = self.server
            old.gone = True
            if old.transport is not None:
                old.transport.close()
            self.server = None
            if self.target is not None:
                self.target.sessions -= 1
                self.target = None
        self.route = route
        self.client.transport.pause_reading()
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        targets, why = self.relay.targets_for(self, self.route)
        if not targets:
            self.fail(why or "no host up")
            return
        deadline = loop.time() + min(CONNECT_TIMEOUT * len(targets), self.relay.session_timeout)
        last_error = ""
        for target in targets:
            if self.closed:
                return
            left = deadline - loop.time()
            if left <= 0:
                break
            # counted from the choice, not the connect: least-states must see
            # the sessions still connecting (a burst accepted together)
            target.sessions += 1
            try:
                _, side = await asyncio.wait_for(
                    loop.create_connection(lambda: Side(self, False), target.address,
                                           target.port, ssl=self.relay.backend_tls(target),
                                           server_hostname=self.relay.backend_sni(target)),
                    min(CONNECT_TIMEOUT, left))
            except asyncio.TimeoutError:
                target.sessions -= 1
                last_error = f"connect to {target.address}:{target.port} timed out"
                self.relay.passive_event(target, "error")
                continue
            except (OSError, ValueError) as e:
                target.sessions -= 1
                last_error = f"connect to {target.address}:{target.port}: " \
                             f"{getattr(e, 'strerror', None) or e}"
                self.relay.passive_event(target, passive_kind(e))
                continue
            except BaseException:
                target.sessions -= 1        # cancelled (the daemon stops)
                raise
            if self.closed:                 # the client went away meanwhile
                target.sessions -= 1
                side.transport.close()
                return
            self.server = side
            self.target = target
            self.relay.session_connected(self)
            if target.proxy:
                # HAProxy's PROXY header first: the backend learns the client
                side.transport.write(relay_proxy.header(
                    target.proxy, tuple(self.client_addr[:2]), tuple(self.local_addr[:2])))
            for data in self._pending:
                side.transport.write(data)
            self._pending.clear()
            self._connecting = None
            if self.client.eof:
                self._pass_eof(self.server)
            elif not self._held:
                self.client.transport.resume_reading()
            return
        self.fail(last_error or "connect deadline passed")

    # --- data ----------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.filter is None:
            if self.server is None:
                # bytes before the backend is connected: uvloop may deliver
                # some despite the pause in connection_made; held till then
                self._pending.append(data)
                self.client.transport.pause_reading()
                return
            self.server.transport.write(data)
            return
        self._apply(self.filter.from_client(data))

    def from_server(self, data: bytes) -> None:
        if self.filter is None:
            self.client.transport.write(data)
            return
        f = self.filter
        seen = getattr(f, "server_errors", 0)
        self._apply(f.from_server(data))
        for _ in range(getattr(f, "server_errors", 0) - seen):   # 5xx responses (issue 15)
            self.relay.passive_event(self.target, "error")

    def _apply(self, out) -> None:
        if out.forward is not None and (out.forward != self.route or self.server is None
                                        and self._connecting is None):
            self._route(out.forward)
        if out.to_server:
            if self.server is not None:
                self.server.transport.write(out.to_server)
            else:
                self._pending.append(out.to_server)
        if out.to_client and self.client is not None:
            self.client.transport.write(out.to_client)
        closing = out.close_client or out.close_server
        if out.log and not closing:
            self.relay.log_session(self, out.log)
        if out.upgraded:
            self.tag = self.filter.tag      # the upgrade request's, for `show sessions`
            self.filter = None              # a plain byte pipe from now on
        if closing:
            # why it ended is the session's one line, as `log connection` says
            self.error = self.error or out.log
            self.close()
            return
        # the HTTP session holds a pipelined request back until the
        # responses before it are out: no more of the client until then
        held = self.filter is not None and self.filter.client_paused
        if held != self._held and self.client is not None and self.server is not None:
            self._held = held
            if held:
                self.client.transport.pause_reading()
            else:
                self.client.transport.resume_reading()

    def other(self, side: Side) -> Side | None:
        return self.server if side is self.client else self.client

    # --- ends ----------------------------------------------------------------

    def eof(self, side: Side) -> bool:
        """An EOF from one side: passed on as a half-close; True keeps the
        transport open (for the other direction)."""
        if self.filter is not None:
            out = self.filter.client_eof() if side is self.client else self.filter.server_eof()
            self._apply(out)
            if self.closed:
                return False
        other = self.other(side)
        if other is None:
            return True                     # not connected yet: _connect passes it on
        self._pass_eof(other)
        if other.eof:
            self.close()
            return False
        return True

    def _pass_eof(self, to: Side) -> None:
        t = to.transport
        if t is not None and t.can_write_eof():
            try:
                t.write_eof()
            except OSError:
                pass

    def lost(self, side: Side, exc) -> None:
        if side is self.server and isinstance(exc, ConnectionResetError):
            self.relay.passive_event(self.target, "reset")     # issue 15
        if exc is not None and self.error is None:
            who = "client" if side is self.client else "backend"
            self.error = f"{who}: {getattr(exc, 'strerror', None) or exc}"
        self.close()

    def fail(self, why: str) -> None:
        self.error = why
        if self.filter is not None and self.client is not None \
                and self.filter.opts.return_error:
            # relayd's error page, as for any backend failure (relay_abort_http)
            self.client.transport.write(self.filter.error_page(502, "Bad Gateway"))
        self.close()

    def close(self) -> None:
        """Flush what is buffered and close both sides (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.close()
        if self.target is not None:
            self.target.sessions -= 1
        self.relay.session_ended(self)

    def abort(self) -> None:
        """Idle past the session timeout, or the daemon stops: no flush."""
        if self.error is None:
            self.error = "session timeout"
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.abort()
        self.close()
