"""http-proxy check: fetch an absolute URL through the host (ldirectord's
`http_proxy` service; HAProxy/Squid peers) and match the status code."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from hoststated.checks.base import Action, LineBuffer, Send, TLSInfo
from hoststated.checks.base import closed, fail, ok, overflow, quote


class HttpProxyCheck:
    transport: Literal["tcp", "udp"] = "tcp"
    tls = False

    def __init__(self, url: str, code: int | None = None):
        self.url = url
        self.code = code or 200
        self._lines = LineBuffer()
        self._done = False

    def request(self) -> bytes:
        parts = urlsplit(self.url)
        host = parts.netloc.rsplit("@", 1)[-1]
        return (f"GET {self.url} HTTP/1.0\r\nHost: {host}\r\n"
                "User-Agent: hoststated\r\nConnection: close\r\n\r\n").encode()

    def start(self) -> list[Action]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https", "ftp") or not parts.netloc:
            return fail("http-proxy", f"not an absolute URL: {self.url}")
        return [Send(self.request())]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def eof(self) -> list[Action]:
        return closed("http-proxy", "before a status line")

    def receive(self, data: bytes) -> list[Action]:
        for line in self._lines.feed(data):
            words = line.split(b" ", 2)
            if len(words) < 2 or not words[0].startswith(b"HTTP/") \
                    or not (len(words[1]) == 3 and words[1].isdigit()):
                return fail("http-proxy", f"not an HTTP status line: {quote(line)}")
            got = int(words[1])
            if got != self.code:
                return fail("http-proxy", f"code mismatch: got {got}, want {self.code}"
                            f" ({quote(line)})")
            return ok("http-proxy", f"code {got}")
        if self._lines.overflowed:
            return overflow("http-proxy")
        return []
