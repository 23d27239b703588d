"""check http / https (relayd check_http_code, check_http_digest), plus a
body regex (ldirectord's `receive`).

Request as relayd: `HEAD path HTTP/1.0`, or with `host name` HTTP/1.1 with a
Host header and `Connection: close`; GET when the body matters (digest, body
regex) or when the config asks for it. The status line must start with
`HTTP/1.0 ` or `HTTP/1.1 `. The digest is sha1 or md5 by its length (40 or
32 hex digits), over the body; a chunked body is decoded first. The body read
is capped: a peer sending a huge body fails the check instead of filling our
memory."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from hoststated.checks.base import Action, Done, Send, TLSInfo, Verdict, escape, failed, passed
from hoststated.states import HostError

BODY_CAP = 1 << 20          # bytes of body kept for a digest or body regex
HEAD_CAP = 16 << 10         # bytes of status line and headers


class _Incomplete(Exception):
    pass


_CODE_OK: dict[int, Done] = {}      # status -> its success: immutable, shared (<= 1000)


def _code_ok(status: int) -> Done:
    done = _CODE_OK.get(status)
    if done is None:
        done = _CODE_OK[status] = Done(passed(HostError.HTTP_CODE_OK, f"got {status}"))
    return done


def request(method: str, path: str, host: str | None) -> bytes:
    if host:
        return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Connection: close\r\n\r\n").encode("latin-1", "replace")
    return f"{method} {path} HTTP/1.0\r\n\r\n".encode("latin-1", "replace")


def parse_status(line: bytes) -> int | None:
    """The status code of a status line, or None when it is not one."""
    if not (line.startswith(b"HTTP/1.0 ") or line.startswith(b"HTTP/1.1 ")):
        return None
    code = line[9:12]
    if len(code) != 3 or not code.isdigit() or line[12:13] not in (b"", b" ", b"\r"):
        return None
    return int(code)


def dechunk(data: bytes, cap: int) -> tuple[bytes, bool]:
    """Decode a chunked body: (body so far, complete). Raises ValueError on a
    malformed chunk size."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\n", pos)
        if eol < 0:
            return bytes(out), False
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        size = int(size_text, 16)        # ValueError: malformed
        if size == 0:
            return bytes(out), True
        start = eol + 1
        if len(data) < start + size:
            out += data[start:]
            return bytes(out[:cap]), False
        out += data[start:start + size]
        if len(out) >= cap:
            return bytes(out[:cap]), True
        pos = start + size
        if data[pos:pos + 2] == b"\r\n":
            pos += 2
        elif data[pos:pos + 1] == b"\n":
            pos += 1
        elif len(data) - pos < 2:
            return bytes(out), False


_new = object.__new__
_VERSIONS = (b"HTTP/1.0 ", b"HTTP/1.1 ")
_AFTER_CODE = (b" ", b"\r", b"\n")     # what may follow the code on the status line


class HttpCheck:
    transport: Literal["tcp", "udp"] = "tcp"

    def __init__(self, *, path: str = "/", host: str | None = None,
                 code: int | None = None, digest: str | None = None,
                 body: str | None = None, method: str | None = None,
                 tls: bool = False, body_cap: int = BODY_CAP) -> None:
        self.tls = tls
        self.code = code if code is not None or digest or body else 200
        self.digest = digest.lower() if digest else None
        self.body_re = re.compile(body.encode("utf-8")) if body is not None else None
        self.needs_body = bool(self.digest) or self.body_re is not None
        self.method = method or ("GET" if self.needs_body else "HEAD")
        self.req = request(self.method, path, host)
        self._send = Send(self.req)
        self.body_cap = body_cap
        # the common case judged from the first read alone: a status line
        # with the code wanted (and no body to look at)
        self._want = (b"%03d" % self.code if self.code is not None and not self.needs_body
                      and 0 <= self.code <= 999 else None)
        self._buf = bytearray()
        self._head_end = -1
        self._status: int | None = None
        self._chunked = False
        self._length: int | None = None

    def fresh(self) -> HttpCheck:
        """A new conversation with these settings (cheaper than __init__)."""
        # (a copy of the instance dict: 0.4 us; a __slots__ class copying its
        # slots one by one measured no faster)
        c = _new(HttpCheck)
        c.__dict__ = self.__dict__.copy()
        c._buf = bytearray()
        c._head_end = -1
        c._status = None
        c._chunked = False
        c._length = None
        return c

    # --- the conversation ----------------------------------------------
    def start(self) -> list[Action]:
        return [self._send]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        want = self._want
        if want is not None and not self._buf:
            # the common case: the status line whole in the first read, as
            # wanted (parse_status's test, spelled out: the line's first 13
            # bytes decide it, the newline says it is whole)
            if (data[9:12] == want and data[:9] in _VERSIONS and data[12:13] in _AFTER_CODE
                    and b"\n" in data):
                self._status = self.code
                self._buf += data
                return [_code_ok(self.code)]
        self._buf += data
        verdict = self._judge(eof=False)
        return [Done(verdict)] if verdict is not None else []

    def eof(self) -> list[Action]:
        verdict = self._judge(eof=True)
        assert verdict is not None
        return [Done(verdict)]

    def progress(self) -> str:
        return f"got {escape(bytes(self._buf))}"

    # --- judging -------------------------------------------------------
    def _judge(self, eof: bool) -> Verdict | None:
        if self._status is None:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if eof or len(self._buf) > HEAD_CAP:
                    return failed(HostError.HTTP_CODE_ERROR,
                                  f"no status line: got {escape(bytes(self._buf))}")
                return None
            line = bytes(self._buf[:nl]).rstrip(b"\r")
            status = parse_status(line)
            if status is None:
                return failed(HostError.HTTP_CODE_ERROR, f"got {escape(line)}")
            self._status = status
            if self.code is not None and status != self.code:
                return failed(HostError.HTTP_CODE_FAIL, f"got {status}, want {self.code}")
            if not self.needs_body:
                return passed(HostError.HTTP_CODE_OK, f"got {status}")
        body, complete = self._body(eof)
        if body is None:
            if eof:
                return failed(HostError.HTTP_DIGEST_ERROR if self.digest else HostError.HTTP_BODY_FAIL,
                              "connection closed before the end of the headers")
            if len(self._buf) > HEAD_CAP:
                return failed(HostError.HTTP_DIGEST_ERROR if self.digest else HostError.HTTP_BODY_FAIL,
                              f"headers over {HEAD_CAP} bytes")
            return None
        if isinstance(body, str):                     # malformed framing
            return failed(HostError.HTTP_DIGEST_ERROR if self.digest else HostError.HTTP_BODY_FAIL, body)
        if self.body_re is not None and not self.digest and self.body_re.search(body):
            return passed(HostError.HTTP_BODY_OK, f"got {self._status}, body matches")
        if not complete:
            if len(body) >= self.body_cap:
                what = HostError.HTTP_DIGEST_FAIL if self.digest else HostError.HTTP_BODY_FAIL
                return failed(what, f"body over {self.body_cap} bytes")
            return None
        if self.digest:
            algo = hashlib.sha1 if len(self.digest) == 40 else hashlib.md5
            got = algo(body).hexdigest()
            if got != self.digest:
                return failed(HostError.HTTP_DIGEST_FAIL, f"got {got}, want {self.digest}")
            if self.body_re is None:
                return passed(HostError.HTTP_DIGEST_OK, got)
            if self.body_re.search(body):
                return passed(HostError.HTTP_BODY_OK, f"digest {got}, body matches")
        return failed(HostError.HTTP_BODY_FAIL,
                      f"no match for {escape(self.body_re.pattern, 40)} in {len(body)} bytes: "
                      f"got {escape(body, 48)}")

    def _body(self, eof: bool) -> tuple[bytes | str | None, bool]:
        """(body, complete); body None while the headers are incomplete, a
        str describing the fault when the framing is malformed."""
        if self._head_end < 0:
            i = self._buf.find(b"\r\n\r\n")
            j = self._buf.find(b"\n\n")
            if i < 0 and j < 0:
                return None, False
            if i >= 0 and (j < 0 or i < j):
                self._head_end = i + 4
            else:
                self._head_end = j + 2
            self._parse_headers(bytes(self._buf[:self._head_end]))
        raw = bytes(self._buf[self._head_end:])
        if self._chunked:
            try:
                body, complete = dechunk(raw, self.body_cap)
            except ValueError:
                return f"malformed chunk: got {escape(raw, 32)}", False
            return body, complete or eof
        if self._length is not None:
            return raw[:self._length], len(raw) >= self._length or eof
        return raw[:self.body_cap], eof

    def _parse_headers(self, head: bytes) -> None:
        for line in head.split(b"\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            elif name == b"content-length" and value.isdigit():
                self._length = int(value)
        if self.method == "HEAD":
            self._length = 0
