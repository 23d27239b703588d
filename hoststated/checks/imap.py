"""imap and imaps checks: greeting `* OK` (or `* PREAUTH`), optional
STARTTLS, optional LOGIN, LOGOUT. imaps is the same over implicit TLS."""

from __future__ import annotations

from hoststated.checks.base import Action, Send, StartTLS, TLSInfo
from hoststated.checks.base import fail, ok, quote
from hoststated.checks.linechat import LineChat


def imap_quoted(s: str) -> str | None:
    """An IMAP quoted string (RFC 3501 4.3), or None if it cannot be one."""
    if any(c in s for c in "\r\n\0"):
        return None
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapCheck(LineChat):
    final = "logout"

    def __init__(self, user: str | None = None, password: str | None = None, *,
                 starttls: bool = False, tls: bool = False, proto: str = "imap",
                 server_name: str | None = None):
        super().__init__(proto, "greeting")
        self.user = user
        self._password = password
        self.starttls = starttls
        self.tls = tls
        self.server_name = server_name
        self._tag = ""
        self._n = 0

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return self._login()

    def _command(self, state: str, text: str) -> list[Action]:
        self._n += 1
        self._tag = f"hs{self._n}"
        self._state = state
        return [Send(f"{self._tag} {text}\r\n".encode())]

    def on_line(self, line: bytes) -> list[Action]:
        state = self._state
        if state == "greeting":
            up = line.upper()
            if up.startswith(b"* OK"):
                if self.starttls:
                    return self._command("starttls", "STARTTLS")
                return self._login()
            if up.startswith(b"* PREAUTH"):
                return self._logout()
            return fail(self.proto, f"greeting {quote(line)}")
        if line.startswith(b"* BYE") and state != "logout":
            return fail(self.proto, f"server said {quote(line)}")
        if not line.startswith(self._tag.encode() + b" "):
            return []               # untagged data or a continuation
        status = line[len(self._tag) + 1:]
        word = status.split(b" ", 1)[0].upper()
        if state == "logout":
            return ok(self.proto)
        if word != b"OK":
            what = {"starttls": "STARTTLS", "login": "login failed"}.get(state, state)
            return fail(self.proto, f"{what}: {quote(status)}")
        if state == "starttls":
            self._state = "tls"
            return [StartTLS(self.server_name)]
        if state == "login":
            return self._logout()
        return fail(self.proto, f"unexpected reply {quote(line)}")

    def _login(self) -> list[Action]:
        if self.user is None:
            return self._logout()
        user, password = imap_quoted(self.user), imap_quoted(self._password or "")
        if user is None or password is None:
            return fail(self.proto, "user or password cannot be sent (CR, LF or NUL)")
        return self._command("login", f"LOGIN {user} {password}")

    def _logout(self) -> list[Action]:
        return self._command("logout", "LOGOUT")
