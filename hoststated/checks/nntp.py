"""nntp check: the greeting must be 200 or 201 (RFC 3977 5.1), then QUIT
(ldirectord's `nntp` service)."""

from __future__ import annotations

from typing import Literal

from hoststated.checks.base import Action, LineBuffer, Send, TLSInfo
from hoststated.checks.linechat import closed, fail, ok, overflow, quote


class NntpCheck:
    transport: Literal["tcp", "udp"] = "tcp"
    tls = False

    def __init__(self) -> None:
        self._lines = LineBuffer()
        self._state = "greeting"

    def start(self) -> list[Action]:
        return []

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def eof(self) -> list[Action]:
        if self._state == "quit":
            return ok("nntp")
        return closed("nntp", f"in {self._state}")

    def receive(self, data: bytes) -> list[Action]:
        for line in self._lines.feed(data):
            if self._state == "quit":
                return ok("nntp")
            if line[:3] in (b"200", b"201"):
                self._state = "quit"
                return [Send(b"QUIT\r\n")]
            return fail("nntp", f"greeting {quote(line)}")
        if self._lines.overflowed:
            return overflow("nntp")
        return []
