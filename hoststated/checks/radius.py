"""radius check: an Access-Request (RFC 2865) with user, password and a
NAS-Identifier; Access-Accept is up, Access-Reject is "access rejected".

Packed here with hashlib/hmac rather than through pyrad: the packet is four
attributes and two MD5s, and doing it here keeps the check sans-IO on the
runner's UDP path (pyrad wants its own socket and dictionary files).
A Message-Authenticator (RFC 3579 3.2) is sent and, when the answer carries
one, verified, as the BlastRADIUS advisory asks."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Literal

from hoststated.checks.base import Action, Send, TLSInfo
from hoststated.checks.base import closed, fail, ok

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE = 1, 2, 3, 11
USER_NAME, USER_PASSWORD, REPLY_MESSAGE, NAS_IDENTIFIER = 1, 2, 18, 32
MESSAGE_AUTHENTICATOR = 80


def attribute(kind: int, value: bytes) -> bytes:
    if len(value) > 253:
        raise ValueError(f"radius attribute {kind} longer than 253 bytes")
    return bytes((kind, len(value) + 2)) + value


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password hiding, RFC 2865 5.2."""
    padded = password + b"\0" * (-len(password) % 16 or (16 if not password else 0))
    out, prev = bytearray(), authenticator
    for i in range(0, len(padded), 16):
        key = hashlib.md5(secret + prev).digest()
        block = bytes(a ^ b for a, b in zip(padded[i:i + 16], key))
        out += block
        prev = block
    return bytes(out)


def parse_attributes(data: bytes) -> list[tuple[int, bytes]] | None:
    attrs, i = [], 0
    while i < len(data):
        if i + 2 > len(data) or data[i + 1] < 2 or i + data[i + 1] > len(data):
            return None
        attrs.append((data[i], data[i + 2:i + data[i + 1]]))
        i += data[i + 1]
    return attrs


class RadiusCheck:
    tls = False
    transport: Literal["udp", "tcp"] = "udp"

    def __init__(self, secret: str, user: str, password: str, *,
                 nas_identifier: str | None = None, identifier: int | None = None,
                 authenticator: bytes | None = None):
        self._secret = secret.encode()
        self.user = user
        self._password = password.encode()
        self.nas_identifier = nas_identifier or "hoststated"
        self.identifier = os.urandom(1)[0] if identifier is None else identifier
        self.authenticator = authenticator or os.urandom(16)

    def request(self) -> bytes:
        attrs = (attribute(USER_NAME, self.user.encode())
                 + attribute(USER_PASSWORD, hide_password(self._password, self._secret,
                                                          self.authenticator))
                 + attribute(NAS_IDENTIFIER, self.nas_identifier.encode())
                 + attribute(MESSAGE_AUTHENTICATOR, b"\0" * 16))
        length = 20 + len(attrs)
        packet = struct.pack("!BBH", ACCESS_REQUEST, self.identifier, length) \
            + self.authenticator + attrs
        mac = hmac.new(self._secret, packet, hashlib.md5).digest()
        return packet[:-16] + mac

    def start(self) -> list[Action]:
        try:
            return [Send(self.request())]
        except ValueError as e:
            return fail("radius", str(e))

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def eof(self) -> list[Action]:
        return closed("radius", "before an answer")

    def receive(self, data: bytes) -> list[Action]:
        if len(data) < 20:
            return fail("radius", f"short answer ({len(data)} bytes)")
        code, ident, length = struct.unpack("!BBH", data[:4])
        if ident != self.identifier:
            return []               # an answer to another request: keep waiting
        if length < 20 or length > len(data):
            return fail("radius", f"malformed answer (length {length})")
        data = data[:length]
        attrs = parse_attributes(data[20:])
        if attrs is None:
            return fail("radius", "malformed attributes in answer")
        expected = hashlib.md5(data[:4] + self.authenticator + data[20:]
                               + self._secret).digest()
        if not hmac.compare_digest(expected, data[4:20]):
            return fail("radius", "response authenticator mismatch (wrong secret?)")
        for kind, value in attrs:
            if kind == MESSAGE_AUTHENTICATOR and not self._message_auth_ok(data, value):
                return fail("radius", "Message-Authenticator mismatch (wrong secret?)")
        reply = "; ".join(v.decode("utf-8", "replace") for k, v in attrs if k == REPLY_MESSAGE)
        said = f": {reply}" if reply else ""
        if code == ACCESS_ACCEPT:
            return ok("radius", "access accepted")
        if code == ACCESS_REJECT:
            return fail("radius", f"access rejected{said}")
        if code == ACCESS_CHALLENGE:
            return fail("radius", f"access challenge (more than a password wanted){said}")
        return fail("radius", f"unexpected answer code {code}")

    def _message_auth_ok(self, data: bytes, value: bytes) -> bool:
        at = data.find(bytes((MESSAGE_AUTHENTICATOR, 18)) + value, 20)
        zeroed = data[:4] + self.authenticator + data[20:at + 2] + b"\0" * 16 \
            + data[at + 18:]
        return hmac.compare_digest(hmac.new(self._secret, zeroed, hashlib.md5).digest(), value)
