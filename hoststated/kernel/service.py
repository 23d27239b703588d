"""What the kernel should hold: virtual services and their destinations.

These types are the whole vocabulary between `desired`, `diff` and the
backends. They name things the IPVS way (service, destination, scheduler);
the nftables and pf backends translate. Everything here is frozen and
hashable so states can be compared, diffed and used as dict keys.

A service is identified by its `ServiceKey` alone (the same identity IPVS
uses: family, protocol, address, port, or a firewall mark). Every other
field is an attribute that an update can change in place.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Literal, Mapping, NamedTuple

Protocol = Literal["tcp", "udp", "fwmark"]
Method = Literal["nat", "route", "tunnel"]


class ServiceKey(NamedTuple):
    family: int                 # 4 or 6
    protocol: str               # "tcp", "udp" or "fwmark"
    address: str = ""           # "" for fwmark services
    port: int = 0               # 0 for fwmark services
    port_end: int = 0           # last port of a `port A:B` range, else 0
    fwmark: int = 0

    def __str__(self) -> str:
        if self.protocol == "fwmark":
            return f"fwmark {self.fwmark} (ipv{self.family})"
        addr = f"[{self.address}]" if self.family == 6 else self.address
        ports = f"{self.port}:{self.port_end}" if self.port_end else str(self.port)
        return f"{self.protocol} {addr}:{ports}"


class Destination(NamedTuple):
    """A real server of a service. A tuple: cheap to make by the ten thousand,
    immutable, hashable and ordered (by address, then port)."""
    address: str
    port: int = 0
    weight: int = 1             # 0: quiescent (no new connections)
    u_thresh: int = 0           # IPVS upper connection threshold (0: none)
    l_thresh: int = 0           # IPVS lower connection threshold (0: none)

    @property
    def ident(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{addr}:{self.port}" if self.port else addr


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    mode: str = "roundrobin"    # a conf.model Mode
    method: Method = "nat"
    interface: str | None = None        # `listen on ... interface` (route: ingress)
    route_interface: str | None = None  # `route to ... interface` (towards hosts)
    persistence: int = 0        # s; IPVS persistence (sticky-address), 0: off
    netmask: str | None = None  # persistence netmask
    one_packet: bool = False
    destinations: tuple[Destination, ...] = ()
    # who asked for it: not part of the kernel state, so not compared
    redirect: str = field(default="", compare=False)

    def attributes(self) -> "Service":
        """The service without its destinations (what a service update sets)."""
        return replace(self, destinations=())

    def dest_map(self) -> dict[tuple[str, int], Destination]:
        return {d[:2]: d for d in self.destinations}       # d.ident, without the call

    def with_destinations(self, dests) -> "Service":
        return replace(self, destinations=tuple(sorted(dests)))


KernelState = Mapping[ServiceKey, Service]


_DOTTED = frozenset("0123456789.")


@functools.lru_cache(maxsize=65536)
def family_of(address: str) -> int:
    """4 or 6 for a numeric address; ValueError for anything else.

    Cached: desired() asks again for every host on every change."""
    if ":" not in address and len(address) <= 15 and _DOTTED.issuperset(address) \
            and address.count(".") == 3:
        return 4
    return ipaddress.ip_address(address).version


# --- kernel counters (issue 13 item 2) ----------------------------------------

class Counts(NamedTuple):
    """One kernel counter object as read. The first five are cumulative
    since the object was made; active and inactive are gauges (IPVS's
    ActiveConn and InActConn). None: the engine does not count it (an
    nftables NAT rule sees only the first packet of a connection, so it
    counts connections, not packets or bytes)."""
    connections: int = 0
    packets_in: int | None = None
    packets_out: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    active: int | None = None
    inactive: int | None = None


class Sample(NamedTuple):
    """A counter read from the kernel: `ident` names the kernel object (a
    new object, or one the backend rewrote, gets a new ident or is in the
    read's reset set), `address` the destination it counts for, "" for
    the service itself."""
    ident: tuple
    key: ServiceKey
    address: str
    counts: Counts
