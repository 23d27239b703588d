"""Framing, sans-IO: bytes in, objects out; objects in, bytes out.

A frame is a 4-byte big-endian length and a msgpack body of that length, at
most `max_frame` bytes. The control socket also speaks JSON lines (a client
whose first byte, after any whitespace or UTF-8 BOM, is `{`: stream_kind);
LineDecoder frames those. And plain command lines, as hoststatectl's words
(`show hosts`), from a client whose first byte is a letter: TextDecoder. Nothing here touches a socket or a clock: the
drivers (ipc.channel, control, hoststatectl.client) move the bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgpack

from hoststated.ipc.messages import MAX_FRAME

HEADER = struct.Struct(">I")
BOM = b"\xef\xbb\xbf"
_SPACE = b" \t\r\n"

# msgpack's exceptions, some of which carry no text (StackError, FormatError)
_UNPACK_REASONS = (
    (msgpack.StackError, "nested too deeply"),
    (msgpack.ExtraData, "bytes left over after the object"),
    (msgpack.FormatError, "not msgpack (a reserved type byte)"),
)


class FrameError(ValueError):
    """The peer sent something that is not a frame (its fault, not ours)."""


def encode(obj: Any, max_frame: int = MAX_FRAME) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameError(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    try:
        # strict_map_key=False: host ids are map keys in HOST_STATUS
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise FrameError(f"malformed frame: {_unpack_reason(e)}") from None


def _unpack_reason(e: Exception) -> str:
    for kind, reason in _UNPACK_REASONS:
        if isinstance(e, kind):
            return reason
    return str(e) or type(e).__name__


def stream_kind(head: bytes) -> str | None:
    """What a control stream that starts with `head` speaks: "json" when it
    starts with `{`, or with whitespace or a UTF-8 BOM and then anything (a
    person or a text tool: their error comes back in JSON); "text" when it
    starts with an ASCII letter (command lines, answered as hoststatectl
    prints); else "msgpack".
    None while only whitespace or part of a BOM has come. A msgpack request
    frame starts with a zero byte (its length is far below 16 MB), so neither
    rule ever mistakes one."""
    if not head or (len(head) < len(BOM) and BOM.startswith(head)):
        return None                      # nothing yet, or a BOM cut short
    if head[:1] == b"{":
        return "json"
    if head[:1].isalpha():
        return "text"                    # a command line: `echo 'show hosts' | socat ...`
    rest = head[len(BOM):] if head.startswith(BOM) else head
    rest = rest.lstrip(_SPACE)
    if len(rest) < len(head):
        return "json" if rest else None
    return "msgpack"


class Decoder:
    """Feed bytes as they arrive; get back every complete frame's object.

    Holds at most one partial frame. A length above the limit is an error at
    once (we do not wait for the body); so is a body that is not msgpack.
    After an error the stream is out of sync and the decoder refuses more.
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._failed: FrameError | None = None

    def feed(self, data: bytes) -> list[Any]:
        if self._failed:
            raise self._failed
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > self.max_frame:
                self._failed = FrameError(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame}")
                raise self._failed
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            try:
                out.append(decode_body(body))
            except FrameError as e:
                self._failed = e
                raise
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (non-zero at EOF = a half-sent frame)."""
        return len(self._buf)


class LineDecoder:
    """JSON lines: one JSON document per `\\n`-terminated line, bounded."""

    def __init__(self, max_line: int):
        self.max_line = max_line
        self._buf = bytearray()
        self._failed: FrameError | None = None

    def feed(self, data: bytes) -> list[Any]:
        if self._failed:
            raise self._failed
        self._buf += data
        out = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > self.max_line:
                    self._failed = FrameError(f"line longer than {self.max_line} bytes")
                    raise self._failed
                break
            line = bytes(self._buf[:i])
            del self._buf[:i + 1]
            if len(line) > self.max_line:
                self._failed = FrameError(f"line longer than {self.max_line} bytes")
                raise self._failed
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except (ValueError, RecursionError) as e:
                # a bad line does not desync a line stream: report it in place
                out.append(BadLine(str(e)))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


class TextDecoder:
    """Command lines: one request per `\\n`-terminated line (a `\\r` before it
    and surrounding blanks dropped, blank lines skipped), bounded; bytes that
    are not UTF-8 come out replaced, to be refused as an unknown command."""

    def __init__(self, max_line: int):
        self.max_line = max_line
        self._buf = bytearray()
        self._failed: FrameError | None = None

    def feed(self, data: bytes) -> list[str]:
        if self._failed:
            raise self._failed
        self._buf += data
        out = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0 and len(self._buf) <= self.max_line:
                break
            if i < 0 or i > self.max_line:
                self._failed = FrameError(f"line longer than {self.max_line} bytes")
                raise self._failed
            line = bytes(self._buf[:i]).decode("utf-8", "replace").strip()
            del self._buf[:i + 1]
            if line:
                out.append(line)
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


class BadLine:
    """A JSON line that did not parse; the control server answers it with an error."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"BadLine({self.reason!r})"


def encode_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"
