"""check send ... expect ... (relayd check_send_expect): send the data (or
`nothing`, to read a banner), then match what arrives against an fnmatch(3)
shell glob; `binary send ... expect ...`: hex data, and the reply's first
bytes compared with the expected bytes (memcmp, as relayd).

As relayd, every arrival is matched against everything received so far; a
reply that never matches runs into the timeout (the runner then reports
what arrived, via progress()) or the peer's close."""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

from hoststated.checks.base import Action, Done, Send, TLSInfo, escape, failed, passed
from hoststated.states import HostError

READ_CAP = 64 << 10

_MATCHED = Done(passed(HostError.SEND_EXPECT_OK))    # immutable: one for every success


def glob_to_regex(pattern: str) -> re.Pattern[bytes]:
    """fnmatch(3) without flags: `*` also matches `/` and newlines; a
    backslash quotes the next character (Python's fnmatch does not)."""
    parts = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c in "*?[":
            # let fnmatch translate one metacharacter (or a bracket expression)
            j = i + 1
            if c == "[":
                j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
                j = len(pattern) if j < 0 else j + 1
            piece = fnmatch.translate(pattern[i:j])      # '(?s:PIECE)\Z'
            parts.append(re.fullmatch(r"\(\?s:(.*)\)\\[Zz]", piece, re.S).group(1))
            i = j
            continue
        parts.append(re.escape(c))
        i += 1
    return re.compile(("(?s:" + "".join(parts) + r")\Z").encode("latin-1", "replace"))


class SendExpectCheck:
    transport: Literal["tcp", "udp"] = "tcp"

    def __init__(self, send: str | None, expect: str, *, tls: bool = False) -> None:
        self.tls = tls
        self.data = send.encode("utf-8") if send else b""
        self.expect = expect
        self.pattern = glob_to_regex(expect)
        self._send = Send(self.data)
        self._buf = bytearray()

    def fresh(self) -> SendExpectCheck:
        """A new conversation with these settings (cheaper than __init__)."""
        c = object.__new__(SendExpectCheck)
        c.__dict__.update(self.__dict__)
        c._buf = bytearray()
        return c

    def start(self) -> list[Action]:
        return [self._send] if self.data else []

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        self._buf += data
        if self.pattern.match(bytes(self._buf)):
            return [_MATCHED]
        if len(self._buf) > READ_CAP:
            return [Done(failed(HostError.SEND_EXPECT_FAIL,
                                f"no match after {READ_CAP} bytes: got {escape(bytes(self._buf))}"))]
        return []

    def eof(self) -> list[Action]:
        if self._buf and self.pattern.match(bytes(self._buf)):
            return [_MATCHED]
        return [Done(failed(HostError.SEND_EXPECT_FAIL,
                            f"got {escape(bytes(self._buf))}, want '{self.expect}'"))]

    def progress(self) -> str:
        return f"got {escape(bytes(self._buf))}, want '{self.expect}'"


def parse_hex(text: str) -> bytes:
    """relayd's hex strings: digits, spaces allowed between bytes."""
    return bytes.fromhex("".join(text.split()))


class BinarySendExpectCheck:
    transport: Literal["tcp", "udp"] = "tcp"

    def __init__(self, send: str | None, expect: str, *, tls: bool = False) -> None:
        self.tls = tls
        self.data = parse_hex(send) if send else b""
        self.expect = parse_hex(expect)
        self._send = Send(self.data)
        self._buf = bytearray()

    def fresh(self) -> BinarySendExpectCheck:
        """A new conversation with these settings (cheaper than __init__)."""
        c = object.__new__(BinarySendExpectCheck)
        c.__dict__.update(self.__dict__)
        c._buf = bytearray()
        return c

    def start(self) -> list[Action]:
        return [self._send] if self.data else []

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        self._buf += data
        if len(self._buf) < len(self.expect):
            return []
        return [self._done()]

    def eof(self) -> list[Action]:
        return [self._done()]

    def _done(self) -> Done:
        got = bytes(self._buf[:len(self.expect)])
        if self.expect and got == self.expect:
            return _MATCHED
        return Done(failed(HostError.SEND_EXPECT_FAIL,
                           f"got {got.hex() or 'nothing'}, want {self.expect.hex()}"))

    def progress(self) -> str:
        return f"got {bytes(self._buf).hex() or 'nothing'}, want {self.expect.hex()}"
