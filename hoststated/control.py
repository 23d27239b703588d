"""The control socket server, run inside hce (the parent binds the socket as
root and passes the listening fd).

One socket, three encodings, chosen by the client's first bytes
(codec.stream_kind): `{`, or whitespace or a UTF-8 BOM first, means JSON
lines; a letter, command lines answered in hoststatectl's text (its own
renderer, hoststatectl.output), each reply followed by an empty line, as
HAProxy's stats socket does; anything else msgpack frames (ipc.codec). Each request is answered in
order on its connection. Bad input is the client's problem, never ours: a
request that is not one gets an error reply; bytes we cannot frame, an
oversize frame, a client that idles or does not read its replies get the
connection closed. Per-client buffers are bounded, so hundreds of clients at
once cost little.

The checks come first: hce's descriptors are shared between checks and
control clients, so the clients get a budget (clients_per_socket) sized from
the soft RLIMIT_NOFILE after a reserve for the checks in flight, and on the
restricted socket (0666, any local user) each uid at most PER_UID of it. A
client over budget is accepted and closed at once; when accept() itself runs
out (EMFILE, ENFILE, ENOBUFS, ENOMEM) the server stops accepting for
ACCEPT_RETRY rather than spin. Either is logged once when it starts and once
when it has ended (QUIET without a refusal), never per client.

Every client's uid (SO_PEERCRED) is read when it is accepted; while one of
its requests is answered, PEER_UID holds it, so that a handler can refuse a
command to all but root (hce: `load`, which the parent reads as root).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import errno
import os
import resource
import socket
import struct
from typing import Any, Awaitable, Callable

from hoststated import log
from hoststated.ipc import codec, messages
from hoststated.ipc.messages import Command, CommandError, ErrorCode, MessageError
from hoststatectl import output

logger = log.get("control")

IDLE_TIMEOUT = 60.0          # s without a request (monitor clients excepted)
WRITE_TIMEOUT = 10.0         # s for a client to take a reply
MAX_CLIENTS = 1024           # clients at once on one socket, however high the fd limit
MIN_CLIENTS = 8              # ... and at least this many, however low
PER_UID = 16                 # clients at once of one uid on the restricted socket
FD_RESERVE = 64              # hce's own fds: stdio, channels, listeners, epoll, icmp, log
FD_PER_CHECK = 2             # a check in flight: its socket (a script's pipes: more)
ACCEPT_RETRY = 0.5           # s without accepting after accept() ran out of fds
ACCEPT_BATCH = 64            # accepts per wakeup, then the loop serves the rest
QUIET = 5.0                  # s without a refusal before "accepting again" is logged
MONITOR_QUEUE = 4096         # events buffered per monitor client before we drop it
READ_SIZE = 64 << 10

# accept() failing for want of a resource of ours, not because of the client
_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_UCRED = struct.Struct("3i")     # struct ucred: pid, uid, gid

Handler = Callable[[Command], Awaitable[Any]]

# the uid of the client whose request the handler is answering (each
# client is served in a task of its own, with its own context)
PEER_UID: contextvars.ContextVar[int | None] = contextvars.ContextVar("peer_uid",
                                                                     default=None)


def clients_per_socket(checks: int, sockets: int, nofile: int | None = None) -> int:
    """Clients each of `sockets` control sockets may hold at once when up to
    `checks` checks run at once, under a soft RLIMIT_NOFILE of `nofile`
    (default: this process's). The checks' share and hce's own are set
    aside; the clients get half of what is left, the other half is a margin
    (a TLS check's second descriptor, a script's pipes, the log)."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    room = nofile - FD_RESERVE - FD_PER_CHECK * checks
    per_socket = room // 2 // max(1, sockets)
    if per_socket < MIN_CLIENTS:
        logger.warning("descriptor limit %d is too low for %d checks at once and %d control "
                       "socket(s): raise it (LimitNOFILE=) or lower 'max checks'",
                       nofile, checks, sockets)
    return max(MIN_CLIENTS, min(MAX_CLIENTS, per_socket))


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                    _UCRED.size))
    return uid


def _where(e: BaseException) -> str:
    """file:line of the innermost frame: enough to find a bug, no traceback."""
    tb = e.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


class _Client:
    def __init__(self, conn: socket.socket, uid: int | None):
        self.conn = conn
        self.uid = uid                       # the peer's uid (SO_PEERCRED)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.head = b""                      # first bytes, until the encoding is known
        self.json: bool | None = None
        self.text = False                    # command lines in, hoststatectl's text out
        self.cmd: Command | None = None      # the request being answered (text replies)
        self.decoder: codec.Decoder | codec.LineDecoder | codec.TextDecoder | None = None
        self.events: asyncio.Queue | None = None     # set once the client monitors

    def encode(self, obj: Any) -> bytes:
        if self.text:
            return render_text(self.cmd, obj)
        if self.json:
            return codec.encode_line(obj)
        return codec.encode(obj, messages.MAX_CTL_REPLY)

    async def send(self, obj: Any) -> None:
        self.writer.write(self.encode(obj))
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        else:
            self.conn.close()


def render_text(cmd: Command | None, obj: Any) -> bytes:
    """A reply to `cmd`, or an event, as hoststatectl prints it; a reply ends
    with an empty line, so that a reader knows where it stops."""
    try:
        if "ok" not in obj:
            return (output.event_text(obj) + "\n").encode()
        if not obj["ok"]:
            err = obj.get("error") or {}
            return f"command failed: {err.get('message', 'command failed')}\n\n".encode()
        if cmd.words == ("monitor",):
            return b""                            # the events follow, one per line
        return (output.text(cmd.words, obj.get("data")) + "\n\n").encode()
    except MessageError as e:                     # what the rows do not fit: ours
        logger.error("control: cannot print %s as text: %s", cmd.name if cmd else "an event", e)
        return f"command failed: cannot print the reply as text: {e}\n\n".encode()


class ControlServer:
    what = "control socket"                   # in the log lines about refusals

    def __init__(self, sock: socket.socket, handler: Handler, *, restricted: bool = False,
                 idle_timeout: float = IDLE_TIMEOUT, max_clients: int = MAX_CLIENTS):
        self.sock = sock
        self.handler = handler
        self.restricted = restricted
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients        # hce sets it (clients_per_socket)
        self.clients: set[_Client] = set()
        self.by_uid: collections.Counter[int] = collections.Counter()
        self.tasks: set[asyncio.Task] = set()
        self.refused = 0                       # clients refused since the server started
        self.loop: asyncio.AbstractEventLoop | None = None
        try:
            self.name = sock.getsockname() or "?"
        except OSError:
            self.name = "?"
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._refusing: str | None = None      # why clients are being refused (logged once)
        self._refused_since = 0
        self._last_refusal = 0.0
        self._quiet: asyncio.TimerHandle | None = None

    @property
    def per_uid(self) -> int | None:
        """Clients at once per uid: on the restricted socket only (the other
        is root's and its group's)."""
        return min(PER_UID, self.max_clients) if self.restricted else None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self.sock.listen(1024)
        self._read()

    def close(self) -> None:
        if self.loop is not None:
            self._unread()
            for h in (self._retry, self._quiet):
                if h is not None:
                    h.cancel()
            self._retry = self._quiet = None
        self.sock.close()
        for t in list(self.tasks):
            t.cancel()
        for c in list(self.clients):
            c.close()

    @property
    def monitors(self) -> int:
        """Clients that are monitoring (their subscription answered)."""
        return sum(c.events is not None for c in self.clients)

    def broadcast(self, ev: dict) -> None:
        """Queue an event for every monitor client; a client that lets its
        queue fill is too slow and is disconnected."""
        for c in list(self.clients):
            if c.events is None:
                continue
            try:
                c.events.put_nowait(ev)
            except asyncio.QueueFull:
                logger.info("monitor client too slow, disconnected")
                c.close()

    # --- accepting ----------------------------------------------------------

    def _read(self) -> None:
        if not self._reading and self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self._reading = True

    def _unread(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                # out of descriptors (or worse): stop accepting a while rather
                # than spin on a listening socket that stays readable
                what = "out of descriptors" if e.errno in (errno.EMFILE, errno.ENFILE) else \
                    "cannot accept"
                self._refuse(f"{what} ({e.strerror or e})")
                self._unread()
                if self._retry is None:
                    self._retry = self.loop.call_later(ACCEPT_RETRY, self._resume)
                return
            self._admit(conn)

    def _resume(self) -> None:
        self._retry = None
        self._read()

    def _admit(self, conn: socket.socket) -> None:
        try:
            # (a TCP client, the metrics endpoint's, has no uid)
            uid = peer_uid(conn) if conn.family == socket.AF_UNIX else None
        except OSError:
            conn.close()                          # gone already
            return
        cap = self.per_uid
        if cap is not None:
            if self.by_uid[uid] >= cap:
                conn.close()
                self._refuse(f"uid {uid} has {cap} clients, the most one uid may have")
                return
        if len(self.clients) >= self.max_clients:
            conn.close()
            self._refuse(f"{len(self.clients)} clients, the most this socket takes")
            return
        client = _Client(conn, uid)
        self.clients.add(client)
        if cap is not None:
            self.by_uid[uid] += 1
        task = self.loop.create_task(self._serve(client))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self._refused_since += 1
        self._last_refusal = self.loop.time()
        if self._refusing is None:
            self._refusing = reason
            logger.warning("%s %s: refusing clients: %s", self.what, self.name, reason)
            self._quiet = self.loop.call_later(QUIET, self._check_quiet)

    def _check_quiet(self) -> None:
        calm = self.loop.time() - self._last_refusal
        if calm < QUIET:
            self._quiet = self.loop.call_later(QUIET - calm, self._check_quiet)
            return
        self._quiet = None
        logger.info("%s %s: accepting clients again (%d refused)",
                    self.what, self.name, self._refused_since)
        self._refusing, self._refused_since = None, 0

    # --- one client ---------------------------------------------------------

    async def _serve(self, client: _Client) -> None:
        PEER_UID.set(client.uid)
        try:
            client.reader, client.writer = await asyncio.open_unix_connection(
                sock=client.conn, limit=READ_SIZE)
            await self._converse(client)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass                                   # the client went away or stalled
        except Exception as e:                     # never let one client hurt the rest
            logger.error("control client: %s: %s (at %s)", type(e).__name__, e, _where(e))
        finally:
            self.clients.discard(client)
            if self.restricted:
                self.by_uid[client.uid] -= 1
                if not self.by_uid[client.uid]:
                    del self.by_uid[client.uid]
            client.close()

    async def _converse(self, client: _Client) -> None:
        while True:
            timeout = None if client.events is not None else self.idle_timeout
            try:
                data = await asyncio.wait_for(client.reader.read(READ_SIZE), timeout)
            except asyncio.TimeoutError:
                # a request left half-sent: say so before hanging up
                pending = client.decoder.pending if client.decoder else len(client.head)
                if pending:
                    client.json = bool(client.json) or client.decoder is None
                    await client.send(messages.reply_error(
                        ErrorCode.BAD_REQUEST, f"request not finished after {timeout:g}s "
                                               f"without input ({pending} bytes received)"))
                return
            if not data:
                return
            if client.json is None:
                data = client.head + data
                kind = codec.stream_kind(data)
                if kind is None:                 # only whitespace so far
                    client.head = data
                    if len(data) > messages.MAX_CTL_REQUEST:
                        client.json = True
                        await client.send(messages.reply_error(
                            ErrorCode.BAD_REQUEST,
                            f"{len(data)} bytes of whitespace and no request"))
                        return
                    continue
                client.head = b""
                client.json = kind == "json"
                client.text = kind == "text"
                if client.text:
                    client.decoder = codec.TextDecoder(messages.MAX_CTL_REQUEST)
                elif client.json:
                    client.decoder = codec.LineDecoder(messages.MAX_CTL_REQUEST)
                    if data.startswith(codec.BOM):
                        data = data[len(codec.BOM):]
                else:
                    client.decoder = codec.Decoder(messages.MAX_CTL_REQUEST)
            try:
                requests = client.decoder.feed(data)
            except codec.FrameError as e:
                # out of sync: say why, then hang up
                await client.send(messages.reply_error(ErrorCode.BAD_REQUEST, str(e)))
                return
            for req in requests:
                if client.text:
                    req = {"cmd": req}
                await client.send(await self._answer(client, req))
                if client.events is not None:
                    await self._monitor(client)
                    return

    async def _answer(self, client: _Client, req: Any) -> dict:
        if isinstance(req, codec.BadLine):
            return messages.reply_error(ErrorCode.BAD_REQUEST, f"not JSON: {req.reason}")
        try:
            cmd = client.cmd = messages.check_request(req)
            if self.restricted and cmd.words not in messages.READ_ONLY:
                raise CommandError(ErrorCode.FORBIDDEN,
                                   f"{cmd.name}: not allowed on the restricted socket")
            if cmd.words == ("monitor",):
                client.events = asyncio.Queue(MONITOR_QUEUE)
                return messages.reply_ok({"monitor": True})
            return messages.reply_ok(await self.handler(cmd))
        except CommandError as e:
            return messages.reply_error(e.code, e.message)

    async def _monitor(self, client: _Client) -> None:
        # listen for the client hanging up while we stream its events
        watch = asyncio.ensure_future(self._drain_input(client))
        try:
            while not watch.done():
                get = asyncio.ensure_future(client.events.get())
                done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                await client.send(get.result())
        finally:
            watch.cancel()

    @staticmethod
    async def _drain_input(client: _Client) -> None:
        while await client.reader.read(READ_SIZE):
            pass


# --- the metrics endpoint ----------------------------------------------------
#
# The same server, accepting and budgeting as above, speaking a sliver of
# HTTP/1.x on the TCP socket of `metrics listen on`: GET (or HEAD) /metrics
# and nothing else. A request head is bounded (METRICS_HEAD) and must come
# whole within the idle timeout; a body is refused. HTTP/1.1 connections
# are kept between scrapes (Prometheus reuses them), HTTP/1.0 ones closed.
# Any other request gets a short 4xx and the connection is closed.

METRICS_HEAD = 8192          # bytes of request line and headers
METRICS_CLIENTS = 64         # clients at once (a few Prometheus servers scrape)
METRICS_PATH = b"/metrics"
_STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}

Render = Callable[[], Awaitable[tuple[bytes, str]]]     # () -> (body, content type)


def http_response(code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", *,
                  close: bool = False, head_only: bool = False,
                  extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {code} {_STATUS[code]}", f"Content-Type: {ctype}",
             f"Content-Length: {len(body)}", *extra]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + body


def http_request(head: bytes) -> tuple[int, bool, bool]:
    """A request head (up to its blank line) -> (status to answer, keep the
    connection, HEAD). Pure: tested without sockets."""
    try:
        text = head.decode("latin-1")
        line, *fields = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        return 400, False, False
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return (505 if version.startswith("HTTP/") else 400), False, False
    headers: dict[str, str] = {}
    for f in fields:
        if not f:
            continue
        name, sep, value = f.partition(":")
        if not sep or not name or name != name.strip():
            return 400, False, False
        headers[name.lower()] = value.strip().lower()
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        return 400, False, False                 # no request carries a body here
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "")
    if method not in ("GET", "HEAD"):
        return 405, False, False
    if target.encode("latin-1").partition(b"?")[0] != METRICS_PATH:
        return 404, keep, method == "HEAD"
    return 200, keep, method == "HEAD"


class MetricsServer(ControlServer):
    """GET /metrics on a TCP socket the parent bound; render() makes the body."""
    what = "metrics socket"

    def __init__(self, sock: socket.socket, render: Render, *,
                 idle_timeout: float = IDLE_TIMEOUT, max_clients: int = METRICS_CLIENTS):
        super().__init__(sock, self._no_commands, idle_timeout=idle_timeout,
                         max_clients=max_clients)
        self.render = render
        self.scrapes = 0

    @staticmethod
    async def _no_commands(cmd: Command) -> Any:
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, "not a control socket")

    async def _serve(self, client: _Client) -> None:
        try:
            client.reader, client.writer = await asyncio.open_connection(
                sock=client.conn, limit=METRICS_HEAD)
            await self._http(client)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass                                   # the client went away or stalled
        except Exception as e:                     # never let one client hurt the rest
            logger.error("metrics client: %s: %s (at %s)", type(e).__name__, e, _where(e))
        finally:
            self.clients.discard(client)
            client.close()

    async def _http(self, client: _Client) -> None:
        while True:
            try:
                head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"),
                                              self.idle_timeout)
            except asyncio.LimitOverrunError:
                await self._write(client, http_response(
                    431, b"request head too large\n", close=True))
                return
            except asyncio.IncompleteReadError as e:
                if e.partial.strip():                # a head cut short: say so
                    await self._write(client, http_response(400, b"incomplete request\n",
                                                            close=True))
                return
            code, keep, head_only = http_request(head[:-4])
            if code == 200:
                body, ctype = await self.render()
                self.scrapes += 1
                reply = http_response(200, body, ctype, close=not keep, head_only=head_only)
            else:
                text = {404: b"not found: only /metrics is served\n",
                        405: b"method not allowed: GET or HEAD\n"}.get(
                    code, f"{_STATUS[code].lower()}\n".encode())
                keep = keep and code == 404
                reply = http_response(code, text, close=not keep, head_only=head_only,
                                      extra=("Allow: GET, HEAD",) if code == 405 else ())
            await self._write(client, reply)
            if not keep:
                return

    @staticmethod
    async def _write(client: _Client, data: bytes) -> None:
        client.writer.write(data)
        await asyncio.wait_for(client.writer.drain(), WRITE_TIMEOUT)
