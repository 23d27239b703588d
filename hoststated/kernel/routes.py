"""Routers: the routes to health-checked gateways, written through rtnetlink.

relayd's `router` keeps kernel routes pointed at the gateways that are up
(relayd.md §1.9, §4.3). Here, per router and per prefix of its `route`s:

- one route per (prefix, metric), its next hops the router's gateways that
  are up (hce's word) with a weight above 0, weighted by the host's weight
  (Linux takes 1 to 256 per next hop: runtime weights above 256 count as
  256); one gateway is a plain route, more are one multipath route;
- the metric is the gateway's `priority` (relayd's route priority; the
  default METRIC is OpenBSD's RTP_STATIC, 8): gateways of one priority
  share a route, a higher number is a route the kernel uses only while no
  lower one exists; a route with no gateway up is removed, leaving the
  prefix to whatever route of a higher metric the operator keeps there;
- `rtable N` is Linux routing table N (none or 0: main, 254); `rtlabel L`
  is the IPv4 route realm L (a number 1-255 or a name from
  /etc/iproute2/rt_realms), which nftables matches as `meta rtclassid`,
  as pf matches a route label;
- every route hoststated writes carries rtnetlink protocol PROTO: that is
  how it knows its own (adopted at start, repaired at resync, removed at a
  clean stop); a route of any other protocol is never replaced or deleted
  (deletes name PROTO, which the kernel matches; a new route is added
  with NLM_F_EXCL, so a foreign route at the same place is an error).

The part up to Routes is sans-IO (desired state, diff, the director
checks over a Director view); NetlinkRoutes does the I/O (pyroute2's
IPRoute), and Routes drives both as the Reconciler drives the backends.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from hoststated.conf.model import Config, Location, Router
from hoststated.states import HostStatus

from .backend import BackendError

log = logging.getLogger("hoststated.kernel")

PROTO = 245             # rtnetlink route protocol of hoststated's routes (not in iproute2's list)
METRIC = 8              # a gateway's metric without `priority`: OpenBSD's RTP_STATIC
MAIN = 254              # RT_TABLE_MAIN: no rtable, or rtable 0
LOCAL = 255             # RT_TABLE_LOCAL: the kernel's own
MAX_NH_WEIGHT = 256     # a next hop's weight on Linux: 1..256 (rtnh_hops + 1)
REALM_FILES = ("/etc/iproute2/rt_realms", "/usr/share/iproute2/rt_realms")
REALM_DIRS = ("/etc/iproute2/rt_realms.d", "/usr/share/iproute2/rt_realms.d")
_RTPROT_KERNEL = 2
_RTN_UNICAST = 1
_FR_ACT_TO_TBL = 1


# --- the desired state (sans-IO) --------------------------------------------

@dataclass(frozen=True, order=True, slots=True)
class RouteKey:
    """Where a route sits: the kernel replaces a route at the same key."""
    family: int             # 4 or 6
    table: int
    dst: str                # "0.0.0.0/0"
    metric: int

    def __str__(self) -> str:
        return f"{self.dst} table {self.table} metric {self.metric}"


@dataclass(frozen=True, slots=True)
class Route:
    key: RouteKey
    nexthops: tuple[tuple[str, int], ...]   # (gateway, weight 1..256), sorted
    realm: int | None = None
    router: str = field(default="", compare=False)

    def __str__(self) -> str:
        via = ", ".join(gw if len(self.nexthops) == 1 else f"{gw} weight {w}"
                        for gw, w in self.nexthops)
        return f"{self.key} via {via}" + (f" realm {self.realm}" if self.realm else "")


def table_of(r: Router) -> int:
    return MAIN if not r.rtable else r.rtable


def family_of(r: Router) -> int:
    return ipaddress.ip_network(r.routes[0]).version if r.routes else 4


def _nexthops(hops: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    # one next hop has no weight in the kernel (a plain route): 1, as a dump reads it
    if len(hops) == 1:
        return ((hops[0][0], 1),)
    return tuple(sorted((gw, max(1, min(w, MAX_NH_WEIGHT))) for gw, w in hops))


def router_routes(config: Config, r: Router, statuses: Mapping[int, HostStatus],
                  weights: Mapping[int, int] | None = None, realm: int | None = None
                  ) -> tuple[dict[RouteKey, Route], set[RouteKey]]:
    """(the routes router r wants, every key it may hold): the scope of its
    diff, so that a route whose gateways all went down is deleted."""
    t = config.table(r.forward.table) if r.forward else None
    groups: dict[int, list[tuple[str, int]]] = {}
    for h in (t.hosts if t else ()):
        hops = groups.setdefault(h.priority or METRIC, [])
        if r.disabled or h.address is None or statuses.get(h.id) != HostStatus.UP:
            continue
        w = h.weight if weights is None else weights.get(h.id, h.weight)
        if w > 0:
            hops.append((h.address, w))
    fam, table = family_of(r), table_of(r)
    want, scope = {}, set()
    for dst in r.routes:
        for metric, hops in groups.items():
            k = RouteKey(fam, table, dst, metric)
            scope.add(k)
            if hops:
                want[k] = Route(k, _nexthops(hops), realm if fam == 4 else None, r.name)
    return want, scope


def gateway_hosts(config: Config, r: Router) -> list:
    t = config.table(r.forward.table) if r.forward else None
    return list(t.hosts) if t else []


def adopted(config: Config, current: Mapping[RouteKey, Route]) -> set[int]:
    """The gateway hosts the kernel routes through now (a route of ours at
    one of their router's keys names them): taken as up at start until hce
    says otherwise, so that a restart keeps the routes."""
    out = set()
    for r in config.routers:
        fam, table = family_of(r), table_of(r)
        for h in gateway_hosts(config, r):
            for dst in r.routes:
                cur = current.get(RouteKey(fam, table, dst, h.priority or METRIC))
                if cur is not None and any(gw == h.address for gw, _ in cur.nexthops):
                    out.add(h.id)
    return out


@dataclass(frozen=True, slots=True)
class SetRoute:
    route: Route
    replace: bool           # the key holds a route of ours now

    def __str__(self) -> str:
        return f"route {self.route}"


@dataclass(frozen=True, slots=True)
class DelRoute:
    route: Route

    def __str__(self) -> str:
        return f"route {self.route.key} removed"


RouteOp = SetRoute | DelRoute


def diff(current: Mapping[RouteKey, Route], want: Mapping[RouteKey, Route]) -> list[RouteOp]:
    """The ops from current to want: new and changed routes first (make
    before break: a route of a higher metric is in before a lower one goes),
    then the routes to remove."""
    ops: list[RouteOp] = [SetRoute(r, k in current) for k, r in sorted(want.items())
                          if current.get(k) != r]
    ops += [DelRoute(current[k]) for k in sorted(current.keys() - want.keys())]
    return ops


# --- the director's checks (sans-IO over a Director view) ---------------------

@dataclass(slots=True)
class Director:
    """What the checks need to know of this machine's routing."""
    # family -> the networks on a link: the main table's routes with no
    # gateway made from an address (proto kernel), and IPv4 scope-link ones
    connected: dict[int, list[tuple[ipaddress._BaseNetwork, str]]] = field(default_factory=dict)
    # family -> the routing tables some rule looks up
    tables: dict[int, set[int]] = field(default_factory=dict)
    realms: dict[str, int] = field(default_factory=dict)


def parse_realms(text: str) -> dict[str, int]:
    """An iproute2 rt_realms file: `number name` lines, # comments."""
    out = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            try:
                n = int(words[0], 0)
            except ValueError:
                continue
            out.setdefault(words[1], n)
    return out


def realm_of(label: str, realms: Mapping[str, int]) -> int | None:
    """rtlabel -> a route realm 1..255, or None."""
    n = int(label) if label.isdigit() else realms.get(label)
    return n if n is not None and 1 <= n <= 255 else None


def director_errors(config: Config, d: Director) -> list[tuple[Location | None, str]]:
    """What this machine refuses of the routers: a prefix inside a connected
    network (it would take the link's own traffic; a prefix holding one,
    as 0.0.0.0/0 does, is fine: the connected route is the longer match),
    a gateway on no connected network (the kernel cannot reach it), a
    link-local gateway (it needs an interface, which a router cannot name),
    an rtable no rule looks up (its routes would carry nothing), an rtlabel
    that names no realm."""
    out: list[tuple[Location | None, str]] = []
    for r in config.routers:
        if r.disabled or not r.routes:
            continue
        fam, table = family_of(r), table_of(r)
        name = f"router {r.name}"
        conn = d.connected.get(fam, [])
        for dst in r.routes:
            net = ipaddress.ip_network(dst)
            for c, dev in conn:
                if net.version == c.version and net.subnet_of(c):
                    out.append((r.where, f"{name}: route {dst} is inside {c}, a network "
                                         f"connected on {dev}: it would take that link's "
                                         "own traffic"))
                    break
        for h in gateway_hosts(config, r):
            if h.address is None:
                continue
            a = ipaddress.ip_address(h.address)
            if a.version != fam:
                continue                # conf.build refuses it
            if a.is_link_local:
                out.append((r.where, f"{name}: gateway {h.name} is link-local: a router "
                                     "names no interface, use the gateway's global address"))
            elif not any(a in c for c, _ in conn if c.version == fam):
                out.append((r.where, f"{name}: gateway {h.name} is on no connected "
                                     "network of this machine (no link reaches it)"))
        if table == LOCAL:
            out.append((r.where, f"{name}: rtable {LOCAL} is the kernel's local table"))
        elif table not in d.tables.get(fam, set()):
            ipv = "IPv4" if fam == 4 else "IPv6"
            out.append((r.where, f"{name}: rtable {r.rtable} does not exist: no routing "
                                 f"rule looks up table {table} for {ipv} (add one, e.g. "
                                 f"`ip{' -6' if fam == 6 else ''} rule add from PREFIX "
                                 f"lookup {table}`)"))
        if r.rtlabel is not None and fam == 4 and realm_of(r.rtlabel, d.realms) is None:
            out.append((r.where, f"{name}: rtlabel {r.rtlabel}: no such route realm (a "
                                 "number 1-255, or a name in /etc/iproute2/rt_realms)"))
    return out


def where_text(where: Location | None) -> str:
    return f"{where.file}:{where.line}:{where.col}: " if where is not None else ""


# --- the I/O: rtnetlink -----------------------------------------------------------

def read_realms() -> dict[str, int]:
    out: dict[str, int] = {}
    paths = list(REALM_FILES)
    for d in REALM_DIRS:
        try:
            paths += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".conf"))
        except OSError:
            pass
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                for k, v in parse_realms(f.read()).items():
                    out.setdefault(k, v)
        except OSError:
            pass
    return out


_FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))


class NetlinkRoutes:
    """The routes of protocol PROTO, read and written through one IPRoute
    socket (opened on first use, in the thread that uses it)."""

    def __init__(self, ipr=None) -> None:
        self._ipr = ipr

    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _call(self, what: str, fn, *args, **kwargs):
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            raise BackendError(f"{what}: {os.strerror(e.code) if e.code else e}") from None
        except OSError as e:
            raise BackendError(f"{what}: {e.strerror or e}") from None

    def dump(self) -> dict[RouteKey, Route]:
        out = {}
        for fam, af in _FAMILIES:
            for msg in self._call("route dump", self.ipr.get_routes, family=af, proto=PROTO):
                if msg["proto"] != PROTO:
                    continue
                r = _route_of(fam, msg)
                out[r.key] = r
        return out

    def director(self) -> Director:
        d = Director(realms=read_realms())
        for fam, af in _FAMILIES:
            conn = []
            links = {}
            for link in self._call("link dump", self.ipr.get_links):
                links[link["index"]] = link.get("ifname") or str(link["index"])
            for msg in self._call("route dump", self.ipr.get_routes, family=af, table=MAIN):
                if (msg.get("table") != MAIN or msg["type"] != _RTN_UNICAST
                        or msg.get("gateway") or msg.get("multipath") or not msg["dst_len"]):
                    continue
                if msg["proto"] == _RTPROT_KERNEL or (fam == 4 and msg["scope"] == 253):
                    net = ipaddress.ip_network(f"{msg.get('dst')}/{msg['dst_len']}")
                    conn.append((net, links.get(msg.get("oif"), "a link")))
            d.connected[fam] = conn
            d.tables[fam] = {MAIN} | {
                rule.get("table") for rule in self._call("rule dump", self.ipr.get_rules,
                                                          family=af)
                if rule.get("action") == _FR_ACT_TO_TBL}
        return d

    def set(self, op: SetRoute) -> None:
        r = op.route
        k = r.key
        kw = dict(dst=k.dst, table=k.table, priority=k.metric, proto=PROTO,
                  family=socket.AF_INET if k.family == 4 else socket.AF_INET6)
        if len(r.nexthops) == 1:
            kw["gateway"] = r.nexthops[0][0]
            if r.realm:
                kw["flow"] = r.realm
        else:
            # an IPv4 multipath route takes its realm per next hop
            kw["multipath"] = [dict({"gateway": gw, "hops": w - 1},
                                    **({"flow": r.realm} if r.realm else {}))
                               for gw, w in r.nexthops]
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            self.ipr.route("replace" if op.replace else "add", **kw)
        except NetlinkError as e:
            if e.code == 17:            # EEXIST: not ours (ours would be replaced)
                raise BackendError(f"route {k}: a route hoststated did not write is "
                                   "there; left alone") from None
            raise BackendError(f"route {r}: {os.strerror(e.code)}") from None
        except OSError as e:
            raise BackendError(f"route {r}: {e.strerror or e}") from None

    def delete(self, op: DelRoute) -> None:
        k = op.route.key
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            # proto: the kernel deletes only a route of that protocol
            self.ipr.route("del", dst=k.dst, table=k.table, priority=k.metric, proto=PROTO,
                           family=socket.AF_INET if k.family == 4 else socket.AF_INET6)
        except NetlinkError as e:
            if e.code != 3:             # ESRCH: gone already, as wanted
                raise BackendError(f"route {k}: cannot remove: {os.strerror(e.code)}") \
                    from None


def _route_of(fam: int, msg) -> Route:
    dst = msg.get("dst") or ("0.0.0.0" if fam == 4 else "::")
    key = RouteKey(fam, msg.get("table"), f"{dst}/{msg['dst_len']}", msg.get("priority") or 0)
    realm = msg.get("flow")
    mp = msg.get("multipath")
    if mp:
        hops = [(nh.get("gateway"), nh["hops"] + 1) for nh in mp]
        realm = realm or next((nh.get("flow") for nh in mp if nh.get("flow")), None)
    else:
        hops = [(msg.get("gateway"), 1)]
    return Route(key, _nexthops([(gw or "", w) for gw, w in hops]),
                 (realm & 0xFFFF) or None if realm else None)


# --- the keeper: Reconciler's part for routers -------------------------------------

class Routes:
    """Keeps the kernel's routes of PROTO equal to the routers' desired
    routes. The Reconciler calls it with the host statuses and runtime
    weights it keeps. The writer is made (make()) when a config first has
    a router: a pfe without routers loads no pyroute2 (its IPRoute is some
    10 MB), so it does not look for routes of ours either: routes an earlier
    run left (cleanstop no) are taken away by a config that has routers, or
    by hand (`ip route flush table all proto 245`). make None (engine none,
    tests): nothing is written."""

    def __init__(self, config: Config, writer: NetlinkRoutes | None = None,
                 make=None) -> None:
        self.config = config
        self.writer = writer
        self._make = make
        self.current: dict[RouteKey, Route] = {}
        self.errors = 0
        self._realms: dict[str, int | None] = {}
        self._index(config)
        self._need()

    def _need(self) -> None:
        if self.writer is None and self._make is not None and self.config.routers:
            self.writer = self._make()

    def _index(self, config: Config) -> None:
        # host id -> the routers that use it as a gateway
        self.host_routers: dict[int, set[str]] = {}
        for r in config.routers:
            for h in gateway_hosts(config, r):
                self.host_routers.setdefault(h.id, set()).add(r.name)

    def _realm(self, r: Router) -> int | None:
        if r.rtlabel is None:
            return None
        if r.rtlabel not in self._realms:
            self._realms[r.rtlabel] = realm_of(r.rtlabel, read_realms())
        return self._realms[r.rtlabel]

    def check(self) -> None:
        """The director checks of conf.load again, here (pfe's start):
        BackendError, its first line the place."""
        if self.writer is None or not self.config.routers:
            return
        errs = director_errors(self.config, self.writer.director())
        if errs:
            raise BackendError("; ".join(where_text(w) + m for w, m in errs))

    def start(self) -> set[int]:
        """Dump our routes; the gateways they route through (adopted())."""
        if self.writer is None:
            return set()
        self.check()
        self.current = self.writer.dump()
        return adopted(self.config, self.current)

    def sync(self, statuses: Mapping[int, HostStatus], weights: Mapping[int, int],
             routers: Iterable[str] | None = None, *, dump: bool = False) -> list[RouteOp]:
        """Diff and apply: every router (routes of ours no router wants go),
        or only the named ones."""
        if self.writer is None:
            return []
        if dump:
            self.current = self.writer.dump()
        names = None if routers is None else set(routers)
        want: dict[RouteKey, Route] = {}
        scope: set[RouteKey] = set()
        for r in self.config.routers:
            if names is not None and r.name not in names:
                continue
            w, s = router_routes(self.config, r, statuses, weights, self._realm(r))
            want.update(w)
            scope |= s
        current = self.current if names is None else {
            k: v for k, v in self.current.items() if k in scope}
        ops = diff(current, want)
        for op in ops:
            log.info("routes: %s", op)
            try:
                if isinstance(op, SetRoute):
                    self.writer.set(op)
                    self.current[op.route.key] = op.route
                else:
                    self.writer.delete(op)
                    self.current.pop(op.route.key, None)
            except BackendError as e:
                # the kernel is in some state: learn which; resync retries
                log.error("routes: %s", e)
                self.errors += 1
                try:
                    self.current = self.writer.dump()
                except BackendError as e2:
                    log.error("routes: %s", e2)
        return ops

    def update(self, hosts: Iterable[int], statuses: Mapping[int, HostStatus],
               weights: Mapping[int, int]) -> list[RouteOp]:
        names = {n for h in hosts for n in self.host_routers.get(h, ())}
        return self.sync(statuses, weights, names) if names else []

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._realms = {}
        self._index(config)
        self._need()

    def stop(self, clean: bool) -> None:
        try:
            if clean and self.writer is not None:
                for r in sorted(self.writer.dump().values(), key=lambda r: r.key):
                    self.writer.delete(DelRoute(r))
                self.current = {}
        finally:
            if self.writer is not None:
                self.writer.close()


__all__ = ["PROTO", "METRIC", "RouteKey", "Route", "Routes", "NetlinkRoutes", "Director",
           "diff", "router_routes", "director_errors", "adopted", "realm_of", "parse_realms"]
