"""smtp and submission checks: banner, EHLO (HELO if EHLO is refused),
optional STARTTLS and a second EHLO, then QUIT (ldirectord's `smtp`,
keepalived's SMTP_CHECK with helo_name, HAProxy's smtpchk)."""

from __future__ import annotations

from hoststated.checks.base import Action, Send, StartTLS, TLSInfo
from hoststated.checks.base import fail, ok, quote
from hoststated.checks.linechat import LineChat


class SmtpCheck(LineChat):
    def __init__(self, helo: str = "localhost", *, starttls: bool = False,
                 proto: str = "smtp", server_name: str | None = None):
        super().__init__(proto, "banner")
        self.helo = helo
        self.starttls = starttls
        self.server_name = server_name
        self._reply: list[bytes] = []       # lines of a multi-line reply so far
        self._ehlo_done_tls = False

    def tls_started(self, info: TLSInfo) -> list[Action]:
        self._state = "ehlo"
        self._ehlo_done_tls = True
        return [Send(f"EHLO {self.helo}\r\n".encode())]

    def on_line(self, line: bytes) -> list[Action]:
        self._reply.append(line)
        # "250-..." continues a reply, "250 ..." (or a bare code) ends it
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b"-":
            return []
        reply, self._reply = self._reply, []
        return self._on_reply(reply)

    def _on_reply(self, reply: list[bytes]) -> list[Action]:
        last = reply[-1]
        code = last[:3]
        if not code.isdigit():
            return fail(self.proto, f"not an SMTP reply: {quote(last)}")
        state = self._state
        if state == "banner":
            if code != b"220":
                return fail(self.proto, f"banner {quote(last)}")
            self._state = "ehlo"
            return [Send(f"EHLO {self.helo}\r\n".encode())]
        if state == "ehlo":
            if code == b"250":
                if self.starttls and not self._ehlo_done_tls:
                    words = {ln[4:].split(b" ")[0].upper() for ln in reply}
                    if b"STARTTLS" not in words:
                        return fail(self.proto, "STARTTLS not offered")
                    self._state = "starttls"
                    return [Send(b"STARTTLS\r\n")]
                return self._quit()
            if code in (b"500", b"502") and not self._ehlo_done_tls:   # EHLO unknown
                self._state = "helo"
                return [Send(f"HELO {self.helo}\r\n".encode())]
            return fail(self.proto, f"EHLO {quote(last)}")
        if state == "helo":
            if code != b"250":
                return fail(self.proto, f"HELO {quote(last)}")
            if self.starttls:
                return fail(self.proto, "STARTTLS not offered (HELO only)")
            return self._quit()
        if state == "starttls":
            if code != b"220":
                return fail(self.proto, f"STARTTLS {quote(last)}")
            self._state = "tls"
            return [StartTLS(self.server_name)]
        if state == "quit":
            return ok(self.proto)
        return fail(self.proto, f"unexpected reply {quote(last)}")

    def _quit(self) -> list[Action]:
        self._state = "quit"
        return [Send(b"QUIT\r\n")]
