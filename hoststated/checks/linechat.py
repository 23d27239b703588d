"""Small pieces shared by the line-protocol checks (smtp, ftp, imap, pop,
nntp, redis, sip, http-proxy): how a failure reads, and how much of a reply a
detail may quote. No I/O here, as in every check module."""

from __future__ import annotations

from hoststated.checks.base import Action, Done, failed, passed
from hoststated.states import HostError

QUOTE_MAX = 120           # characters of a server reply quoted in a detail


def quote(line: bytes | str) -> str:
    """A server reply as a detail may show it: decoded, printable, clipped."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in line.strip())
    return text if len(text) <= QUOTE_MAX else text[:QUOTE_MAX] + "..."


def fail(proto: str, detail: str) -> list[Action]:
    return [Done(failed(HostError.PROTOCOL_FAIL, f"{proto}: {detail}"))]


def ok(proto: str, detail: str = "") -> list[Action]:
    return [Done(passed(HostError.PROTOCOL_OK, f"{proto}: {detail}" if detail else proto))]


def closed(proto: str, state: str) -> list[Action]:
    """The peer closed the connection before the check was done."""
    return fail(proto, f"connection closed by server {state}")


def overflow(proto: str) -> list[Action]:
    return fail(proto, "reply line too long")
