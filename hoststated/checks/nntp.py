"""nntp check: the greeting must be 200 or 201 (RFC 3977 5.1), then QUIT
(ldirectord's `nntp` service)."""

from __future__ import annotations

from hoststated.checks.base import Action, Send
from hoststated.checks.base import fail, ok, quote
from hoststated.checks.linechat import LineChat


class NntpCheck(LineChat):
    def __init__(self) -> None:
        super().__init__("nntp", "greeting")

    def on_line(self, line: bytes) -> list[Action]:
        if self._state == "quit":
            return ok("nntp")
        if line[:3] in (b"200", b"201"):
            self._state = "quit"
            return [Send(b"QUIT\r\n")]
        return fail("nntp", f"greeting {quote(line)}")
