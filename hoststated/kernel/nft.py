"""The nftables backend: one owned table, static chains, one map per service.

Layout (the whole of what hoststated owns; nothing else is ever touched):

    table inet hoststated
      chain prerouting  { type nat hook prerouting priority dstnat; jump dispatch }
      chain output      { type nat hook output priority -100; jump dispatch }
      chain dispatch    { <vip> <proto> dport <port> [iifname X] jump svc_<key> ... }
      chain svc_<key>   { meta l4proto tcp dnat ip to numgen inc mod N map @map_<key> : <port> }
      map   map_<key>   { typeof numgen inc mod N : ip daddr; elements = { 0 : host, ... } }
      (a sticky-address service: the selector picks a chain, see below)
      chain svc_<key>   { <saddr> @aff_<key>__<host> goto stk_<key>__<host> ...
                          goto pick_<key> }
      chain pick_<key>  { numgen inc mod N vmap @vmap_<key> }
      map   vmap_<key>  { typeof numgen inc mod N : verdict; elements = { 0 : goto stk_... } }
      chain stk_<key>__<host> { update @aff_<key>__<host> { <saddr> timeout T }
                                meta l4proto tcp dnat ip to <host> : <port> }
      set   aff_<key>__<host> { typeof ip saddr; flags dynamic,timeout }
    table netdev hoststated                       (only for `route to`, direct routing)
      chain ingress_<if> { type filter hook ingress device <if>; <vip> ... fwd ip to
                           jhash ip saddr mod N seed 0 map @map_<key> device <rif> }

- Modes: roundrobin (and every IPVS-only mode with no nftables equivalent,
  such as least-connections) is `numgen inc`, random is `numgen random`,
  source-hash (and loadbalance, hash, maglev-hash, locality-*) is
  `jhash ip saddr` with seed 0, so a rewrite or a restart hashes the same;
  destination-hash is `jhash ip daddr` on the same consistent slots. Weights
  are slot shares (kernel/slots.py); the hashes are unweighted here
  (consistent slots: rendezvous or Maglev). weighted-failover (IPVS `fo`)
  is round robin over one host: the up host of the highest weight (ties:
  the first in address order, the order hoststated adds them to IPVS in).
- sticky-address (IPVS persistence, relayd's pf sticky-address): a set per
  host of the client addresses (masked by the netmask) it serves, filled
  from the packet path with the timeout and refreshed by every new
  connection, as kube-proxy's nftables mode does session affinity. A new
  connection whose source is in a host's set goes to that host; otherwise
  the selector picks a host through the verdict map, and that host's chain
  records the source. A host that leaves the map (down, drained) has its
  set flushed in the same transaction, so its clients move (a host removed
  from the service loses its chain and set); a rewrite or a restart keeps
  the sets of the hosts that stay. Each new connection
  costs one set lookup per host. A set holds up to 65535 clients; when it
  is full, connections are still balanced, only not recorded (the update
  and the dnat are separate rules for that).
- Every slot of a map is always filled: a lookup miss would let the packet
  through untranslated. A change to a service is one transaction that
  flushes its chain and map, adds the elements and re-adds the rule (whose
  modulus may change), all-or-nothing.
- A redirect with no up host (main nor backup) has no dispatch rule, so its
  traffic is not translated at all, as relayd, which removes the rules.
- Direct routing hashes the source address (destination-hash: the
  destination) because there is no conntrack at ingress: numgen, or a hash
  with the port, would spray one flow's fragments or place each packet alone.
- Connection thresholds and one-packet scheduling are IPVS features; this
  backend ignores them (project() drops them), and persistence with direct
  routing. IP-in-IP (`tunnel`) is IPVS only: such a service is skipped with
  a warning.

Writes are nft(8) statements sent through libnftables in process
(`Nftables.cmd`, one buffer = one atomic netlink batch); reads are its JSON
output (`list table ... ` with `-j`). libnftables 1.0.6's JSON input cannot
declare `typeof` maps and crashed (SIGSEGV) on a rule that named a set as a
map, so statements are written as text, built only from validated values.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import json
import logging
import operator
import re
import time
from typing import Iterable, NamedTuple

from hoststated import passive

from .backend import Backend, BackendError
from .diff import AddService, Op, apply_ops, touched
from .slots import consistent, hash_slot_count, spread
from .service import Counts, Destination, KernelState, Sample, Service, ServiceKey

log = logging.getLogger("hoststated.kernel.nft")

TABLE = "hoststated"
HASH_MODES = {"source-hash", "loadbalance", "hash", "maglev-hash",
              "locality-least-connections", "locality-least-connections-replicated"}
HASHED = frozenset({"source-hash", "destination-hash"})    # projected hash modes
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def nft_mode(mode: str) -> str:
    if mode == "random":
        return "random"
    if mode == "destination-hash":
        return "destination-hash"
    if mode in HASH_MODES:
        return "source-hash"
    return "roundrobin"         # weighted-failover too: over its top host (project_service)


# --- names: the service key, reversibly, in nft identifier characters -------

@functools.lru_cache(maxsize=4096)
def key_name(key: ServiceKey) -> str:
    if key.protocol == "fwmark":
        return f"fwmark{key.family}_{key.fwmark}"
    addr = ipaddress.ip_address(key.address)
    parts = addr.exploded.replace(":", ".").split(".")
    tail = f"_{key.port_end}" if key.port_end else ""
    return f"{key.protocol}{key.family}_{'_'.join(parts)}_{key.port}{tail}"


def parse_key_name(name: str) -> ServiceKey | None:
    tok = name.split("_")
    try:
        if tok[0].startswith("fwmark") and len(tok) == 2:
            return ServiceKey(int(tok[0][6:]), "fwmark", fwmark=int(tok[1]))
        proto, fam = tok[0][:-1], int(tok[0][-1])
        if proto not in ("tcp", "udp") or fam not in (4, 6):
            return None
        n = 4 if fam == 4 else 8
        addr = ".".join(tok[1:1 + n]) if fam == 4 else ":".join(tok[1:1 + n])
        ports = [int(p) for p in tok[1 + n:]]
        if len(ports) not in (1, 2):
            return None
        return ServiceKey(fam, proto, str(ipaddress.ip_address(addr)), ports[0],
                          ports[1] if len(ports) == 2 else 0)
    except (ValueError, IndexError):
        return None


def _ip(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _iface(name: str | None) -> str | None:
    if name is None:
        return None
    if not _IFNAME.match(name):
        raise BackendError(f"interface {name!r}: not a valid interface name")
    return name


# --- sticky-address: per-host chains and sets -------------------------------

@functools.lru_cache(maxsize=4096)
def _addr_token(addr: str) -> str:
    return ipaddress.ip_address(addr).exploded.replace(":", ".").replace(".", "_")


def _token_addr(tok: str) -> str | None:
    parts = tok.split("_")
    try:
        if len(parts) == 4:
            return str(ipaddress.IPv4Address(".".join(parts)))
        if len(parts) == 8:
            return str(ipaddress.IPv6Address(":".join(parts)))
    except ValueError:
        pass
    return None


def _stk(name: str, addr: str) -> str:
    return f"stk_{name}__{_addr_token(addr)}"


def _aff(name: str, addr: str) -> str:
    return f"aff_{name}__{_addr_token(addr)}"


def _split_host_name(obj: str) -> tuple[ServiceKey, str] | None:
    """(service key, host address) of a stk_/aff_ chain or set name."""
    name, sep, tok = obj[4:].rpartition("__")
    key = parse_key_name(name) if sep else None
    addr = _token_addr(tok) if key is not None else None
    return (key, addr) if addr is not None else None


def sticky_mask(family: int, netmask: str | None) -> str | None:
    """A persistence netmask as this backend holds it: IPv4 dotted, IPv6 a
    prefix length (as desired() gives it; anything else is the whole
    address, as IPVS takes it); None for the whole address."""
    netmask = netmask.lstrip("/") if netmask else None
    if not netmask:
        return None
    if family == 4:
        try:
            net = ipaddress.ip_network(f"0.0.0.0/{netmask}")
        except ValueError:
            return None
        return None if net.prefixlen == 32 else str(net.netmask)
    if not netmask.isdigit() or int(netmask) >= 128:
        return None
    return str(int(netmask))


def _saddr(svc: Service) -> str:
    """The (masked) client address that a sticky service keys on."""
    if svc.netmask is None:
        return f"{_ip(svc.key.family)} saddr"
    if svc.key.family == 4:
        return f"ip saddr & {svc.netmask}"
    return f"ip6 saddr & {ipaddress.IPv6Network(f'::/{svc.netmask}').netmask}"


def _parse_saddr(expr, family: int) -> tuple[bool, str | None]:
    """(is a client address expression as _saddr writes it, its netmask)."""
    plain = {"payload": {"protocol": _ip(family), "field": "saddr"}}
    if expr == plain:
        return True, None
    amp = expr.get("&") if isinstance(expr, dict) else None
    if not (isinstance(amp, list) and len(amp) == 2 and amp[0] == plain
            and isinstance(amp[1], str)):
        return False, None
    try:
        if family == 4:
            mask = sticky_mask(4, amp[1])
            return mask == amp[1], mask
        n = int(ipaddress.IPv6Address(amp[1]))
    except ValueError:
        return False, None
    plen = bin(n).count("1")
    if plen == 128 or n != ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1):
        return False, None
    return True, str(plen)


def _sticky(svc: Service | None) -> bool:
    """A projected service in the sticky form (persistence, destinations)."""
    return svc is not None and svc.persistence > 0 and bool(svc.destinations)


# --- the projection: what this engine can hold, as dump() shows it ---------

def slots_of(svc: Service) -> list[str]:
    """The map's slot contents (addresses) for a projected service."""
    dests = svc.destinations
    if svc.mode not in HASHED and svc.method != "route" and dests \
            and len({d[2] for d in dests}) == 1 and dests[0][2] > 0:
        return [d[0] for d in dests]        # spread(): equal weights, one slot each
    return _slots(svc.mode, svc.method,
                  [(d.address, d.weight) for d in dests if d.weight > 0])


def _slots(mode: str, method: str, active: list[tuple[str, int]]) -> list[str]:
    if mode in HASHED or method == "route":
        # unweighted: the weights of a projected service are slot counts
        return consistent([a for a, _ in active], hash_slot_count(_tier(len(active))))
    return spread(active)


def _tier(n: int) -> int:
    # the hash slot count must not follow every host coming or going, or
    # most flows would move: it only steps at powers of two
    tier = 16
    while tier < n:
        tier *= 2
    return tier


def project_service(svc: Service) -> Service | None:
    if svc.method == "tunnel":
        log.warning("service %s (redirect %s): nftables cannot tunnel (IP-in-IP); "
                    "use engine ipvs; skipped", svc.key, svc.redirect)
        return None
    mode = nft_mode(svc.mode)
    interface = svc.interface
    if svc.method == "route":
        # per packet, before conntrack: only an address hash keeps a flow
        # whole (conf.engines refuses the other modes with route to)
        mode = "destination-hash" if mode == "destination-hash" else "source-hash"
        if not svc.interface or not svc.route_interface:
            log.warning("service %s (redirect %s): direct routing with nftables needs "
                        "`listen on ... interface` (ingress) and `route to ... interface`; "
                        "skipped", svc.key, svc.redirect)
            return None

    active = [d for d in svc.destinations if d[2] > 0]        # d.weight
    if svc.mode == "weighted-failover" and active:
        # IPVS fo: everything to the up host of the highest weight; ties:
        # the first (destinations are sorted: IPVS gets them in this order)
        top = max(d[2] for d in active)
        active = [next(d for d in active if d[2] == top)]
    if not active and svc.method == "nat":
        # what an empty chain reads back as (dump): no mode, no persistence
        return Service(key=svc.key, redirect=svc.redirect)
    ports = {d[1] for d in active}                              # d.port
    if len(ports) > 1:
        log.warning("service %s: destinations on several ports; nftables uses %d",
                    svc.key, min(ports))
    port = min(ports) if ports else 0
    if svc.method == "route":
        port = svc.key.port
    # (svc.destinations are sorted; the hashes are unweighted)
    if mode not in HASHED and len({d[2] for d in active}) <= 1:
        counts = collections.Counter([d[0] for d in active])   # spread(): one slot each
    else:
        counts = collections.Counter(_slots(mode, svc.method,
                                            [(d[0], 1 if mode in HASHED else d[2])
                                             for d in active]))
    if svc.key.protocol == "fwmark":
        port = 0
    persistence = svc.persistence if svc.method == "nat" else 0
    new = tuple.__new__          # Destination(a, port, c), without its Python __new__
    dests = [new(Destination, (a, port, c, 0, 0)) for a, c in counts.items()]
    if persistence:
        # a sticky service keeps its other hosts at weight 0 (their rules
        # and empty sets stay: a host going down or up is then a small write)
        dests += [new(Destination, (a, port, 0, 0, 0))
                  for a in sorted({d[0] for d in svc.destinations}) if a not in counts]
    dests.sort()
    return Service(key=svc.key, mode=mode, method=svc.method, interface=interface,
                   route_interface=svc.route_interface if svc.method == "route" else None,
                   persistence=persistence,
                   netmask=sticky_mask(svc.key.family, svc.netmask) if persistence else None,
                   destinations=tuple(dests), redirect=svc.redirect)


# --- rendering ----------------------------------------------------------------

def _match(svc: Service, for_netdev: bool = False) -> str:
    k = svc.key
    parts = []
    if k.protocol == "fwmark":
        parts.append(f"meta mark {k.fwmark}")
    else:
        parts.append(f"{_ip(k.family)} daddr {ipaddress.ip_address(k.address)}")
        ports = f"{k.port}-{k.port_end}" if k.port_end else str(k.port)
        parts.append(f"{k.protocol} dport {ports}")
    if svc.interface and not for_netdev:
        parts.append(f'iifname "{_iface(svc.interface)}"')
    return " ".join(parts)


def _selector(svc: Service, n: int) -> str:
    k = svc.key
    ip = _ip(k.family)
    if svc.mode == "source-hash":
        return f"jhash {ip} saddr mod {n} seed 0x0"
    if svc.mode == "destination-hash":
        return f"jhash {ip} daddr mod {n} seed 0x0"
    return f"numgen {'random' if svc.mode == 'random' else 'inc'} mod {n}"


def _dnat_port(svc: Service) -> int:
    port = svc.destinations[0].port if svc.destinations else 0
    k = svc.key
    if k.protocol == "fwmark" or not port:
        return 0
    if port == k.port and not k.port_end:
        return 0
    return port


def render_service(svc: Service, old: Service | None = None) -> list[str]:
    """Statements that make one service's chain/map equal to `svc` (NAT),
    from `old` as written in its canonical slot order (see render_nat)."""
    return render_nat(svc, old, slots_of(old) if old is not None else None)[0]


def relayout(before: list[str], want: list[str]) -> list[str]:
    """Slots for the addresses `want` (one slot each), moving few of `before`.

    An address keeps its slot if that slot is still in range; the slots that
    are freed (by an address that left, or beyond the new count) take the
    addresses that have none, in `want` order. One host leaving moves one
    other host (the last slot's) into its place; one joining takes a new
    last slot. With one slot per address any order is as fair as another."""
    n = len(want)
    wanted = set(want)
    out: list[str | None] = []
    placed = set()
    for a in before[:n]:
        if a in wanted and a not in placed:
            placed.add(a)
            out.append(a)
        else:
            out.append(None)
    out += [None] * (n - len(out))
    missing = iter([a for a in want if a not in placed])
    return [a if a is not None else next(missing) for a in out]


def _unit(svc: Service) -> bool:
    """A round robin or random service whose destinations have one slot each."""
    return svc.mode not in HASHED and max(map(_WEIGHT, svc.destinations), default=0) <= 1


_WEIGHT = operator.itemgetter(2)        # Destination.weight


def render_nat(svc: Service, old: Service | None, before: list[str] | None
               ) -> tuple[list[str], list[str]]:
    """Statements that make one service's chain/map equal to `svc`, and the
    slots the map then holds; `before` is what it holds for `old`.

    When the rule keeps its selector and port, only the slots that change
    are written: deleted and added again, in the one transaction; if the
    slot count changes too, the chain's one rule is replaced with the new
    modulus in that transaction (round robin and random with one slot per
    destination: `relayout`; source hash keeps its slot count). Otherwise
    chain and map are flushed and refilled in canonical order."""
    if _sticky(svc):
        return render_sticky(svc, old, before)
    name = key_name(svc.key)
    t = f"inet {TABLE}"
    if old is not None and old.method == "nat" and old.destinations and before \
            and not old.persistence \
            and (old.mode, old.key, _dnat_port(old)) == (svc.mode, svc.key, _dnat_port(svc)):
        if _unit(svc) and svc.destinations and any(d.weight > 0 for d in svc.destinations):
            slots = relayout(before, [d.address for d in svc.destinations if d.weight > 0])
        else:
            slots = slots_of(svc)
        n = len(slots)
        if slots and (n == len(before) or _unit(svc)):
            out = []
            if n != len(before):
                out += [f"flush chain {t} svc_{name}", _dnat_rule(svc, name, n)]
            changed = [j for j in range(min(n, len(before))) if before[j] != slots[j]]
            gone = list(range(n, len(before)))
            for i in range(0, len(changed) + len(gone), 4096):
                part = (changed + gone)[i:i + 4096]
                out.append(f"delete element {t} map_{name} {{ {', '.join(map(str, part))} }}")
            new = changed + list(range(len(before), n))
            for i in range(0, len(new), 4096):
                out.append(f"add element {t} map_{name} {{ "
                           + ", ".join(f"{j} : {slots[j]}" for j in new[i:i + 4096]) + " }")
            return out, slots
    slots = slots_of(svc)
    n = len(slots)
    out = [f"add chain {t} svc_{name}",
           f"flush chain {t} svc_{name}",
           f"add map {t} map_{name} {_map_decl(svc.key.family)}",
           f"flush map {t} map_{name}"]
    if slots:
        for i in range(0, n, 4096):
            part = slots[i:i + 4096]
            out.append(f"add element {t} map_{name} {{ "
                       + ", ".join(map(_ELEMENT, range(i, i + len(part)), part)) + " }")
        out.append(_dnat_rule(svc, name, n))
    return out, slots


_ELEMENT = "{} : {}".format            # slot : address


def render_sticky(svc: Service, old: Service | None, prev: list[str] | None = None
                  ) -> tuple[list[str], list[str]]:
    """Statements for a sticky service (see the module docstring), and its
    verdict map's slots.

    Every host the service knows (weight 0 included: down but quiescent,
    drained, or not the failover's top host) has its lookup rule, chain and
    set; the verdict map holds the hosts of weight > 0. A host whose weight
    drops to 0 has its set flushed, so its clients move. When the hosts and
    the timeout, netmask and port stay, only those sets, the pick chain's
    one rule and the verdict map are written; otherwise the service chain
    is rewritten, and a host's chain and set only when new or when the
    timeout, netmask or port changed (a new netmask empties the sets: they
    hold addresses masked the old way). The verdict map (`prev`: its slots
    for `old`) changes as render_nat's: with one slot per host, only the
    slots that change (`relayout`), else in full. Sets are never deleted
    here, so the hosts that stay keep their clients; `drop_sticky` removes
    those of hosts that left, once nothing refers to them."""
    name = key_name(svc.key)
    ip = _ip(svc.key.family)
    t = f"inet {TABLE}"
    slots = slots_of(svc)
    port = _dnat_port(svc)
    saddr = _saddr(svc)
    was = _sticky(old)
    same = was and (old.persistence, old.netmask, _dnat_port(old)) == (
        svc.persistence, svc.netmask, port)
    before = {d.address: d.weight for d in old.destinations} if was else {}
    hosts = sorted({d.address for d in svc.destinations})
    out = [f"add chain {t} pick_{name}"]
    for d in svc.destinations:
        if d.weight == 0 and before.get(d.address, 0) > 0 and old.netmask == svc.netmask:
            out.append(f"flush set {t} {_aff(name, d.address)}")
    if not (same and hosts == sorted(before)):
        out += [f"add chain {t} svc_{name}", f"flush chain {t} svc_{name}"]
        proto = f"meta l4proto {svc.key.protocol} " if svc.key.protocol != "fwmark" else ""
        for a in hosts:
            if same and a in before:
                continue
            aff, stk = _aff(name, a), _stk(name, a)
            out.append(f"add set {t} {aff} {{ typeof {ip} saddr ; flags dynamic,timeout ; }}")
            if was and old.netmask != svc.netmask:
                out.append(f"flush set {t} {aff}")
            to = (f"[{a}]:{port}" if ":" in a else f"{a}:{port}") if port else a
            # two rules: a full set stops the update's rule, not the dnat
            out += [f"add chain {t} {stk}", f"flush chain {t} {stk}",
                    f"add rule {t} {stk} update @{aff} {{ {saddr} timeout {svc.persistence}s }}",
                    f"add rule {t} {stk} {proto}counter dnat {ip} to {to}"]
        for a in hosts:
            out.append(f"add rule {t} svc_{name} {saddr} @{_aff(name, a)} goto {_stk(name, a)}")
        out.append(f"add rule {t} svc_{name} goto pick_{name}")
    if same and prev and old.mode == svc.mode and _unit(svc):
        slots = relayout(prev, [d.address for d in svc.destinations if d.weight > 0])
        n = len(slots)
        changed = [j for j in range(min(n, len(prev))) if prev[j] != slots[j]]
        drop = changed + list(range(n, len(prev)))
        for i in range(0, len(drop), 4096):
            out.append(f"delete element {t} vmap_{name} {{ "
                       f"{', '.join(map(str, drop[i:i + 4096]))} }}")
        add = changed + list(range(len(prev), n))
        for i in range(0, len(add), 4096):
            out.append(f"add element {t} vmap_{name} {{ " + ", ".join(
                f"{j} : goto {_stk(name, slots[j])}" for j in add[i:i + 4096]) + " }")
        if n != len(prev):
            out += [f"flush chain {t} pick_{name}",
                    f"add rule {t} pick_{name} {_selector(svc, n)} vmap @vmap_{name}"]
        return out, slots
    out += [f"add map {t} vmap_{name} {{ typeof numgen inc mod 2 : verdict ; }}",
            f"flush map {t} vmap_{name}"]
    for i in range(0, len(slots), 4096):
        out.append(f"add element {t} vmap_{name} {{ " + ", ".join(
            f"{j} : goto {_stk(name, slots[j])}" for j in range(i, min(i + 4096, len(slots))))
            + " }")
    out += [f"flush chain {t} pick_{name}",
            f"add rule {t} pick_{name} {_selector(svc, len(slots))} vmap @vmap_{name}"]
    return out, slots


def drop_sticky(key: ServiceKey, addrs: Iterable[str], vmap: bool) -> list[str]:
    """Statements that delete the verdict map (with `vmap`) and the hosts'
    chains and sets of a sticky service, whatever of them exists; after the
    statements that stop referring to them (the service chain's flush)."""
    name = key_name(key)
    t = f"inet {TABLE}"
    out = []
    if vmap:
        out += [f"add chain {t} pick_{name}", f"flush chain {t} pick_{name}",
                f"delete chain {t} pick_{name}",
                f"add map {t} vmap_{name} {{ typeof numgen inc mod 2 : verdict ; }}",
                f"delete map {t} vmap_{name}"]
    for a in sorted(addrs):
        stk, aff = _stk(name, a), _aff(name, a)
        out += [f"add chain {t} {stk}", f"flush chain {t} {stk}", f"delete chain {t} {stk}",
                f"add set {t} {aff} {{ typeof {_ip(key.family)} saddr ; flags dynamic,timeout ; }}",
                f"delete set {t} {aff}"]
    return out


def drop_map(key: ServiceKey) -> list[str]:
    """Statements that delete a service's address map, if it exists."""
    name = key_name(key)
    return [f"add map inet {TABLE} map_{name} {_map_decl(key.family)}",
            f"delete map inet {TABLE} map_{name}"]


def _map_decl(family: int) -> str:
    """A NAT map's declaration: every element has a counter (the
    connections sent to that slot; see counters()). `add map` of an
    existing map with other flags fails, so every statement that names
    one declares it so."""
    return f"{{ typeof numgen inc mod 2 : {_ip(family)} daddr ; counter ; }}"


def _dnat_rule(svc: Service, name: str, n: int) -> str:
    proto = f"meta l4proto {svc.key.protocol} " if svc.key.protocol != "fwmark" else ""
    port = _dnat_port(svc)
    tail = f" : {port}" if port else ""
    return (f"add rule inet {TABLE} svc_{name} {proto}dnat {_ip(svc.key.family)} to "
            f"{_selector(svc, n)} map @map_{name}{tail}")


def _ingress_chains(state: KernelState) -> dict[str, list[Service]]:
    out: dict[str, list[Service]] = {}
    for svc in state.values():
        if svc.method == "route" and svc.interface and svc.route_interface:
            out.setdefault(svc.interface, []).append(svc)
    return out


def render_dispatch(state: KernelState) -> list[str]:
    """Base chains and the dispatch chain for the active services."""
    t = f"inet {TABLE}"
    out = [f"add table {t}",
           f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}",
           f"add chain {t} output {{ type nat hook output priority -100 ; policy accept ; }}",
           f"add chain {t} dispatch",
           f"flush chain {t} prerouting", f"add rule {t} prerouting jump dispatch",
           f"flush chain {t} output", f"add rule {t} output jump dispatch",
           f"flush chain {t} dispatch"]
    for key in sorted(state):
        svc = state[key]
        if svc.method == "nat" and svc.destinations:
            out.append(f"add rule {t} dispatch {_match(svc)} jump svc_{key_name(key)}")
    return out


def _chain_of(dev: str) -> str:
    # reversible: the JSON listing of nft 1.0.6 does not give a chain's device
    return "ingress_" + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in dev)


def _dev_of(chain: str) -> str:
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), chain[len("ingress_"):])


def render_netdev(state: KernelState) -> list[str]:
    """The whole netdev table for direct routing, rebuilt in one transaction
    on any change to a direct-routing service (they are few and small)."""
    chains = _ingress_chains(state)
    t = f"netdev {TABLE}"
    out = [f"add table {t}", f"delete table {t}"]
    if not any(s.destinations for svcs in chains.values() for s in svcs):
        return out
    out.append(f"add table {t}")
    for dev, svcs in sorted(chains.items()):
        out.append(f"add chain {t} {_chain_of(dev)} "
                   f'{{ type filter hook ingress device "{_iface(dev)}" priority 0 ; policy accept ; }}')
        for svc in sorted(svcs, key=lambda s: s.key):
            slots = slots_of(svc)
            if not slots:
                continue
            name = key_name(svc.key)
            out.append(f"add map {t} map_{name} "
                       f"{{ typeof numgen inc mod 2 : {_ip(svc.key.family)} daddr ; }}")
            for i in range(0, len(slots), 4096):
                elems = ", ".join(f"{j} : {slots[j]}" for j in range(i, min(i + 4096, len(slots))))
                out.append(f"add element {t} map_{name} {{ {elems} }}")
            out.append(f"add rule {t} {_chain_of(dev)} "
                       f"{_match(svc, True)} fwd {_ip(svc.key.family)} to "
                       f"{_selector(svc, len(slots))} map @map_{name} "
                       f'device "{_iface(svc.route_interface)}"')
    return out


def parse_netdev(objs: list[dict]) -> dict[ServiceKey, Service]:
    """Direct-routing services from `list table netdev hoststated` JSON."""
    maps = {o["map"]["name"]: o["map"].get("elem", []) for o in objs if "map" in o}
    out: dict[ServiceKey, Service] = {}
    for o in objs:
        r = o.get("rule")
        if not r or not r["chain"].startswith("ingress_"):
            continue
        fwd = r["expr"][-1].get("fwd") if r["expr"] else None
        if not fwd:
            continue
        sel = fwd.get("addr", {}).get("map", {})
        data = sel.get("data", "")
        if not isinstance(data, str) or not data.startswith("@map_"):
            continue
        key = parse_key_name(data[5:])
        picked = _selector_mode(sel.get("key"), key.family) if key is not None else None
        if picked is None or picked[0] not in HASHED or not picked[1]:
            continue
        mode, mod = picked
        slots = {e[0]: e[1] for e in maps.get(data[1:], []) if isinstance(e, list) and len(e) == 2}
        if set(slots) != set(range(mod)):
            continue
        port = key.port if key.protocol != "fwmark" else 0
        counts = collections.Counter(slots.values())
        svc = Service(key=key, mode=mode, method="route", interface=_dev_of(r["chain"]),
                      route_interface=fwd.get("dev")).with_destinations(
            [Destination(str(ipaddress.ip_address(a)), port, c) for a, c in counts.items()])
        if slots_of(svc) == [slots[i] for i in range(mod)]:
            out[key] = svc
    return out


# --- reading the kernel back --------------------------------------------------

def _selector_mode(kexpr, family: int) -> tuple[str, int] | None:
    """(mode, modulus) of a map lookup's key as _selector writes it."""
    if not isinstance(kexpr, dict):
        return None
    if "numgen" in kexpr:
        ng = kexpr["numgen"]
        return ("random" if ng.get("mode") == "random" else "roundrobin"), ng.get("mod") or 0
    if "jhash" in kexpr:
        jh = kexpr["jhash"]
        field = {"saddr": "source-hash", "daddr": "destination-hash"}
        payload = jh.get("expr", {}).get("payload", {}) if isinstance(jh.get("expr"), dict) else {}
        if payload.get("protocol") != _ip(family) or payload.get("field") not in field:
            return None
        return field[payload["field"]], jh.get("mod") or 0
    return None


def _stateless(elem):
    """A map element without its counter: [key, value] as written."""
    if isinstance(elem, list) and len(elem) == 2 and isinstance(elem[0], dict) \
            and isinstance(elem[0].get("elem"), dict) and "val" in elem[0]["elem"]:
        return [elem[0]["elem"]["val"], elem[1]]
    return elem


def parse_table(objs: list[dict], layouts: dict[ServiceKey, list[str]] | None = None,
                sticky: dict[ServiceKey, set[str]] | None = None,
                uncounted: list[str] | None = None) -> dict[ServiceKey, Service]:
    """Services from `list table inet hoststated` JSON objects.

    A service is reported only when its chain, rule, map (every slot filled)
    and dispatch rule agree; anything less is reported without destinations
    or not at all, and the diff then rewrites it. The slots are ours when
    they are in the order we write, or, with one slot per destination, in
    any order (render_nat's `relayout`). `layouts` gets the slots of each
    service reported with destinations; `sticky` the hosts of each service
    that have a sticky chain or set (whether it is read back or not: what
    a rewrite must delete), and the services with a verdict map;
    `uncounted` the maps and chains of ours that have no counter (a table
    written before there were counters: dump() rebuilds it). Counters are
    not compared: their values are no part of the layout."""
    maps: dict[str, list] = {}
    rules: dict[str, list[list]] = collections.defaultdict(list)
    chains: dict[str, dict] = {}
    for o in objs:
        if "map" in o:
            m = o["map"]
            maps[m["name"]] = [_stateless(e) for e in m.get("elem", [])]
            if uncounted is not None and m["name"].startswith("map_") \
                    and {"counter": None} not in (m.get("stmt") or ()):
                uncounted.append(m["name"])
        elif "chain" in o:
            chains[o["chain"]["name"]] = o["chain"]
        elif "rule" in o:
            r = o["rule"]
            # compared stateless: the counters' values are not the layout
            expr = [e for e in r["expr"] if "counter" not in e]
            if uncounted is not None and r["chain"].startswith("stk_") \
                    and expr and "dnat" in expr[-1] and len(expr) == len(r["expr"]):
                uncounted.append(r["chain"])
            rules[r["chain"]].append(expr)
        if sticky is not None:
            obj = o.get("chain") or o.get("set") or o.get("map") or {}
            oname = obj.get("name", "") if isinstance(obj, dict) else ""
            if oname.startswith(("stk_", "aff_")):
                host = _split_host_name(oname)
                if host is not None:
                    sticky.setdefault(host[0], set()).add(host[1])
            elif oname.startswith("vmap_"):
                k = parse_key_name(oname[5:])
                if k is not None:
                    sticky.setdefault(k, set())
    hooked = (chains.get("prerouting", {}).get("hook") == "prerouting"
              and chains.get("output", {}).get("hook") == "output"
              and rules.get("prerouting") == [[{"jump": {"target": "dispatch"}}]]
              and rules.get("output") == [[{"jump": {"target": "dispatch"}}]])
    dispatched: dict[str, str | None] = {}
    for expr in rules.get("dispatch", []) if hooked else []:
        target = expr[-1].get("jump", {}).get("target", "")
        iif = None
        for e in expr:
            m = e.get("match", {})
            if m.get("left") == {"meta": {"key": "iifname"}}:
                iif = m.get("right")
        dispatched[target] = iif

    out: dict[ServiceKey, Service] = {}
    for cname in chains:
        if not cname.startswith("svc_"):
            continue
        name = cname[4:]
        key = parse_key_name(name)
        if key is None:
            continue
        crules = rules.get(cname, [])
        elems = maps.get(f"map_{name}")
        if not crules:
            if elems == [] and cname not in dispatched:
                out[key] = Service(key=key)
            continue
        if cname not in dispatched:
            continue
        if crules[-1] == [{"goto": {"target": f"pick_{name}"}}]:
            svc = _parse_sticky(key, name, crules, rules, maps, dispatched[cname], layouts)
            if svc is not None:
                out[key] = svc
            continue
        if len(crules) != 1 or elems is None:
            continue
        dnat = crules[0][-1].get("dnat")
        if not dnat:
            continue
        sel = dnat.get("addr", {}).get("map", {})
        if sel.get("data") != f"@map_{name}":
            continue
        got = _selector_mode(sel.get("key", {}), key.family)
        if got is None:
            continue
        mode, mod = got
        slots = {}
        for e in elems:
            if isinstance(e, list) and len(e) == 2 and isinstance(e[0], int):
                slots[e[0]] = e[1]
        if set(slots) != set(range(mod or 0)):
            out[key] = Service(key=key, mode=mode, interface=dispatched[cname])
            continue
        port = dnat.get("port") or (key.port if key.protocol != "fwmark" else 0)
        counts = collections.Counter(slots.values())
        dests = [Destination(str(ipaddress.ip_address(a)), port, c) for a, c in counts.items()]
        svc = Service(key=key, mode=mode, interface=dispatched[cname]).with_destinations(dests)
        # the slot order is ours only if it is what we would write
        layout = [slots[i] for i in range(mod)]
        if slots_of(svc) != layout and not (
                _unit(svc) and len(counts) == mod and sorted(layout) == slots_of(svc)):
            svc = Service(key=key, mode=mode, interface=dispatched[cname])
        elif layouts is not None:
            layouts[key] = layout
        out[key] = svc
    return out


def _parse_sticky(key: ServiceKey, name: str, crules: list[list], rules: dict[str, list[list]],
                  maps: dict[str, list], interface: str | None,
                  layouts: dict[ServiceKey, list[str]] | None) -> Service | None:
    """A sticky service read back (render_sticky's form), without its
    destinations if any part is not what render_sticky writes; None if it
    is not even a service chain of ours."""
    pick = rules.get(f"pick_{name}", [])
    vm = pick[0][0].get("vmap", {}) if len(pick) == 1 and len(pick[0]) == 1 else {}
    got = _selector_mode(vm.get("key"), key.family)
    velems = maps.get(f"vmap_{name}")
    if vm.get("data") != f"@vmap_{name}" or got is None or velems is None:
        return None
    mode, mod = got
    drift = Service(key=key, mode=mode, interface=interface)
    targets: dict[int, str] = {}
    for e in velems:
        if isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) \
                and isinstance(e[1], dict):
            targets[e[0]] = e[1].get("goto", {}).get("target", "")
    if not mod or set(targets) != set(range(mod)):
        return drift
    layout = []
    for i in range(mod):
        host = _split_host_name(targets[i]) if targets[i].startswith("stk_") else None
        if host is None or host[0] != key:
            return drift
        layout.append(host[1])
    # the hosts: one lookup rule each, in address order; those of the map
    # have weight > 0
    lookups = crules[:-1]
    addrs = []
    for expr in lookups:
        target = expr[-1].get("goto", {}).get("target", "") if expr else ""
        host = _split_host_name(target) if target.startswith("stk_") else None
        if host is None or host[0] != key:
            return drift
        addrs.append(host[1])
    if addrs != sorted(set(addrs)) or not set(layout) <= set(addrs):
        return drift
    ip = _ip(key.family)
    masks, timeouts, ports = set(), set(), set()
    proto = [] if key.protocol == "fwmark" else [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": key.protocol}}]
    for a, expr in zip(addrs, lookups):
        aff, stk = _aff(name, a), _stk(name, a)
        m = expr[0].get("match", {}) if len(expr) == 2 else {}
        ok, mask = _parse_saddr(m.get("left"), key.family)
        if not ok or m.get("op") != "==" or m.get("right") != f"@{aff}" \
                or expr[1] != {"goto": {"target": stk}}:
            return drift
        masks.add(mask)
        host_rules = rules.get(stk, [])
        if len(host_rules) != 2 or len(host_rules[0]) != 1:
            return drift
        upd = host_rules[0][0].get("set", {})
        elem = upd.get("elem", {}).get("elem", {}) if isinstance(upd.get("elem"), dict) else {}
        ok, mask = _parse_saddr(elem.get("val"), key.family)
        if not ok or upd.get("op") != "update" or upd.get("set") != f"@{aff}":
            return drift
        masks.add(mask)
        timeouts.add(elem.get("timeout"))
        dnat = host_rules[1][-1].get("dnat") or {}
        if host_rules[1][:-1] != proto or dnat.get("family") != ip \
                or not isinstance(dnat.get("addr"), str) or dnat["addr"] != a:
            return drift
        ports.add(dnat.get("port") or 0)
    if len(masks) != 1 or len(timeouts) != 1 or len(ports) != 1:
        return drift
    timeout, port = timeouts.pop(), ports.pop()
    if not isinstance(timeout, int) or timeout <= 0:
        return drift
    port = port or (key.port if key.protocol != "fwmark" else 0)
    counts = collections.Counter(layout)
    svc = Service(key=key, mode=mode, interface=interface, persistence=timeout,
                  netmask=masks.pop()).with_destinations(
        [Destination(a, port, counts.get(a, 0)) for a in addrs])
    if slots_of(svc) != layout and not (
            _unit(svc) and len(counts) == mod and sorted(layout) == slots_of(svc)):
        return drift            # (one slot per host: in any order, see relayout)
    if layouts is not None:
        layouts[key] = layout
    return svc


def parse_counters(objs: list[dict]) -> list[Sample]:
    """The counters of `list table inet hoststated` JSON objects: per NAT
    map slot (ident ("map", key, slot, address)) and per sticky host chain
    (("stk", key, address)); connections only (see Counts)."""
    out = []
    for o in objs:
        m = o.get("map")
        if m is not None and m.get("name", "").startswith("map_"):
            key = parse_key_name(m["name"][4:])
            if key is None:
                continue
            for e in m.get("elem", ()):
                head = e[0] if isinstance(e, list) and len(e) == 2 else None
                elem = head.get("elem") if isinstance(head, dict) else None
                cnt = elem.get("counter") if isinstance(elem, dict) else None
                if not isinstance(cnt, dict) or not isinstance(elem.get("val"), int) \
                        or not isinstance(e[1], str):
                    continue
                addr = _norm(e[1])
                if addr is not None:
                    out.append(Sample(("map", key, elem["val"], addr), key, addr,
                                      Counts(int(cnt.get("packets", 0)))))
            continue
        r = o.get("rule")
        if r is None or not r.get("chain", "").startswith("stk_"):
            continue
        host = _split_host_name(r["chain"])
        if host is None:
            continue
        for e in r.get("expr", ()):
            cnt = e.get("counter") if isinstance(e, dict) else None
            if isinstance(cnt, dict):
                out.append(Sample(("stk", host[0], host[1]), host[0], host[1],
                                  Counts(int(cnt.get("packets", 0)))))
                break
    return out


@functools.lru_cache(maxsize=65536)
def _norm(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return None


# --- passive failure detection (issue 15) --------------------------------------
# Base chains on the forward and input hooks (a client elsewhere, a client
# on this machine) send the replies of translated connections to one chain
# that logs a passive host's RSTs and unreachables through NFLOG (see
# hoststated/passive.py for what is matched and why). The sets hold the
# hosts of passive tables: (address . port) for resets, addresses for ICMP
# errors (hce checks the quoted port). They follow the config, not the
# hosts' states; a reload or a resync rewrites them when they differ.
#
# Engine ipvs (NAT) has them in a table of its own (PassiveTable): IPVS
# rewrites a reply's source at the forward hook's priority 100
# (ip_vs_out_hook; its ICMP hook is at 99), so a chain at priority filter
# (0) still sees the real server's own address and port. IPVS keeps its
# connections out of conntrack (net.ipv4.vs.conntrack 0, the default), so
# there is no `ct direction reply` to require: the guard is the reverse
# path (`fib saddr . iif oif exists`: from the interface that routes to the
# host) and the host's own address and port. There is no input chain: an
# IPVS reply to a client on this machine is not told apart there from a
# reply to one of hce's own checks.

PASSIVE_SETS = {"passive4": "ipv4_addr . inet_service", "passive4a": "ipv4_addr",
                "passive6": "ipv6_addr . inet_service", "passive6a": "ipv6_addr"}
PASSIVE_CHAINS = ("passive_fwd", "passive_in", "passive_log")


class PassiveLayout(NamedTuple):
    engine: str
    table: str
    hooks: dict[str, str]           # base chain -> its hook
    match: str                      # what a base chain asks before passive_log

    @property
    def chains(self) -> tuple[str, ...]:
        return (*self.hooks, "passive_log")


NFT_PASSIVE = PassiveLayout("nftables", TABLE, {"passive_fwd": "forward", "passive_in": "input"},
                            "ct direction reply ct status dnat ")
IPVS_PASSIVE = PassiveLayout("ipvs", "hoststated_ipvs", {"passive_fwd": "forward"}, "")


def passive_elements(config, layout: PassiveLayout = NFT_PASSIVE) -> dict[str, tuple[str, ...]]:
    """The passive sets' elements for a config, as nft writes them."""
    out: dict[str, set[str]] = {name: set() for name in PASSIVE_SETS}
    for addr, port in passive.targets(config, (layout.engine,)):
        v = "6" if ":" in addr else "4"
        out[f"passive{v}"].add(f"{addr} . {port}")
        out[f"passive{v}a"].add(addr)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def _passive_rules(layout: PassiveLayout = NFT_PASSIVE) -> list[str]:
    t = f"inet {layout.table}"
    tail = (f"fib saddr . iif oif exists limit rate {passive.KERNEL_RATE}/second burst "
            f"1000 packets log prefix \"%s\" group {passive.NFLOG_GROUP}")
    r, u = tail % passive.PREFIX_RESET, tail % passive.PREFIX_UNREACH
    return [f"add rule {t} {c} {layout.match}jump passive_log" for c in layout.hooks] + [
            f"add rule {t} passive_log tcp flags & rst == rst ip saddr . tcp sport @passive4 {r}",
            f"add rule {t} passive_log tcp flags & rst == rst ip6 saddr . tcp sport @passive6 {r}",
            f"add rule {t} passive_log icmp type destination-unreachable icmp code "
            f"{{ host-unreachable, port-unreachable }} ip saddr @passive4a {u}",
            f"add rule {t} passive_log icmpv6 type destination-unreachable icmpv6 code "
            f"{{ addr-unreachable, port-unreachable }} ip6 saddr @passive6a {u}"]


def render_passive(elements: dict[str, tuple[str, ...]],
                   layout: PassiveLayout = NFT_PASSIVE) -> list[str]:
    """Statements that make the passive chains and sets equal to `elements`
    (none: they are removed), in one transaction."""
    t = f"inet {layout.table}"
    out = [f"add table {t}"]
    for c in layout.chains:
        hook = layout.hooks.get(c)
        spec = f" {{ type filter hook {hook} priority filter ; policy accept ; }}" if hook else ""
        out += [f"add chain {t} {c}{spec}", f"flush chain {t} {c}"]
    for name, typ in PASSIVE_SETS.items():
        out += [f"add set {t} {name} {{ type {typ} ; }}", f"flush set {t} {name}"]
    if not any(elements.values()):
        out += [f"delete chain {t} {c}" for c in layout.chains]
        out += [f"delete set {t} {name}" for name in PASSIVE_SETS]
        return out
    for name in PASSIVE_SETS:
        elems = elements.get(name, ())
        for i in range(0, len(elems), 4096):
            out.append(f"add element {t} {name} {{ {', '.join(elems[i:i + 4096])} }}")
    return out + _passive_rules(layout)


def parse_passive(objs: list[dict],
                  layout: PassiveLayout = NFT_PASSIVE) -> dict[str, tuple[str, ...]] | None:
    """The passive sets' elements as read (None: no passive objects at all;
    rules that are not the ones written read as a difference)."""
    sets: dict[str, tuple[str, ...]] = {}
    rules: dict[str, int] = {}
    chains = set()
    for o in objs:
        if "set" in o and o["set"]["name"] in PASSIVE_SETS:
            elems = []
            for e in o["set"].get("elem", []):
                if isinstance(e, dict) and "concat" in e:
                    a, p = e["concat"]
                    elems.append(f"{_norm(str(a))} . {p}")
                else:
                    elems.append(str(_norm(str(e))))
            sets[o["set"]["name"]] = tuple(sorted(elems))
        elif "chain" in o and o["chain"]["name"] in PASSIVE_CHAINS:
            chains.add(o["chain"]["name"])
        elif "rule" in o and o["rule"]["chain"] in PASSIVE_CHAINS:
            rules[o["rule"]["chain"]] = rules.get(o["rule"]["chain"], 0) + 1
    if not sets and not chains:
        return None
    want = {**{c: 1 for c in layout.hooks}, "passive_log": 4}
    if chains != set(layout.chains) or rules != want or set(sets) != set(PASSIVE_SETS):
        return {}                       # partial: differs from anything written
    return sets


class PassiveTable:
    """Engine ipvs's passive chains and sets (IPVS_PASSIVE), in a table of
    their own that exists only while some host is watched. Written through
    libnftables (the nftables project's Python module)."""

    layout = IPVS_PASSIVE

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as e:
            raise BackendError(f"ipvs: passive detection writes nftables rules, and the "
                               f"nftables project's Python module is missing (Debian: "
                               f"apt-get install python3-nftables): {e}") from None
        except OSError as e:
            raise BackendError(f"ipvs: passive detection: cannot load libnftables: {e}") from None
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self.elements: dict[str, tuple[str, ...]] = {}

    def sync(self) -> None:
        """Write the table when the kernel's differs from `elements` (at
        start, reload and every resync); none wanted: no table."""
        t = f"inet {self.layout.table}"
        rc, text, err = self._nft.cmd(f"list table {t}")
        if rc != 0 and "No such file or directory" not in err:
            raise BackendError(f"nftables: list table {t}: {err.strip()}")
        have = parse_passive(json.loads(text).get("nftables", []), self.layout) if rc == 0 else None
        if not any(self.elements.values()):
            if rc == 0:
                self.remove()
            return
        if have != self.elements:
            self._run([f"add table {t}", f"delete table {t}",
                       *render_passive(self.elements, self.layout)])

    def remove(self) -> None:
        t = f"inet {self.layout.table}"
        self._run([f"add table {t}", f"delete table {t}"])

    def _run(self, stmts: list[str]) -> None:
        rc, _, err = self._nft.cmd("\n".join(stmts) + "\n")
        if rc != 0:
            first = err.strip().splitlines()[0] if err.strip() else "unknown error"
            raise BackendError(f"nftables: passive table: transaction of {len(stmts)} "
                               f"statements rejected: {first}")


class NftBackend(Backend):
    engine = "nftables"

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as e:
            raise BackendError(f"nftables: the nftables project's Python module is missing "
                               f"(Debian: apt-get install python3-nftables): {e}") from None
        except OSError as e:
            raise BackendError(f"nftables: cannot load libnftables: {e}") from None
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._state: dict[ServiceKey, Service] = {}
        self._layout: dict[ServiceKey, list[str]] = {}   # NAT map slots in the kernel
        # sticky services: the hosts whose chain and set are in the kernel
        self._sticky: dict[ServiceKey, set[str]] = {}
        self.statements = 0
        self.nft_seconds = 0.0      # time inside libnftables writes (bench)
        self._fresh = False         # the next apply deletes the table first (_rebuild)
        # counters rewritten since the last counters(): ("map", key, slot), ("stk", key, host)
        self._reset: set[tuple] = set()
        # issue 15: the passive sets' elements the config asks for
        self._passive: dict[str, tuple[str, ...]] = {}

    def configure(self, config) -> None:
        """The passive sets follow the config (dump() writes them)."""
        self._passive = passive_elements(config)

    # -- contract --

    def project(self, state: KernelState) -> dict[ServiceKey, Service]:
        out = {}
        for key, svc in state.items():
            p = project_service(svc)
            if p is not None:
                out[key] = p
        return out

    def dump(self, owned: Iterable[ServiceKey] = ()) -> dict[ServiceKey, Service]:
        rc, text, err = self._nft.cmd(f"list table inet {TABLE}")
        if rc != 0:
            if "No such file or directory" in err:
                self._state, self._layout, self._sticky = {}, {}, {}
                self._sync_passive([])
                return {}
            raise BackendError(f"nftables: list table inet {TABLE}: {err.strip()}")
        objs = json.loads(text).get("nftables", [])
        self._sync_passive(objs)
        layouts: dict[ServiceKey, list[str]] = {}
        sticky: dict[ServiceKey, set[str]] = {}
        uncounted: list[str] = []
        state = parse_table(objs, layouts, sticky, uncounted)
        self._layout, self._sticky = layouts, sticky
        route = self._dump_netdev()
        state.update(route)
        self._state = state
        if uncounted:
            self._rebuild(state, uncounted)
        return dict(state)

    def _sync_passive(self, objs: list[dict]) -> None:
        """Write the passive chains and sets when the kernel's differ from
        the config's (at start, reload and every resync)."""
        have = parse_passive(objs)
        want = self._passive if any(self._passive.values()) else None
        if have != want:
            self._run(render_passive(self._passive))

    def _rebuild(self, state: dict[ServiceKey, Service], uncounted: list[str]) -> None:
        """A table written without counters (by an older hoststated): the
        same services written again with them, in one transaction (the
        table is deleted and made again: no packet sees it half made).
        The sticky sets start empty."""
        log.info("nftables: table inet %s has no counters (%s%s): rewritten with them",
                 TABLE, ", ".join(uncounted[:3]), ", ..." if len(uncounted) > 3 else "")
        self._state, self._layout, self._sticky = {}, {}, {}
        self._fresh = True
        self.apply([AddService(svc) for svc in state.values()], state)

    def _dump_netdev(self) -> dict[ServiceKey, Service]:
        rc, text, err = self._nft.cmd(f"list table netdev {TABLE}")
        if rc != 0:
            return {}
        return parse_netdev(json.loads(text).get("nftables", []))

    def apply(self, ops: list[Op], after: KernelState | None = None) -> None:
        if not ops:
            return
        before = self._state
        if after is None:
            after = apply_ops(before, ops)
        keys = touched(ops)
        stmts: list[str] = []
        layouts: dict[ServiceKey, list[str]] = {}
        deleted = []
        cleanup: list[str] = []
        sticky = self._sticky
        dispatch_changed = False
        route_changed = False
        for key in sorted(keys):
            old, new = before.get(key), after.get(key)
            if (old and old.method == "route") or (new and new.method == "route"):
                route_changed = True
            if new is None or (new.method != "nat" and old is not None and old.method == "nat"):
                deleted.append(key)         # gone, or moved to the netdev table
                dispatch_changed = True
                continue
            if new.method == "nat":
                before_slots = self._layout.get(key) if old is not None else None
                out, layouts[key] = render_nat(new, old, before_slots)
                stmts.extend(out)
                self._mark_reset(key, out, before_slots, layouts[key])
                # the objects of the other form, or of hosts that left, once
                # the service chain no longer refers to them (at the end)
                objs = sticky.get(key)
                if _sticky(new):
                    gone = (objs or set()).difference([d.address for d in new.destinations])
                    if gone:
                        cleanup += drop_sticky(key, gone, vmap=False)
                    if not _sticky(old):
                        cleanup += drop_map(key)
                elif objs is not None or _sticky(old):
                    cleanup += drop_sticky(key, objs or (), vmap=True)
            if (old is None or bool(old.destinations) != bool(new.destinations)
                    or old.interface != new.interface or old.method != new.method):
                dispatch_changed = True
        # new chains first, then the dispatch that jumps to them (a rebuild
        # also repairs base chains someone removed), then gone services'
        # chains and maps, once nothing jumps there any more
        stmts = [f"add table inet {TABLE}"] + stmts
        if self._fresh:
            stmts[:0] = [f"add table inet {TABLE}", f"delete table inet {TABLE}"]
            if any(self._passive.values()):
                stmts += render_passive(self._passive)
        if dispatch_changed or not before:
            stmts += render_dispatch(after)
            for key in deleted:
                name = key_name(key)
                stmts += [f"add chain inet {TABLE} svc_{name}",
                          f"flush chain inet {TABLE} svc_{name}",
                          f"delete chain inet {TABLE} svc_{name}",
                          f"add map inet {TABLE} map_{name} {_map_decl(key.family)}",
                          f"delete map inet {TABLE} map_{name}"]
                if key in sticky or _sticky(before.get(key)):
                    stmts += drop_sticky(key, sticky.get(key, ()), vmap=True)
        stmts += cleanup
        if route_changed:
            stmts.extend(render_netdev(after))
        try:
            self._run(stmts)
        except BackendError:
            self._layout = {}       # unknown now: the next writes rewrite in full
            raise
        self._state = dict(after)
        self._fresh = False
        for key in keys:
            self._layout.pop(key, None)
            new = after.get(key)
            if _sticky(new) and new.method == "nat":
                sticky[key] = {d.address for d in new.destinations}
            else:
                sticky.pop(key, None)
        self._layout.update(layouts)

    def _mark_reset(self, key: ServiceKey, out: list[str], before: list[str] | None,
                    after: list[str]) -> None:
        """Note the counters that the statements `out` for `key` make again
        (from 0): a flushed map's slots, the slots written, a host chain
        flushed (counters() tells the reader)."""
        name = key_name(key)
        t = f"inet {TABLE}"
        if f"flush map {t} map_{name}" in out or not before:
            self._reset.update(("map", key, j) for j in range(len(after)))
        else:
            self._reset.update(("map", key, j) for j in range(len(after))
                               if j >= len(before) or before[j] != after[j])
        prefix = f"flush chain {t} stk_{name}__"
        for st in out:
            if st.startswith(prefix):
                host = _split_host_name(st[len(f"flush chain {t} "):])
                if host is not None:
                    self._reset.add(("stk", key, host[1]))

    def counters(self, owned: Iterable[ServiceKey] = ()) -> tuple[list[Sample], set[tuple]]:
        """The connections counted per slot (NAT maps: each connection's
        first packet looks its slot up once) and per sticky host (its
        chain's dnat rule), in one listing of the table; and the samples'
        idents whose counters were made again since the last call. Direct
        routing (the netdev table) is not counted."""
        rc, text, err = self._nft.cmd(f"list table inet {TABLE}")
        reset, self._reset = self._reset, set()
        if rc != 0:
            if "No such file or directory" in err:
                return [], set()
            raise BackendError(f"nftables: list table inet {TABLE}: {err.strip()}")
        samples = parse_counters(json.loads(text).get("nftables", []))
        fresh = {s.ident for s in samples if s.ident[:3] in reset}
        return samples, fresh

    def remove(self, current: KernelState) -> None:
        self._run([f"add table inet {TABLE}", f"delete table inet {TABLE}",
                   f"add table netdev {TABLE}", f"delete table netdev {TABLE}"])
        self._state, self._layout, self._sticky = {}, {}, {}

    # -- I/O --

    def _run(self, stmts: list[str]) -> None:
        if not stmts:
            return
        self.statements += len(stmts)
        t0 = time.perf_counter()
        rc, _, err = self._nft.cmd("\n".join(stmts) + "\n")
        self.nft_seconds += time.perf_counter() - t0
        if rc != 0:
            first = err.strip().splitlines()[0] if err.strip() else "unknown error"
            raise BackendError(f"nftables: transaction of {len(stmts)} statements "
                               f"rejected: {first}")
