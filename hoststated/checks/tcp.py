"""check tcp: the connect itself is the check (relayd check_tcp.c).

The runner connects within the timeout; reaching start() means it worked."""

from __future__ import annotations

from typing import Literal

from hoststated.checks.base import Action, Done, TLSInfo, failed, passed
from hoststated.states import HostError


class TcpCheck:
    transport: Literal["tcp", "udp"] = "tcp"
    tls = False

    def start(self) -> list[Action]:
        return [Done(passed(HostError.TCP_CONNECT_OK))]

    def receive(self, data: bytes) -> list[Action]:
        return [Done(passed(HostError.TCP_CONNECT_OK))]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return [Done(failed(HostError.TLS_CONNECT_ERROR, "unexpected TLS"))]

    def eof(self) -> list[Action]:
        return [Done(passed(HostError.TCP_CONNECT_OK))]
