"""check tls: a full TLS handshake (relayd check_tls.c), optionally verified
(CheckTls.verify, ca_file: the runner's SSL context does the verifying), and
the days left on the peer's certificate in the detail.

Pure: the runner hands over the certificate and the wall-clock time of the
handshake in TLSInfo; nothing here reads a clock."""

from __future__ import annotations

from typing import Literal

from hoststated.checks.base import Action, Done, TLSInfo, Verdict, failed, passed
from hoststated.states import HostError


def days_to_expiry(cert_der: bytes | None, now: float) -> float | None:
    """Days from `now` (epoch seconds) to the certificate's notAfter, or None
    when there is no certificate or it cannot be parsed."""
    if not cert_der:
        return None
    try:
        from cryptography import x509
        cert = x509.load_der_x509_certificate(cert_der)
        not_after = cert.not_valid_after_utc.timestamp()
    except Exception:      # a certificate we cannot read: no figure, not a crash
        return None
    return (not_after - now) / 86400.0


def describe(info: TLSInfo) -> str:
    parts = [info.version]
    days = days_to_expiry(info.peer_cert_der, info.checked_at)
    if days is not None:
        parts.append(f"certificate expires in {int(days)} days" if days >= 0
                     else f"certificate expired {int(-days)} days ago")
    if info.verified:
        parts.append("verified")
    return ", ".join(parts)


class TlsCheck:
    transport: Literal["tcp", "udp"] = "tcp"
    tls = True

    def __init__(self) -> None:
        self._verdict: Verdict = passed(HostError.TLS_CONNECT_OK)

    def tls_established(self, info: TLSInfo) -> None:
        self._verdict = passed(HostError.TLS_CONNECT_OK, describe(info))

    def start(self) -> list[Action]:
        return [Done(self._verdict)]

    def receive(self, data: bytes) -> list[Action]:
        return [Done(self._verdict)]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        self.tls_established(info)
        return [Done(self._verdict)]

    def eof(self) -> list[Action]:
        return [Done(failed(HostError.TLS_READ_ERROR, "closed by the peer"))]
