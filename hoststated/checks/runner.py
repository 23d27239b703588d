"""The one place where checks meet the network: connect, TLS, timeouts.

run_check() drives a sans-IO Conversation (checks.base) over TCP or UDP,
or awaits a LibraryCheck, runs a ScriptCheck's program, or pings for an
IcmpCheck; the timeout covers the whole check (connect + TLS + write + read),
as relayd's, and where it struck becomes relayd's word: `tcp connect
timeout`, `tls connect timeout`, `tcp read timeout`, ...

Plain-TCP conversations (tcp, http, send/expect, binary) take the fast path
in checks.poller: bare sockets on one epoll set, no task per check. TLS and
UDP go through a plain asyncio.Protocol that feeds the conversation from
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

from hoststated import privsep
from hoststated.checks import icmp as icmp_wire
from hoststated.checks.base import (Done, Send, StartTLS, Target, TLSInfo, Verdict,
                                    failed, passed)
from hoststated.checks.poller import Conn, poller_for
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
                local = (target.source, 0) if target.source else None
                if getattr(conv, "transport", "tcp") == "udp":
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: wire, remote_addr=(target.address, target.port),
                        local_addr=local)
                else:
                    # migrate (issue 14): `connect timeout` bounds the connect alone
                    connecting = asyncio.timeout(target.connect_timeout)
                    try:
                        async with connecting:
                            transport, _ = await loop.create_connection(
                                lambda: wire, target.address, target.port,
                                local_addr=local)
                    except TimeoutError:
                        if not connecting.expired():
                            raise
                        return failed(HostError.TCP_CONNECT_TIMEOUT,
                                      f"no connection within "
                                      f"{target.connect_timeout * 1000:.0f}ms")
            except OSError as e:
                if e.errno in _SOCKET_LIMIT:
                    return failed(HostError.TCP_SOCKET_LIMIT, _os_reason(e))
                return failed(HostError.TCP_CONNECT_FAIL, _os_reason(e))
            wire.transport = transport
            if target.proxy_header:
                transport.write(target.proxy_header)     # before TLS, as a relay's
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


# --- the fast path: plain TCP conversations (checks.poller) -----------------

def bare_path(check: Any) -> bool:
    """True when a check can run on the fast bare-socket path."""
    return (hasattr(check, "start") and not getattr(check, "tls", False)
            and not getattr(check, "starttls", False)   # protocol checks that upgrade
            and getattr(check, "transport", "tcp") == "tcp")


def start_check(check: Any, target: Target, timeout: float, on_done: Any) -> Conn:
    """Callback form of run_check for plain-TCP conversations (bare_path):
    on_done(verdict) is called exactly once, from the event loop or at once
    when the verdict needs no waiting; the returned object's cancel() aborts
    the check without calling on_done."""
    loop = asyncio.get_running_loop()
    if target.port is None:
        c = Conn()
        c.sock = None
        loop.call_soon(on_done, failed(HostError.TCP_SOCKET_ERROR, "no port to connect to"))
        return c
    return poller_for(loop).start(check, target, timeout, on_done)


# --- scripts --------------------------------------------------------------

_scripts_running: set[tuple[str, ...]] = set()


async def run_script(check: ScriptCheck, timeout: float) -> Verdict:
    """Run the script with the host as its argument, in its own process
    group, and kill the whole group at the timeout. One instance per host."""
    key = (check.path, check.argument, *check.ld_args)
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
            return script_verdict(None, exec_error=e)
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
        return script_verdict(rc, output=bytes(out), convention=check.convention)
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
        if fds is None:                  # a root caller without the parent (tests)
            fds = privsep.open_raw_sockets()
        for fd in fds:
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
    if bare_path(check) and target.port is not None and target.connect_timeout is None:
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
