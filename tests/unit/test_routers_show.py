"""`show routers` (issue 16): hce_show's rows, hoststatectl's relayctl
lines and JSON, the metrics series and their place in hoststated(8)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import parser

from hoststated import metrics
from hoststated.conf.load import load_text
from hoststated.hce_show import ROUTE_METRIC, Answers, router_row
from hoststated.ipc.messages import (READ_ONLY, HostRow, RouterRow, ShowReply, Stats,
                                     parse_command)
from hoststated.kernel.routes import METRIC
from hoststated.states import HostStatus as S
from hoststatectl import output

CONF = """
table <gw> { 192.0.2.1, 192.0.2.2 weight 3, 192.0.2.3 priority 20 }
router "uplinks" {
	route 0.0.0.0/0
	route 203.0.113.0/24
	forward to <gw> check icmp
	rtable 5
	rtlabel "isp"
}
router "off" {
	route 198.51.100.0/24
	forward to <gw> check icmp
	disable
}
"""


def rows(statuses, drain=()):
    c = load_text(CONF, "r.conf", lookup=False)
    hosts = {h.id: HostRow(h.id, h.name, h.table, statuses.get(h.name, S.UNKNOWN),
                           drain=h.name in drain) for h in c.hosts()}
    return c, hosts


def test_the_next_hops_are_the_lowest_priority_gateways_up():
    c, hosts = rows({"192.0.2.1": S.UP, "192.0.2.2": S.UP, "192.0.2.3": S.UP})
    r = router_row(c, c.routers[0], hosts)
    assert (r.status, r.rtable, r.rtlabel, r.gateways, r.up) == ("active", 5, "isp", 3, 3)
    assert r.routes == ["0.0.0.0/0", "203.0.113.0/24"]
    assert r.nexthops == ["192.0.2.1", "192.0.2.2"]
    c, hosts = rows({"192.0.2.1": S.DOWN, "192.0.2.2": S.UP, "192.0.2.3": S.UP},
                    drain={"192.0.2.2"})
    r = router_row(c, c.routers[0], hosts)
    assert r.up == 2 and r.nexthops == ["192.0.2.3"]        # drained: the standby's turn
    r = router_row(c, c.routers[1], hosts)
    assert r.status == "disabled" and r.nexthops == []
    assert ROUTE_METRIC == METRIC                 # the same default as pfe's


def test_show_routers_reply_round_trips_and_prints_relayctl_lines():
    c, hosts = rows({"192.0.2.1": S.UP})
    a = Answers(c, 1, lambda: list(hosts.values()), Stats)
    wire = a.show_wire("routers")
    assert set(wire) == {"routers"}
    reply = ShowReply.from_wire(wire)
    assert reply.routers[0] == RouterRow(1, "uplinks", "active", 5, "isp",
                                         ["0.0.0.0/0", "203.0.113.0/24"], "gw", 3, 1,
                                         ["192.0.2.1"])
    text = output.text(("show", "routers"), wire).splitlines()
    pad = "\t%8s\t" % ""
    assert text == [
        output.HEADER,
        "1   \trouter  \tuplinks                 \t       \tactive",
        pad + "rtable: 5", pad + "rtlabel: isp",
        pad + "route: 0.0.0.0/0", pad + "route: 203.0.113.0/24",
        pad + "gateways: 1/3 up, next hops: 192.0.2.1",
        "2   \trouter  \toff                     \t       \tdisabled",
        pad + "route: 198.51.100.0/24",
        pad + "gateways: 1/3 up, next hops: none (no route)"]
    # show summary lists them with relayctl's one line each
    summary = output.text(("show", "summary"), a.show_wire("summary"))
    assert "1   \trouter  \tuplinks" in summary and "route:" not in summary
    assert parse_command("show rou").words == ("show", "routers")
    assert ("show", "routers") in READ_ONLY


def test_router_series_and_hoststated_8_lists_them():
    c, hosts = rows({"192.0.2.1": S.UP, "192.0.2.2": S.UP})
    snap = metrics.Snapshot(metrics.Daemon(), routers=[router_row(c, r, hosts)
                                                       for r in c.routers])
    fams = {f.name: f for f in parser.text_string_to_metric_families(metrics.render(snap))}
    got = {(f, s.labels.get("router"), s.labels.get("state")): s.value
           for f in fams if f.startswith("hoststated_router") for s in fams[f].samples}
    assert got[("hoststated_router_state", "uplinks", "active")] == 1
    assert got[("hoststated_router_state", "off", "disabled")] == 1
    assert got[("hoststated_router_nexthops", "uplinks", None)] == 2
    assert got[("hoststated_router_nexthops", "off", None)] == 0
    assert got[("hoststated_router_gateways_up", "uplinks", None)] == 2
    assert got[("hoststated_router_gateways", "uplinks", None)] == 3
    assert got[("hoststated_router_routes", "uplinks", None)] == 2
    page = (Path(__file__).resolve().parents[2] / "man" / "hoststated.8").read_text()
    section = page.split(".Sh METRICS", 1)[1].split("\n.Sh ", 1)[0]
    for name in fams:
        if name.startswith("hoststated_router"):
            assert name.removeprefix("hoststated_") in section, name
    # no router, no router series
    assert "router" not in metrics.render(metrics.Snapshot(metrics.Daemon()))
