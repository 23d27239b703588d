"""sticky-address, destination-hash and weighted-failover under nftables, with real traffic.

Client -> director (nftables NAT, the Reconciler running in its netns) ->
real http.server backends; every request is a new TCP connection, from the
client's own address or from the extra sources of the Farm (192.0.2.3...,
all in one /24). A "killed" host is a backend whose server is stopped and
which is then marked down, as hce would.
"""

from __future__ import annotations

import collections
import json

import pytest

from hoststated.conf.model import Forward, Listen, Sticky
from hoststated.kernel import Reconciler, make_backend
from hoststated.kernel.nft import key_name
from hoststated.kernel.service import ServiceKey
from hoststated.states import HostStatus as S

from lab import Farm, InNetns, Lab, usable
from test_nft_traffic import B, B6, VIP, VIP2, VIP6, mk_config

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

UP3 = {1: S.UP, 2: S.UP, 3: S.UP}
NAMES = {"b1": 1, "b2": 2, "b3": 3, "b4": 4}       # page -> host id in table web:80


@pytest.fixture(scope="module")
def lab():
    with Lab("nftstk") as lab:
        yield Farm(lab, backends=4)


@pytest.fixture
def director(lab):
    """The test runs inside the director's netns; the owned table is gone
    after, and every backend serves again."""
    with InNetns(lab.director):
        try:
            yield lab
        finally:
            make_backend("nftables").remove({})
            for b in lab.backends:
                if b not in lab.servers:
                    lab.start_backend(b)


def with_redirects(cfg, **update):
    return cfg.model_copy(update={"redirects": tuple(
        r.model_copy(update=update) for r in cfg.redirects)})


def sticky_config(netmask=None, **kw):
    return with_redirects(mk_config(**kw), sticky=Sticky(timeout=300, netmask=netmask))


def kill(lab, rec, page):
    """Stop the backend that answers `page`, then mark its host down."""
    lab.stop_backend(lab.backends[NAMES[page] - 1])
    rec.update({NAMES[page]: S.DOWN})


def revive(lab, rec, page):
    lab.start_backend(lab.backends[NAMES[page] - 1])
    rec.update({NAMES[page]: S.UP})


def per_source(r, sources) -> dict[str, set[str]]:
    assert r["failed"] == 0, r["errors"]
    seen = collections.defaultdict(set)
    for i, page in enumerate(r["seq"]):
        seen[sources[i % len(sources)]].add(page)
    return seen


def one_backend(lab, vip, count=20, source=None) -> str:
    """The one backend that serves `count` new connections from `source`."""
    r = lab.requests(vip, count, sources=[source] if source else ())
    assert r["failed"] == 0, r["errors"]
    assert len(r["counts"]) == 1, r["counts"]
    return next(iter(r["counts"]))


def set_names(lab) -> list[str]:
    r = lab.ns(lab.director, "nft", "-j", "list", "sets", "inet")
    return [o["set"]["name"] for o in json.loads(r.stdout)["nftables"]
            if "set" in o and o["set"]["table"] == "hoststated"]


def set_elements(lab, name) -> list:
    r = lab.ns(lab.director, "nft", "-j", "list", "set", "inet", "hoststated", name)
    (s,) = [o["set"] for o in json.loads(r.stdout)["nftables"] if "set" in o]
    return s.get("elem", [])


def aff_name(key: ServiceKey, addr: str) -> str:
    return f"aff_{key_name(key)}__{addr.replace('.', '_')}"


def test_sticky_client_keeps_its_host_until_it_goes_down(director):
    lab = director
    key = ServiceKey(4, "tcp", VIP, 80)
    rec = Reconciler(sticky_config())
    rec.start()
    rec.update(UP3)
    client = "192.0.2.3"
    first = one_backend(lab, VIP, 30, client)              # round robin, yet one host
    # other clients are still spread, each on one host
    sources = [f"192.0.2.{i}" for i in range(4, 34)]
    seen = per_source(lab.requests(VIP, 90, sources=sources), sources)
    assert all(len(v) == 1 for v in seen.values())
    assert len({p for v in seen.values() for p in v}) == 3
    assert rec.resync() == []                              # the sticky form reads back
    # the client's host dies: the client moves, at once, and stays
    kill(lab, rec, first)
    # (quiescent: the host stays at weight 0 with an empty set)
    assert set_elements(lab, aff_name(key, B[NAMES[first] - 1])) == []
    second = one_backend(lab, VIP, 30, client)
    assert second != first
    # the host comes back: the client keeps its new host
    revive(lab, rec, first)
    assert one_backend(lab, VIP, 20, client) == second
    # a restart adopts the table as it is: nothing rewritten, nothing forgotten
    rec.stop(clean=False)
    rec = Reconciler(sticky_config())
    assert rec.start() == []
    addr = B[NAMES[second] - 1]
    assert [e for e in set_elements(lab, aff_name(key, addr))
            if e.get("elem", {}).get("val") == client]
    assert one_backend(lab, VIP, 20, client) == second
    # a reload that changes only another host's weight keeps the clients too
    rec.reconfigure(sticky_config(weights={B[NAMES[first] - 1]: 2}))
    assert one_backend(lab, VIP, 20, client) == second
    assert rec.resync() == []
    rec.stop(clean=True)
    assert lab.requests(VIP, 1)["failed"] == 1


def test_sticky_netmask_puts_a_subnet_on_one_host(director):
    lab = director
    sources = [f"192.0.2.{i}" for i in range(3, 43)]      # one /24
    # not quiescent: a down host leaves the service, its set with it
    rec = Reconciler(sticky_config(netmask="255.255.255.0", quiescent=False))
    rec.start()
    rec.update(UP3)
    r = lab.requests(VIP, 80, sources=sources)
    assert r["failed"] == 0 and len(r["counts"]) == 1, r["counts"]
    (page,) = r["counts"]
    key = ServiceKey(4, "tcp", VIP, 80)
    elems = set_elements(lab, aff_name(key, B[NAMES[page] - 1]))
    assert [e["elem"]["val"] for e in elems] == ["192.0.2.0"]
    # its host dies: the whole /24 moves to one other host
    kill(lab, rec, page)
    assert aff_name(key, B[NAMES[page] - 1]) not in set_names(lab)
    r = lab.requests(VIP, 40, sources=sources)
    assert r["failed"] == 0 and len(r["counts"]) == 1 and page not in r["counts"], r["counts"]
    assert rec.resync() == []
    rec.stop(clean=True)


def test_sticky_ipv6(director):
    lab = director
    cfg = with_redirects(mk_config(extra=B6), sticky=Sticky(timeout=60, netmask="/64"))
    rec = Reconciler(cfg)
    rec.start()
    rec.update({200: S.UP, 201: S.UP, 202: S.UP, **UP3})
    first = one_backend(lab, VIP6, 30)
    rec.update({200 + int(first[1:]) - 1: S.DOWN})
    second = one_backend(lab, VIP6, 30)
    assert second != first
    assert rec.resync() == []
    rec.stop(clean=True)


def test_destination_hash_each_destination_on_one_host(director):
    lab = director
    sources = [f"192.0.2.{i}" for i in range(3, 23)]
    # two virtual addresses of one redirect: each hashes to its host
    cfg = mk_config(mode="destination-hash",
                    listen=(Listen(address=VIP, port=80), Listen(address=VIP2, port=80)))
    rec = Reconciler(cfg)
    rec.start()
    rec.update(UP3)
    r1 = lab.requests(VIP, 40, sources=sources)
    r2 = lab.requests(VIP2, 40, sources=sources)
    assert r1["failed"] == r2["failed"] == 0
    assert len(r1["counts"]) == 1 and len(r2["counts"]) == 1, (r1["counts"], r2["counts"])
    assert rec.resync() == []
    rec.stop(clean=True)

    # many destinations through a firewall mark: spread, each on one host,
    # and a host leaving moves only its own destinations
    vips = [f"203.0.113.{i}" for i in range(100, 132)]
    mark = "\n".join([
        "add table inet hsmark",
        "add chain inet hsmark pre { type filter hook prerouting priority -150 ; }",
        "add rule inet hsmark pre ip daddr 203.0.113.100-203.0.113.131 tcp dport 80 "
        "meta mark set 7",
    ])
    path = lab.tmp / "mark.nft"
    path.write_text(mark + "\n")
    lab.ns(lab.director, "nft", "-f", str(path))
    try:
        cfg = mk_config(main=B[:4], mode="destination-hash", listen=(Listen(fwmark=7),))
        rec = Reconciler(cfg)
        rec.start()
        rec.update({1: S.UP, 2: S.UP, 3: S.UP, 4: S.UP})

        def who():
            # one client run: destination i % 32, source i % 20
            r = lab.requests(",".join(vips), 3 * len(vips), sources=sources)
            assert r["failed"] == 0, r["errors"]
            seen = collections.defaultdict(set)
            for i, page in enumerate(r["seq"]):
                seen[vips[i % len(vips)]].add(page)
            assert all(len(v) == 1 for v in seen.values()), seen
            return {v: p.pop() for v, p in seen.items()}

        before = who()
        assert len(set(before.values())) >= 3
        assert who() == before                         # stable
        gone = before[vips[0]]
        rec.update({NAMES[gone]: S.DOWN})
        after = who()
        assert all(after[v] == before[v] for v in vips if before[v] != gone)
        assert all(after[v] != gone for v in vips)
        rec.update({NAMES[gone]: S.UP})
        assert who() == before
        assert rec.resync() == []
        rec.stop(clean=True)
    finally:
        lab.ns(lab.director, "nft", "delete", "table", "inet", "hsmark", check=False)


def test_weighted_failover_all_to_the_heaviest_up_host(director):
    lab = director
    sources = [f"192.0.2.{i}" for i in range(3, 23)]
    cfg = mk_config(main=B[:2], mode="weighted-failover", weights={B[0]: 10, B[1]: 5})
    rec = Reconciler(cfg)
    rec.start()
    rec.update({1: S.UP, 2: S.UP})
    r = lab.requests(VIP, 40, sources=sources)
    assert r["failed"] == 0 and r["counts"] == {"b1": 40}
    assert rec.resync() == []
    kill(lab, rec, "b1")
    r = lab.requests(VIP, 40, sources=sources)
    assert r["failed"] == 0 and r["counts"] == {"b2": 40}
    revive(lab, rec, "b1")
    r = lab.requests(VIP, 40, sources=sources)
    assert r["failed"] == 0 and r["counts"] == {"b1": 40}
    # a restart adopts it
    rec.stop(clean=False)
    rec = Reconciler(cfg)
    assert rec.start() == []
    assert lab.requests(VIP, 20)["counts"] == {"b1": 20}
    rec.stop(clean=True)
