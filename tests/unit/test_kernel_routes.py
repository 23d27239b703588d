"""Routers' routes without root (kernel/routes.py): the desired routes of a
router from its gateways' states, their diff, adoption, the director
checks over a Director view, and the keeper over an in-memory writer (the
rtnetlink writer itself: tests/integration/test_routers.py)."""

from __future__ import annotations

import ipaddress

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.kernel import BackendError, Reconciler
from hoststated.kernel import routes as R
from hoststated.kernel.routes import DelRoute, Route, RouteKey, SetRoute
from hoststated.states import HostStatus

UP, DOWN = HostStatus.UP, HostStatus.DOWN

CONF = """
table <gw> { 192.0.2.1 weight 2, 192.0.2.2, 192.0.2.3 priority 20 }
router "up" {
	route 0.0.0.0/0
	route 203.0.113.0/24
	forward to <gw> check icmp
	rtable 5
	rtlabel "7"
}
"""

CONF6 = """
table <gw6> { 2001:db8:1::1, 2001:db8:2::1 }
router "six" {
	route 2001:db8:ff::/48
	forward to <gw6> check icmp
}
"""


def conf(text: str = CONF):
    return load_text(text, "r.conf", lookup=False)


def ids(c):
    return {h.address: h.id for h in c.hosts()}


def key(dst="0.0.0.0/0", metric=R.METRIC, table=5, family=4):
    return RouteKey(family, table, dst, metric)


def test_up_gateways_of_one_priority_are_one_weighted_multipath_route():
    c = conf()
    i = ids(c)
    want, scope = R.router_routes(c, c.routers[0], {i["192.0.2.1"]: UP, i["192.0.2.2"]: UP},
                                  realm=7)
    assert set(want) == {key(), key("203.0.113.0/24")}
    assert want[key()].nexthops == (("192.0.2.1", 2), ("192.0.2.2", 1))
    assert want[key()].realm == 7
    # the priority-20 gateway's keys are in scope (it is down: no route there)
    assert scope == {key(), key("203.0.113.0/24"), key(metric=20),
                     key("203.0.113.0/24", metric=20)}


def test_one_gateway_up_is_a_plain_route_and_none_up_is_no_route():
    c = conf()
    i = ids(c)
    want, _ = R.router_routes(c, c.routers[0], {i["192.0.2.1"]: UP, i["192.0.2.2"]: DOWN})
    assert want[key()].nexthops == (("192.0.2.1", 1),)      # one next hop has no weight
    want, scope = R.router_routes(c, c.routers[0], {i["192.0.2.3"]: UP})
    assert set(want) == {key(metric=20), key("203.0.113.0/24", metric=20)}
    assert key() in scope
    want, _ = R.router_routes(c, c.routers[0], {})
    assert want == {}


def test_runtime_weights_drain_and_cap_at_linux_256():
    c = conf()
    i = ids(c)
    st = {i["192.0.2.1"]: UP, i["192.0.2.2"]: UP}
    want, _ = R.router_routes(c, c.routers[0], st, {i["192.0.2.1"]: 0})
    assert want[key()].nexthops == (("192.0.2.2", 1),)
    want, _ = R.router_routes(c, c.routers[0], st, {i["192.0.2.1"]: 1000, i["192.0.2.2"]: 3})
    assert want[key()].nexthops == (("192.0.2.1", 256), ("192.0.2.2", 3))


def test_a_disabled_router_wants_nothing_and_ipv6_takes_table_main():
    c = conf(CONF.replace("rtlabel", "disable\n\trtlabel"))
    i = ids(c)
    want, scope = R.router_routes(c, c.routers[0], {h: UP for h in i.values()})
    assert want == {} and key() in scope
    c6 = conf(CONF6)
    want, _ = R.router_routes(c6, c6.routers[0], {h.id: UP for h in c6.hosts()}, realm=3)
    k = RouteKey(6, R.MAIN, "2001:db8:ff::/48", R.METRIC)
    assert want[k].nexthops == (("2001:db8:1::1", 1), ("2001:db8:2::1", 1))
    assert want[k].realm is None                     # realms are IPv4's


def test_diff_sets_before_it_deletes_and_replaces_only_its_own():
    a = Route(key(), (("192.0.2.1", 1),))
    b = Route(key(metric=20), (("192.0.2.3", 1),))
    a2 = Route(key(), (("192.0.2.1", 1), ("192.0.2.2", 1)))
    assert R.diff({}, {a.key: a}) == [SetRoute(a, False)]
    assert R.diff({a.key: a}, {a.key: a}) == []
    assert R.diff({a.key: a}, {a.key: a2}) == [SetRoute(a2, True)]
    assert R.diff({a.key: a}, {b.key: b}) == [SetRoute(b, False), DelRoute(a)]
    # the router's name is not part of what the kernel holds
    assert R.diff({a.key: a}, {a.key: Route(a.key, a.nexthops, router="up")}) == []


def test_adopted_gateways_are_those_our_routes_go_through():
    c = conf()
    i = ids(c)
    cur = {key(): Route(key(), (("192.0.2.2", 1),)),
           key(metric=20, table=9): Route(key(metric=20, table=9), (("192.0.2.3", 1),))}
    assert R.adopted(c, cur) == {i["192.0.2.2"]}     # table 9 is not the router's


def test_realms_by_number_or_name():
    realms = R.parse_realms("# comment\n0\tcosmos\n7 isp-a # x\n0x10 isp-b\nbad line\n")
    assert realms == {"cosmos": 0, "isp-a": 7, "isp-b": 16}
    assert R.realm_of("isp-a", realms) == 7
    assert R.realm_of("12", realms) == 12
    assert R.realm_of("cosmos", realms) is None      # 0 is no realm
    assert R.realm_of("300", realms) is None
    assert R.realm_of("nope", realms) is None


def director(**kw) -> R.Director:
    n = ipaddress.ip_network
    d = R.Director(connected={4: [(n("192.0.2.0/24"), "eth0"), (n("198.51.100.0/25"), "eth1")],
                              6: [(n("2001:db8:1::/64"), "eth0"), (n("fe80::/64"), "eth0")]},
                   tables={4: {254, 253, 5}, 6: {254}}, realms={"isp": 7})
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def messages(text, d=None):
    c = conf(text)
    return [m for _, m in R.director_errors(c, d or director())]


def test_director_accepts_a_default_route_through_connected_gateways():
    assert messages(CONF.replace('"7"', "isp")) == []


@pytest.mark.parametrize("change, expected", [
    (("route 203.0.113.0/24", "route 192.0.2.128/25"),
     "router up: route 192.0.2.128/25 is inside 192.0.2.0/24, a network connected on eth0"),
    (("route 203.0.113.0/24", "route 198.51.100.0/25"),
     "router up: route 198.51.100.0/25 is inside 198.51.100.0/25"),
    (("192.0.2.2,", "203.0.113.9,"), "router up: gateway 203.0.113.9 is on no connected "
                                     "network of this machine"),
    (("rtable 5", "rtable 6"), "router up: rtable 6 does not exist: no routing rule looks "
                               "up table 6 for IPv4"),
    (("rtable 5", "rtable 255"), "router up: rtable 255 is the kernel's local table"),
    (('rtlabel "7"', 'rtlabel "isp-z"'), "router up: rtlabel isp-z: no such route realm"),
])
def test_director_refuses(change, expected):
    msgs = messages(CONF.replace(*change))
    assert any(m.startswith(expected) for m in msgs), msgs
    assert len(msgs) == 1, msgs


def test_director_ipv6_link_local_gateway_and_table():
    msgs = messages(CONF6.replace("2001:db8:2::1", "fe80::1"))
    assert any("gateway fe80::1 is link-local" in m for m in msgs), msgs
    assert any("gateway 2001:db8:1::1" not in m for m in msgs)
    msgs = messages(CONF6.replace("forward", "rtable 5\n\tforward"))
    assert any("no routing rule looks up table 5 for IPv6" in m and "ip -6 rule" in m
               for m in msgs), msgs


@pytest.mark.parametrize("text, expected", [
    (CONF + 'router "two" {\n\troute 0.0.0.0/0\n\tforward to <gw> check icmp\n\t'
            'rtable 5\n}\n', "router two: route 0.0.0.0/0 is router up's too"),
    (CONF6.replace("forward", 'rtlabel "7"\n\tforward'), "Linux route realms are IPv4 only"),
    (CONF6.replace("2001:db8:2::1", "192.0.2.1"), "gateway 192.0.2.1 is not an IPv6 address"),
    (CONF.replace("weight 2", "weight 300"), "weight 300: a route's next hop weighs 1 to 256"),
    ("engine pf\n" + CONF, "router up: router (routes to checked gateways) needs engine "
                           "nftables or ipvs"),
])
def test_language_refuses(text, expected):
    with pytest.raises(ConfigError) as e:
        load_text(text, "r.conf", lookup=False)
    msgs = [str(d) for d in e.value.diagnostics]
    assert any(expected in m and m.startswith("r.conf:") for m in msgs), msgs


# --- the keeper, over an in-memory writer -------------------------------------

class MemoryRoutes:
    """What NetlinkRoutes does to a kernel table, in memory: `ours` are the
    routes of PROTO, `foreign` the operator's (never to be touched)."""

    def __init__(self, foreign=()):
        self.ours: dict[RouteKey, Route] = {}
        self.foreign = {r.key: r for r in foreign}
        self.ops = []
        self.closed = False

    def dump(self):
        return dict(self.ours)

    def director(self):
        return director()

    def set(self, op):
        self.ops.append(op)
        k = op.route.key
        if k in self.foreign and not op.replace:
            raise BackendError(f"route {k}: a route hoststated did not write is there")
        self.ours[k] = op.route

    def delete(self, op):
        self.ops.append(op)
        self.ours.pop(op.route.key, None)

    def close(self):
        self.closed = True


def keeper(text=CONF, writer=None):
    c = conf(text)
    w = writer or MemoryRoutes()
    return c, w, Reconciler(c, backend=R_none(), routes=R.Routes(c, w))


def R_none():
    from hoststated.kernel import NoneBackend
    return NoneBackend()


def test_a_gateway_going_down_leaves_the_route_at_once():
    c, w, rec = keeper()
    i = ids(c)
    rec.start()
    assert w.ours == {}
    rec.update({i["192.0.2.1"]: UP, i["192.0.2.2"]: UP})
    assert w.ours[key()].nexthops == (("192.0.2.1", 2), ("192.0.2.2", 1))
    rec.update({i["192.0.2.1"]: DOWN})
    assert w.ours[key()].nexthops == (("192.0.2.2", 1),)
    rec.update({i["192.0.2.3"]: UP, i["192.0.2.2"]: DOWN})
    assert set(w.ours) == {key(metric=20), key("203.0.113.0/24", metric=20)}
    rec.set_weights({i["192.0.2.3"]: 0})             # drained: no next hop left
    assert w.ours == {}


def test_resync_repairs_a_route_deleted_by_hand_and_restart_adopts():
    c, w, rec = keeper()
    i = ids(c)
    rec.start()
    rec.update({i["192.0.2.1"]: UP, i["192.0.2.2"]: UP})
    before = dict(w.ours)
    del w.ours[key()]
    assert rec.resync() == []                       # no redirect changed
    assert w.ours == before
    # a restart: hce knows nothing yet; the gateways our routes name stay up
    w.ops.clear()
    rec2 = Reconciler(c, backend=R_none(), routes=R.Routes(c, w))
    rec2.start()
    assert w.ops == [] and w.ours == before
    rec2.update({i["192.0.2.1"]: HostStatus.UNKNOWN})   # unknown does not override
    assert w.ours == before
    rec2.update({i["192.0.2.1"]: DOWN})
    assert w.ours[key()].nexthops == (("192.0.2.2", 1),)


def test_an_operators_route_at_the_same_place_is_left_alone():
    theirs = Route(key(), (("192.0.2.9", 1),))
    w = MemoryRoutes(foreign=[theirs])
    c, w, rec = keeper(writer=w)
    i = ids(c)
    rec.start()
    rec.update({i["192.0.2.1"]: UP})
    assert w.foreign == {key(): theirs}
    assert rec.routes.errors == 1
    assert key() not in w.ours and key("203.0.113.0/24") in w.ours


def test_clean_stop_removes_ours_only_and_a_dirty_one_keeps_them():
    c, w, rec = keeper()
    i = ids(c)
    rec.start()
    rec.update({i["192.0.2.1"]: UP})
    rec.stop(clean=False)
    assert w.ours and w.closed
    rec = Reconciler(c, backend=R_none(), routes=R.Routes(c, w))
    rec.start()
    rec.stop(clean=True)
    assert w.ours == {}


def test_start_refuses_what_the_director_cannot_route():
    c, w, rec = keeper(CONF.replace("rtable 5", "rtable 6"))
    with pytest.raises(BackendError, match=r"r.conf:\d+:\d+: router up: rtable 6 does not exist"):
        rec.start()


def test_engine_none_and_a_fixed_backend_write_no_routes():
    assert Reconciler(conf("engine none\n" + CONF)).routes.writer is None
    assert Reconciler(conf(), backend=R_none()).routes.writer is None


def test_the_writer_comes_with_the_first_router():
    assert isinstance(Reconciler(conf()).routes.writer, R.NetlinkRoutes)
    rec = Reconciler(conf("table <t> { 192.0.2.1 }\n"))
    assert rec.routes.writer is None                 # no router: no pyroute2
    rec.routes.reconfigure(conf())
    assert isinstance(rec.routes.writer, R.NetlinkRoutes)


LATE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from hoststated import preload
from hoststated.conf.load import load_text
from hoststated.parent import wire_config
preload.preload("pfe", wire_config(load_text(sys.argv[2], lookup=False)))
late = []
class Late:
    def find_spec(self, name, path=None, target=None):
        late.append(name)
        return None
sys.meta_path.insert(0, Late())
from hoststated.kernel import routes
w = routes.NetlinkRoutes()
w.dump()                        # reads only: this machine's routes of proto 245
w.director()
w.close()
print(" ".join(n for n in late if n in sys.modules))
"""


def test_pfe_preloads_what_the_route_writer_imports():
    import subprocess
    import sys
    from pathlib import Path
    from hoststated import preload
    from hoststated.parent import wire_config
    assert "pyroute2.iproute" in preload.modules("pfe", wire_config(conf()))
    assert "pyroute2" not in preload.modules("pfe", wire_config(conf("table <t> { 192.0.2.1 }\n")))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", LATE, str(root), CONF], capture_output=True,
                         text=True, check=True, cwd=root).stdout.split()
    assert out == [], out


class Msg(dict):
    """A dump message as pyroute2 hands it: fields and attributes by name."""


def test_a_dump_reads_back_as_the_route_that_was_written():
    mp = Msg(proto=245, dst="0.0.0.0", dst_len=0, table=5, priority=8, multipath=[
        Msg(gateway="192.0.2.2", hops=0, flow=7), Msg(gateway="192.0.2.1", hops=1, flow=7)])
    assert R._route_of(4, mp) == Route(key(), (("192.0.2.1", 2), ("192.0.2.2", 1)), 7)
    one = Msg(proto=245, dst="2001:db8:ff::", dst_len=48, table=254, priority=8,
              gateway="2001:db8:1::1")
    assert R._route_of(6, one) == Route(RouteKey(6, 254, "2001:db8:ff::/48", 8),
                                        (("2001:db8:1::1", 1),))
    # and what the desired state says for the same is equal: no diff
    c = conf(CONF6)
    want, _ = R.router_routes(c, c.routers[0], {c.hosts()[0].id: UP})
    got = R._route_of(6, one)
    assert R.diff({got.key: got}, want) == []
