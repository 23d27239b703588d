"""The nftables backend: one owned table, static chains, one map per service.

Layout (the whole of what hoststated owns; nothing else is ever touched):

    table inet hoststated
      chain prerouting  { type nat hook prerouting priority dstnat; jump dispatch }
      chain output      { type nat hook output priority -100; jump dispatch }
      chain dispatch    { <vip> <proto> dport <port> [iifname X] jump svc_<key> ... }
      chain svc_<key>   { meta l4proto tcp dnat ip to numgen inc mod N map @map_<key> : <port> }
      map   map_<key>   { typeof numgen inc mod N : ip daddr; elements = { 0 : host, ... } }
    table netdev hoststated                       (only for `route to`, direct routing)
      chain ingress_<if> { type filter hook ingress device <if>; <vip> ... fwd ip to
                           jhash ip saddr . tcp sport mod N seed 0 map @map_<key> device <rif> }

- Modes: roundrobin (and every IPVS-only mode with no nftables equivalent,
  such as least-connections) is `numgen inc`, random is `numgen random`,
  source-hash (and loadbalance, hash, maglev-hash, destination-hash,
  locality-*) is `jhash ip saddr` with seed 0, so a rewrite or a restart
  hashes the same. Weights are slot shares (kernel/slots.py); source-hash
  is unweighted here (consistent slots: rendezvous or Maglev).
- Every slot of a map is always filled: a lookup miss would let the packet
  through untranslated. A change to a service is one transaction that
  flushes its chain and map, adds the elements and re-adds the rule (whose
  modulus may change), all-or-nothing.
- A redirect with no up host (main nor backup) has no dispatch rule, so its
  traffic is not translated at all, as relayd, which removes the rules.
- Direct routing uses a hash of the flow (source address and port) because
  there is no conntrack at ingress: numgen would spray one flow's packets.
- Connection thresholds, persistence and one-packet scheduling are IPVS
  features; this backend ignores them (project() drops them). IP-in-IP
  (`tunnel`) is IPVS only: such a service is skipped with a warning.

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
from typing import Iterable

from .backend import Backend, BackendError
from .diff import Op, apply_ops, touched
from .slots import consistent, hash_slot_count, spread
from .service import Destination, KernelState, Service, ServiceKey

log = logging.getLogger("hoststated.kernel.nft")

TABLE = "hoststated"
HASH_MODES = {"source-hash", "loadbalance", "hash", "maglev-hash", "destination-hash",
              "locality-least-connections", "locality-least-connections-replicated"}
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def nft_mode(mode: str) -> str:
    if mode == "random":
        return "random"
    if mode in HASH_MODES:
        return "source-hash"
    return "roundrobin"


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


# --- the projection: what this engine can hold, as dump() shows it ---------

def slots_of(svc: Service) -> list[str]:
    """The map's slot contents (addresses) for a projected service."""
    dests = svc.destinations
    if svc.mode != "source-hash" and svc.method != "route" and dests \
            and len({d[2] for d in dests}) == 1 and dests[0][2] > 0:
        return [d[0] for d in dests]        # spread(): equal weights, one slot each
    return _slots(svc.mode, svc.method,
                  [(d.address, d.weight) for d in dests if d.weight > 0])


def _slots(mode: str, method: str, active: list[tuple[str, int]]) -> list[str]:
    if mode == "source-hash" or method == "route":
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
        mode = "source-hash"
        if not svc.interface or not svc.route_interface:
            log.warning("service %s (redirect %s): direct routing with nftables needs "
                        "`listen on ... interface` (ingress) and `route to ... interface`; "
                        "skipped", svc.key, svc.redirect)
            return None

    active = [d for d in svc.destinations if d[2] > 0]        # d.weight
    ports = {d[1] for d in active}                              # d.port
    if len(ports) > 1:
        log.warning("service %s: destinations on several ports; nftables uses %d",
                    svc.key, min(ports))
    port = min(ports) if ports else 0
    if svc.method == "route":
        port = svc.key.port
    # (svc.destinations are sorted; source-hash is unweighted)
    if mode != "source-hash" and len({d[2] for d in active}) <= 1:
        counts = collections.Counter([d[0] for d in active])   # spread(): one slot each
    else:
        counts = collections.Counter(_slots(mode, svc.method,
                                            [(d[0], 1 if mode == "source-hash" else d[2])
                                             for d in active]))
    if svc.key.protocol == "fwmark":
        port = 0
    new = tuple.__new__          # Destination(a, port, c), without its Python __new__
    dests = sorted([new(Destination, (a, port, c, 0, 0)) for a, c in counts.items()])
    return Service(key=svc.key, mode=mode, method=svc.method, interface=interface,
                   route_interface=svc.route_interface if svc.method == "route" else None,
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
    if svc.method == "route":
        if k.protocol == "fwmark":
            return f"jhash {ip} saddr mod {n} seed 0x0"
        return f"jhash {ip} saddr . {k.protocol} sport mod {n} seed 0x0"
    if svc.mode == "source-hash":
        return f"jhash {ip} saddr mod {n} seed 0x0"
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
    return svc.mode != "source-hash" and max(map(_WEIGHT, svc.destinations), default=0) <= 1


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
    name = key_name(svc.key)
    ip = _ip(svc.key.family)
    t = f"inet {TABLE}"
    if old is not None and old.method == "nat" and old.destinations and before \
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
           f"add map {t} map_{name} {{ typeof numgen inc mod 2 : {ip} daddr ; }}",
           f"flush map {t} map_{name}"]
    if slots:
        for i in range(0, n, 4096):
            part = slots[i:i + 4096]
            out.append(f"add element {t} map_{name} {{ "
                       + ", ".join(map(_ELEMENT, range(i, i + len(part)), part)) + " }")
        out.append(_dnat_rule(svc, name, n))
    return out, slots


_ELEMENT = "{} : {}".format            # slot : address


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
        mod = sel.get("key", {}).get("jhash", {}).get("mod")
        if key is None or not mod:
            continue
        slots = {e[0]: e[1] for e in maps.get(data[1:], []) if isinstance(e, list) and len(e) == 2}
        if set(slots) != set(range(mod)):
            continue
        port = key.port if key.protocol != "fwmark" else 0
        counts = collections.Counter(slots.values())
        svc = Service(key=key, mode="source-hash", method="route", interface=_dev_of(r["chain"]),
                      route_interface=fwd.get("dev")).with_destinations(
            [Destination(str(ipaddress.ip_address(a)), port, c) for a, c in counts.items()])
        if slots_of(svc) == [slots[i] for i in range(mod)]:
            out[key] = svc
    return out


# --- reading the kernel back --------------------------------------------------

def parse_table(objs: list[dict], layouts: dict[ServiceKey, list[str]] | None = None
                ) -> dict[ServiceKey, Service]:
    """Services from `list table inet hoststated` JSON objects.

    A service is reported only when its chain, rule, map (every slot filled)
    and dispatch rule agree; anything less is reported without destinations
    or not at all, and the diff then rewrites it. The slots are ours when
    they are in the order we write, or, with one slot per destination, in
    any order (render_nat's `relayout`). `layouts` gets the slots of each
    service reported with destinations."""
    maps: dict[str, list] = {}
    rules: dict[str, list[list]] = collections.defaultdict(list)
    chains: dict[str, dict] = {}
    for o in objs:
        if "map" in o:
            maps[o["map"]["name"]] = o["map"].get("elem", [])
        elif "chain" in o:
            chains[o["chain"]["name"]] = o["chain"]
        elif "rule" in o:
            rules[o["rule"]["chain"]].append(o["rule"]["expr"])
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
        if len(crules) != 1 or elems is None or cname not in dispatched:
            continue
        dnat = crules[0][-1].get("dnat")
        if not dnat:
            continue
        sel = dnat.get("addr", {}).get("map", {})
        if sel.get("data") != f"@map_{name}":
            continue
        kexpr = sel.get("key", {})
        if "numgen" in kexpr:
            mode = "random" if kexpr["numgen"].get("mode") == "random" else "roundrobin"
            mod = kexpr["numgen"].get("mod")
        elif "jhash" in kexpr:
            mode, mod = "source-hash", kexpr["jhash"].get("mod")
        else:
            continue
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


class NftBackend(Backend):
    engine = "nftables"

    def __init__(self) -> None:
        try:
            import nftables
        except (ImportError, OSError) as e:
            raise BackendError(f"nftables: cannot load libnftables: {e}") from None
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._state: dict[ServiceKey, Service] = {}
        self._layout: dict[ServiceKey, list[str]] = {}   # NAT map slots in the kernel
        self.statements = 0
        self.nft_seconds = 0.0      # time inside libnftables writes (bench)

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
                self._state, self._layout = {}, {}
                return {}
            raise BackendError(f"nftables: list table inet {TABLE}: {err.strip()}")
        objs = json.loads(text).get("nftables", [])
        layouts: dict[ServiceKey, list[str]] = {}
        state = parse_table(objs, layouts)
        self._layout = layouts
        route = self._dump_netdev()
        state.update(route)
        self._state = state
        return dict(state)

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
            if (old is None or bool(old.destinations) != bool(new.destinations)
                    or old.interface != new.interface or old.method != new.method):
                dispatch_changed = True
        # new chains first, then the dispatch that jumps to them (a rebuild
        # also repairs base chains someone removed), then gone services'
        # chains and maps, once nothing jumps there any more
        stmts = [f"add table inet {TABLE}"] + stmts
        if dispatch_changed or not before:
            stmts += render_dispatch(after)
            for key in deleted:
                name = key_name(key)
                stmts += [f"add chain inet {TABLE} svc_{name}",
                          f"flush chain inet {TABLE} svc_{name}",
                          f"delete chain inet {TABLE} svc_{name}",
                          f"add map inet {TABLE} map_{name} "
                          f"{{ typeof numgen inc mod 2 : {_ip(key.family)} daddr ; }}",
                          f"delete map inet {TABLE} map_{name}"]
        if route_changed:
            stmts.extend(render_netdev(after))
        try:
            self._run(stmts)
        except BackendError:
            self._layout = {}       # unknown now: the next writes rewrite in full
            raise
        self._state = dict(after)
        for key in keys:
            self._layout.pop(key, None)
        self._layout.update(layouts)

    def remove(self, current: KernelState) -> None:
        self._run([f"add table inet {TABLE}", f"delete table inet {TABLE}",
                   f"add table netdev {TABLE}", f"delete table netdev {TABLE}"])
        self._state, self._layout = {}, {}

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
