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
        f"add map inet hoststated map_{name} {{ typeof numgen inc mod 2 : ip daddr ; }}",
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
