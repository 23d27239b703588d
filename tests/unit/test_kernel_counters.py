"""Kernel counters, pure parts: nftables JSON and IPVS statistics read into
samples, totals carried across rewrites (kernel.counters), hce's relayctl
figures (hce_show.KernelFigures) and hoststatectl's lines."""

from __future__ import annotations

import json

from hoststated.conf.load import load_text
from hoststated.hce_show import KernelFigures
from hoststated.ipc.messages import (DestCounters, HostRow, KernelCounters, RedirectRow,
                                     ServiceCounters, ShowReply)
from hoststated.kernel.counters import Totals
from hoststated.kernel.ipvs import stats_counts
from hoststated.kernel.nft import key_name, parse_counters, parse_table
from hoststated.kernel.service import Counts, Sample, ServiceKey
from hoststatectl import output

K = ServiceKey(4, "tcp", "203.0.113.10", 80)
NAME = key_name(K)
A, B = "198.51.100.11", "198.51.100.12"

# as libnftables 1.0.6 lists a NAT service with counters (captured, trimmed)
LISTING = [
    {"table": {"family": "inet", "name": "hoststated", "handle": 1}},
    {"map": {"family": "inet", "name": f"map_{NAME}", "table": "hoststated", "type": "integer",
             "handle": 2, "map": "ipv4_addr", "stmt": [{"counter": None}], "elem": [
                 [{"elem": {"val": 0, "counter": {"packets": 3, "bytes": 180}}}, A],
                 [{"elem": {"val": 1, "counter": {"packets": 2, "bytes": 120}}}, B],
                 [{"elem": {"val": 2, "counter": {"packets": 4, "bytes": 240}}}, A]]}},
    {"chain": {"family": "inet", "table": "hoststated", "name": f"svc_{NAME}", "handle": 3}},
    {"rule": {"family": "inet", "table": "hoststated", "chain": f"svc_{NAME}", "handle": 4,
              "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                  "right": "tcp"}},
                       {"dnat": {"family": "ip", "addr": {"map": {
                           "key": {"numgen": {"mode": "inc", "mod": 3, "offset": 0}},
                           "data": f"@map_{NAME}"}}, "port": 8080}}]}},
    {"rule": {"family": "inet", "table": "hoststated", "chain": f"stk_{NAME}__198_51_100_12",
              "handle": 9, "expr": [
                  {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                  {"counter": {"packets": 5, "bytes": 300}},
                  {"dnat": {"family": "ip", "addr": B, "port": 8080}}]}},
]


def test_nft_counters_per_slot_and_sticky_host():
    got = {s.ident: (s.address, s.counts.connections) for s in parse_counters(LISTING)}
    assert got == {("map", K, 0, A): (A, 3), ("map", K, 1, B): (B, 2), ("map", K, 2, A): (A, 4),
                   ("stk", K, B): (B, 5)}
    # nftables counts connections, nothing else
    assert all(s.counts[1:] == (None,) * 6 for s in parse_counters(LISTING))


def test_nft_layout_is_compared_stateless():
    """The counters' values are no part of the layout: a listing with
    counters reads back as the one without."""
    plain = json.loads(json.dumps(LISTING))
    plain[1]["map"]["elem"] = [[0, A], [1, B], [2, A]]
    del plain[1]["map"]["stmt"]
    uncounted: list[str] = []
    assert parse_table(LISTING, uncounted=uncounted) == parse_table(plain)
    assert uncounted == []                    # the map has its counters
    parse_table(plain, uncounted=uncounted)
    assert uncounted == [f"map_{NAME}"]       # an older table: dump() rebuilds it


def s(ident, addr, n, *rest):
    return Sample(ident, K, addr, Counts(n, *rest))


def test_totals_grow_by_each_objects_increase_and_survive_rewrites():
    t = Totals()
    t.add([s(("map", K, 0, A), A, 3), s(("map", K, 1, B), B, 2)])
    t.add([s(("map", K, 0, A), A, 5), s(("map", K, 1, B), B, 2)])
    assert t.services()[K][1][A].connections == 5
    # slot 1 rewritten (reset by the backend) with the same host: from 0 again
    t.add([s(("map", K, 0, A), A, 6), s(("map", K, 1, B), B, 4)], reset={("map", K, 1, B)})
    assert {a: c.connections for a, c in t.services()[K][1].items()} == {A: 6, B: 6}
    # a slot that goes away keeps what it counted; a new one counts in full
    t.add([s(("map", K, 0, A), A, 6), s(("map", K, 2, B), B, 1)])
    svc, dests = t.services()[K]
    assert (svc.connections, dests[B].connections) == (13, 7)
    # a counter smaller than before was made again by someone: all of it is new
    t.add([s(("map", K, 0, A), A, 2), s(("map", K, 2, B), B, 1)])
    assert t.services()[K][1][A].connections == 8
    t.keep(set())
    assert t.services() == {}


def test_totals_ipvs_service_own_counts_and_destination_gauges():
    t = Totals()
    t.add([s(("svc", K), "", 10, 100, 90, 1000, 9000),
           s(("dest", K, A, 80), A, 6, 60, 50, 600, 5000, 2, 1),
           s(("dest", K, B, 80), B, 4, 40, 40, 400, 4000, 1, 3)])
    t.add([s(("svc", K), "", 12, 120, 100, 1200, 10000),
           s(("dest", K, A, 80), A, 8, 80, 60, 800, 6000, 0, 2),
           s(("dest", K, B, 80), B, 4, 40, 40, 400, 4000, 1, 3)])
    svc, dests = t.services()[K]
    assert svc == Counts(12, 120, 100, 1200, 10000, 1, 5)     # gauges: the destinations' now
    assert dests[A] == Counts(8, 80, 60, 800, 6000, 0, 2)


class Nla:
    """What pyroute2's nla offers the parser: get_attr."""

    def __init__(self, **attrs):
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


def test_ipvs_stats_attributes():
    st = Nla(IPVS_STATS_ATTR_CONNS=7, IPVS_STATS_ATTR_INPKTS=70, IPVS_STATS_ATTR_OUTPKTS=60,
             IPVS_STATS_ATTR_INBYTES=7000, IPVS_STATS_ATTR_OUTBYTES=60000)
    dest = Nla(IPVS_DEST_ATTR_STATS64=st, IPVS_DEST_ATTR_ACTIVE_CONNS=2,
               IPVS_DEST_ATTR_INACT_CONNS=5)
    assert stats_counts(dest, "IPVS_DEST_ATTR") == Counts(7, 70, 60, 7000, 60000, 2, 5)
    # a kernel without STATS64: the 32-bit nest; a service has no gauges
    svc = Nla(IPVS_SVC_ATTR_STATS=st)
    assert stats_counts(svc, "IPVS_SVC_ATTR") == Counts(7, 70, 60, 7000, 60000, None, None)


CONF = """
table <web> { 198.51.100.11, 198.51.100.12 }
table <sorry> { 198.51.100.13 }
redirect "www" {
    listen on 203.0.113.10 port 80
    listen on 203.0.113.10 port 8080
    forward to <web> port 80 check tcp
    forward to <sorry> port 80 check tcp
}
"""


def counters(gen, n11, n12, n13=0):
    def svc(port, k):
        return ServiceCounters("www", f"tcp 203.0.113.10:{port}", "nftables", k * (n11 + n12 + n13),
                               destinations=[DestCounters(A, k * n11), DestCounters(B, k * n12),
                                             DestCounters("198.51.100.13", k * n13)])
    return KernelCounters(gen, 10.0, [svc(80, 1), svc(8080, 2)])


def test_figures_per_interval_relayd_style():
    k = KernelFigures()
    k.update(counters(1, 100, 50))           # the baseline: no interval's
    r = k.redirect("www")
    assert (r.connections, r.last, r.average, r.max) == (450, 0, 0, 0)
    k.update(counters(1, 110, 60))           # +20 on :80, +40 on :8080
    r = k.redirect("www")
    assert (r.connections, r.last, r.average, r.max, r.last_hour) == (510, 60, 30, 60, 60)
    k.update(counters(1, 110, 60))
    r = k.redirect("www")
    assert (r.last, r.average, r.max, r.last_hour, r.last_day) == (0, 15, 60, 60, 60)
    assert r.interval == 10.0 and r.active is None


def test_figures_hour_and_day_averages():
    k = KernelFigures()
    k.update(counters(1, 0, 0))
    for i in range(1, 361):                  # one hour of 10 s reads, 1 connection each
        k.update(counters(1, i, 0))
    r = k.redirect("www")
    # 3 per read (1 on :80, 2 on :8080); the hour closed: (1080 + 0) // 2
    assert (r.last, r.average_hour, r.last_hour, r.last_day) == (3, 540, 0, 1080)


def test_host_counters_over_the_redirects_of_its_table():
    config = load_text(CONF, runnable=False)
    k = KernelFigures()
    k.update(counters(1, 3, 4, 1))
    by = {h.name: c for h in config.hosts() for i, c in k.host_counters(config).items()
          if i == h.id}
    # both services (ports 80 and 8080: 1x and 2x), the backup table's host too
    assert {n: c.connections for n, c in by.items()} == \
        {"198.51.100.11": 9, "198.51.100.12": 12, "198.51.100.13": 3}
    rows = [HostRow(h.id, h.name, h.table) for h in config.hosts()]
    k.attach(rows, config)
    assert rows[0].kernel == by[rows[0].name]
    # a reload without the redirect: nothing kept
    k.reconfigure(load_text("table <web> { 198.51.100.11 }\n", runnable=False))
    assert k.redirect("www") is None and k.redirect_counters() == {}


def test_show_redirects_and_hosts_text():
    k = KernelFigures()
    k.update(counters(1, 1, 1))
    k.update(counters(1, 3, 2))
    reply = ShowReply(redirects=[RedirectRow(1, "www", "active", "web", kernel=k.redirect("www"))])
    text = output.text(("show", "redirects"), reply.to_wire()).splitlines()
    assert text[1].startswith("1   \tredirect\twww")
    assert text[2:] == ["\t        \ttotal: 15 sessions",
                        "\t        \tlast: 9/10s 9/h 9/d sessions",
                        "\t        \taverage: 4/10s 0/h 0/d sessions, max: 9/10s"]
    from hoststated.ipc.messages import TableRow
    hosts = ShowReply(tables=[TableRow(1, "web", "active (2 hosts)")], hosts=[
        HostRow(1, A, "web", kernel=DestCounters(A, 9)),
        HostRow(2, B, "web", kernel=DestCounters(B, 4, active=1, inactive=2))])
    lines = output.text(("show", "hosts"), hosts.to_wire()).splitlines()
    assert lines[0] == output.HEADER + "\tConns"
    assert lines[2].endswith("\tunknown\t9") and lines[3].endswith("\tunknown\t4 (1/2)")
    # no counters (engine none, or before the first read): relayctl's columns alone
    plain = ShowReply(tables=hosts.tables, hosts=[HostRow(1, A, "web")])
    assert output.text(("show", "hosts"), plain.to_wire()).splitlines()[0] == output.HEADER
