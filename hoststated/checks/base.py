"""The contract between a check and the runner that does its I/O.

A check of one host is a *conversation*: a sans-IO object (h11-style) that is
told what happened on the wire and answers with actions. It never touches a
socket, a clock or asyncio; the runner (checks.runner) connects, wraps TLS,
applies the timeout and maps where a timeout struck to relayd's error words.

    conv = make_conversation(...)          # one object per check of one host
    actions = conv.start()                 # right after connect (and TLS if conv.tls)
    actions = conv.receive(b"...")         # whenever bytes (or a datagram) arrive
    actions = conv.tls_started(info)       # after a StartTLS the check asked for
    actions = conv.eof()                   # the peer closed; must end in Done

An action list is performed in order; a Done ends the check (the runner closes
the connection). Anything a check cannot understand from the remote side is a
Done with ok=False and a detail saying what arrived - never an exception.

Checks whose wire protocol is best spoken through a library made for it (SQL
servers, LDAP) implement LibraryCheck instead: an object with an async `run`,
still with no clock inside; the runner applies the timeout around it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, Union

from hoststated.states import HostError


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    error: HostError                      # relayd's word: HostError.HTTP_CODE_FAIL
    detail: str = ""                      # "got 302, want 200"

    def __str__(self) -> str:
        return f"{self.error}: {self.detail}" if self.detail else str(self.error)


def passed(error: HostError, detail: str = "") -> Verdict:
    return Verdict(True, error, detail)


def failed(error: HostError, detail: str = "") -> Verdict:
    return Verdict(False, error, detail)


@dataclass(frozen=True, slots=True)
class Target:
    """What is checked: one host of one table."""
    address: str                          # numeric IPv4/IPv6 address
    port: int | None = None
    name: str = ""                        # the host as written (script argument)
    server_name: str | None = None        # TLS SNI / HTTP Host, when the config gives one
    ip_ttl: int | None = None
    proxy_header: bytes | None = None     # sent first (the host reads the PROXY protocol)
    # migrate (issue 14): ldirectord's and ALOHA's check options
    source: str | None = None             # bind the check's socket to this address first
    connect_timeout: float | None = None  # s: the connect alone (the timeout covers all)
    virtual: tuple[str, str] | None = None  # (address, port) of the redirect: script args
    link: tuple[str, str, str] | None = None  # check arp: (interface, its MAC, source IPv4)


@dataclass(frozen=True, slots=True)
class TLSInfo:
    version: str                          # "TLSv1.3"
    cipher: str
    peer_cert_der: bytes | None           # the leaf certificate, for expiry
    verified: bool                        # chain and name verified by the runner
    checked_at: float = 0.0               # wall clock of the handshake (for expiry: the
                                          # clock stays a parameter of the check)


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Upgrade the connection now (STARTTLS); then tls_started() is called."""
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    verdict: Verdict


Action = Union[Send, StartTLS, Done]


class Conversation(Protocol):
    transport: Literal["tcp", "udp"]      # udp: each receive() is one datagram
    tls: bool                             # wrap TLS right after connect

    def start(self) -> list[Action]: ...
    def receive(self, data: bytes) -> list[Action]: ...
    def tls_started(self, info: TLSInfo) -> list[Action]: ...
    def eof(self) -> list[Action]: ...


# Optional hooks a Conversation may define (the runner looks them up with getattr):
#   progress() -> str      what has arrived so far, escaped and truncated; the
#                          runner puts it in the detail of a read timeout
#                          ("tcp read timeout: got 'SSH-1.99-'").
#   tls_established(info)  for tls=True conversations: the handshake done
#                          before start(), with the certificate (tls check).


def escape(data: bytes, limit: int = 64) -> str:
    """Bytes from the remote side as a short printable string for a detail:
    non-printables escaped, truncated with '...' after `limit` bytes."""
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    text = text.replace("'", "\\'")
    return f"'{text}'" + ("..." if len(data) > limit else "")


class LibraryCheck(Protocol):
    async def run(self, target: Target) -> Verdict: ...


@dataclass
class LineBuffer:
    """Splits received bytes into CRLF- or LF-terminated lines for line
    protocols (SMTP, POP, IMAP, FTP, NNTP, redis), with a cap so a peer that
    never sends a newline cannot make us buffer forever."""
    limit: int = 8192
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            lines.append(bytes(self._buf[:i]).rstrip(b"\r"))
            del self._buf[:i + 1]
        return lines

    @property
    def overflowed(self) -> bool:
        return len(self._buf) > self.limit


# --- how a verdict reads: shared by every check kind ---------------------

QUOTE_MAX = 120           # characters of a server reply quoted in a detail


def quote(line: bytes | str) -> str:
    """A server reply as a detail may show it: decoded, printable, clipped."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in line.strip())
    return text if len(text) <= QUOTE_MAX else text[:QUOTE_MAX] + "..."


def fail(proto: str, detail: str) -> list[Action]:
    return [Done(failed(HostError.PROTOCOL_FAIL, f"{proto}: {detail}"))]


def ok(proto: str, detail: str = "") -> list[Action]:
    return [Done(passed(HostError.PROTOCOL_OK, f"{proto}: {detail}" if detail else proto))]


def closed(proto: str, state: str) -> list[Action]:
    """The peer closed the connection before the check was done."""
    return fail(proto, f"connection closed by server {state}")


def overflow(proto: str) -> list[Action]:
    return fail(proto, "reply line too long")


def transport_verdict(proto: str, e: BaseException) -> Verdict:
    """A library's connect failure in relayd's words, with the system's
    reason ("Connection refused") rather than the library's wrapping."""
    if isinstance(e, OSError) and e.errno:
        reason = os.strerror(e.errno)
    else:
        m = re.search(r"\[Errno \d+\] ([^)\]'\"]+)", str(e))
        reason = m.group(1) if m else str(e)
    low = reason.lower()
    if "timed out" in low or "timeout" in low:
        return failed(HostError.TCP_CONNECT_TIMEOUT, f"{proto}: {quote(reason)}")
    return failed(HostError.TCP_CONNECT_FAIL, f"{proto}: {quote(reason)}")
