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

Under systemd the sockets also go to its file descriptor store (sd_notify
FDSTORE=1, one FDNAME per listener, fd_name()), which holds them while the
daemon restarts: connections that arrive meanwhile wait in their accept
queues, and the next daemon adopts the sockets (LISTEN_FDS) instead of
binding anew. A listener a reload drops leaves the store (FDSTOREREMOVE).
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


def fd_name(key: str) -> str:
    """A listener's FDNAME in systemd's store: printable, no ':' (the
    separator of LISTEN_FDNAMES), so an IPv6 address's colons are escaped
    (and '%', to keep the names apart)."""
    return "relay " + key.replace("%", "%25").replace(":", "%3A")


def _sockaddr(address: str, port: int, kind: int) -> tuple[int, tuple]:
    infos = socket.getaddrinfo(address, port, type=kind,
                               flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def fits(sock: socket.socket, address: str, port: int, udp: bool) -> bool:
    """Is a passed socket the one a listener wants: its type, bound where
    the listener listens, and listening if TCP?"""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        family, sockaddr = _sockaddr(address, port, kind)
        if sock.family != family or sock.type != kind:
            return False
        if sock.getsockname()[:2] != sockaddr[:2]:
            return False
        return udp or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except OSError:
        return False


def bind_one(relay: str, address: str, port: int, backlog: int,
             udp: bool = False) -> socket.socket:
    """One reuseport listening socket (UDP for a DNS relay: the kernel
    spreads queries over the processes by the client's address and port);
    OSError says which relay and where."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        family, sockaddr = _sockaddr(address, port, kind)
    except socket.gaierror as e:
        raise OSError(f"relay {relay}: listen on {address} port {port}: {e.strerror}") from None
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
    """The keys the relay processes listen on, the sockets bound for them
    that the parent has not yet handed down, and systemd's store of them."""

    def __init__(self, prefork: int, passed: dict[str, list[int]] | None = None):
        self.prefork = prefork
        self.keys: set[str] = set()
        # the sockets of the start, per relay process, until spawned
        self.processes: list[dict[str, socket.socket]] = []
        # what systemd passed at start (LISTEN_FDS), by FDNAME, until adopted
        self.passed: dict[str, list[socket.socket]] = {
            name: [socket.socket(fileno=fd) for fd in fds] for name, fds in (passed or {}).items()}
        self.adopted = 0
        # the store's content changed by bind(), for store(): name -> sockets
        # to keep there, and the names whose content is stale
        self._to_store: dict[str, list[socket.socket]] = {}
        self._to_drop: set[str] = set()

    def bind(self, config: Config) -> list[dict[str, socket.socket]]:
        """Bind what config adds, adopting the sockets systemd passed for it;
        per relay process, key -> socket. On an error nothing new stays
        bound (what was adopted goes back to the pool)."""
        fresh = {k: v for k, v in wanted(config).items() if k not in self.keys}
        out: list[dict[str, socket.socket]] = [{} for _ in range(self.prefork)]
        taken: dict[str, list[socket.socket]] = {}
        self._to_store, self._to_drop = {}, set()
        try:
            for k, spec in fresh.items():
                name = fd_name(k)
                pool = self.passed.get(name, [])
                fitting = [s for s in pool if fits(s, spec[1], spec[2], spec[4])]
                mine = taken[name] = fitting[:self.prefork]
                for i, per in enumerate(out):
                    if i < len(mine):
                        per[k] = mine[i]
                        mine[i].setblocking(False)
                        if not spec[4]:
                            mine[i].listen(spec[3])     # the backlog of this config
                    else:
                        per[k] = bind_one(*spec)
                if len(mine) < len(pool):
                    # the store holds sockets we do not use: it starts afresh
                    self._to_drop.add(name)
                    self._to_store[name] = [per[k] for per in out]
                elif len(mine) < self.prefork:
                    self._to_store[name] = [per[k] for per in out[len(mine):]]
        except OSError:
            for per in out:
                for k, sock in per.items():
                    if sock not in taken.get(fd_name(k), ()):
                        sock.close()
            raise
        for name, mine in taken.items():
            self.adopted += len(mine)
            rest = [s for s in self.passed.pop(name, []) if s not in mine]
            for s in rest:
                s.close()
        return out

    def leftover(self) -> list[str]:
        """Close what systemd passed that no listener took (a relay gone
        since the last run); their names, to drop from the store."""
        names = sorted(self.passed)
        for socks in self.passed.values():
            for s in socks:
                s.close()
        self.passed = {}
        return names

    def store_changes(self, removed: list[str] = ()) -> list[tuple[str, list[int] | None]]:
        """What systemd's store must be told after the last bind(), and to
        forget `removed` (names): (name, None) to remove a name, then
        (name, fds) to store; the caller sends them (proc.fdstore*) before
        the sockets are closed here."""
        out: list[tuple[str, list[int] | None]] = [
            (name, None) for name in sorted({*removed, *self._to_drop})]
        out += [(name, [s.fileno() for s in socks]) for name, socks in self._to_store.items()]
        self._to_store, self._to_drop = {}, set()
        return out

    def commit(self, config: Config) -> list[str]:
        """The relay processes now listen on config's listeners only; the
        store names of the listeners it dropped."""
        keys = set(wanted(config))
        dropped = [fd_name(k) for k in sorted(self.keys - keys)]
        self.keys = keys
        return dropped


def close_all(per_process: list[dict[str, socket.socket]]) -> None:
    for per in per_process:
        for sock in per.values():
            sock.close()


def bind_metrics(address: str, port: int) -> socket.socket:
    """The listening TCP socket of `metrics listen on`, bound as root (a port
    below 1024 needs no privilege in hce, which serves it); OSError says
    where."""
    try:
        family, sockaddr = _sockaddr(address, port, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"metrics listen on {address} port {port}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"metrics listen on {address} port {port}: "
                               f"{e.strerror or e}") from None
    return sock
