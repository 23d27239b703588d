"""The nftables backend's pure parts: names, slot tables, projection, rendered
statements and reading a (captured) JSON listing back. No root."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoststated.kernel.nft import (key_name, parse_key_name, parse_table, project_service,
                                   render_dispatch, render_service, slots_of)
from hoststated.kernel.slots import consistent, hash_slot_count, maglev, spread
from hoststated.kernel.service import Destination, Service, ServiceKey

K = ServiceKey(4, "tcp", "203.0.113.10", 80)


@pytest.mark.parametrize("key", [
    K, ServiceKey(4, "udp", "203.0.113.10", 8000, 8010),
    ServiceKey(6, "tcp", "2001:db8::10", 443), ServiceKey(6, "fwmark", fwmark=42),
])
def test_key_names_round_trip(key):
    name = key_name(key)
    assert all(c.isalnum() or c == "_" for c in name)
    assert parse_key_name(name) == key


def test_key_name_rejects_foreign_names():
    for name in ("dispatch", "tcp4_1_2_3", "sctp4_203_0_113_10_80", "tcp4_x_0_113_10_80"):
        assert parse_key_name(name) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=12))
def test_spread_fills_slots_in_weight_shares(weights):
    names = [f"h{i}" for i in range(len(weights))]
    slots = spread(list(zip(names, weights)))
    counts = collections.Counter(slots)
    g = min(weights)
    # shares proportional to the weights (exactly, after the gcd)
    for n, w in zip(names, weights):
        assert counts[n] * weights[0] == counts[names[0]] * w
    assert len(slots) == sum(counts.values()) and g >= 1


def test_spread_interleaves_and_ignores_weight_zero():
    assert spread([("a", 3), ("b", 1), ("c", 2), ("z", 0)]) == ["a", "c", "a", "b", "c", "a"]
    assert spread([("a", 2), ("b", 2)]) == ["a", "b"]
    assert spread([("a", 0)]) == []


def test_maglev_every_slot_filled_and_few_move():
    size = hash_slot_count(16)
    names = [f"198.51.100.{i}" for i in range(11, 19)]
    before = maglev([(n, 1) for n in names], size)
    assert len(before) == size and None not in before
    assert set(before) == set(names)
    counts = collections.Counter(before)
    assert max(counts.values()) - min(counts.values()) <= 2
    after = maglev([(n, 1) for n in names if n != names[3]], size)
    moved = sum(1 for x, y in zip(before, after) if x != y)
    # the slots of the removed host move, and only a few others
    assert counts[names[3]] <= moved <= counts[names[3]] * 1.3
    assert maglev([(n, 1) for n in names], size) == before      # deterministic


def test_rendezvous_moves_exactly_the_leaving_hosts_slots():
    size = hash_slot_count(16)
    names = [f"198.51.100.{i}" for i in range(11, 19)]
    before = consistent(names, size)
    assert len(before) == size and set(before) == set(names)
    counts = collections.Counter(before)
    assert min(counts.values()) > size / len(names) / 2
    after = consistent(names[:3] + names[4:], size)
    moved = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
    assert len(moved) == counts[names[3]] and all(before[i] == names[3] for i in moved)
    back = consistent(names, size)
    assert back == before


def test_project_round_robin_weights_become_slot_counts():
    svc = Service(K, mode="weighted-least-connections", destinations=(
        Destination("198.51.100.11", 8080, 4, 100), Destination("198.51.100.12", 8080, 2),
        Destination("198.51.100.13", 8080, 0)))
    p = project_service(svc)
    assert p.mode == "roundrobin"
    assert {(d.address, d.port, d.weight, d.u_thresh) for d in p.destinations} == {
        ("198.51.100.11", 8080, 2, 0), ("198.51.100.12", 8080, 1, 0)}


def test_project_skips_what_nftables_cannot_do():
    assert project_service(Service(K, method="tunnel")) is None
    assert project_service(Service(K, method="route", interface="eth0")) is None
    p = project_service(Service(K, mode="hash", persistence=300, one_packet=True,
                                destinations=(Destination("198.51.100.11", 80, 5),)))
    # one-packet is IPVS only; persistence is kept (the sticky form)
    assert p.mode == "source-hash" and p.persistence == 300 and not p.one_packet
    assert p.destinations[0].weight == hash_slot_count(16)


def test_render_service_is_one_atomic_rewrite():
    p = project_service(Service(K, destinations=(Destination("198.51.100.11", 8080, 1),
                                                 Destination("198.51.100.12", 8080, 1))))
    name = key_name(K)
    assert render_service(p) == [
        f"add chain inet hoststated svc_{name}",
        f"flush chain inet hoststated svc_{name}",
        f"add map inet hoststated map_{name} {{ typeof numgen inc mod 2 : ip daddr ; counter ; }}",
        f"flush map inet hoststated map_{name}",
        f"add element inet hoststated map_{name} {{ 0 : 198.51.100.11, 1 : 198.51.100.12 }}",
        f"add rule inet hoststated svc_{name} meta l4proto tcp dnat ip to numgen inc mod 2 "
        f"map @map_{name} : 8080",
    ]
    empty = project_service(Service(K))
    assert not any(s.startswith("add rule") for s in render_service(empty))
    # a change that keeps the rule rewrites only the slots that change
    q = project_service(Service(K, destinations=(Destination("198.51.100.11", 8080, 1),
                                                 Destination("198.51.100.13", 8080, 1))))
    assert render_service(q, p) == [
        f"delete element inet hoststated map_{name} {{ 1 }}",
        f"add element inet hoststated map_{name} {{ 1 : 198.51.100.13 }}"]
    d = render_dispatch({K: p, ServiceKey(4, "tcp", "203.0.113.11", 80):
                         Service(ServiceKey(4, "tcp", "203.0.113.11", 80))})
    jumps = [s for s in d if "jump svc_" in s]
    assert jumps == [f"add rule inet hoststated dispatch ip daddr 203.0.113.10 tcp dport 80 "
                     f"jump svc_{name}"]


def listing(elems, mod=3, dispatch=True, hooks=True, port=8080):
    """A JSON listing as libnftables 1.0.6 prints it (captured, trimmed)."""
    name = key_name(K)
    objs = [{"table": {"family": "inet", "name": "hoststated", "handle": 1}},
            {"map": {"family": "inet", "name": f"map_{name}", "table": "hoststated",
                     "type": "integer", "handle": 2, "map": "ipv4_addr", "elem": elems}},
            {"chain": {"family": "inet", "table": "hoststated", "name": f"svc_{name}", "handle": 1}},
            {"chain": {"family": "inet", "table": "hoststated", "name": "dispatch", "handle": 5}},
            {"rule": {"family": "inet", "table": "hoststated", "chain": f"svc_{name}", "handle": 4,
                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                               {"dnat": {"family": "ip", "addr": {"map": {
                                   "key": {"numgen": {"mode": "inc", "mod": mod, "offset": 0}},
                                   "data": f"@map_{name}"}}, "port": port}}]}}]
    if hooks:
        objs += [{"chain": {"family": "inet", "table": "hoststated", "name": "prerouting",
                            "handle": 6, "type": "nat", "hook": "prerouting", "prio": -100,
                            "policy": "accept"}},
                 {"chain": {"family": "inet", "table": "hoststated", "name": "output", "handle": 7,
                            "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
                 {"rule": {"family": "inet", "table": "hoststated", "chain": "prerouting",
                           "handle": 8, "expr": [{"jump": {"target": "dispatch"}}]}},
                 {"rule": {"family": "inet", "table": "hoststated", "chain": "output",
                           "handle": 9, "expr": [{"jump": {"target": "dispatch"}}]}}]
    if dispatch:
        objs.append({"rule": {"family": "inet", "table": "hoststated", "chain": "dispatch",
                              "handle": 16, "expr": [
                                  {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "203.0.113.10"}},
                                  {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                                  {"jump": {"target": f"svc_{name}"}}]}})
    return objs


GOOD = [[0, "198.51.100.11"], [1, "198.51.100.12"], [2, "198.51.100.11"]]


def test_parse_table_reads_back_what_project_says():
    want = project_service(Service(K, destinations=(Destination("198.51.100.11", 8080, 2),
                                                    Destination("198.51.100.12", 8080, 1))))
    assert parse_table(listing(GOOD)) == {K: want}


def test_parse_table_reports_drift():
    # a hole in the map: the service comes back without destinations
    assert parse_table(listing(GOOD[:2]))[K].destinations == ()
    # slots not in our order: same
    swapped = [[0, "198.51.100.12"], [1, "198.51.100.11"], [2, "198.51.100.11"]]
    assert parse_table(listing(swapped))[K].destinations == ()
    # no dispatch rule, or base chains gone: not reported at all
    assert parse_table(listing(GOOD, dispatch=False)) == {}
    assert parse_table(listing(GOOD, hooks=False)) == {}


def test_relayout_moves_few_slots():
    from hoststated.kernel.nft import relayout
    before = ["a", "b", "c", "d"]
    # one leaving: the last slot's host takes its place
    assert relayout(before, ["a", "b", "d"]) == ["a", "b", "d"]
    assert relayout(before, ["a", "c", "d"]) == ["a", "d", "c"]
    # one joining: a new last slot
    assert relayout(["a", "d", "c"], ["a", "b", "c", "d"]) == ["a", "d", "c", "b"]
    # from a weighted layout (a host in several slots): each once
    assert relayout(["a", "b", "a"], ["a", "b"]) == ["a", "b"]
    assert relayout(["a", "a", "b"], ["a", "b", "c"]) == ["a", "c", "b"]


@given(st.lists(st.sampled_from("abcdefgh"), unique=True, min_size=1),
       st.lists(st.sampled_from("abcdefgh"), unique=True, min_size=1))
def test_relayout_one_slot_each_and_keeps_what_it_can(before, want):
    from hoststated.kernel.nft import relayout
    after = relayout(before, sorted(want))
    assert sorted(after) == sorted(want)
    kept = [j for j in range(min(len(before), len(after))) if before[j] in want]
    assert all(after[j] == before[j] for j in kept)


def test_render_nat_host_leaves_round_robin_writes_its_slot_and_the_rule():
    from hoststated.kernel.nft import render_nat
    hosts = [f"198.51.100.{i}" for i in range(11, 15)]
    p = project_service(Service(K, destinations=tuple(Destination(h, 8080, 1) for h in hosts)))
    q = project_service(Service(K, destinations=tuple(
        Destination(h, 8080, 0 if h.endswith(".12") else 1) for h in hosts)))
    name = key_name(K)
    stmts, slots = render_nat(q, p, hosts)
    assert slots == ["198.51.100.11", "198.51.100.14", "198.51.100.13"]
    assert stmts == [
        f"flush chain inet hoststated svc_{name}",
        f"add rule inet hoststated svc_{name} meta l4proto tcp dnat ip to numgen inc mod 3 "
        f"map @map_{name} : 8080",
        f"delete element inet hoststated map_{name} {{ 1, 3 }}",
        f"add element inet hoststated map_{name} {{ 1 : 198.51.100.14 }}"]
    # and back: a new last slot
    stmts, slots = render_nat(p, q, slots)
    assert slots == ["198.51.100.11", "198.51.100.14", "198.51.100.13", "198.51.100.12"]
    assert stmts[-1] == f"add element inet hoststated map_{name} {{ 3 : 198.51.100.12 }}"
    # a weighted service is written in its own order, in full when the count changes
    w = project_service(Service(K, destinations=(Destination(hosts[0], 8080, 2),
                                                 Destination(hosts[1], 8080, 1))))
    stmts, slots = render_nat(w, p, hosts)
    assert stmts[0] == f"add chain inet hoststated svc_{name}" and slots == slots_of(w)


def test_parse_table_adopts_one_slot_maps_in_any_order():
    elems = [[0, "198.51.100.13"], [1, "198.51.100.11"], [2, "198.51.100.12"]]
    layouts = {}
    got = parse_table(listing(elems), layouts)
    want = project_service(Service(K, destinations=tuple(
        Destination(f"198.51.100.{i}", 8080, 1) for i in (11, 12, 13))))
    assert got == {K: want}
    assert layouts == {K: ["198.51.100.13", "198.51.100.11", "198.51.100.12"]}
    # a hole is still drift
    assert parse_table(listing(elems[:2]))[K].destinations == ()


# --- weighted-failover, destination-hash, sticky-address --------------------

def test_project_weighted_failover_is_the_top_host_alone():
    d = (Destination("198.51.100.11", 80, 5), Destination("198.51.100.12", 80, 10),
         Destination("198.51.100.13", 80, 10), Destination("198.51.100.14", 80, 0))
    p = project_service(Service(K, mode="weighted-failover", destinations=d))
    # the highest weight; of two, the first in order (IPVS gets them so)
    assert p.mode == "roundrobin" and p.destinations == (Destination("198.51.100.12", 80, 1),)
    p = project_service(Service(K, mode="weighted-failover", destinations=d[:1] + d[3:]))
    assert p.destinations == (Destination("198.51.100.11", 80, 1),)
    assert slots_of(p) == ["198.51.100.11"]
    # nobody up: what an empty chain reads back as
    assert project_service(Service(K, mode="weighted-failover", destinations=d[3:])) == Service(K)


def test_project_destination_hash_hashes_the_destination_on_consistent_slots():
    d = tuple(Destination(f"198.51.100.{i}", 80, w) for i, w in ((11, 1), (12, 3), (13, 1)))
    p = project_service(Service(K, mode="destination-hash", destinations=d))
    src = project_service(Service(K, mode="source-hash", destinations=d))
    assert p.mode == "destination-hash" and src.mode == "source-hash"
    assert slots_of(p) == slots_of(src) == consistent([x.address for x in d], hash_slot_count(16))
    rule = [s for s in render_service(p) if s.startswith("add rule")]
    assert rule == [f"add rule inet hoststated svc_{key_name(K)} meta l4proto tcp dnat ip to "
                    f"jhash ip daddr mod {hash_slot_count(16)} seed 0x0 map @map_{key_name(K)}"]


def test_project_sticky_canonical_netmask():
    from hoststated.kernel.nft import sticky_mask
    one = (Destination("198.51.100.11", 80, 1),)
    p = project_service(Service(K, persistence=120, netmask="255.255.255.0", destinations=one))
    assert (p.persistence, p.netmask) == (120, "255.255.255.0")
    assert project_service(Service(K, persistence=120, destinations=one)).netmask is None
    assert sticky_mask(4, "255.255.255.255") is None and sticky_mask(4, "/16") == "255.255.0.0"
    assert sticky_mask(6, "64") == "64" and sticky_mask(6, "128") is None
    assert sticky_mask(6, "255.255.255.0") is None          # as IPVS: the whole address
    # no persistence without a mask to keep, and none with direct routing
    assert project_service(Service(K, netmask="255.255.255.0", destinations=one)).netmask is None
    r = project_service(Service(K, method="route", interface="d0", route_interface="br0",
                                persistence=120, destinations=one))
    assert r.persistence == 0 and r.netmask is None
    # nobody up: the empty form, whatever the persistence
    assert project_service(Service(K, persistence=120, destinations=(
        Destination("198.51.100.11", 80, 0),))) == Service(K)


def test_render_sticky_chains_sets_and_verdict_map():
    from hoststated.kernel.nft import drop_sticky, render_nat
    a, b = "198.51.100.11", "198.51.100.12"
    p = project_service(Service(K, persistence=300, netmask="255.255.255.0", destinations=(
        Destination(a, 8080, 1), Destination(b, 8080, 1))))
    n = key_name(K)
    t = "inet hoststated"
    stk = {h: f"stk_{n}__{h.replace('.', '_')}" for h in (a, b)}
    aff = {h: f"aff_{n}__{h.replace('.', '_')}" for h in (a, b)}
    stmts, slots = render_nat(p, None, None)
    assert slots == [a, b]
    assert stmts[:3] == [f"add chain {t} pick_{n}",
                         f"add chain {t} svc_{n}", f"flush chain {t} svc_{n}"]
    assert stmts[3:8] == [
        f"add set {t} {aff[a]} {{ typeof ip saddr ; flags dynamic,timeout ; }}",
        f"add chain {t} {stk[a]}", f"flush chain {t} {stk[a]}",
        f"add rule {t} {stk[a]} update @{aff[a]} {{ ip saddr & 255.255.255.0 timeout 300s }}",
        f"add rule {t} {stk[a]} meta l4proto tcp counter dnat ip to {a}:8080"]
    assert stmts[13:] == [
        f"add rule {t} svc_{n} ip saddr & 255.255.255.0 @{aff[a]} goto {stk[a]}",
        f"add rule {t} svc_{n} ip saddr & 255.255.255.0 @{aff[b]} goto {stk[b]}",
        f"add rule {t} svc_{n} goto pick_{n}",
        f"add map {t} vmap_{n} {{ typeof numgen inc mod 2 : verdict ; }}",
        f"flush map {t} vmap_{n}",
        f"add element {t} vmap_{n} {{ 0 : goto {stk[a]}, 1 : goto {stk[b]} }}",
        f"flush chain {t} pick_{n}",
        f"add rule {t} pick_{n} numgen inc mod 2 vmap @vmap_{n}"]
    # b goes down (quiescent: weight 0): its set is flushed, its rules stay,
    # and only its slot of the verdict map and the pick rule are written
    q = project_service(Service(K, persistence=300, netmask="255.255.255.0", destinations=(
        Destination(a, 8080, 1), Destination(b, 8080, 0))))
    assert q.destinations == (Destination(a, 8080, 1), Destination(b, 8080, 0))
    stmts, slots = render_nat(q, p, [a, b])
    assert slots == [a]
    assert stmts == [f"add chain {t} pick_{n}", f"flush set {t} {aff[b]}",
                     f"delete element {t} vmap_{n} {{ 1 }}",
                     f"flush chain {t} pick_{n}",
                     f"add rule {t} pick_{n} numgen inc mod 1 vmap @vmap_{n}"]
    # without the slots as they are, the map is written in full
    stmts, _ = render_nat(q, p, None)
    assert stmts[-5:] == [f"add map {t} vmap_{n} {{ typeof numgen inc mod 2 : verdict ; }}",
                          f"flush map {t} vmap_{n}",
                          f"add element {t} vmap_{n} {{ 0 : goto {stk[a]} }}",
                          f"flush chain {t} pick_{n}",
                          f"add rule {t} pick_{n} numgen inc mod 1 vmap @vmap_{n}"]
    # back up: a new last slot
    stmts, slots = render_nat(p, q, [a])
    assert slots == [a, b] and stmts[-3:] == [
        f"add element {t} vmap_{n} {{ 1 : goto {stk[b]} }}",
        f"flush chain {t} pick_{n}", f"add rule {t} pick_{n} numgen inc mod 2 vmap @vmap_{n}"]
    # b removed (not quiescent): the service chain is rewritten; a's set
    # is neither flushed nor deleted, b's go with drop_sticky
    r = project_service(Service(K, persistence=300, netmask="255.255.255.0",
                                destinations=(Destination(a, 8080, 1),)))
    stmts, _ = render_nat(r, p, [a, b])
    assert f"flush chain {t} svc_{n}" in stmts
    assert not any(aff[a] in s and "@" not in s for s in stmts)
    assert not any(stk[b] in s for s in stmts)
    assert drop_sticky(K, [b], vmap=False) == [
        f"add chain {t} {stk[b]}", f"flush chain {t} {stk[b]}", f"delete chain {t} {stk[b]}",
        f"add set {t} {aff[b]} {{ typeof ip saddr ; flags dynamic,timeout ; }}",
        f"delete set {t} {aff[b]}"]
    # a new netmask empties the sets (their addresses are masked the old way)
    r = project_service(Service(K, persistence=300, netmask="255.255.0.0",
                                destinations=p.destinations))
    assert f"flush set {t} {aff[a]}" in render_nat(r, p, [a, b])[0]
    # IPv6, no port change: the address alone
    k6 = ServiceKey(6, "tcp", "2001:db8::10", 80)
    p6 = project_service(Service(k6, persistence=60, netmask="64",
                                 destinations=(Destination("2001:db8:2::11", 80, 1),)))
    s6 = render_nat(p6, None, None)[0]
    aff6 = f"aff_{key_name(k6)}__2001_0db8_0002_0000_0000_0000_0000_0011"
    assert any(s.endswith(f"update @{aff6} {{ ip6 saddr & ffff:ffff:ffff:ffff:: timeout 60s }}")
               for s in s6)
    assert any(s.endswith("meta l4proto tcp counter dnat ip6 to 2001:db8:2::11") for s in s6)


def _captured():
    import json
    import pathlib
    path = pathlib.Path(__file__).parent / "data" / "nft-sticky-listing.json"
    return json.loads(path.read_text())


def test_parse_table_reads_sticky_and_destination_hash_back():
    """A listing captured from libnftables 1.0.6 after NftBackend.apply of
    the three services below (kernel 6.18)."""
    k6 = ServiceKey(6, "tcp", "2001:db8::10", 80)
    kd = ServiceKey(4, "tcp", "203.0.113.11", 80)
    want = {
        K: project_service(Service(K, persistence=300, netmask="255.255.255.0", destinations=(
            Destination("198.51.100.11", 8080, 1), Destination("198.51.100.12", 8080, 2)))),
        k6: project_service(Service(k6, persistence=60, netmask="64",
                                    destinations=(Destination("2001:db8:2::11", 80, 1),))),
        kd: project_service(Service(kd, mode="destination-hash", destinations=(
            Destination("198.51.100.11", 80, 1), Destination("198.51.100.12", 80, 1)))),
    }
    layouts, sticky = {}, {}
    assert parse_table(_captured(), layouts, sticky) == want
    assert layouts[K] == slots_of(want[K])
    assert sticky == {K: {"198.51.100.11", "198.51.100.12"}, k6: {"2001:db8:2::11"}}


def _edit(objs, chain, fn):
    import copy
    objs = copy.deepcopy(objs)
    for o in objs:
        if "rule" in o and o["rule"]["chain"] == chain:
            fn(o["rule"])
    return objs


def test_parse_table_sticky_drift_is_reported_without_destinations():
    n = key_name(K)
    base = _captured()
    stk = f"stk_{n}__198_51_100_11"

    def timeout(r):
        if "set" in r["expr"][0]:
            r["expr"][0]["set"]["elem"]["elem"]["timeout"] = 30

    def target(r):
        if "dnat" in r["expr"][-1]:
            r["expr"][-1]["dnat"]["addr"] = "198.51.100.13"

    def mask(r):
        m = r["expr"][0].get("match")
        if m and "&" in m["left"]:
            m["left"]["&"][1] = "255.255.0.0"
    def selector(r):
        r["expr"][0]["vmap"]["key"] = {"jhash": {"mod": 3, "seed": 0, "expr": {
            "payload": {"protocol": "ip", "field": "saddr"}}}}
    for objs in (_edit(base, stk, timeout), _edit(base, stk, target),
                 _edit(base, f"svc_{n}", mask), _edit(base, f"pick_{n}", selector),
                 [o for o in base if not ("rule" in o and o["rule"]["chain"] == stk)]):
        got = parse_table(objs)[K]
        assert got.destinations == () and got.persistence == 0
    # a missing slot of the verdict map: the same
    holed = [dict(o, map=dict(o["map"], elem=o["map"]["elem"][1:]))
             if "map" in o and o["map"]["name"] == f"vmap_{n}" else o for o in base]
    assert parse_table(holed)[K].destinations == ()


def test_desired_netmask_of_a_v6_prefix_on_a_v4_listener():
    # `netmask "/64"` on a redirect that listens on IPv4 and IPv6: the
    # IPv4 service keys on the whole address (it used to raise ValueError)
    from hoststated.conf.model import (CheckTcp, Config, Forward, Global, Host, Listen,
                                       Redirect, Sticky, Table)
    from hoststated.kernel.desired import redirect_services
    from hoststated.states import HostStatus
    hosts = (Host(id=1, name="a", address="198.51.100.11", port=80, table="web:80"),
             Host(id=2, name="b", address="2001:db8:2::11", port=80, table="web:80"))
    cfg = Config(**{"global": Global()}, tables=(Table(id=1, name="web:80", template="web",
                                                       port=80, check=CheckTcp(), hosts=hosts),),
                 redirects=(Redirect(id=1, name="www", sticky=Sticky(timeout=60, netmask="/64"),
                                     listen=(Listen(address="203.0.113.10", port=80),
                                             Listen(address="2001:db8::10", port=80)),
                                     forward=Forward(table="web:80")),))
    v4, v6 = redirect_services(cfg, cfg.redirects[0], {1: HostStatus.UP, 2: HostStatus.UP})
    assert (v4.persistence, v4.netmask) == (60, None)
    assert (v6.persistence, v6.netmask) == (60, "64")
    assert project_service(v6).netmask == "64" and project_service(v4).netmask is None


def test_config_text_to_the_nftables_projection():
    """From relayd.conf syntax: the three features reach the projection."""
    from hoststated.conf.load import load_text
    from hoststated.kernel.desired import redirect_services
    from hoststated.states import HostStatus
    cfg = load_text('''
table <web> { 198.51.100.11 weight 10, 198.51.100.12 weight 5 }
table <even> { 198.51.100.11, 198.51.100.12 }
redirect "s" {
    listen on 203.0.113.10 port 80
    forward to <web> port 80 check tcp
    sticky-address timeout 60 netmask 255.255.255.0
}
redirect "f" {
    listen on 203.0.113.11 port 80
    forward to <web> port 80 mode weighted-failover check tcp
}
redirect "d" {
    listen on 203.0.113.12 port 80
    forward to <even> port 80 mode destination-hash check tcp
}
''', lookup=False)
    up = {h.id: HostStatus.UP for h in cfg.hosts()}
    s, f, d = (project_service(redirect_services(cfg, r, up)[0]) for r in cfg.redirects)
    assert (s.persistence, s.netmask, s.mode) == (60, "255.255.255.0", "roundrobin")
    assert [x.weight for x in s.destinations] == [2, 1]
    assert f.destinations == (Destination("198.51.100.11", 80, 1),)
    assert d.mode == "destination-hash" and "jhash ip daddr" in render_service(d)[-1]
    # the heavier host down: the failover takes the other one
    down = {**up, next(h.id for h in cfg.hosts() if h.address == "198.51.100.11"):
            HostStatus.DOWN}
    f = project_service(redirect_services(cfg, cfg.redirects[1], down)[0])
    assert f.destinations == (Destination("198.51.100.12", 80, 1),)
