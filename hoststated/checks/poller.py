"""The fast path: plain-TCP conversations driven straight from one epoll set.

Most checks (tcp, http, send/expect, binary over plain TCP) take this path;
TLS, UDP and STARTTLS take runner._converse(). Per check there is one small
object and a non-blocking socket: no Task, Future, transport, loop Handle or
TimerHandle, no selector bookkeeping.

- One epoll set per event loop holds every check socket; the loop watches
  that set's own fd as a single reader, and one wakeup serves every socket
  that is ready.
- Timeouts: checks with the same timeout end their turn in the order they
  started, so each timeout value keeps a FIFO of deadlines; a sweep, armed
  for the earliest deadline but at most every SWEEP seconds, ends the
  overdue ones. A timeout therefore strikes up to SWEEP late, as a loop
  timer may; where it struck still picks relayd's word (connect, write,
  read).
- A check's connection ends in an RST, never in TIME_WAIT on our side (as
  HAProxy closes its checks: at thousands of checks a second, 60 s of
  TIME_WAIT would hold hundreds of thousands of sockets). A read that ends
  the conversation only peeks (MSG_PEEK): closing a socket with unread data
  resets it (Linux, RFC 2525 2.17), so the common http check needs no
  SO_LINGER; a read that does not end it takes the bytes off the queue. A
  socket closed after the peer's FIN (EOF) is the passive side: no TIME_WAIT
  either. Any other close of a connected socket (a tcp check, a timeout, a
  cancel) first sets SO_LINGER 0.
- A socket leaves the epoll set by being closed (nothing else holds it), so
  an http check costs: socket, connect, send (connect is often done on
  return, on loopback and fast links: the send tells), epoll_ctl, recv
  (peek), close; a tcp check: socket, setsockopt (TCP_QUICKACK 0),
  connect, getsockopt (TCP_INFO: connected yet?), setsockopt (SO_LINGER 0),
  close.
- A conversation whose first action is Done (the connect is the check: tcp)
  is half-open, as HAProxy's: SYN, SYN-ACK, RST. Delayed ACKs hold the
  handshake's last ACK back and the close's RST goes first, so the host's
  application is never handed a connection (nor wakes, nor logs one) and
  neither kernel builds an established socket; what a tcp check learns (the
  host's kernel answers on the port) is the same. In the checks bench this
  took the checker's kernel time per tcp check from 54 to 44 us at 1,000/s
  and 44 to 31 us at 4,000/s, and its context switches from 848 to 100/s
  at 1,000/s (the woken backend no longer preempted it).

Poller.start(conv, target, timeout, on_done) calls on_done(verdict) exactly
once, from the event loop (or at once, when the verdict is known without
waiting: a refused connect, a tcp check whose connect is done); the returned
Conn's cancel() ends the check without calling on_done.
"""

from __future__ import annotations

import _socket              # the C socket type: no Python-level __init__ or close per check
import asyncio
import collections
import errno
import os
import select
import socket
import struct
import time
import weakref
from typing import Any, Callable

from hoststated.checks.base import Done, Send, Target, Verdict, failed
from hoststated.states import HostError

SWEEP = 0.005               # s: the longest a timeout may strike late

_LINGER_RST = struct.pack("ii", 1, 0)
_SOCKET_LIMIT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_PEEK = socket.MSG_PEEK
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_CONNECT, _WRITE, _READ = "connect", "write", "read"


def _reason(e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return e.strerror or str(e)
    if e.errno:
        return os.strerror(e.errno)
    return e.strerror or str(e) or type(e).__name__


def _tcp_state(sock: Any) -> int:
    """tcpi_state, the first byte of struct tcp_info (Linux); 0 if unknown."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except (OSError, AttributeError):
        return 0


def _ends(actions: list) -> bool:
    """Any Done among the actions (a loop: cheaper than any() over a genexpr)."""
    for a in actions:
        if type(a) is Done:
            return True
    return False


def _ignore(verdict: Verdict) -> None:
    pass


class Conn:
    """One check of one host in flight."""
    __slots__ = ("conv", "sock", "fd", "on_done", "deadline", "timeout", "phase",
                 "outbuf", "mask", "gen", "poller", "pending", "quiet")

    def cancel(self) -> None:
        if self.sock is not None:
            self.on_done = _ignore
            self.poller._finish(self, failed(HostError.ABORTED))


class Poller:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)     # the registry below must not keep loops alive
        self.ep: select.epoll | None = None
        self.conns: dict[int, Conn] = {}  # fd -> check, for the sockets in the epoll set
        self.queues: dict[float, collections.deque[Conn]] = {}
        self.sweep_at: float | None = None
        self.sweep: asyncio.TimerHandle | None = None
        self.gen = 0                      # epoll batches: a batch is not for later sockets

    # --- starting ---------------------------------------------------------
    def start(self, conv: Any, target: Target, timeout: float,
              on_done: Callable[[Verdict], Any]) -> Conn:
        c = Conn()
        c.conv = conv
        c.on_done = on_done
        c.timeout = timeout
        c.phase = _CONNECT
        c.outbuf = b""
        c.mask = 0
        c.quiet = False                   # its close sends an RST by itself (see _finish)
        c.poller = self
        c.deadline = time.monotonic() + timeout
        address = target.address
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = _socket.socket(family, _STREAM)
        except OSError as e:
            c.sock = None
            word = HostError.TCP_SOCKET_LIMIT if e.errno in _SOCKET_LIMIT else HostError.TCP_SOCKET_ERROR
            loop = self._loop()
            if loop is not None:
                loop.call_soon(on_done, failed(word, _reason(e)))
            return c
        c.sock = sock
        c.fd = sock.fileno()
        # The conversation's first actions are asked for now and performed
        # once connected (a sans-IO conversation cannot tell the difference;
        # if the connect fails they are dropped).
        try:
            actions = conv.start()
        except Exception as e:            # a check's bug: a verdict, not a crash
            self._finish(c, failed(HostError.PROTOCOL_FAIL, f"check error: {e!r}"))
            return c
        first = actions[0] if actions else None
        if target.proxy_header:
            # the host reads a PROXY header before the conversation
            if type(first) is Send:
                actions = [Send(target.proxy_header + first.data), *actions[1:]]
            else:
                actions = [Send(target.proxy_header), *actions]
            first = actions[0]
        elif type(first) is Done:
            # the connect is the whole check (tcp): half-open (module doc)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            except OSError:
                pass
        if target.ip_ttl:
            try:
                if family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, target.ip_ttl)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, target.ip_ttl)
            except OSError as e:
                self._finish(c, failed(HostError.TCP_SOCKET_OPTION, _reason(e)))
                return c
        if target.source:                 # migrate (issue 14): `check source ADDR`
            try:
                sock.bind((target.source, 0))
            except OSError as e:
                self._finish(c, failed(HostError.TCP_SOCKET_ERROR,
                                       f"source {target.source}: {_reason(e)}"))
                return c
        try:
            err = sock.connect_ex((address, target.port))
        except OSError as e:              # e.g. a name that does not resolve
            self._finish(c, failed(HostError.TCP_CONNECT_FAIL, _reason(e)))
            return c
        if err != errno.EINPROGRESS and err != 0:
            word = HostError.TCP_SOCKET_LIMIT if err in _SOCKET_LIMIT else HostError.TCP_CONNECT_FAIL
            self._finish(c, failed(word, os.strerror(err)))
            return c
        # On loopback and fast links the handshake is often done by the time
        # connect returns: a first Send then goes out at once, and its
        # success is the proof of the connection (a connecting socket
        # answers EAGAIN).
        if type(first) is Send and first.data:
            data = first.data
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                c.pending = actions                # still connecting
                self._want(c, _OUT)
                return c
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):     # connected, then lost
                    self._finish(c, failed(HostError.TCP_WRITE_FAIL, _reason(e)))
                else:                                              # the connect failed
                    word = (HostError.TCP_SOCKET_LIMIT if e.errno in _SOCKET_LIMIT
                            else HostError.TCP_CONNECT_FAIL)
                    self._finish(c, failed(word, _reason(e)))
                return c
            c.phase = _READ
            if n < len(data):
                c.outbuf = data[n:]
                c.phase = _WRITE
            self._perform(c, actions[1:])
        elif err == 0 or _tcp_state(sock) in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
            # (the peer may have closed already: it was connected)
            c.phase = _READ
            self._perform(c, actions)
        else:
            c.pending = actions
            self._want(c, _OUT)
        return c

    # --- the epoll set ----------------------------------------------------
    def _want(self, c: Conn, mask: int) -> None:
        """Wait for `mask` on c's socket (and be timed out)."""
        if c.mask == mask:
            return
        ep = self.ep
        if ep is None:
            try:
                ep = self._open()
            except OSError as e:          # no descriptor for the epoll set: ours, not the host's
                word = (HostError.TCP_SOCKET_LIMIT if e.errno in _SOCKET_LIMIT
                        else HostError.TCP_SOCKET_ERROR)
                self._finish(c, failed(word, _reason(e)))
                return
        if c.mask:
            ep.modify(c.fd, mask)
        else:
            ep.register(c.fd, mask)
            c.gen = self.gen
            self.conns[c.fd] = c
            q = self.queues.get(c.timeout)
            if q is None:
                q = self.queues[c.timeout] = collections.deque()
            while q and q[0].sock is None:  # ended before their deadline: let them go now,
                q.popleft()                 # not kept (and walked by the gc) until the sweep
            q.append(c)
            if self.sweep_at is None or c.deadline + SWEEP < self.sweep_at:
                self._arm(c.deadline)       # (a shorter timeout than the others)
        c.mask = mask

    def _open(self) -> select.epoll:
        self.ep = select.epoll()
        self._loop().add_reader(self.ep.fileno(), self._ready)
        return self.ep

    def _ready(self) -> None:
        self.gen += 1
        gen = self.gen
        conns = self.conns
        for fd, ev in self.ep.poll(0):
            c = conns.get(fd)
            if c is None or c.gen >= gen:      # closed, or a new socket on a reused fd
                continue
            if c.phase is _CONNECT:
                self._connect_done(c)
                continue
            if ev & _OUT and c.outbuf:
                self._writable(c)
            if c.sock is not None and ev & ~_OUT:    # in, hup, err
                self._readable(c)

    # --- the conversation -------------------------------------------------
    def _connect_done(self, c: Conn) -> None:
        # An event is never stale here: a closed socket's fd reused within one
        # batch is skipped by its gen, and a socket still in SYN_SENT polls
        # neither writable nor in error.
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            word = HostError.TCP_SOCKET_LIMIT if err in _SOCKET_LIMIT else HostError.TCP_CONNECT_FAIL
            self._finish(c, failed(word, os.strerror(err)))
        else:
            c.phase = _READ
            actions, c.pending = c.pending, None
            self._perform(c, actions)

    def _perform(self, c: Conn, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                if action.data:
                    self._send(c, action.data)
                    if c.sock is None:
                        return
            elif kind is Done:
                self._finish(c, action.verdict)
                return
            else:                          # StartTLS needs the transport path
                self._finish(c, failed(HostError.TLS_CONNECT_ERROR, "STARTTLS on the bare path"))
                return
        self._want(c, _IN | _OUT if c.outbuf else _IN)

    def _send(self, c: Conn, data: bytes) -> None:
        if c.outbuf:
            c.outbuf += data
            return
        try:
            n = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._finish(c, failed(HostError.TCP_WRITE_FAIL, _reason(e)))
            return
        if n < len(data):
            c.outbuf = data[n:]
            c.phase = _WRITE

    def _writable(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(c, failed(HostError.TCP_WRITE_FAIL, _reason(e)))
            return
        c.outbuf = c.outbuf[n:]
        if not c.outbuf:
            c.phase = _READ
            self._want(c, _IN)

    def _readable(self, c: Conn) -> None:
        sock = c.sock
        try:
            data = sock.recv(65536, _PEEK)      # taken off the queue below, if it goes on
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(c, failed(HostError.TCP_READ_FAIL, _reason(e)))
            return
        try:
            actions = c.conv.receive(data) if data else c.conv.eof()
        except Exception as e:
            self._finish(c, failed(HostError.PROTOCOL_FAIL, f"check error: {e!r}"))
            return
        if not data:
            c.quiet = True                     # the peer closed first: no TIME_WAIT here
        elif _ends(actions):
            c.quiet = True                     # the unread bytes make close() an RST
        else:
            try:
                sock.recv(len(data))           # the peeked bytes, no more
            except OSError as e:
                self._finish(c, failed(HostError.TCP_READ_FAIL, _reason(e)))
                return
        self._perform(c, actions)
        if not data and c.sock is not None:
            self._finish(c, failed(HostError.PROTOCOL_FAIL, "check did not end at EOF"))

    def _finish(self, c: Conn, verdict: Verdict) -> None:
        sock = c.sock
        if sock is None:
            return
        c.sock = None
        if c.mask:
            del self.conns[c.fd]           # closing takes it out of the epoll set
        if not c.quiet:
            try:                           # an RST, not a FIN: no TIME_WAIT here
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        sock.close()
        on_done = c.on_done
        c.conv = c.on_done = None          # it may wait in a timeout queue a while
        on_done(verdict)

    # --- timeouts ---------------------------------------------------------
    def _arm(self, deadline: float) -> None:
        loop = self._loop()
        if loop is None:
            return
        if self.sweep is not None:
            self.sweep.cancel()
        now = time.monotonic()
        at = max(deadline, now + SWEEP)
        self.sweep_at = at
        self.sweep = loop.call_at(loop.time() + (at - now), self._sweep)

    def _sweep(self) -> None:
        self.sweep_at = self.sweep = None
        now = time.monotonic()
        first = None
        for q in list(self.queues.values()):     # a verdict may start checks
            while q:
                c = q[0]
                if c.sock is None:
                    q.popleft()
                elif c.deadline <= now:
                    q.popleft()
                    self._timed_out(c)
                else:
                    if first is None or c.deadline < first:
                        first = c.deadline
                    break
        if first is not None:
            self._arm(first)

    def _timed_out(self, c: Conn) -> None:
        ms = f"{c.timeout * 1000:.0f}ms"
        if c.phase is _CONNECT:
            v = failed(HostError.TCP_CONNECT_TIMEOUT, f"no connection within {ms}")
        elif c.phase is _WRITE:
            v = failed(HostError.TCP_WRITE_TIMEOUT, f"could not send within {ms}")
        else:
            detail = f"no answer within {ms}"
            progress = getattr(c.conv, "progress", None)
            if progress is not None:
                try:
                    detail += f": {progress()}"
                except Exception:
                    pass
            v = failed(HostError.TCP_READ_TIMEOUT, detail)
        self._finish(c, v)


_pollers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def poller_for(loop: asyncio.AbstractEventLoop) -> Poller:
    """The loop's poller, made on first use; it goes with the loop."""
    p = _pollers.get(loop)
    if p is None:
        p = _pollers[loop] = Poller(loop)
    return p
