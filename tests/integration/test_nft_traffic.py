"""The nftables backend with real traffic, driven through the Reconciler.

Client -> director (nftables NAT, the Reconciler running in its netns) ->
three or four real http.server backends; every request is a new TCP
connection from the client namespace.
"""

from __future__ import annotations

import collections
import json

import pytest

from hoststated.conf.model import (CheckTcp, Config, Forward, Global, Host, Listen,
                                   Redirect, Table)
from hoststated.kernel import Reconciler, make_backend
from hoststated.kernel.service import ServiceKey
from hoststated.states import HostStatus as S

from lab import Farm, InNetns, Lab, usable, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

VIP, VIP2, VIP6 = "203.0.113.10", "203.0.113.20", "2001:db8::10"
B = ["198.51.100.11", "198.51.100.12", "198.51.100.13", "198.51.100.14"]
B6 = ["2001:db8:2::11", "2001:db8:2::12", "2001:db8:2::13"]


def mk_table(tid, name, addrs, first_id, weights=None):
    hosts = tuple(Host(id=first_id + i, name=a, address=a, port=80, table=name,
                       weight=(weights or {}).get(a, 1)) for i, a in enumerate(addrs))
    return Table(id=tid, name=name, template=name.split(":")[0], port=80,
                 check=CheckTcp(), hosts=hosts)


def mk_config(main=B[:3], backup=None, mode="roundrobin", weights=None, quiescent=True,
              extra=(), listen=None):
    tables = [mk_table(1, "web:80", main, 1, weights)]
    if backup:
        tables.append(mk_table(2, "sorry:80", backup, 100))
    if extra:
        tables.append(mk_table(3, "web6:80", extra, 200))
    redirects = [Redirect(id=1, name="www", listen=listen or (Listen(address=VIP, port=80),),
                          forward=Forward(table="web:80", mode=mode),
                          backup=Forward(table="sorry:80", mode=mode) if backup else None,
                          quiescent=quiescent)]
    if extra:
        redirects.append(Redirect(id=2, name="www6", listen=(Listen(address=VIP6, port=80),),
                                  forward=Forward(table="web6:80", mode=mode)))
    return Config(**{"global": Global(engine="nftables")}, tables=tuple(tables),
                  redirects=tuple(redirects))


UP3 = {1: S.UP, 2: S.UP, 3: S.UP}


@pytest.fixture(scope="module")
def lab():
    with Lab("nft") as lab:
        yield Farm(lab, backends=4)


@pytest.fixture
def director(lab):
    """The test runs inside the director's netns; the owned table is gone after."""
    with InNetns(lab.director):
        try:
            yield lab
        finally:
            make_backend("nftables").remove({})


def nft_json(lab, *what):
    # stateless (-s): a counter's packets are the kernel's, not ours to compare
    r = lab.ns(lab.director, "nft", "-s", "-j", "list", *what)
    return json.loads(r.stdout)["nftables"]


def test_roundrobin_down_recovery_disable(director):
    lab = director
    rec = Reconciler(mk_config())
    rec.start()
    assert lab.requests(VIP, 3)["failed"] == 3      # nothing up: no rule, no NAT
    rec.update(UP3)
    r = lab.requests(VIP, 90)
    assert r["failed"] == 0 and r["counts"] == {"b1": 30, "b2": 30, "b3": 30}
    # locally originated (the director itself, given a route to the VIP
    # as a real director has): translated by the nat output chain
    lab.ns(lab.director, "ip", "route", "add", f"{VIP}/32", "dev", "br0")
    try:
        r = lab.requests(VIP, 6, ns=lab.director)
        assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2", "b3"}
    finally:
        lab.ns(lab.director, "ip", "route", "del", f"{VIP}/32", "dev", "br0")
    rec.update({2: S.DOWN})
    r = lab.requests(VIP, 60)
    assert r["failed"] == 0 and r["counts"] == {"b1": 30, "b3": 30}
    rec.update({2: S.UP})
    r = lab.requests(VIP, 60)
    assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20, "b3": 20}
    rec.update({3: S.DISABLED})
    r = lab.requests(VIP, 40)
    assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20}
    rec.update({3: S.UP})
    assert set(lab.requests(VIP, 30)["counts"]) == {"b1", "b2", "b3"}
    rec.update({}, {"www"})                         # redirect disabled: rules gone
    assert lab.requests(VIP, 2)["failed"] == 2
    rec.update({}, set())                           # the disabled set is kept until replaced
    assert lab.requests(VIP, 3)["failed"] == 0
    rec.stop(clean=True)


def test_weights(director):
    lab = director
    rec = Reconciler(mk_config(weights={B[0]: 3, B[1]: 1, B[2]: 2}))
    rec.start()
    rec.update(UP3)
    r = lab.requests(VIP, 120)
    assert r["failed"] == 0 and r["counts"] == {"b1": 60, "b2": 20, "b3": 40}
    # interleaved, not in blocks: the first 6 requests already reach all three
    assert set(r["seq"][:6]) == {"b1", "b2", "b3"}
    rec.stop(clean=True)


def test_random_spreads(director):
    lab = director
    rec = Reconciler(mk_config(mode="random"))
    rec.start()
    rec.update(UP3)
    r = lab.requests(VIP, 150)
    assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2", "b3"}
    assert min(r["counts"].values()) >= 20
    rec.stop(clean=True)


def test_source_hash_sticky_and_few_flows_move(director):
    lab = director
    sources = [f"192.0.2.{i}" for i in range(2, 42)]
    rec = Reconciler(mk_config(main=B[:4], mode="source-hash"))
    rec.start()
    rec.update({1: S.UP, 2: S.UP, 3: S.UP, 4: S.UP})

    def who():
        r = lab.requests(VIP, 80, sources=sources)      # every source twice
        assert r["failed"] == 0
        seen = collections.defaultdict(set)
        for i, body in enumerate(r["seq"]):
            seen[sources[i % len(sources)]].add(body)
        assert all(len(v) == 1 for v in seen.values())  # a source sticks to one host
        return {s: v.pop() for s, v in seen.items()}

    before = who()
    assert len(set(before.values())) >= 3
    rec.update({4: S.DOWN})
    after = who()
    moved = [s for s in sources if before[s] != after[s]]
    # only the sources that were on b4 move
    assert moved and all(before[s] == "b4" for s in moved)
    rec.update({4: S.UP})
    assert who() == before
    rec.stop(clean=True)


def test_backup_table_takes_over(director):
    lab = director
    rec = Reconciler(mk_config(main=B[:2], backup=[B[3]], quiescent=False))
    rec.start()
    rec.update({1: S.UP, 2: S.UP, 100: S.UP})
    assert set(lab.requests(VIP, 20)["counts"]) == {"b1", "b2"}
    rec.update({1: S.DOWN, 2: S.DOWN})
    r = lab.requests(VIP, 20)
    assert r["failed"] == 0 and r["counts"] == {"b4": 20}
    rec.update({1: S.UP})
    assert lab.requests(VIP, 20)["counts"] == {"b1": 20}
    rec.update({1: S.DOWN, 100: S.DOWN})           # nobody at all: not translated
    assert lab.requests(VIP, 2)["failed"] == 2
    rec.stop(clean=True)


def test_ipv6(director):
    lab = director
    rec = Reconciler(mk_config(extra=B6))
    rec.start()
    rec.update({200: S.UP, 201: S.UP, 202: S.UP, **UP3})
    r = lab.requests(VIP6, 60)
    assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20, "b3": 20}
    rec.update({201: S.DOWN})
    r = lab.requests(VIP6, 40)
    assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b3": 20}
    assert lab.requests(VIP, 30)["counts"] == {"b1": 10, "b2": 10, "b3": 10}
    rec.stop(clean=True)


def test_changes_under_traffic_zero_failures(director):
    """A host down/up, a reconfigure adding a host and a restart (a new
    Reconciler adopting the kernel), all while a client keeps connecting."""
    lab = director
    rec = Reconciler(mk_config())
    rec.start()
    rec.update(UP3)
    # traffic until finish: a 4 s window could end before a loaded box got
    # through the changes below and never reach b4
    p = lab.traffic(VIP)
    import time
    wait_for(lambda: lab.seen(p), 30, what="the traffic flowing")
    time.sleep(0.5)
    rec.update({2: S.DOWN})
    time.sleep(0.5)
    rec.update({2: S.UP})
    time.sleep(0.5)
    ops = rec.reconfigure(mk_config(main=B[:4]))
    assert not any(type(o).__name__ == "DelService" for o in ops)   # b4 unknown yet
    time.sleep(0.3)
    rec.update({4: S.UP})
    time.sleep(0.5)
    # a restart: the old Reconciler goes away without cleaning, a new one adopts
    rec.stop(clean=False)
    rec = Reconciler(mk_config(main=B[:4]))
    assert rec.start() == []
    time.sleep(0.5)                         # traffic flows after the restart too
    wait_for(lambda: lab.seen(p) >= {"b1", "b2", "b3", "b4"}, 30,
             what=f"the traffic reaching every host (so far {lab.seen(p)})")
    r = lab.finish(p)
    assert r["failed"] == 0, r["errors"]
    assert set(r["counts"]) == {"b1", "b2", "b3", "b4"}
    rec.stop(clean=True)


def test_resync_repairs_hand_flushed_ruleset_and_deleted_element(director):
    lab = director
    rec = Reconciler(mk_config())
    rec.start()
    rec.update(UP3)
    assert rec.resync() == []
    lab.ns(lab.director, "nft", "flush", "ruleset")
    assert lab.requests(VIP, 2)["failed"] == 2
    assert rec.resync()
    assert lab.requests(VIP, 30)["counts"] == {"b1": 10, "b2": 10, "b3": 10}
    # someone deletes one slot of a map by hand: a lookup miss waiting to happen
    key = ServiceKey(4, "tcp", VIP, 80)
    from hoststated.kernel.nft import key_name
    lab.ns(lab.director, "nft", "delete", "element", "inet", "hoststated",
           f"map_{key_name(key)}", "{ 1 }")
    assert rec.resync()
    r = lab.requests(VIP, 30)
    assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10, "b3": 10}
    assert rec.resync() == []
    rec.stop(clean=True)


def test_clean_stop_and_foreign_tables_untouched(director):
    lab = director
    lab.ns(lab.director, "nft", "add", "table", "inet", "foreign")
    lab.ns(lab.director, "nft", "add", "chain", "inet", "foreign", "c",
           "{ type filter hook input priority 0 ; policy accept ; }")
    lab.ns(lab.director, "nft", "add", "rule", "inet", "foreign", "c", "counter")
    foreign = nft_json(lab, "table", "inet", "foreign")
    try:
        rec = Reconciler(mk_config())
        rec.start()
        rec.update(UP3)
        rec.resync()
        rec.reconfigure(mk_config(main=B[:2]))
        rec.stop(clean=True)
        tables = [o["table"]["name"] for o in nft_json(lab, "tables") if "table" in o]
        assert tables == ["foreign"]
        assert nft_json(lab, "table", "inet", "foreign") == foreign
        assert lab.requests(VIP, 1)["failed"] == 1
    finally:
        lab.ns(lab.director, "nft", "delete", "table", "inet", "foreign", check=False)


def test_direct_routing_netdev_fwd(director):
    """`route to`: netdev ingress on the client side forwards the packet
    unchanged (no NAT) to a host chosen by a hash of the client's address
    (mode source-hash: every connection of a client, whatever its port, goes
    to one host); each backend has the VIP on lo and answers the client itself."""
    lab = director
    vip = "203.0.113.50"
    for b in lab.backends:
        lab.ns(b, "ip", "addr", "replace", f"{vip}/32", "dev", "lo")
    cfg = mk_config(listen=(Listen(address=vip, port=80, interface="d0"),))
    r0 = cfg.redirects[0]
    cfg = cfg.model_copy(update={"redirects": (r0.model_copy(update={
        "forward": Forward(table="web:80", method="route", interface="br0",
                           mode="source-hash")}),)})
    sources = [f"192.0.2.{i}" for i in range(2, 42)]
    rec = Reconciler(cfg)
    rec.start()
    rec.update(UP3)
    r = lab.requests(vip, 120, sources=sources)
    assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2", "b3"}
    # three connections from each source (new ports each time): one host each
    by_source: dict[str, set[str]] = {}
    for i, page in enumerate(r["seq"]):
        by_source.setdefault(sources[i % len(sources)], set()).add(page)
    assert all(len(pages) == 1 for pages in by_source.values()), by_source
    # nothing was NATed: the inet table has no rule for this VIP
    assert vip not in lab.ns(lab.director, "nft", "list", "table", "inet", "hoststated").stdout
    assert "fwd ip to jhash" in lab.ns(lab.director, "nft", "list", "table", "netdev",
                                       "hoststated").stdout
    assert rec.resync() == []
    rec.update({2: S.DOWN})
    r = lab.requests(vip, 60, sources=sources)
    assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b3"}
    rec.stop(clean=True)
    assert lab.ns(lab.director, "nft", "list", "table", "netdev", "hoststated",
                  check=False).returncode != 0
