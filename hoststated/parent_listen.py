"""The relays' listening sockets, bound by the parent as root (ports below
1024 need no privilege in the relays) and handed to the relay processes.

Each listener (`listen on ADDRESS port P` of a relay) gets one socket per
relay process, all bound with SO_REUSEPORT to the same address: the
kernel's reuseport group spreads new connections over the processes by a
hash of the 4-tuple, with no thundering herd on one shared queue. The
parent keeps none of them once handed down: a socket left here would stay
in the group and take connections nobody accepts.

A reload binds only the listeners that are new; those it keeps stay open in
the relay processes throughout, so a reload refuses no connection on them.
"""

from __future__ import annotations

import socket

from hoststated.conf.model import Config
from hoststated.ipc.messages import listener_key as key

BACKLOG = 511       # per socket; relayd's default is 10 (one shared queue on OpenBSD)


def wanted(config: Config) -> dict[str, tuple[str, str, int, int, bool]]:
    """key -> (relay name, address, port, backlog, udp) of every relay
    listener (a `dns protocol` relay listens on UDP)."""
    out = {}
    protocols = {p.name: p for p in config.protocols}
    for r in config.relays:
        backlog = BACKLOG
        p = protocols.get(r.protocol or "")
        udp = p is not None and p.type == "dns"
        for opt in (p.tcp if p is not None else ()):
            words = opt.split()
            if words[:1] == ["backlog"] and len(words) == 2 and words[1].isdigit():
                backlog = int(words[1])
        for ln in r.listen:
            out[key(ln.address, ln.port)] = (r.name, ln.address, ln.port, backlog, udp)
    return out


def bind_one(relay: str, address: str, port: int, backlog: int,
             udp: bool = False) -> socket.socket:
    """One reuseport listening socket (UDP for a DNS relay: the kernel
    spreads queries over the processes by the client's address and port);
    OSError says which relay and where."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(address, port, type=kind,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as e:
        raise OSError(f"relay {relay}: listen on {address} port {port}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if not udp:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"relay {relay}: listen on {address} port {port}"
                               f"{' (udp)' if udp else ''}: "
                               f"{e.strerror or e}") from None
    return sock


class Listeners:
    """The keys the relay processes listen on, and the sockets bound for
    them that the parent has not yet handed down."""

    def __init__(self, prefork: int):
        self.prefork = prefork
        self.keys: set[str] = set()
        # the sockets of the start, per relay process, until spawned
        self.processes: list[dict[str, socket.socket]] = []

    def bind(self, config: Config) -> list[dict[str, socket.socket]]:
        """Bind what config adds; per relay process, key -> socket. On an
        error nothing new stays bound."""
        fresh = {k: v for k, v in wanted(config).items() if k not in self.keys}
        out: list[dict[str, socket.socket]] = [{} for _ in range(self.prefork)]
        try:
            for k, spec in fresh.items():
                for per in out:
                    per[k] = bind_one(*spec)
        except OSError:
            close_all(out)
            raise
        return out

    def commit(self, config: Config) -> None:
        """The relay processes now listen on config's listeners only."""
        self.keys = set(wanted(config))


def close_all(per_process: list[dict[str, socket.socket]]) -> None:
    for per in per_process:
        for sock in per.values():
            sock.close()
