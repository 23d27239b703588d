"""desired(config, host states) -> the kernel state per engine. Pure.

relayd's pfe_sync, for every redirect (relayd.md §4.3):
- the active table is the main table if it has an up host, else the backup
  table if it has one, else none;
- with no active table the redirect has no destinations and the backends load
  no rule for it (traffic to the virtual address is not translated, as
  relayd, which removes the redirect's rules).

hoststated's additions (DESIGN §4):
- a down host stays as a weight-0 destination when the redirect is
  `quiescent` (the default), else it is removed;
- a disabled host (hoststatectl host disable) drains: weight 0, whatever the
  quiescent setting; so does an up host drained (host drain) or given weight
  0 at run time (issue 13): its established connections keep their
  conntrack (nftables: NAT is decided on a flow's first packet only) or
  IPVS connection entries; a disabled table or redirect removes its destinations
  or its service;
- while the main table is active, backup hosts are not destinations; while
  the backup is active, the main table's hosts stay in at weight 0 when
  quiescent, so the kernel keeps their established connections.

UNKNOWN is not up: at start the Reconciler turns UNKNOWN hosts that the
kernel already serves into provisional UP (see `adopted_statuses`), so a
restart does not drop traffic before the first checks come back.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Iterable, Mapping

from hoststated.conf.model import Config, Forward, Host, Redirect, Table
from hoststated.states import HostStatus

from .service import Destination, KernelState, Service, ServiceKey, family_of

log = logging.getLogger("hoststated.kernel")


def engine_of(config: Config, redirect: Redirect) -> str:
    return redirect.engine or config.global_.engine


def _table_hosts(config: Config, forward: Forward | None) -> tuple[Table | None, tuple[Host, ...]]:
    if forward is None:
        return None, ()
    table = config.table(forward.table)
    if table is None:
        return None, ()
    return table, table.hosts


def _status(statuses: Mapping[int, HostStatus], table: Table | None, host: Host) -> HostStatus:
    if table is not None and table.disabled:
        return HostStatus.DISABLED
    return statuses.get(host.id, HostStatus.UNKNOWN)


def _dest_port(forward: Forward, table: Table | None, host: Host, listen_port: int) -> int:
    return host.port or forward.port or (table.port if table else None) or listen_port or 0


def _netmask(redirect: Redirect, family: int) -> str | None:
    if redirect.sticky is None:
        return None
    mask = redirect.sticky.netmask
    if mask is None:
        return None
    if mask.startswith("/"):
        bits = int(mask[1:])
        if family == 4 and bits > 32:
            return None         # a v6 prefix length (/64) on a v4 service: the whole address
        net = ipaddress.ip_network(f"{'0.0.0.0' if family == 4 else '::'}/{bits}")
        return str(net.netmask) if family == 4 else str(bits)
    return mask


def redirect_services(config: Config, redirect: Redirect,
                      statuses: Mapping[int, HostStatus], keys_only: bool = False,
                      weights: Mapping[int, int] | None = None) -> list[Service]:
    """The services of one redirect (one per listen address); with
    keys_only, without destinations (what could exist, for ownership).
    `weights`: runtime weights by host id (hoststatectl host weight|drain),
    over the config's; 0 keeps an up host as a destination that takes no
    new connection, as a disabled one."""
    wget = weights.get if weights else None
    main_table, main_hosts = _table_hosts(config, redirect.forward)
    backup_table, backup_hosts = _table_hosts(config, redirect.backup)
    up, disabled, unknown = HostStatus.UP, HostStatus.DISABLED, HostStatus.UNKNOWN
    if keys_only:
        main_st = []
    elif main_table is not None and main_table.disabled:
        main_st = [(h, disabled) for h in main_hosts if h.address]
    else:
        get = statuses.get
        main_st = [(h, get(h.id, unknown)) for h in main_hosts if h.address]
    main_up = any(st == up for _, st in main_st)
    backup_up = [] if main_up or keys_only else [
        (h, up) for h in backup_hosts
        if h.address and _status(statuses, backup_table, h) == up]

    services = []
    for listen in redirect.listen:
        if listen.fwmark is not None:
            fams = {family_of(h.address) for h in main_hosts + backup_hosts if h.address}
            family = 6 if fams == {6} else 4
            key = ServiceKey(family, "fwmark", fwmark=listen.fwmark)
            listen_port = 0
        else:
            if listen.address is None:
                continue
            try:
                family = family_of(listen.address)
            except ValueError:      # a name left unresolved (--no-lookup)
                continue
            key = ServiceKey(family, listen.protocol, listen.address, listen.port or 0,
                             listen.port_end or 0)
            listen_port = listen.port or 0

        dests: dict[tuple[str, int], Destination] = {}
        # the loop below runs for every host of a redirect on every change:
        # kept inline and with few attribute lookups
        new = tuple.__new__          # Destination(...), without its Python __new__
        get = dests.get
        for forward, table, hosts in ((redirect.forward, main_table, main_st),
                                      (redirect.backup, backup_table, backup_up)):
            quiescent = redirect.quiescent and forward is redirect.forward
            fixed_port = forward.port if forward is not None else None
            table_port = table.port if table is not None else None
            other_port = table_port or listen_port or 0
            for h, st in hosts:
                if st == up:
                    weight = h.weight if wget is None else wget(h.id, h.weight)
                    if weight < 0:
                        weight = 0
                elif st == disabled or quiescent:
                    weight = 0
                else:
                    continue
                address = h.address
                if family_of(address) != family:
                    continue
                # a host's own port first (migrate, issue 14); else it is the table's
                ident = (address, h.port or fixed_port or other_port)
                old = get(ident)
                if old is None or old[2] < weight:
                    dests[ident] = new(Destination, (address, ident[1], weight,
                                                     h.max_connections or 0,
                                                     h.min_connections or 0))

        fwd = redirect.forward if main_up or not backup_up else redirect.backup
        services.append(Service(
            key=key,
            mode=fwd.mode,
            method=fwd.method,
            interface=listen.interface,
            route_interface=fwd.interface,
            persistence=redirect.sticky.timeout if redirect.sticky else 0,
            netmask=_netmask(redirect, family),
            one_packet=redirect.one_packet,
            destinations=tuple(sorted(dests.values())),
            redirect=redirect.name,
        ))
    return services


def desired(config: Config, statuses: Mapping[int, HostStatus],
            disabled_redirects: Iterable[str] = frozenset(),
            engine: str | None = None) -> dict[str, dict[ServiceKey, Service]]:
    """The kernel state per engine ("nftables", "ipvs", ...).

    With `engine`, every redirect goes to that engine (a Reconciler given
    one explicit backend)."""
    off = set(disabled_redirects)
    out: dict[str, dict[ServiceKey, Service]] = {}
    for r in config.redirects:
        eng = engine or engine_of(config, r)
        state = out.setdefault(eng, {})
        if r.disabled or r.name in off:
            continue
        for svc in redirect_services(config, r, statuses):
            if svc.key in state:
                log.warning("redirect %s: %s already used by redirect %s, ignored",
                            r.name, svc.key, state[svc.key].redirect)
                continue
            state[svc.key] = svc
    return out


def service_keys(config: Config, engine: str | None = None) -> dict[str, list[ServiceKey]]:
    """Every service the config can ask for, per engine (what we own)."""
    no_hosts: dict[int, HostStatus] = {}
    out: dict[str, list[ServiceKey]] = {}
    for r in config.redirects:
        eng = engine or engine_of(config, r)
        lst = out.setdefault(eng, [])
        empty = r.model_copy(update={"quiescent": False})
        lst.extend(s.key for s in redirect_services(config, empty, no_hosts, keys_only=True))
    return out


def adopted_statuses(config: Config, statuses: Mapping[int, HostStatus],
                     current: KernelState) -> dict[int, HostStatus]:
    """Statuses with UNKNOWN hosts that the kernel serves (weight > 0) as UP.

    Used once at start: the kernel's state from before a restart stands
    until the first checks say otherwise."""
    out = dict(statuses)
    serving: set[tuple[str, str, int]] = set()
    for svc in current.values():
        for d in svc.destinations:
            if d.weight > 0:
                serving.add((svc.key.address or f"fwmark{svc.key.fwmark}", d.address, d.port))
    for r in config.redirects:
        for listen in r.listen:
            vip = listen.address if listen.fwmark is None else f"fwmark{listen.fwmark}"
            for fwd in (r.forward, r.backup):
                table, hosts = _table_hosts(config, fwd)
                for h in hosts:
                    if not h.address or out.get(h.id, HostStatus.UNKNOWN) != HostStatus.UNKNOWN:
                        continue
                    port = _dest_port(fwd, table, h, listen.port or 0)
                    # port 0: the engine keeps no port per address (pf tables)
                    if {(vip, h.address, port), (vip, h.address, 0)} & serving:
                        out[h.id] = HostStatus.UP
    return out
