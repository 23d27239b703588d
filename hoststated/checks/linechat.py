"""Small pieces shared by the line-protocol checks (smtp, ftp, imap, pop,
nntp, redis, sip, http-proxy): how a failure reads, and how much of a reply a
detail may quote. No I/O here, as in every check module."""

from __future__ import annotations

from typing import Literal

from hoststated.checks.base import Action, Done, LineBuffer, TLSInfo, failed, passed
from hoststated.states import HostError

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


class LineChat:
    """The frame of a line-protocol conversation: the server's bytes become
    lines, each answered by `on_line` (an empty answer waits for the next);
    the server closing the connection is the expected end only in the
    `final` state. A subclass sets `proto` and the first `_state`, writes
    `on_line`, and `tls_started` where it speaks STARTTLS."""

    transport: Literal["tcp", "udp"] = "tcp"
    tls = False
    final = "quit"

    def __init__(self, proto: str, state: str) -> None:
        self.proto = proto
        self._state = state
        self._lines = LineBuffer()

    def start(self) -> list[Action]:
        return []

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def eof(self) -> list[Action]:
        if self._state == self.final:
            return ok(self.proto)
        return closed(self.proto, f"in {self._state}")

    def receive(self, data: bytes) -> list[Action]:
        for line in self._lines.feed(data):
            actions = self.on_line(line)
            if actions:
                return actions
        if self._lines.overflowed:
            return overflow(self.proto)
        return []

    def on_line(self, line: bytes) -> list[Action]:
        raise NotImplementedError
