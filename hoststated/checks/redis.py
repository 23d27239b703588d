"""redis check: optional AUTH, PING answered by +PONG (or the `expect`
word), QUIT (HAProxy's redis-check). Commands go as RESP arrays so a
password with spaces or quotes is sent as it is."""

from __future__ import annotations

from hoststated.checks.base import Action, Send
from hoststated.checks.base import fail, ok, quote
from hoststated.checks.linechat import LineChat


def resp_command(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for w in words:
        b = w.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RedisCheck(LineChat):
    def __init__(self, password: str | None = None, *, user: str | None = None,
                 expect: str | None = None):
        super().__init__("redis", "start")
        self.user = user
        self._password = password
        self.expect = expect or "PONG"

    def start(self) -> list[Action]:
        if self._password is not None:
            self._state = "auth"
            words = ("AUTH", self.user, self._password) if self.user else ("AUTH", self._password)
            return [Send(resp_command(*words))]
        return self._ping()

    def on_line(self, line: bytes) -> list[Action]:
        state = self._state
        if state == "quit":
            return ok("redis")
        if state == "auth":
            if line != b"+OK":
                return fail("redis", f"AUTH failed: {quote(line)}")
            return self._ping()
        if state == "ping":
            if line.startswith(b"$"):
                return []           # bulk string header; the value is the next line
            if line.startswith(b"-"):
                return fail("redis", f"PING: {quote(line)}")
            got = line[1:] if line[:1] == b"+" else line
            if got.decode("utf-8", "replace") != self.expect:
                return fail("redis", f"PING answered {quote(line)}, want {self.expect}")
            self._state = "quit"
            return [Send(resp_command("QUIT"))]
        return fail("redis", f"unexpected reply {quote(line)}")

    def _ping(self) -> list[Action]:
        self._state = "ping"
        return [Send(resp_command("PING"))]
