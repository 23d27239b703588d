"""ftp check: banner 220, optional AUTH TLS (then PBSZ/PROT are not needed
for a control-channel check), optional USER/PASS login, QUIT (ldirectord's
`ftp` service logs in; here the login is optional)."""

from __future__ import annotations

from hoststated.checks.base import Action, Send, StartTLS, TLSInfo
from hoststated.checks.base import fail, ok, quote
from hoststated.checks.linechat import LineChat


class FtpCheck(LineChat):
    def __init__(self, user: str | None = None, password: str | None = None, *,
                 starttls: bool = False, server_name: str | None = None):
        super().__init__("ftp", "banner")
        self.user = user
        self._password = password
        self.starttls = starttls
        self.server_name = server_name

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return self._login()

    def on_line(self, line: bytes) -> list[Action]:
        # "220-..." continues; the reply ends with "220 " (RFC 959 4.2)
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] == b"-":
            return []               # inside a multi-line reply
        return self._on_reply(line)

    def _on_reply(self, line: bytes) -> list[Action]:
        code = line[:3]
        state = self._state
        if state == "banner":
            if code != b"220":
                return fail("ftp", f"banner {quote(line)}")
            if self.starttls:
                self._state = "auth"
                return [Send(b"AUTH TLS\r\n")]
            return self._login()
        if state == "auth":
            if code != b"234":
                return fail("ftp", f"AUTH TLS {quote(line)}")
            self._state = "tls"
            return [StartTLS(self.server_name)]
        if state == "user":
            if code == b"230":
                return self._quit()
            if code != b"331":
                return fail("ftp", f"login failed: {quote(line)}")
            self._state = "pass"
            return [Send(f"PASS {self._password or ''}\r\n".encode())]
        if state == "pass":
            if code not in (b"230", b"202"):
                return fail("ftp", f"login failed: {quote(line)}")
            return self._quit()
        if state == "quit":
            return ok("ftp")
        return fail("ftp", f"unexpected reply {quote(line)}")

    def _login(self) -> list[Action]:
        if self.user is None:
            return self._quit()
        self._state = "user"
        return [Send(f"USER {self.user}\r\n".encode())]

    def _quit(self) -> list[Action]:
        self._state = "quit"
        return [Send(b"QUIT\r\n")]
