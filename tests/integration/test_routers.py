"""Routers with real routes and real traffic (issue 16).

    rt-c (client) -- rt-dir (hoststated, forwarding) --+-- rt-g1 --+-- rt-inet
                                                       +-- rt-g2 --+   (203.0.113.100)

The director's router `uplinks` keeps 0.0.0.0/0 (realm 7, from rtlabel)
pointed at the gateways g1 (weight 2) and g2 that answer hoststated's icmp
check, and removes it when neither does; the
IPv6 router `six` keeps 2001:db8:ff00::/40 in routing table 10 (rtable 10,
a rule looks it up). The internet namespace answers each UDP datagram with
the name of the link it came in on, so the client sees which gateway
carried it. The director hashes flows by ports (fib_multipath_hash_policy
1), so new sockets spread over both next hops. An operator's own route
(a fallback default route, metric 100) sits in the same table throughout
and must survive everything, the clean stop included.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lab import PYTHON, Lab, run, usable

pytestmark = [pytest.mark.root, pytest.mark.skipif(not usable("ip"), reason="needs root and ip")]

PROTO = "245"
INET = "203.0.113.100"
G1, G2 = "198.51.100.2", "198.51.100.18"
G1_6, G2_6 = "2001:db8:a::2", "2001:db8:b::2"
PREFIX6 = "2001:db8:ff00::/40"

CONFIG = """
interval 1
timeout 500
socket "{socket}"
cleanstop CLEAN
table <gw> {{ 198.51.100.2 weight 2, 198.51.100.18 }}
table <gw6> {{ 2001:db8:a::2, 2001:db8:b::2 }}
router "uplinks" {{
	route 0.0.0.0/0
	forward to <gw> check icmp
	rtlabel "7"
}}
router "six" {{
	route 2001:db8:ff00::/40
	forward to <gw6> check icmp
	rtable 10
}}
"""

# answers each datagram with the name of the link it arrived on (IP_PKTINFO)
LINK_ECHO = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 8, 1)         # IP_PKTINFO (not in Python 3.11)
s.bind((sys.argv[1], 7777))
print("ready", flush=True)
while True:
    data, anc, _, peer = s.recvmsg(512, 256)
    idx = next(struct.unpack("I", d[:4])[0] for lvl, t, d in anc if t == 8)
    s.sendto(socket.if_indextoname(idx).encode(), peer)
"""

# n datagrams, each from a new socket (a new source port: a new flow), one
# link name per answer; "-" for no answer
LINKS = r"""
import socket, sys
out = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    try:
        s.sendto(b"?", (sys.argv[1], 7777))
        out.append(s.recv(64).decode())
    except OSError:
        out.append("-")
    s.close()
print(" ".join(out))
"""


@pytest.fixture(scope="module")
def world():
    with Lab(prefix="rt") as lab:
        c, d, g1, g2, inet = (lab.netns(n) for n in ("c", "dir", "g1", "g2", "inet"))
        lab.veth(c, ["192.0.2.2/24", "2001:db8:c::2/64"], d, ["192.0.2.1/24", "2001:db8:c::1/64"],
                 names=("rtc0", "rtd0"))
        lab.veth(d, ["198.51.100.1/28", "2001:db8:a::1/64"], g1, [f"{G1}/28", f"{G1_6}/64"],
                 names=("rtd1", "rtg1"))
        lab.veth(d, ["198.51.100.17/28", "2001:db8:b::1/64"], g2, [f"{G2}/28", f"{G2_6}/64"],
                 names=("rtd2", "rtg2"))
        lab.veth(g1, "203.0.113.1/28", inet, "203.0.113.2/28", names=("rtu1", "via-g1"))
        lab.veth(g2, "203.0.113.17/28", inet, "203.0.113.18/28", names=("rtu2", "via-g2"))
        lab.addr(inet, "lo", f"{INET}/32")
        run("ip", "-n", c, "route", "add", "default", "via", "192.0.2.1")
        for ns, up, down in ((g1, "203.0.113.2", "198.51.100.1"),
                             (g2, "203.0.113.18", "198.51.100.17")):
            run("ip", "-n", ns, "route", "add", f"{INET}/32", "via", up)
            run("ip", "-n", ns, "route", "add", "192.0.2.0/24", "via", down)
            run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
        # the answers go back through g2 whatever carried the question
        run("ip", "-n", inet, "route", "add", "192.0.2.0/24", "via", "203.0.113.17")
        for kv in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                   "net.ipv4.fib_multipath_hash_policy=1"):
            run("sysctl", "-qw", kv, ns=d)
        run("ip", "-n", d, "-6", "rule", "add", "from", "2001:db8:c::/64", "lookup", "10")
        # the operator's own route in the same table: never ours to touch
        run("ip", "-n", d, "route", "add", "default", "via", G2, "metric", "100")
        echo = lab.spawn(PYTHON, "-c", LINK_ECHO, INET, ns=inet, stdout=subprocess.PIPE,
                         text=True)
        assert echo.stdout.readline() == "ready\n"
        daemon = lab.daemon(d, CONFIG.replace("CLEAN", "no"))
        yield lab, daemon, {"c": c, "d": d, "g1": g1, "g2": g2}


def routes(ns: str, *args: str) -> list[dict]:
    out = run("ip", "-j", "-n", ns, *args, "route", "show", "table", "all").stdout
    return json.loads(out or "[]")


def ours(ns: str, six: bool = False) -> list[dict]:
    return [r for r in routes(ns, *(("-6",) if six else ())) if r.get("protocol") == PROTO]


def gateways(r: dict) -> set[str]:
    return {r["gateway"]} if "gateway" in r else {h["gateway"] for h in r.get("nexthops", ())}


def links(ns: str, n: int = 40) -> list[str]:
    # 40 new flows over next hops weighted 2:1 all take g1 once in 10^7 runs
    return run(PYTHON, "-c", LINKS, INET, str(n), ns=ns).stdout.split()


def until_gateways(daemon, ns, want: set[str], six: bool = False, timeout: float = 20.0):
    def got():
        rs = [r for r in ours(ns, six) if r.get("dst", "") in ("default", PREFIX6)]
        return rs and gateways(rs[0]) == want
    daemon.wait_for(got, timeout, what=f"our route via {sorted(want)}: "
                                       f"{ours(ns, six)}")


def test_both_gateways_up_are_both_next_hops_and_flows_use_both(world):
    lab, daemon, ns = world
    until_gateways(daemon, ns["d"], {G1, G2})
    until_gateways(daemon, ns["d"], {G1_6, G2_6}, six=True)
    (r4,) = [r for r in ours(ns["d"]) if r["dst"] == "default"]
    assert r4["metric"] == 8 and r4.get("table", "main") == "main"
    assert {h["gateway"]: h["weight"] for h in r4["nexthops"]} == {G1: 2, G2: 1}
    assert "realm 7" in run("ip", "-n", ns["d"], "route", "show", "proto", PROTO).stdout
    (r6,) = ours(ns["d"], six=True)
    assert r6["dst"] == PREFIX6 and r6["table"] == "10"
    seen = links(ns["c"])
    assert set(seen) == {"via-g1", "via-g2"}, seen
    rows = daemon.json("show routers")["routers"]
    up = {r["name"]: r for r in rows}
    assert up["uplinks"]["routes"] == ["0.0.0.0/0"] and up["uplinks"]["rtlabel"] == "7"
    assert set(up["uplinks"]["nexthops"]) == {G1, G2}
    assert up["six"]["rtable"] == 10


def test_a_route_deleted_by_hand_comes_back_at_the_resync(world):
    lab, daemon, ns = world
    run("ip", "-n", ns["d"], "-6", "route", "del", PREFIX6, "table", "10", "metric", "8")
    assert ours(ns["d"], six=True) == []
    # pfe re-reads the kernel every 30 s (pfe.RESYNC_INTERVAL)
    until_gateways(daemon, ns["d"], {G1_6, G2_6}, six=True, timeout=60.0)
    # pfe logs the repair after it wrote the route this test saw
    daemon.wait_for(lambda: "route drift repaired" in daemon.read_log(),
                    what="the repair logged")


def test_traffic_fails_over_when_the_first_gateway_stops_answering_and_comes_back(world):
    lab, daemon, ns = world
    run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1", ns=ns["g1"])
    until_gateways(daemon, ns["d"], {G2})
    assert set(links(ns["c"], 12)) == {"via-g2"}
    assert "1/2" in daemon.ctl("show", "routers").stdout
    # none up: our route goes, the operator's fallback (metric 100, via g2) carries on
    run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1", ns=ns["g2"])
    daemon.wait_for(lambda: not [r for r in ours(ns["d"]) if r["dst"] == "default"],
                    what=f"no route of ours: {ours(ns['d'])}")
    assert "none (no route)" in daemon.ctl("show", "routers").stdout
    assert set(links(ns["c"], 12)) == {"via-g2"}
    run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0", ns=ns["g2"])
    run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0", ns=ns["g1"])
    until_gateways(daemon, ns["d"], {G1, G2})
    assert set(links(ns["c"])) == {"via-g1", "via-g2"}


def test_a_restart_adopts_the_routes_and_a_clean_stop_removes_only_ours(world):
    lab, daemon, ns = world
    before = ours(ns["d"]) + ours(ns["d"], six=True)
    daemon.stop()                               # cleanstop no: the routes stay
    assert ours(ns["d"]) + ours(ns["d"], six=True) == before
    again = lab.daemon(ns["d"], CONFIG.replace("CLEAN", "yes"), name="again.conf")
    # adopted as they are: no route written or removed at the start, nor
    # once the checks confirm the gateways (the first run logged its writes)
    assert "routes: route 0.0.0.0/0 table 254 metric 8 via" in daemon.read_log()
    again.wait_statuses({G1: "up", G2: "up", G1_6: "up", G2_6: "up"})
    assert "routes:" not in again.read_log()
    assert ours(ns["d"]) + ours(ns["d"], six=True) == before
    assert again.stop() == 0
    assert ours(ns["d"]) == [] and ours(ns["d"], six=True) == []
    operator = [r for r in routes(ns["d"]) if r.get("dst") == "default"]
    assert [(r.get("gateway"), r.get("metric")) for r in operator] == [(G2, 100)]


def test_n_refuses_what_this_director_cannot_route(world):
    lab, daemon, ns = world
    bad = CONFIG.replace("CLEAN", "yes").replace("route 0.0.0.0/0", "route 198.51.100.8/29") \
        .replace("rtable 10", "rtable 11").replace("198.51.100.18 }", "203.0.113.9 }")
    conf = lab.write("bad.conf", bad.format(socket=lab.tmp / "bad.sock"))
    r = run(PYTHON, "-m", "hoststated", "-n", "-f", str(conf), ns=ns["d"], check=False)
    assert r.returncode != 0
    err = r.stderr + r.stdout
    assert f"{conf}:8:1: router uplinks: route 198.51.100.8/29 is inside 198.51.100.0/28" in err
    assert f"{conf}:8:1: router uplinks: gateway 203.0.113.9 is on no connected network" in err
    assert f"{conf}:13:1: router six: rtable 11 does not exist" in err
    assert "Traceback" not in err
    # nothing was written
    assert ours(ns["d"]) == [] and ours(ns["d"], six=True) == []
