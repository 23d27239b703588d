"""dns check: ask the host for a name and record type and match the answer
(ldirectord's `dns`, keepalived's DNS_CHECK types A/NS/CNAME/SOA/MX/TXT/AAAA).

The message is built and parsed by dnspython (dns.message), sans-IO: the
runner sends the datagram over UDP, or over TCP with the RFC 1035 4.2.2
length prefix when the check says `tcp`."""

from __future__ import annotations

import secrets
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from hoststated.checks.base import Action, Send, TLSInfo
from hoststated.checks.base import closed, fail, ok

MAX_TCP_MESSAGE = 65535


def answer_texts(rdata) -> set[str]:
    """The forms an `expect` value may take for one record: the whole record
    as dig prints it, and for names without the trailing dot; for MX/SRV also
    the target alone; for TXT the unquoted string."""
    full = rdata.to_text()
    forms = {full, full.rstrip(".")}
    for attr in ("exchange", "target"):
        name = getattr(rdata, attr, None)
        if name is not None:
            forms |= {name.to_text(), name.to_text().rstrip(".")}
    strings = getattr(rdata, "strings", None)
    if strings is not None:
        forms.add(b"".join(strings).decode("utf-8", "replace"))
    return {f.lower() for f in forms}


class DnsCheck:
    tls = False

    def __init__(self, name: str, qtype: str = "A", *, expect: str | None = None,
                 transport: Literal["udp", "tcp"] = "udp", query_id: int | None = None):
        self.name = name
        self.qtype = qtype.upper()
        self.expect = expect
        self.transport = transport
        self._id = secrets.randbelow(65536) if query_id is None else query_id
        self._buf = bytearray()

    def query(self) -> bytes:
        q = dns.message.make_query(self.name, self.qtype, id=self._id)
        wire = q.to_wire()
        if self.transport == "tcp":
            return len(wire).to_bytes(2, "big") + wire
        return wire

    def start(self) -> list[Action]:
        try:
            dns.rdatatype.from_text(self.qtype)
            dns.name.from_text(self.name)
        except (dns.exception.DNSException, ValueError) as e:
            return fail("dns", f"cannot ask for {self.qtype} {self.name}: {e}")
        return [Send(self.query())]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return []

    def eof(self) -> list[Action]:
        return closed("dns", "before an answer")

    def receive(self, data: bytes) -> list[Action]:
        if self.transport == "udp":
            return self._answer(data)
        self._buf += data
        if len(self._buf) < 2:
            return []
        need = int.from_bytes(self._buf[:2], "big")
        if len(self._buf) < 2 + need:
            return []
        return self._answer(bytes(self._buf[2:2 + need]))

    def _answer(self, wire: bytes) -> list[Action]:
        try:
            msg = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError) as e:
            return fail("dns", f"malformed answer ({type(e).__name__}: {e})")
        if msg.id != self._id or not msg.flags & dns.flags.QR:
            if self.transport == "udp":
                return []           # not the answer to our query: keep waiting
            return fail("dns", "answer does not match the query id")
        if msg.flags & dns.flags.TC and self.transport == "udp":
            return fail("dns", f"answer for {self.name} truncated (try `tcp`)")
        rcode = msg.rcode()
        if rcode != dns.rcode.NOERROR:
            return fail("dns", f"{dns.rcode.to_text(rcode)} for {self.qtype} {self.name}")
        rdtype = dns.rdatatype.from_text(self.qtype)
        records = [rd for rrset in msg.answer if rrset.rdtype == rdtype for rd in rrset]
        if not records:
            return fail("dns", f"no {self.qtype} record for {self.name}")
        if self.expect is None:
            return ok("dns", f"{self.qtype} {self.name} {records[0].to_text()}")
        want = self.expect.lower()
        if any(want in answer_texts(rd) or want.rstrip(".") in answer_texts(rd)
               for rd in records):
            return ok("dns", f"{self.qtype} {self.name} {self.expect}")
        got = ", ".join(sorted(rd.to_text() for rd in records)[:4])
        return fail("dns", f"{self.qtype} {self.name} is {got}, want {self.expect}")
