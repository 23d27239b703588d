"""The one place where checks meet the network: connect, TLS, timeouts.

run_check() drives a sans-IO Conversation (checks.base) over TCP or UDP,
or awaits a LibraryCheck, runs a ScriptCheck's program, or pings for an
IcmpCheck; the timeout covers the whole check (connect + TLS + write + read),
as relayd's, and where it struck becomes relayd's word: `tcp connect
timeout`, `tls connect timeout`, `tcp read timeout`, ...

The hot path is a plain asyncio.Protocol that feeds the conversation from
data_received; a coroutine only waits for its verdict. Sockets are closed
with SO_LINGER 0 (an RST, as HAProxy closes its checks) so thousands of
checks a second leave no TIME_WAIT sockets behind."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import signal
import socket
import ssl
import struct
import time
from typing import Any

from hoststated.checks import icmp as icmp_wire
from hoststated.checks.base import (Done, Send, StartTLS, Target, TLSInfo, Verdict,
                                    failed, passed)
from hoststated.checks.script import OUTPUT_CAP, ScriptCheck, verdict as script_verdict
from hoststated.states import HostError

_LINGER_RST = struct.pack("ii", 1, 0)
_SOCKET_LIMIT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# --- TLS contexts: made once, reused by every check ------------------------

@functools.lru_cache(maxsize=64)
def ssl_context(verify: bool = False, ca_file: str | None = None) -> ssl.SSLContext:
    """relayd does not verify certificates (check tls, https); `verify` is
    hoststated's extension, against ca_file or the system store."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if ca_file:
            ctx.load_verify_locations(ca_file)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_info(transport: asyncio.BaseTransport, ctx: ssl.SSLContext) -> TLSInfo:
    sslobj = transport.get_extra_info("ssl_object")
    cipher = transport.get_extra_info("cipher") or ("", "", 0)
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return TLSInfo(version=(sslobj.version() if sslobj else None) or "TLS",
                   cipher=cipher[0] or "", peer_cert_der=der,
                   verified=ctx.verify_mode != ssl.CERT_NONE, checked_at=time.time())


def _tls_reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return e.verify_message or str(e)
    if isinstance(e, ssl.SSLError):
        return e.reason or e.strerror or str(e)
    return _os_reason(e)


def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)       # not asyncio's "Connect call failed (...)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# --- the conversation driver ----------------------------------------------

class _Wire(asyncio.Protocol):
    """Feeds one conversation; resolves `waiter` with a Verdict, or with a
    StartTLS (plus the actions after it) for the coroutine to perform."""

    __slots__ = ("conv", "tls", "transport", "waiter", "phase", "pending")

    def __init__(self, conv: Any, tls: bool, waiter: asyncio.Future) -> None:
        self.conv = conv
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.waiter = waiter
        self.phase = "connect"
        self.pending: list = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def perform(self, actions: list) -> None:
        for i, action in enumerate(actions):
            if self.waiter.done():
                return
            if type(action) is Send:
                if action.data:
                    self.phase = "write"
                    if getattr(self.conv, "transport", "tcp") == "udp":
                        self.transport.sendto(action.data)   # udp: one datagram
                    else:
                        self.transport.write(action.data)
                self.phase = "read"
            elif type(action) is Done:
                self.waiter.set_result(action.verdict)
                return
            elif type(action) is StartTLS:
                self.waiter.set_result(action)
                self.pending = actions[i + 1:]
                return
        if self.phase == "write" or self.phase == "connect":
            self.phase = "read"

    def data_received(self, data: bytes) -> None:
        if self.waiter.done():
            return
        try:
            self.perform(self.conv.receive(data))
        except Exception as e:         # a check's bug must not kill the engine
            self.waiter.set_result(failed(HostError.PROTOCOL_FAIL, f"check error: {e!r}"))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.data_received(data)

    def error_received(self, exc: Exception) -> None:   # UDP: ICMP unreachable
        if not self.waiter.done():
            self.waiter.set_result(failed(HostError.TCP_READ_FAIL, _os_reason(exc)))

    def eof_received(self) -> bool:
        self._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter.done():
            return
        if exc is None:
            self._eof()
        else:
            word = HostError.TLS_READ_ERROR if self.tls else HostError.TCP_READ_FAIL
            self.waiter.set_result(failed(word, _os_reason(exc)))

    def _eof(self) -> None:
        if self.waiter.done():
            return
        try:
            self.perform(self.conv.eof())
        except Exception as e:
            self.waiter.set_result(failed(HostError.PROTOCOL_FAIL, f"check error: {e!r}"))
        if not self.waiter.done():
            self.waiter.set_result(failed(HostError.PROTOCOL_FAIL, "check did not end at EOF"))


def _timeout_verdict(wire: _Wire, timeout: float) -> Verdict:
    ms = f"{timeout * 1000:.0f}ms"
    phase, tls = wire.phase, wire.tls
    if phase == "connect":
        return failed(HostError.TCP_CONNECT_TIMEOUT, f"no connection within {ms}")
    if phase == "tls":
        return failed(HostError.TLS_CONNECT_TIMEOUT, f"no TLS handshake within {ms}")
    t = wire.transport
    if phase == "write" or (t is not None and not t.is_closing()
                            and t.get_write_buffer_size() > 0):
        return failed(HostError.TLS_WRITE_TIMEOUT if tls else HostError.TCP_WRITE_TIMEOUT,
                      f"could not send within {ms}")
    progress = getattr(wire.conv, "progress", None)
    detail = f"no answer within {ms}"
    if progress is not None:
        try:
            detail += f": {progress()}"
        except Exception:
            pass
    return failed(HostError.TLS_READ_TIMEOUT if tls else HostError.TCP_READ_TIMEOUT, detail)


def _close(transport: asyncio.BaseTransport | None) -> None:
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    transport.abort()


async def _converse(conv: Any, target: Target, timeout: float,
                    ssl_ctx: ssl.SSLContext | None) -> Verdict:
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    tls = bool(getattr(conv, "tls", False))
    wire = _Wire(conv, tls, waiter)
    if target.port is None:
        return failed(HostError.TCP_SOCKET_ERROR, "no port to connect to")
    transport = None
    try:
        async with asyncio.timeout(timeout):
            try:
                if getattr(conv, "transport", "tcp") == "udp":
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: wire, remote_addr=(target.address, target.port))
                else:
                    transport, _ = await loop.create_connection(
                        lambda: wire, target.address, target.port)
            except OSError as e:
                if e.errno in _SOCKET_LIMIT:
                    return failed(HostError.TCP_SOCKET_LIMIT, _os_reason(e))
                return failed(HostError.TCP_CONNECT_FAIL, _os_reason(e))
            wire.transport = transport
            server_name = target.server_name
            if tls:
                ctx = ssl_ctx or ssl_context()
                wire.phase = "tls"
                try:
                    transport = await loop.start_tls(
                        transport, wire, ctx,
                        server_hostname=server_name or (target.address if ctx.check_hostname else None))
                except (ssl.SSLError, OSError, ConnectionError) as e:
                    word = (HostError.TLS_CONNECT_FAIL if isinstance(e, ssl.SSLError)
                            else HostError.TLS_CONNECT_ERROR)
                    return failed(word, _tls_reason(e))
                wire.transport = transport
                hook = getattr(conv, "tls_established", None)
                if hook is not None:
                    hook(_tls_info(transport, ctx))
            wire.phase = "read"
            wire.perform(conv.start())
            while True:
                result = await waiter
                if isinstance(result, Verdict):
                    return result
                # StartTLS asked by the conversation
                ctx = ssl_ctx or ssl_context()
                wire.phase = "tls"
                try:
                    transport = await loop.start_tls(
                        transport, wire, ctx,
                        server_hostname=result.server_name or server_name or
                        (target.address if ctx.check_hostname else None))
                except (ssl.SSLError, OSError, ConnectionError) as e:
                    word = (HostError.TLS_CONNECT_FAIL if isinstance(e, ssl.SSLError)
                            else HostError.TLS_CONNECT_ERROR)
                    return failed(word, _tls_reason(e))
                wire.transport = transport
                wire.tls = True
                wire.phase = "read"
                waiter = wire.waiter = loop.create_future()
                rest, wire.pending = wire.pending, []
                wire.perform(conv.tls_started(_tls_info(transport, ctx)) + rest)
    except TimeoutError:
        return _timeout_verdict(wire, timeout)
    except Exception as e:              # the check's own bug: a verdict, not a crash
        return failed(HostError.PROTOCOL_FAIL, f"check error: {e!r}")
    finally:
        _close(transport)


# --- the fast path: plain TCP conversations on a bare socket -----------------

_TCP_ESTABLISHED = 1


def _established(sock: socket.socket) -> bool:
    """tcpi_state, the first byte of struct tcp_info (Linux)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_ESTABLISHED
    except (OSError, AttributeError):
        return False


class _Bare:
    """A plain-TCP conversation driven straight from the selector: no
    transport, no task, no future, one timer. Most checks (tcp, http, send
    /expect, binary) take this path; TLS and UDP take _converse()."""

    __slots__ = ("loop", "conv", "sock", "fd", "on_done", "timer", "phase",
                 "outbuf", "timeout", "reading")

    def __init__(self, loop: asyncio.AbstractEventLoop, conv: Any, target: Target,
                 timeout: float, on_done: Any) -> None:
        self.loop = loop
        self.conv = conv
        self.on_done = on_done
        self.timeout = timeout
        self.phase = "connect"
        self.outbuf = b""
        self.reading = False
        self.sock = None
        self.fd = -1
        self.timer = None
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            word = (HostError.TCP_SOCKET_LIMIT if e.errno in _SOCKET_LIMIT
                    else HostError.TCP_SOCKET_ERROR)
            loop.call_soon(on_done, failed(word, _os_reason(e)))
            return
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            if target.ip_ttl:
                if family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, target.ip_ttl)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, target.ip_ttl)
        except OSError as e:
            self._finish(failed(HostError.TCP_SOCKET_OPTION, _os_reason(e)))
            return
        self.timer = loop.call_at(loop.time() + timeout, self._timed_out)
        err = sock.connect_ex((target.address, target.port))
        if err == 0 or (err == errno.EINPROGRESS and _established(sock)):
            # on loopback and fast links the handshake is often done by the
            # time connect returns: skip a round through the selector
            self._connected()
        elif err == errno.EINPROGRESS:
            loop.add_writer(self.fd, self._connect_done)
        else:
            self._finish(failed(HostError.TCP_CONNECT_FAIL, os.strerror(err)))

    def _connect_done(self) -> None:
        self.loop.remove_writer(self.fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            word = HostError.TCP_SOCKET_LIMIT if err in _SOCKET_LIMIT else HostError.TCP_CONNECT_FAIL
            self._finish(failed(word, os.strerror(err)))
            return
        self._connected()

    def _connected(self) -> None:
        self.phase = "read"
        self.reading = True
        self.loop.add_reader(self.fd, self._readable)
        self._perform(self.conv.start)

    def _perform(self, step: Any, *args: Any) -> None:
        try:
            actions = step(*args)
        except Exception as e:            # a check's bug: a verdict, not a crash
            self._finish(failed(HostError.PROTOCOL_FAIL, f"check error: {e!r}"))
            return
        for action in actions:
            if self.sock is None:
                return
            kind = type(action)
            if kind is Send:
                if action.data:
                    self._send(action.data)
            elif kind is Done:
                self._finish(action.verdict)
                return
            else:                          # StartTLS needs the transport path
                self._finish(failed(HostError.TLS_CONNECT_ERROR, "STARTTLS on the bare path"))
                return

    def _send(self, data: bytes) -> None:
        if self.outbuf:
            self.outbuf += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._finish(failed(HostError.TCP_WRITE_FAIL, _os_reason(e)))
            return
        if n < len(data):
            self.outbuf = data[n:]
            self.phase = "write"
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(failed(HostError.TCP_WRITE_FAIL, _os_reason(e)))
            return
        self.outbuf = self.outbuf[n:]
        if not self.outbuf:
            self.loop.remove_writer(self.fd)
            self.phase = "read"

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(failed(HostError.TCP_READ_FAIL, _os_reason(e)))
            return
        if data:
            self._perform(self.conv.receive, data)
            return
        self._perform(self.conv.eof)
        if self.sock is not None:
            self._finish(failed(HostError.PROTOCOL_FAIL, "check did not end at EOF"))

    def _timed_out(self) -> None:
        self.timer = None
        ms = f"{self.timeout * 1000:.0f}ms"
        if self.phase == "connect":
            v = failed(HostError.TCP_CONNECT_TIMEOUT, f"no connection within {ms}")
        elif self.phase == "write":
            v = failed(HostError.TCP_WRITE_TIMEOUT, f"could not send within {ms}")
        else:
            detail = f"no answer within {ms}"
            progress = getattr(self.conv, "progress", None)
            if progress is not None:
                try:
                    detail += f": {progress()}"
                except Exception:
                    pass
            v = failed(HostError.TCP_READ_TIMEOUT, detail)
        self._finish(v)

    def _finish(self, verdict: Verdict) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.phase in ("connect", "write"):
            self.loop.remove_writer(self.fd)
        sock.close()
        self.on_done(verdict)

    def cancel(self) -> None:
        if self.sock is not None:
            on_done, self.on_done = self.on_done, lambda v: None
            self._finish(failed(HostError.ABORTED))


def bare_path(check: Any) -> bool:
    """True when a check can run on the fast bare-socket path."""
    return (hasattr(check, "start") and not getattr(check, "tls", False)
            and not getattr(check, "starttls", False)   # protocol checks that upgrade
            and getattr(check, "transport", "tcp") == "tcp")


def start_check(check: Any, target: Target, timeout: float, on_done: Any) -> _Bare:
    """Callback form of run_check for plain-TCP conversations (bare_path):
    on_done(verdict) is called exactly once, from the event loop; the
    returned object's cancel() aborts the check without calling on_done."""
    if target.port is None:
        b = _Bare.__new__(_Bare)
        b.sock = None
        asyncio.get_running_loop().call_soon(
            on_done, failed(HostError.TCP_SOCKET_ERROR, "no port to connect to"))
        return b
    return _Bare(asyncio.get_running_loop(), check, target, timeout, on_done)


# --- scripts --------------------------------------------------------------

_scripts_running: set[tuple[str, str]] = set()


async def run_script(check: ScriptCheck, timeout: float) -> Verdict:
    """Run the script with the host as its argument, in its own process
    group, and kill the whole group at the timeout. One instance per host."""
    key = (check.path, check.argument)
    if key in _scripts_running:
        return failed(HostError.SCRIPT_FAIL, "previous run still running")
    _scripts_running.add(key)
    proc = None
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *check.argv(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        except OSError as e:
            return script_verdict(None, output=_os_reason(e).encode())
        out = bytearray()

        async def collect() -> int:
            while chunk := await proc.stdout.read(65536):
                if len(out) < OUTPUT_CAP:
                    out.extend(chunk[:OUTPUT_CAP - len(out)])
            return await proc.wait()
        try:
            async with asyncio.timeout(timeout):
                rc = await collect()
        except TimeoutError:
            return script_verdict(None, timed_out=True, output=bytes(out))
        return script_verdict(rc, output=bytes(out))
    finally:
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                await proc.wait()
            except BaseException:
                pass
        elif proc is not None:
            try:                         # leftovers of the group (background children)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _scripts_running.discard(key)


# --- ICMP -----------------------------------------------------------------

class IcmpPinger:
    """Echo requests over raw sockets opened before the privilege drop (fds);
    the requests of one loop iteration go out in one burst, and replies are
    matched by (identifier, sequence) and the replying address."""

    def __init__(self, fds: list[int] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.socks: dict[int, socket.socket] = {}
        for fd in fds if fds is not None else icmp_wire.open_raw_sockets():
            s = socket.socket(fileno=fd)
            s.setblocking(False)
            self.socks[s.family] = s
            self.loop.add_reader(s.fileno(), self._readable, s)
        self.ident = (os.getpid() ^ id(self)) & 0xFFFF
        self.seq = 0
        self.pending: dict[int, tuple[str, asyncio.Future]] = {}
        self.queue: list[tuple[socket.socket, bytes, str]] = []

    def close(self) -> None:
        for s in self.socks.values():
            self.loop.remove_reader(s.fileno())
            s.close()
        self.socks.clear()

    async def ping(self, address: str, timeout: float) -> Verdict:
        v6 = ":" in address
        sock = self.socks.get(socket.AF_INET6 if v6 else socket.AF_INET)
        if sock is None:
            return failed(HostError.ICMP_WRITE_TIMEOUT,
                          f"no raw ICMP{'v6' if v6 else ''} socket")
        for _ in range(0x10000):
            self.seq = (self.seq + 1) & 0xFFFF
            if self.seq not in self.pending:
                break
        seq = self.seq
        fut = self.loop.create_future()
        self.pending[seq] = (address, fut)
        if not self.queue:
            self.loop.call_soon(self._flush)
        self.queue.append((sock, icmp_wire.echo_request(self.ident, seq, v6=v6), address))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return failed(HostError.ICMP_READ_TIMEOUT,
                          f"no echo reply within {timeout * 1000:.0f}ms")
        finally:
            self.pending.pop(seq, None)

    def _flush(self) -> None:
        queue, self.queue = self.queue, []
        for sock, packet, address in queue:
            try:
                sock.sendto(packet, (address, 0))
            except OSError as e:
                seq = struct.unpack_from("!H", packet, 6)[0]
                entry = self.pending.get(seq)
                if entry and not entry[1].done():
                    word = (HostError.ICMP_WRITE_TIMEOUT if e.errno in (errno.EAGAIN, errno.ENOBUFS)
                            else HostError.ICMP_READ_TIMEOUT)
                    entry[1].set_result(failed(word, _os_reason(e)))

    def _readable(self, sock: socket.socket) -> None:
        v6 = sock.family == socket.AF_INET6
        for _ in range(256):
            try:
                packet, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            reply = icmp_wire.parse_echo_reply(packet, v6=v6)
            if reply is None or reply[0] != self.ident:
                continue
            entry = self.pending.get(reply[1])
            if entry is None or entry[1].done():
                continue
            want = entry[0]
            got = addr[0].split("%", 1)[0]
            if got == want or (v6 and socket.inet_pton(socket.AF_INET6, got)
                               == socket.inet_pton(socket.AF_INET6, want)):
                entry[1].set_result(passed(HostError.ICMP_OK))


_default_pinger: IcmpPinger | None = None


def default_pinger() -> IcmpPinger:
    """A pinger on raw sockets opened now (works as root only)."""
    global _default_pinger
    if _default_pinger is None or _default_pinger.loop is not asyncio.get_running_loop():
        _default_pinger = IcmpPinger()
    return _default_pinger


# --- the entry point ------------------------------------------------------

async def run_check(check: Any, target: Target, timeout: float, *,
                    ssl_context: ssl.SSLContext | None = None,
                    pinger: IcmpPinger | None = None) -> Verdict:
    """Run one check of one host; `timeout` in seconds covers all of it.
    Never raises for anything the remote side does."""
    if isinstance(check, ScriptCheck):
        return await run_script(check, timeout)
    if isinstance(check, icmp_wire.IcmpCheck):
        try:
            p = pinger or default_pinger()
        except OSError as e:
            return failed(HostError.ICMP_WRITE_TIMEOUT, f"raw socket: {_os_reason(e)}")
        return await p.ping(target.address, timeout)
    if bare_path(check) and target.port is not None:
        fut = asyncio.get_running_loop().create_future()
        bare = start_check(check, target, timeout,
                           lambda v: fut.done() or fut.set_result(v))
        try:
            return await fut
        except asyncio.CancelledError:
            bare.cancel()
            raise
    if hasattr(check, "start"):
        return await _converse(check, target, timeout, ssl_context)
    if hasattr(check, "run"):
        try:
            async with asyncio.timeout(timeout):
                return await check.run(target)
        except TimeoutError:
            return failed(HostError.TCP_READ_TIMEOUT,
                          f"no answer within {timeout * 1000:.0f}ms")
        except Exception as e:
            return failed(HostError.PROTOCOL_FAIL, f"{type(e).__name__}: {e}")
    return failed(HostError.PROTOCOL_FAIL, f"not a check: {type(check).__name__}")
