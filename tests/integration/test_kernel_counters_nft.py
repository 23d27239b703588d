"""Kernel counters end to end under nftables: the daemon in the director,
real connections from the client through the virtual address, and what
`hoststatectl show redirects|hosts` (JSON and text) says pfe counted.

pfe reads the counters every COUNTERS_INTERVAL (10 s): the test polls for
the counts with a generous deadline, never a sleep.
"""

from __future__ import annotations

import json
import signal

import pytest

from lab import Farm, InNetns, Lab, nft_backends, usable, wait_for

from hoststated.conf.load import load_text
from hoststated.kernel import Reconciler
from hoststated.kernel.nft import NftBackend
from hoststated.kernel.reconciler import make_backend
from hoststated.states import HostStatus

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

VIP = "203.0.113.10"
DEADLINE = 60.0          # s for a count to show: a few reads

CONF = """
interval 1
timeout 500
socket "{socket}"
engine nftables
table <web> {{ HOSTS }}
redirect "www" {{
	listen on VIP port 80
	forward to <web> port 80 mode roundrobin check http "/" code 200
}}
""".replace("VIP", VIP)


@pytest.fixture
def lab():
    with Lab("kcount") as lab:
        yield Farm(lab, backends=3, sources=0)


def redirect(d) -> dict | None:
    (r,) = d.json("show redirects")["redirects"]
    return r["kernel"]


def host_conns(d) -> dict[str, int | None]:
    return {h["name"]: (h["kernel"] or {}).get("connections")
            for h in d.json("show hosts")["hosts"]}


def test_connections_through_the_vip_are_counted_per_redirect_and_host(lab):
    a = lab.addr
    b1, b2, b3 = lab.backends
    d = lab.daemon(CONF.replace("HOSTS", ", ".join(a[b] for b in lab.backends)))
    try:
        d.wait_statuses({a[b]: "up" for b in lab.backends}, 30)
        # the first read after the hosts are up: every host a destination
        wait_for(lambda: all(v is not None for v in host_conns(d).values()), DEADLINE, 0.5,
                 what="pfe's first counters")
        base = host_conns(d)
        total0 = redirect(d)["connections"]

        r = lab.requests(VIP, 30)
        assert r["failed"] == 0 and sum(r["counts"].values()) == 30
        want = {a[b]: base[a[b]] + r["counts"].get(lab.names[b], 0) for b in lab.backends}
        assert sum(want.values()) == sum(base.values()) + 30
        wait_for(lambda: host_conns(d) == want, DEADLINE, 0.5,
                 what=f"the connections each backend served counted: {want}")
        k = redirect(d)
        assert k["connections"] == total0 + 30, (k, d.json("show hosts")["hosts"])
        assert k["interval"] > 0 and 0 <= k["last"] <= 30 and k["max"] <= 30
        # nftables counts connections only (its NAT sees each one's first packet)
        assert k["active"] is None and k["bytes_in"] is None

        # a host goes down: its slot is rewritten (its counter made again);
        # the totals carry on, the host's stays what it served
        lab.stop_backend(b2)
        d.wait_statuses({a[b2]: "down"})
        # (show hosts is hce's word; pfe takes b2 out of the map a moment later)
        wait_for(lambda: nft_backends(lab.director, tuple(a.values())) == {a[b1], a[b3]},
                 DEADLINE, what="b2 out of the map")
        r2 = lab.requests(VIP, 20)
        assert r2["failed"] == 0 and set(r2["counts"]) == {lab.names[b1], lab.names[b3]}
        name_of = {a[b]: lab.names[b] for b in lab.backends}
        want2 = {h: n + r2["counts"].get(name_of[h], 0) for h, n in want.items()}
        wait_for(lambda: host_conns(d) == want2, DEADLINE, 0.5,
                 what=f"the counts carried across the rewrite: {want2}")
        wait_for(lambda: redirect(d)["connections"] == total0 + 50, DEADLINE, 0.5,
                 what="the redirect's total")
        assert redirect(d)["max"] >= 1

        # the text: relayctl's lines under the redirect, a Conns column
        out = d.ctl("show", "redirects").stdout
        assert f"total: {total0 + 50} sessions" in out and "average: " in out, out
        hosts = d.ctl("show", "hosts").stdout.splitlines()
        assert hosts[0].endswith("\tStatus\tConns"), hosts[0]
        line = next(ln for ln in hosts if f"\t{a[b1]} " in ln)
        assert line.endswith(f"\t{want2[a[b1]]}"), line
    finally:
        rc = d.stop(signal.SIGTERM)
    assert rc == 0, d.read_log()[-2000:]


# --- a table written before there were counters is rebuilt with them ----------

def _old_form(stmts: list[str]) -> list[str]:
    return [s.replace(" counter ;", "").replace("counter dnat", "dnat") for s in stmts]


def test_a_table_without_counters_is_rebuilt_with_them_and_keeps_serving(lab):
    text = CONF.replace("HOSTS", ", ".join(lab.addr[b] for b in lab.backends)).format(
        socket="/run/unused.sock")
    config = load_text(text, runnable=False)
    up = {h.id: HostStatus.UP for h in config.hosts()}
    # an older hoststated's table: the same statements without counters
    with InNetns(lab.director):
        try:
            old = NftBackend()
            real = old._run
            old._run = lambda stmts: real(_old_form(stmts))
            rec = Reconciler(config, old)
            rec.start()
            rec.update(up)
            listing = lab.ns(lab.director, "nft", "list", "table", "inet", "hoststated").stdout
            assert "counter" not in listing, listing
            assert sum(lab.requests(VIP, 6)["counts"].values()) == 6

            rec = Reconciler(config, NftBackend())
            rec.start()                       # dump: uncounted, rebuilt
            assert rec.update(up) == []       # the same services: nothing to change
            r = lab.ns(lab.director, "nft", "-j", "list", "table", "inet", "hoststated")
            objs = json.loads(r.stdout)["nftables"]
            (m,) = [o["map"] for o in objs if "map" in o]
            assert {"counter": None} in m["stmt"]
            r = lab.requests(VIP, 6)
            assert r["failed"] == 0 and sum(r["counts"].values()) == 6
            rows = rec.counters()
            ((name, engine, _key, svc, dests),) = rows
            assert (name, engine, svc.connections) == ("www", "nftables", 6)
            addr = {lab.names[b]: lab.addr[b] for b in lab.backends}
            assert {addr[n]: dests[addr[n]].connections for n in r["counts"]} == \
                {addr[n]: c for n, c in r["counts"].items()}
        finally:
            make_backend("nftables").remove({})
