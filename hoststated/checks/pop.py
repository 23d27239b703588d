"""pop and pops checks: greeting `+OK`, optional STLS (RFC 2595), optional
USER/PASS, QUIT. pops is the same over implicit TLS."""

from __future__ import annotations

from hoststated.checks.base import Action, Send, StartTLS, TLSInfo
from hoststated.checks.base import fail, ok, quote
from hoststated.checks.linechat import LineChat


class PopCheck(LineChat):
    def __init__(self, user: str | None = None, password: str | None = None, *,
                 starttls: bool = False, tls: bool = False, proto: str = "pop",
                 server_name: str | None = None):
        super().__init__(proto, "greeting")
        self.user = user
        self._password = password
        self.starttls = starttls
        self.tls = tls
        self.server_name = server_name

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return self._login()

    def on_line(self, line: bytes) -> list[Action]:
        state = self._state
        good = line.startswith(b"+OK")
        if state == "quit":
            return ok(self.proto)
        if state == "greeting":
            if not good:
                return fail(self.proto, f"greeting {quote(line)}")
            if self.starttls:
                self._state = "stls"
                return [Send(b"STLS\r\n")]
            return self._login()
        if state == "stls":
            if not good:
                return fail(self.proto, f"STLS: {quote(line)}")
            self._state = "tls"
            return [StartTLS(self.server_name)]
        if state in ("user", "pass"):
            if not good:
                return fail(self.proto, f"login failed: {quote(line)}")
            if state == "user":
                self._state = "pass"
                return [Send(f"PASS {self._password or ''}\r\n".encode())]
            return self._quit()
        return fail(self.proto, f"unexpected reply {quote(line)}")

    def _login(self) -> list[Action]:
        if self.user is None:
            return self._quit()
        if any(c in self.user + (self._password or "") for c in "\r\n\0"):
            return fail(self.proto, "user or password cannot be sent (CR, LF or NUL)")
        self._state = "user"
        return [Send(f"USER {self.user}\r\n".encode())]

    def _quit(self) -> list[Action]:
        self._state = "quit"
        return [Send(b"QUIT\r\n")]
