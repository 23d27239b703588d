"""sip check: an OPTIONS request (RFC 3261 11) over UDP or TCP; any final
response (2xx-6xx) means a SIP server is answering (ldirectord's `sip`).
Provisional 1xx responses are waited through; with `expect`, the status
code must start with it (e.g. "2" or "200")."""

from __future__ import annotations

import secrets
from typing import Literal

from hoststated.checks.base import Action, LineBuffer, TLSInfo, Send
from hoststated.checks.base import closed, fail, ok, quote


class SipCheck:
    tls = False

    def __init__(self, uri: str, *, transport: Literal["udp", "tcp"] = "udp",
                 expect: str | None = None, token: str | None = None):
        self.uri = uri
        self.transport = transport
        self.expect = expect
        self.token = token or secrets.token_hex(8)     # branch, tag and Call-ID
        self._lines = LineBuffer()

    def request(self) -> bytes:
        via = "TCP" if self.transport == "tcp" else "UDP"
        t = self.token
        # the Via sent-by is unknown to a sans-IO check; rport (RFC 3581)
        # makes the server answer the address the request came from
        return (f"OPTIONS {self.uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/{via} 0.0.0.0:5060;branch=z9hG4bK{t};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:hoststated@invalid>;tag={t}\r\n"
                f"To: <{self.uri}>\r\n"
                f"Call-ID: {t}@hoststated\r\n"
                f"CSeq: 1 OPTIONS\r\n"
                f"Contact: <sip:hoststated@invalid>\r\n"
                f"Accept: application/sdp\r\n"
                f"User-Agent: hoststated\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def start(self) -> list[Action]:
        return [Send(self.request())]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def eof(self) -> list[Action]:
        return closed("sip", "before a final response")

    def receive(self, data: bytes) -> list[Action]:
        if self.transport == "udp":
            self._lines = LineBuffer()      # each datagram is a whole message
            data = data.split(b"\n", 1)[0] + b"\n"
        for line in self._lines.feed(data):
            if not line:
                continue
            words = line.split(b" ", 2)
            if len(words) < 2 or words[0] != b"SIP/2.0" or len(words[1]) != 3 \
                    or not words[1].isdigit():
                if self.transport == "tcp" and not line.startswith(b"SIP/"):
                    continue        # header lines of a provisional response
                return fail("sip", f"not a SIP response: {quote(line)}")
            code = words[1].decode()
            if code.startswith("1"):
                continue
            if self.expect and not code.startswith(self.expect):
                return fail("sip", f"got {quote(line)}, want {self.expect}")
            return ok("sip", quote(line))
        return []
