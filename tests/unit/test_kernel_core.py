"""desired, diff and the Reconciler with the `none` backend: pure, no root."""

from dataclasses import replace

import pytest

from hoststated.conf.model import (CheckTcp, Config, Forward, Global, Host, Listen,
                                   Redirect, Sticky, Table)
from hoststated.kernel import NoneBackend, Reconciler
from hoststated.kernel.desired import adopted_statuses, desired
from hoststated.kernel.diff import (AddDest, AddService, DelDest, DelService, SetDest,
                                    UpdateService, apply_ops, diff)
from hoststated.kernel.service import Destination, Service, ServiceKey
from hoststated.states import HostStatus as S

VIP = "203.0.113.10"


def table(tid, name, addrs, port=80, first_id=1, weights=None, disabled=False):
    hosts = tuple(Host(id=first_id + i, name=a, address=a, port=port, table=name,
                       weight=(weights or {}).get(a, 1)) for i, a in enumerate(addrs))
    return Table(id=tid, name=name, template=name.split(":")[0], port=port,
                 check=CheckTcp(), hosts=hosts, disabled=disabled)


def config(main=("198.51.100.11", "198.51.100.12", "198.51.100.13"), backup=None,
           quiescent=True, mode="roundrobin", engine="none", sticky=None, weights=None,
           listen=None, disabled=False, table_disabled=False):
    tables = [table(1, "web:80", main, weights=weights, disabled=table_disabled)]
    if backup:
        tables.append(table(2, "sorry:80", backup, first_id=100))
    r = Redirect(id=1, name="www", listen=listen or (Listen(address=VIP, port=80),),
                 forward=Forward(table="web:80", mode=mode),
                 backup=Forward(table="sorry:80", mode=mode) if backup else None,
                 quiescent=quiescent, sticky=sticky, disabled=disabled)
    return Config(**{"global": Global(engine=engine)}, tables=tuple(tables), redirects=(r,))


KEY = ServiceKey(4, "tcp", VIP, 80)


def dests(state, key=KEY):
    return {(d.address, d.weight) for d in state[key].destinations}


def test_all_up_all_in_with_weight():
    cfg = config(weights={"198.51.100.12": 3})
    st = desired(cfg, {1: S.UP, 2: S.UP, 3: S.UP})["none"]
    assert dests(st) == {("198.51.100.11", 1), ("198.51.100.12", 3), ("198.51.100.13", 1)}
    assert st[KEY].redirect == "www" and st[KEY].destinations[0].port == 80


def test_down_host_quiescent_or_removed():
    st = desired(config(), {1: S.UP, 2: S.DOWN, 3: S.UP})["none"]
    assert ("198.51.100.12", 0) in dests(st)
    st = desired(config(quiescent=False), {1: S.UP, 2: S.DOWN, 3: S.UP})["none"]
    assert {a for a, _ in dests(st)} == {"198.51.100.11", "198.51.100.13"}


def test_disabled_host_drains_even_without_quiescent():
    st = desired(config(quiescent=False), {1: S.UP, 2: S.DISABLED, 3: S.UP})["none"]
    assert ("198.51.100.12", 0) in dests(st)


def test_unknown_is_not_up():
    st = desired(config(quiescent=False), {})["none"]
    assert st[KEY].destinations == ()


def test_backup_takes_over_only_when_main_has_no_host_up():
    cfg = config(backup=("198.51.100.21",), quiescent=False)
    st = desired(cfg, {1: S.UP, 100: S.UP})["none"]
    assert dests(st) == {("198.51.100.11", 1)}
    st = desired(cfg, {1: S.DOWN, 2: S.DOWN, 3: S.DOWN, 100: S.UP})["none"]
    assert dests(st) == {("198.51.100.21", 1)}
    st = desired(cfg, {100: S.DOWN})["none"]
    assert st[KEY].destinations == ()


def test_disabled_redirect_and_table():
    assert desired(config(disabled=True), {1: S.UP})["none"] == {}
    assert desired(config(), {1: S.UP}, {"www"})["none"] == {}
    st = desired(config(table_disabled=True, quiescent=False), {1: S.UP})["none"]
    assert dests(st) == {(a, 0) for a in ("198.51.100.11", "198.51.100.12", "198.51.100.13")}


def test_sticky_and_ipv6_and_fwmark():
    cfg = config(sticky=Sticky(timeout=60, netmask="255.255.255.0"),
                 listen=(Listen(address="2001:db8::10", port=80), Listen(fwmark=7)))
    st = desired(cfg, {1: S.UP})["none"]
    k6 = ServiceKey(6, "tcp", "2001:db8::10", 80)
    kf = ServiceKey(4, "fwmark", fwmark=7)
    assert set(st) == {k6, kf}
    assert st[k6].destinations == ()        # v4 hosts are not v6 destinations
    assert st[kf].persistence == 60 and st[kf].netmask == "255.255.255.0"
    assert dests(st, kf) >= {("198.51.100.11", 1)}


def test_diff_ops_and_apply_roundtrip():
    a = Service(KEY, destinations=(Destination("198.51.100.11", 80), Destination("198.51.100.12", 80)))
    b = Service(KEY, mode="source-hash",
                destinations=(Destination("198.51.100.12", 80, 5), Destination("198.51.100.13", 80)))
    ops = diff({KEY: a}, {KEY: b})
    assert [type(o) for o in ops] == [UpdateService, DelDest, AddDest, SetDest]
    assert apply_ops({KEY: a}, ops) == {KEY: b}
    assert diff({KEY: b}, {KEY: b}) == []
    other = ServiceKey(4, "udp", VIP, 53)
    a_udp = replace(a, key=other)
    ops = diff({other: a_udp}, {KEY: b})
    assert [type(o) for o in ops] == [DelService, AddService]
    assert apply_ops({other: a_udp}, ops) == {KEY: b}


def test_reconciler_update_reconfigure_stop():
    be = NoneBackend()
    rec = Reconciler(config(quiescent=False), be)
    rec.start()
    assert be.state[KEY].destinations == ()
    rec.update({1: S.UP, 2: S.UP})
    assert dests(be.state) == {("198.51.100.11", 1), ("198.51.100.12", 1)}
    batches = be.batches
    rec.update({1: S.UP})                   # no change: no batch
    assert be.batches == batches
    rec.update({2: S.DOWN})
    assert dests(be.state) == {("198.51.100.11", 1)}
    rec.update({}, {"www"})
    assert be.state == {}
    rec.update({})                          # no disabled set given: www stays off
    assert be.state == {}
    rec.update({}, set())
    # reload with one more host: states of unchanged hosts carry over
    rec.reconfigure(config(main=("198.51.100.11", "198.51.100.12", "198.51.100.13",
                                 "198.51.100.14"), quiescent=False))
    assert dests(be.state) == {("198.51.100.11", 1)}
    rec.stop(clean=True)
    assert be.state == {}


def test_resync_repairs_drift():
    be = NoneBackend()
    rec = Reconciler(config(), be)
    rec.start()
    rec.update({1: S.UP, 2: S.UP, 3: S.UP})
    be.state = {}                           # someone flushed the kernel
    ops = rec.resync()
    assert ops and dests(be.state) == {(a, 1) for a in ("198.51.100.11", "198.51.100.12", "198.51.100.13")}
    assert rec.resync() == []


def test_start_adopts_kernel_without_flap():
    be = NoneBackend()
    first = Reconciler(config(quiescent=False), be)
    first.start()
    first.update({1: S.UP, 2: S.UP})
    before = dict(be.state)
    second = Reconciler(config(quiescent=False), be)   # a restart: states unknown
    assert second.start() == []
    assert be.state == before
    assert second.statuses() == {1: S.UP, 2: S.UP}
    # pfe sends every host, UNKNOWN until checked: adopted hosts stay in
    assert second.update({1: S.UNKNOWN, 2: S.UNKNOWN, 3: S.UNKNOWN}) == []
    second.update({2: S.DOWN})
    assert dests(be.state) == {("198.51.100.11", 1)}
    second.update({2: S.UNKNOWN})           # a real UNKNOWN after a real status
    assert second.statuses()[2] == S.UNKNOWN
    assert adopted_statuses(config(), {}, {})  == {}


@pytest.mark.parametrize("batches", [
    [{1: S.UP}, {2: S.UP}, {1: S.DOWN}],
    [{1: S.UP, 2: S.UP}, {1: S.DOWN}, {1: S.UP}],          # back where it was
    [{1: S.UNKNOWN, 2: S.UNKNOWN, 3: S.UNKNOWN}, {2: S.DOWN}, {2: S.UNKNOWN}, {3: S.UP}],
])
def test_update_batches_is_update_of_each_with_one_write(batches):
    """The adopted (provisional) hosts of a restart included: their first
    UNKNOWN keeps them in, a real UNKNOWN after a real status does not."""
    def restarted():
        be = NoneBackend()
        first = Reconciler(config(quiescent=False), be)
        first.start()
        first.update({1: S.UP, 2: S.UP})
        rec = Reconciler(config(quiescent=False), be)
        rec.start()
        return rec, be
    one, be_one = restarted()
    for b in batches:
        one.update(b)
    many, be_many = restarted()
    writes = be_many.batches
    many.update_batches(batches)
    assert many.statuses() == one.statuses()
    assert be_many.state == be_one.state
    assert be_many.batches - writes <= 1


# --- property: diff then apply_ops reaches the target from anywhere --------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_keys = st.sampled_from([ServiceKey(4, "tcp", VIP, p) for p in (80, 443)]
                        + [ServiceKey(4, "fwmark", fwmark=3)])
_dests = st.lists(st.builds(Destination, st.sampled_from(["198.51.100.11", "198.51.100.12",
                                                           "198.51.100.13"]),
                            st.sampled_from([80, 8080]), st.integers(0, 3)),
                  max_size=4, unique_by=lambda d: d.ident)
_svcs = st.builds(lambda k, m, ds: Service(k, mode=m).with_destinations(ds),
                  _keys, st.sampled_from(["roundrobin", "source-hash"]), _dests)
_states = st.lists(_svcs, max_size=3, unique_by=lambda s: s.key).map(
    lambda ss: {s.key: s for s in ss})


@settings(max_examples=200, deadline=None)
@given(_states, _states)
def test_diff_then_apply_reaches_desired(current, want):
    ops = diff(current, want)
    assert apply_ops(current, ops) == want
    assert diff(want, want) == []
    # every destination op names a service that exists at that point
    assert all(not isinstance(o, (AddDest, SetDest, DelDest)) or o.key in want for o in ops)


def test_destination_ops_equal_only_their_own_kind():
    d = Destination("198.51.100.11", 80)
    add, put, rm = AddDest(KEY, d), SetDest(KEY, d), DelDest(KEY, d)
    assert add == AddDest(key=KEY, dest=d) and hash(add) == hash(AddDest(KEY, d))
    assert add != put and put != rm and add != (KEY, d)
    assert len({add, put, rm}) == 3
    assert repr(rm) == f"DelDest(key={KEY!r}, dest={d!r})"
    assert (add.key, add.dest) == (KEY, d)


def test_reconciler_keeps_what_the_ops_lead_to():
    # the Reconciler stores the desired state it applied instead of replaying
    # the ops: the two must agree, on a fill from empty and on a change
    backend = NoneBackend()
    rec = Reconciler(config(), backend)
    rec.start()
    before = rec.state()
    ops = rec.update({1: S.UP, 2: S.UP, 3: S.DOWN})
    assert ops and rec.state() == apply_ops(before, ops) == backend.state
    before = rec.state()
    ops = rec.update({2: S.DOWN})
    assert ops and rec.state() == apply_ops(before, ops) == backend.state
