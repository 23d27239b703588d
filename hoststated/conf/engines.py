"""What each engine really does with a redirect: the capability table.

One row per redirect feature, one cell per engine: None when the engine's
backend (hoststated/kernel/nft.py, ipvs.py, pf.py) does it for real, else
the reason it does not.  conf.build refuses a feature in a cell with a
reason, at its file:line:col, naming the engines that can (-n, start and
reload all load through it), so "configuration OK" means the kernel does
what the file says.  hoststated.conf(5) prints this table (`python -m
hoststated.conf.engines` writes its mdoc; tests/unit/test_conf_engines.py
keeps the page and the table equal).

Engine `none` writes no kernel table at all (a monitor): every feature is
accepted there and means nothing; the table shows it as "-".
"""

from __future__ import annotations

import sys
from typing import get_args

from hoststated.conf import model as m

ENGINES = ("nftables", "ipvs", "pf")          # the ones that write a kernel table

NO_COUNTS = "nftables keeps no connection counts"
PF_POOLS = "pf has no such pool"
# nft.py's direct routing is a netdev ingress chain, before conntrack: each
# packet is placed on its own, so only a hash of an address keeps a flow whole
ROUTE_HASH = ("nftables direct routing sees each packet alone (no connection tracking "
              "at ingress): write mode source-hash or destination-hash")

NO_ROUTES = ("the pf engine writes no routes (on BSD relayd writes them to the routing "
             "socket; hoststated writes Linux's through rtnetlink)")

# feature -> (what the man page calls it, {engine: None | reason})
TABLE: dict[str, tuple[str, dict[str, str | None]]] = {
    "mode roundrobin": ("mode roundrobin", {"nftables": None, "ipvs": None, "pf": None}),
    "mode random": ("mode random", {
        "nftables": None, "ipvs": "IPVS has no random scheduler", "pf": None}),
    "mode source-hash": ("mode source-hash", {"nftables": None, "ipvs": None, "pf": None}),
    "mode roundrobin route to": ("mode roundrobin with route to", {
        "nftables": ROUTE_HASH, "ipvs": None, "pf": None}),
    "mode random route to": ("mode random with route to", {
        "nftables": ROUTE_HASH, "ipvs": "IPVS has no random scheduler", "pf": None}),
    "mode source-hash route to": ("mode source-hash with route to", {
        "nftables": None, "ipvs": None, "pf": None}),
    "mode source-hash key": ("mode source-hash with a key", {
        "nftables": "nftables hashes with a fixed seed", "ipvs": "IPVS hashes with no key",
        "pf": None}),
    "mode least-states": ("mode least-states", {
        "nftables": "nftables keeps no state counts", "ipvs": None, "pf": None}),
    "mode weighted-roundrobin": ("mode weighted-roundrobin", {
        "nftables": None, "ipvs": None, "pf": "pf tables carry no weights"}),
    "mode least-connections": ("mode least-connections", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode weighted-least-connections": ("mode weighted-least-connections", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode locality-least-connections": ("mode locality-least-connections", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode locality-least-connections-replicated": (
        "mode locality-least-connections-replicated", {
            "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode shortest-expected-delay": ("mode shortest-expected-delay", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode never-queue": ("mode never-queue", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode weighted-overflow": ("mode weighted-overflow", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "mode destination-hash": ("mode destination-hash", {
        "nftables": None, "ipvs": None, "pf": PF_POOLS}),
    "mode destination-hash route to": ("mode destination-hash with route to", {
        "nftables": None, "ipvs": None, "pf": PF_POOLS}),
    "mode maglev-hash": ("mode maglev-hash", {
        "nftables": "nftables here has source-hash only (unweighted)", "ipvs": None,
        "pf": PF_POOLS}),
    "mode weighted-failover": ("mode weighted-failover", {
        "nftables": None, "ipvs": None, "pf": PF_POOLS}),
    "mode weighted-failover route to": ("mode weighted-failover with route to", {
        "nftables": "nftables direct routing with weighted-failover is not tested with "
                    "traffic yet", "ipvs": None, "pf": PF_POOLS}),
    # migrate (issue 14): ALOHA's twos, a port per host
    "mode weighted-two-choices": ("mode weighted-two-choices", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": PF_POOLS}),
    "host port": ("host port (a port per host)", {
        "nftables": "nftables here maps a service to one port for all its hosts",
        "ipvs": None, "pf": "pf tables keep addresses, not ports"}),
    "forward to": ("forward to (NAT)", {"nftables": None, "ipvs": None, "pf": None}),
    "route to": ("route to (direct routing)", {"nftables": None, "ipvs": None, "pf": None}),
    "route to interface": ("route to ... interface", {
        "nftables": None,
        "ipvs": "IPVS direct routing follows the routing table, drop the interface",
        "pf": "pf here writes route-to without an interface"}),
    "tunnel to": ("tunnel to (IP-in-IP)", {
        "nftables": "nftables cannot tunnel (IP-in-IP)", "ipvs": None,
        "pf": "pf cannot tunnel (IP-in-IP)"}),
    "listen interface": ("listen on ... interface", {
        "nftables": None, "ipvs": "an IPVS service matches every interface", "pf": None}),
    "listen fwmark": ("listen on fwmark", {
        "nftables": None, "ipvs": None, "pf": "pf has no firewall marks"}),
    "backup table": ("backup table (second forward to)", {
        "nftables": None, "ipvs": None, "pf": None}),
    "weight": ("host weight", {
        "nftables": None, "ipvs": None, "pf": "pf tables carry no weights"}),
    "weight hashed": ("host weight with a hash mode or route to", {
        "nftables": "nftables hashes unweighted", "ipvs": None,
        "pf": "pf tables carry no weights"}),
    "weight unweighted scheduler": (
        "host weight with an unweighted mode", {
            "nftables": None, "ipvs": "this IPVS scheduler ignores weights (use a "
                                      "weighted- mode)", "pf": "pf tables carry no weights"}),
    "sticky-address": ("sticky-address", {"nftables": None, "ipvs": None, "pf": None}),
    "sticky-address options": ("sticky-address timeout or netmask", {
        "nftables": None, "ipvs": None,
        "pf": "pf's sticky-address takes no timeout or netmask"}),
    "sticky-address route to": ("sticky-address with route to", {
        "nftables": "nftables direct routing keeps no per-client state", "ipvs": None,
        "pf": None}),
    "max-connections": ("max-connections, min-connections", {
        "nftables": NO_COUNTS, "ipvs": None, "pf": "pf keeps no connection counts per host"}),
    "one-packet": ("one-packet", {
        "nftables": "nftables schedules connections, not datagrams", "ipvs": None,
        "pf": "pf schedules states, not datagrams"}),
    "session timeout": ("session timeout", {
        "nftables": "nftables leaves connection timeouts to the kernel's conntrack settings",
        "ipvs": "IPVS timeouts are global (ipvsadm --set)", "pf": None}),
    "pftag": ("pftag, match pftag", {
        "nftables": "tags are pf's", "ipvs": "tags are pf's", "pf": None}),
    # routers (issue 16): rtnetlink routes (kernel/routes.py), whatever the
    # redirect engine; relayd's parent writes them to the BSD routing socket
    "router": ("router (routes to checked gateways)", {
        "nftables": None, "ipvs": None, "pf": NO_ROUTES}),
    "router rtlabel": ("router rtlabel (IPv4 route realm)", {
        "nftables": None, "ipvs": None, "pf": NO_ROUTES}),
    # issue 15: kernel-observed passive failure detection (NFLOG rules in
    # pfe's table; engine ipvs: in an nftables table of their own, NAT only)
    "passive": ("passive (kernel-observed resets, unreachables)", {
        "nftables": None,
        "ipvs": None,
        "pf": "pf logs to pflog, not NFLOG"}),
}

# a row only worth reporting when its base row is allowed
UNDER = {"sticky-address options": "sticky-address",
         "mode roundrobin route to": "mode roundrobin",
         "mode random route to": "mode random",
         "mode source-hash route to": "mode source-hash",
         "sticky-address route to": "sticky-address",
         "mode destination-hash route to": "mode destination-hash",
         "mode weighted-failover route to": "mode weighted-failover",
         "router rtlabel": "router"}

# modes whose IPVS scheduler ignores weights (rr, lc, dh)
IPVS_UNWEIGHTED = {"roundrobin", "least-states", "least-connections", "destination-hash"}


def _check_complete() -> None:
    modes = set(get_args(m.RelaydMode)) | set(get_args(m.IpvsMode))
    rdr_modes = modes - {"loadbalance", "hash"}          # relays only
    missing = {f"mode {x}" for x in rdr_modes} - set(TABLE)
    assert not missing, missing
    assert all(set(cells) == set(ENGINES) for _, cells in TABLE.values())


_check_complete()


def refusal(engine: str, feature: str) -> str | None:
    """None when `engine` does `feature`; else the message for -n."""
    if engine == "none":
        return None
    label, cells = TABLE[feature]
    reason = cells[engine]
    if reason is None:
        return None
    can = [e for e in ENGINES if cells[e] is None]
    needs = f"needs engine {' or '.join(can)}" if can else "is done by no engine yet"
    return f"{label} {needs}: {reason}"


def mdoc() -> str:
    """The table as mdoc for hoststated.conf(5)."""
    out = [".Bl -column \"host weight with source-hash or route to\" nftables ipvs pf",
           ".It Em feature Ta Em nftables Ta Em ipvs Ta Em pf"]
    for label, cells in TABLE.values():
        row = " Ta ".join("yes" if cells[e] is None else "no" for e in ENGINES)
        out.append(f".It {label} Ta {row}")
    out.append(".El")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(mdoc())
