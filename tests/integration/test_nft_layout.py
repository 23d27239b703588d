"""A host change rewrites only its slots in the real kernel, and what it leaves is adopted.

Round robin with one slot per host: a host leaving gives its slot to the last
slot's host and the map shrinks by one (the rule's modulus with it, in the
same transaction); joining takes a new last slot. The map is then not in
sorted order; a resync and a restarted Reconciler must still adopt it as it
is, and traffic must be shared evenly throughout.
"""

from __future__ import annotations

import collections
import json

import pytest

from hoststated.kernel import Reconciler
from hoststated.kernel.nft import key_name
from hoststated.kernel.service import ServiceKey
from hoststated.states import HostStatus as S

from lab import Farm, Lab, usable
from test_nft_traffic import B, VIP, director, mk_config  # noqa: F401 (fixture)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

UP4 = {1: S.UP, 2: S.UP, 3: S.UP, 4: S.UP}
MAP = f"map_{key_name(ServiceKey(4, 'tcp', VIP, 80))}"


@pytest.fixture(scope="module")
def lab():
    with Lab("nftlay") as lab:
        yield Farm(lab, backends=4)


def slots(lab) -> list[str]:
    r = lab.ns(lab.director, "nft", "-j", "list", "map", "inet", "hoststated", MAP)
    (m,) = [o["map"] for o in json.loads(r.stdout)["nftables"] if "map" in o]
    # a slot with its counter is {"elem": {"val": slot, "counter": ...}}
    elems = dict((k["elem"]["val"] if isinstance(k, dict) else k, v) for k, v in m.get("elem", []))
    assert sorted(elems) == list(range(len(elems)))
    return [elems[i] for i in range(len(elems))]


def test_host_change_moves_one_slot_and_is_adopted(director):
    lab = director
    rec = Reconciler(mk_config(main=B[:4]))
    rec.start()
    rec.update(UP4)
    assert slots(lab) == B[:4]
    nft = rec.backend("nftables")
    before = nft.statements
    rec.update({2: S.DOWN})
    # add table, flush chain + rule (mod 3), delete slots 1 and 3, add slot 1
    assert nft.statements - before == 5
    assert slots(lab) == [B[0], B[3], B[2]]
    r = lab.requests(VIP, 60)
    assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b3": 20, "b4": 20}
    assert rec.resync() == []                   # read back as it is: no drift
    rec.stop(clean=False)

    again = Reconciler(mk_config(main=B[:4]))
    assert again.start() == []                  # a restart adopts the moved layout
    assert {h: again.statuses()[h] for h in (1, 3, 4)} == {1: S.UP, 3: S.UP, 4: S.UP}
    again.update({1: S.UP, 3: S.UP, 4: S.UP, 2: S.UP})
    assert slots(lab) == [B[0], B[3], B[2], B[1]]
    r = lab.requests(VIP, 80)
    assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20, "b3": 20, "b4": 20}
    assert again.resync() == []
    # a weight change goes back to the canonical, interleaved order in one rewrite
    again.reconfigure(mk_config(main=B[:4], weights={B[0]: 2}))
    assert collections.Counter(slots(lab)) == {B[0]: 2, B[1]: 1, B[2]: 1, B[3]: 1}
    assert again.resync() == []
    again.stop(clean=True)


def test_drift_in_a_moved_layout_is_repaired(director):
    lab = director
    rec = Reconciler(mk_config(main=B[:4]))
    rec.start()
    rec.update(UP4)
    rec.update({1: S.DOWN})
    assert slots(lab) == [B[3], B[1], B[2]]
    # someone deletes a slot: the resync rewrites the service
    lab.ns(lab.director, "nft", "delete", "element", "inet", "hoststated", MAP, "{ 2 }")
    assert rec.resync() != []
    assert sorted(slots(lab)) == sorted(B[1:4])
    r = lab.requests(VIP, 30)
    assert r["failed"] == 0 and r["counts"] == {"b2": 10, "b3": 10, "b4": 10}
    rec.stop(clean=True)
