"""LineChat: the frame shared by the line-protocol checks (smtp, ftp, imap,
pop, nntp, redis): read reply lines, answer each. No I/O here, as in every
check module."""

from __future__ import annotations

from typing import Literal

from hoststated.checks.base import Action, LineBuffer, TLSInfo, closed, ok, overflow

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
