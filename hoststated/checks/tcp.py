"""check tcp: the connect itself is the check (relayd check_tcp.c).

The runner connects within the timeout; reaching start() means it worked.
The conversation holds no state: fresh() hands back the same object, and
every success is the one shared (immutable) Done."""

from __future__ import annotations

from typing import Literal

from hoststated.checks.base import Action, Done, TLSInfo, failed, passed
from hoststated.states import HostError


_CONNECTED = Done(passed(HostError.TCP_CONNECT_OK))


class TcpCheck:
    transport: Literal["tcp", "udp"] = "tcp"
    tls = False

    def fresh(self) -> TcpCheck:
        return self

    def start(self) -> list[Action]:
        return [_CONNECTED]

    def receive(self, data: bytes) -> list[Action]:
        return [_CONNECTED]

    def tls_started(self, info: TLSInfo) -> list[Action]:
        return [Done(failed(HostError.TLS_CONNECT_ERROR, "unexpected TLS"))]

    def eof(self) -> list[Action]:
        return [_CONNECTED]
