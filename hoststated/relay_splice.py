"""Plain TCP relaying with splice(2) (relayd's `tcp splice`, on by default
as in relayd): the bytes of a session go socket -> pipe -> socket inside the
kernel and never reach Python.

For a relay with no TLS on either side and no `http protocol`, the relay
process accepts on the listening socket itself (Acceptor: no transport, no
Protocol objects), connects to the backend with a non-blocking connect()
watched by the event loop (a timer, not a Task, for the deadline), and then
moves bytes with os.splice on the raw descriptors, one direction at a time
(_Direction): splice from the source socket into a pipe, then from the pipe
into the other socket. A direction copies its reads with recv/send through
one per-process buffer until a read fills it (COPY): two splices and a pipe
cost more than a copy for the small messages of most sessions (HAProxy's
splice-auto has the same idea); from then on it splices.

Backpressure: what the destination socket does not take stays in the pipe
(or, copying, in a bytes object of at most COPY); the direction stops
reading its source when the pipe is full (or at once, copying) and goes on
when the destination is writable; so a session holds at most a pipe per
direction, in the kernel. Pipes come from a small per-process pool and go
back to it as soon as they are empty, so an idle session holds none; a
bulk flow's pipe is grown to BIG (Pipes: Linux gives each user only
pipe-user-pages-soft pages of pipes at full size).

An EOF is passed on as shutdown(SHUT_WR) once the pipe is empty, and the
session ends when both directions are done, or at once on an error. The
session keeps the figures and fields the session table shows (SessionRow),
the relay runtime counts it in and out as it does a Protocol session.

`no splice` in the relay's `tcp { }` options: the Protocol path
(relay_tcp) instead, which copies bytes through Python.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

from hoststated import log, relay_proxy

logger = log.get("relay")

SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
CHUNK = 1 << 20               # bytes asked of one splice (the pipe takes what fits)
COPY = 1 << 16                # a read this size copied; a full one starts splicing
BIG = 1 << 20                 # bytes of a bulk flow's pipe (fs.pipe-max-size's default)
BIG_MAX = 8                   # bulk flows per process with a pipe that big
POOL_MAX = 64                 # idle pipes a process keeps
ACCEPT_BATCH = 32             # connections taken per readable listener
ACCEPT_PAUSE = 0.1            # s without accepting after EMFILE and the like
CONNECT_TIMEOUT = 10.0        # s for one connect to a backend (capped by the session timeout)
F_SETPIPE_SZ = 1031           # <linux/fcntl.h>
F_GETPIPE_SZ = 1032
_splice = os.splice
_BUF = bytearray(COPY)        # the copies' buffer: one per process, used within a call
_VIEW = memoryview(_BUF)
_RESOURCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def wanted(rt: Any, listen_tls: bool) -> bool:
    """Whether a listener of relay runtime `rt` relays by splice: plain TCP
    on both sides (no TLS, no HTTP, no DNS) and not `tcp { no splice }`."""
    if listen_tls or rt.http is not None or rt.dns:
        return False
    if any(f.tls for f in rt.conf.forward):
        return False
    return rt.splice



def _passive_kind(err: int) -> str:
    """A failed connect's errno as a passive event (issue 15; relay_tcp's
    passive_kind, which this module may not import)."""
    if err in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "reset"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"

class Pipes:
    """The pipes of this process. A pipe of the kernel's default size comes
    from an idle pool and goes back to it when empty; a direction that
    fills one (a bulk flow) has it grown to BIG and keeps it to the end of
    its session, for at most BIG_MAX directions at a time: Linux lets a
    user hold pipe-user-pages-soft pages of pipes (64 MiB by default), and
    past that every new pipe of that user gets 2 pages only."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []
        self.big = 0                    # grown pipes in use
        self.default = 0                # the kernel's pipe size, once known

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if not self.default:
            self.default = _fcntl(w, F_GETPIPE_SZ, 0)
        return r, w

    def grow(self, pipe: tuple[int, int]) -> int:
        """The new capacity of pipe, or 0 if it stays as it is."""
        if self.big >= BIG_MAX:
            return 0
        try:
            size = _fcntl(pipe[1], F_SETPIPE_SZ, BIG)
        except OSError:
            return 0                    # past the user's pipe pages
        self.big += 1
        return size

    def put(self, pipe: tuple[int, int]) -> None:
        """An empty pipe of the default size back to the pool (or closed,
        the pool being full)."""
        if len(self.free) < POOL_MAX:
            self.free.append(pipe)
        else:
            _close_pipe(pipe)

    def drop_big(self, pipe: tuple[int, int]) -> None:
        self.big -= 1
        _close_pipe(pipe)

    def close(self) -> None:
        for pipe in self.free:
            _close_pipe(pipe)
        self.free.clear()


def _fcntl(fd: int, cmd: int, arg: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, cmd, arg)


def _close_pipe(pipe: tuple[int, int]) -> None:
    os.close(pipe[0])
    os.close(pipe[1])


class Acceptor:
    """Accepts on one listening socket for splice sessions (in place of an
    asyncio server); the session's runtime is looked up per connection, so
    a reload that keeps the listener serves the new config at once."""

    def __init__(self, loop, sock: socket.socket, proc: Any, key: str):
        self.loop = loop
        self.sock = sock
        self.proc = proc
        self.key = key
        self.fd = sock.fileno()
        sock.setblocking(False)
        name = sock.getsockname()
        # the address a session was accepted on: the listener's, unless it
        # is a wildcard (then getsockname per session)
        self.here = None if name[0] in ("0.0.0.0", "::") else name[:2]
        self.options: list = []
        self._paused = None
        loop.add_reader(self.fd, self._ready)

    def set_options(self, opts) -> None:
        """The relay's `tcp { }` options on the listening socket, where an
        accepted socket inherits them from (Linux copies nodelay, buffers,
        ttl and minttl on accept): one setsockopt per listener, not per
        session."""
        want = _with_nodelay(opts)
        if want == self.options:
            return
        self.options = want
        apply_options(self.sock, want)

    def _ready(self) -> None:
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                csock, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _RESOURCE:
                    # no descriptor for it: stop accepting a while, not spin
                    logger.warning("relay listener %s: accept: %s", self.key, e.strerror)
                    self.loop.remove_reader(self.fd)
                    self._paused = self.loop.call_later(ACCEPT_PAUSE, self._resume)
                    return
                continue                # ECONNABORTED and the like: that one is gone
            self.proc.splice_session(self, csock, addr)

    def _resume(self) -> None:
        self._paused = None
        self.loop.add_reader(self.fd, self._ready)

    def detach(self) -> socket.socket:
        """Stop accepting; the listening socket, left open, to the caller."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        else:
            self.loop.remove_reader(self.fd)
        return self.sock

    def close(self) -> None:
        self.detach().close()


def _with_nodelay(opts) -> list:
    """The options with TCP_NODELAY on unless they turn it off: the
    Protocol path gets it from the event loop, so splice sessions do too."""
    opts = list(opts)
    if not any(o[0] == socket.IPPROTO_TCP and o[1] == socket.TCP_NODELAY for o in opts):
        opts.insert(0, (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    return opts


def apply_options(sock: socket.socket, opts) -> None:
    for level, name, value in opts:
        if level == socket.IPPROTO_IP and sock.family != socket.AF_INET:
            continue                    # ip ttl/minttl: IPv4 (relayd's too)
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            pass                        # a socket already reset by its peer


class _Direction:
    """One way of a session: src socket -> pipe -> dst socket."""

    __slots__ = ("s", "src", "ssock", "dst", "dsock", "pipe", "cap", "big", "queued", "eof",
                 "done", "reading", "writing", "up", "piped", "pending")

    def __init__(self, session: SpliceSession, ssock: socket.socket, dsock: socket.socket,
                 up: bool):
        self.s = session
        self.ssock = ssock
        self.src = ssock.fileno()
        self.dsock = dsock
        self.piped = False              # splicing (a bulk flow); copying small reads till then
        self.pending: bytes | None = None   # what a copy could not send yet
        self.dst = dsock.fileno()
        self.up = up                    # client -> backend
        self.pipe: tuple[int, int] | None = None
        self.cap = 0                    # what the pipe holds
        self.big = False                # grown: kept to the end
        self.queued = 0                 # bytes in the pipe
        self.eof = False                # src sent its EOF
        self.done = False               # ... and it was passed on
        self.reading = False            # a reader on src
        self.writing = False            # a writer on dst

    def readable(self) -> None:
        if not self.piped and not self._copy():
            return
        s = self.s
        while True:
            pipe = self.pipe
            if pipe is None:
                try:
                    pipe = self.pipe = s.proc.pipes.get()
                except OSError as e:
                    s.fail(f"no pipe for splicing: {e.strerror}")
                    return
                self.cap = s.proc.pipes.default
            try:
                n = _splice(self.src, pipe[1], CHUNK, flags=SPLICE)
            except BlockingIOError:
                if self.queued:
                    # the pipe is full (or src dry; splice cannot say which):
                    # read again once dst has taken some
                    self._stop_reading()
                    if self.queued >= self.cap >> 1:
                        self._grow()
                elif not self.big:
                    s.proc.pipes.put(pipe)
                    self.pipe = None
                return
            except OSError as e:
                s.fail_io(e, self.up, "read")
                return
            if n == 0:
                self.eof = True
                self._stop_reading()
                if not self.queued:
                    self._pass_eof()        # else writable() does, once the pipe is empty
                return
            self.queued += n
            if self.up:
                s.bytes_in += n
            else:
                s.bytes_out += n
            s.last = time.monotonic()
            more = n >= self.cap            # a pipe's worth at once: a bulk flow
            if more:
                self._grow()
            if not self.writing:
                if self.flush():
                    if not self.big:
                        s.proc.pipes.put(pipe)
                        self.pipe = None
                elif s.closed:
                    return
                else:
                    # dst takes no more now: the pipe holds the rest till it does
                    self.writing = True
                    s.loop.add_writer(self.dst, self.writable)
            if not more:
                return                      # src is likely dry (the loop says if not)

    def _copy(self) -> bool:
        """A read of up to COPY bytes sent on by recv/send (cheaper than two
        splices and a pipe for the small messages of most sessions); True
        when it filled the buffer: a bulk flow, spliced from now on."""
        s = self.s
        try:
            n = self.ssock.recv_into(_BUF)
        except BlockingIOError:
            return False
        except OSError as e:
            s.fail_io(e, self.up, "read")
            return False
        if n == 0:
            self.eof = True
            self._stop_reading()
            self._pass_eof()
            return False
        if self.up:
            s.bytes_in += n
        else:
            s.bytes_out += n
        s.last = time.monotonic()
        try:
            m = self.dsock.send(_VIEW[:n])
        except BlockingIOError:
            m = 0
        except OSError as e:
            s.fail_io(e, not self.up, "write")
            return False
        if m < n:
            # dst takes no more now: the rest waits here, the source with it
            self.pending = bytes(_VIEW[m:n])
            self._stop_reading()
            self.writing = True
            s.loop.add_writer(self.dst, self.writable)
            return False
        if n < COPY:
            return False
        self.piped = True
        return True

    def _grow(self) -> None:
        if not self.big:
            size = self.s.proc.pipes.grow(self.pipe)
            if size:
                self.big = True
                self.cap = size

    def flush(self) -> bool:
        """Pipe -> dst; True when the pipe is empty."""
        try:
            n = _splice(self.pipe[0], self.dst, self.queued, flags=SPLICE)
        except BlockingIOError:
            return False
        except OSError as e:
            self.s.fail_io(e, not self.up, "write")
            return False
        self.queued -= n
        return not self.queued

    def writable(self) -> None:
        s = self.s
        if self.pending is not None:
            try:
                m = self.dsock.send(self.pending)
            except BlockingIOError:
                return
            except OSError as e:
                s.fail_io(e, not self.up, "write")
                return
            if m < len(self.pending):
                self.pending = self.pending[m:]
                return
            self.pending = None
        elif not self.flush():
            return                          # still full, or the session failed
        s.loop.remove_writer(self.dst)
        self.writing = False
        if self.pipe is not None and not self.big:
            s.proc.pipes.put(self.pipe)
            self.pipe = None
        if self.eof:
            self._pass_eof()
        elif not self.reading:
            self.reading = True
            s.loop.add_reader(self.src, self.readable)
            self.readable()             # what came meanwhile, without waiting a loop turn

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.s.loop.remove_reader(self.src)

    def _pass_eof(self) -> None:
        self.done = True
        s = self.s
        if not (s.down if self.up else s.up).done:
            try:
                self.dsock.shutdown(socket.SHUT_WR)
            except OSError:
                pass                    # the peer is gone: the other way ends it
        # else both ways are done: the close that follows sends the FIN
        s.direction_done()

    def release(self, loop) -> None:
        if self.reading:
            self.reading = False
            loop.remove_reader(self.src)
        if self.writing:
            self.writing = False
            loop.remove_writer(self.dst)
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            if self.big:
                self.s.proc.pipes.drop_big(pipe)
            elif self.queued:
                _close_pipe(pipe)       # bytes nobody will take: not pooled
            else:
                self.s.proc.pipes.put(pipe)
            self.queued = 0


class SpliceSession:
    """One spliced session; the same fields for the session table as
    relay_tcp.Session (id, relay, client_addr, target, started, last,
    bytes_in/out, server, error) and the same close()/abort()."""

    __slots__ = ("id", "relay", "proc", "loop", "csock", "bsock", "client_addr", "local_addr",
                 "target", "started", "last", "bytes_in", "bytes_out", "closed", "error",
                 "server", "up", "down", "_targets", "_deadline", "_timer", "_last_error",
                 "_acceptor")

    def __init__(self, sid: int, rt: Any, proc: Any, loop, acceptor: Acceptor,
                 csock: socket.socket, addr):
        self.id = sid
        self.relay = rt
        self.proc = proc
        self.loop = loop
        self.csock = csock
        self.bsock: socket.socket | None = None
        self.server: socket.socket | None = None      # the backend, once connected
        self.client_addr = addr
        self.local_addr = acceptor.here or csock.getsockname()
        self._acceptor = acceptor
        self.target = None
        self.started = time.time()
        self.last = time.monotonic()
        self.bytes_in = self.bytes_out = 0
        self.closed = False
        self.error: str | None = None
        self.up = self.down = None
        self._targets: list = []
        self._deadline = 0.0
        self._timer = None
        self._last_error = ""

    def client_socket(self) -> socket.socket:
        return self.csock

    def start(self) -> None:
        self.csock.setblocking(False)
        self.relay.session_started(self)
        targets, why = self.relay.targets_for(self)
        if not targets:
            self.fail(why or "no host up")
            return
        self._targets = targets
        self._deadline = self.loop.time() + min(CONNECT_TIMEOUT * len(targets),
                                                self.relay.session_timeout)
        self._connect_next()

    # --- connecting ---------------------------------------------------------

    def _connect_next(self) -> None:
        while self._targets and not self.closed:
            left = self._deadline - self.loop.time()
            if left <= 0:
                break
            target = self._targets.pop(0)
            family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
            try:
                b = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as e:
                self.fail(f"connect to {target.address}:{target.port}: {e.strerror}")
                return
            apply_options(b, self._acceptor.options)
            err = b.connect_ex((target.address, target.port))
            if err in (0, errno.EINPROGRESS):
                self.bsock = b
                self.target = target
                # counted from the choice, not the connect: least-states
                # must see the sessions still connecting (a burst accepted together)
                target.sessions += 1
                self.loop.add_writer(b.fileno(), self._connected)
                self._timer = self.loop.call_later(min(CONNECT_TIMEOUT, left),
                                                   self._connect_timeout)
                return
            b.close()
            self._last_error = f"connect to {target.address}:{target.port}: {os.strerror(err)}"
            self.relay.passive_event(target, _passive_kind(err))      # issue 15
        self.fail(self._last_error or "connect deadline passed")

    def _connect_timeout(self) -> None:
        self._timer = None
        t = self.target
        self._last_error = f"connect to {t.address}:{t.port} timed out"
        self.relay.passive_event(t, "error")                          # issue 15
        self._drop_backend()
        self._connect_next()

    def _drop_backend(self) -> None:
        b = self.bsock
        self.loop.remove_writer(b.fileno())
        b.close()
        self.bsock = None
        self.target.sessions -= 1
        self.target = None

    def _connected(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        b = self.bsock
        err = b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            t = self.target
            self._last_error = f"connect to {t.address}:{t.port}: {os.strerror(err)}"
            self.relay.passive_event(t, _passive_kind(err))           # issue 15
            self._drop_backend()
            self._connect_next()
            return
        loop = self.loop
        target = self.target
        self.server = b
        self.relay.session_connected(self)
        if target.proxy:
            # HAProxy's PROXY header first, on an empty send buffer: whole
            header = relay_proxy.header(target.proxy, tuple(self.client_addr[:2]),
                                        tuple(self.local_addr[:2]))
            try:
                b.send(header)
            except OSError as e:
                self.fail_io(e, True, "write")
                return
        cfd, bfd = self.csock.fileno(), b.fileno()
        self.up = _Direction(self, self.csock, b, True)
        self.down = _Direction(self, b, self.csock, False)
        self.up.reading = self.down.reading = True
        loop.add_reader(cfd, self.up.readable)
        # the reader before the connect's writer goes: uvloop keeps the
        # descriptor's poll handle instead of making a new one
        loop.add_reader(bfd, self.down.readable)
        loop.remove_writer(bfd)
        # the client has most likely sent already: no loop turn to learn it
        self.up.readable()

    # --- ends ------------------------------------------------------------------

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self.close()

    def fail_io(self, e: OSError, backend: bool, what: str) -> None:
        if self.error is None:
            self.error = f"{'backend' if backend else 'client'}: {e.strerror or e}"
        self.close()

    def fail(self, why: str) -> None:
        self.error = why
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.up is not None:
            self.up.release(loop)
            self.down.release(loop)
        elif self.bsock is not None:
            loop.remove_writer(self.bsock.fileno())       # still connecting
        if self.bsock is not None:
            self.bsock.close()
        self.csock.close()
        if self.target is not None:          # connected or connecting: counted
            self.target.sessions -= 1
        self.relay.session_ended(self)

    def abort(self) -> None:
        """Idle past the session timeout, or the daemon stops."""
        if self.error is None:
            self.error = "session timeout"
        self.close()
