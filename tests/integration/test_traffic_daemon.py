"""hoststated itself in the director: real HTTP checks, nftables, real traffic.

The daemon runs as `hoststated -d -f FILE` inside the director namespace
(its children drop to an unprivileged uid; pfe keeps CAP_NET_ADMIN), the
client namespace keeps connecting to the virtual address, and the test
changes the backends and talks to the daemon with hoststatectl.
"""

from __future__ import annotations

import json
import signal

import pytest

from lab import Farm, Lab, nft_backends, usable, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

VIP = "203.0.113.10"

# a Lab.daemon template: {socket} is filled in, hence the doubled braces
CONF = """
interval 1
timeout 500
log state changes
socket "{socket}"
engine nftables
table <web> {{ HOSTS }}
redirect "www" {{
	listen on VIP port 80
	forward to <web> port 80 mode roundrobin check http "/" code 200
}}
""".replace("VIP", VIP)


def conf(lab, hosts):
    return CONF.replace("HOSTS", ", ".join(lab.addr[b] for b in hosts))


@pytest.fixture
def lab():
    with Lab("traffic") as lab:
        yield Farm(lab, backends=4, sources=0)


def ctl(d, *words):
    r = d.ctl(*words)
    assert r.returncode == 0, f"hoststatectl {' '.join(words)}: {r.stderr}{r.stdout}"


def nft_tables(lab):
    r = lab.ns(lab.director, "nft", "-j", "list", "tables")
    return [o["table"]["name"] for o in json.loads(r.stdout)["nftables"] if "table" in o]


def in_kernel(lab, d, *hosts) -> None:
    """Until the map holds just these backends: show hosts tells hce's
    state, which pfe writes a moment later, and traffic sent in that moment
    still meets the old map."""
    want = {lab.addr[b] for b in hosts}
    d.wait_for(lambda: nft_backends(lab.director, tuple(lab.addr.values())) == want,
               what=f"the map holding {sorted(want)}")


def test_daemon_with_real_traffic(lab):
    b1, b2, b3, b4 = lab.backends
    a = lab.addr
    d = lab.daemon(conf(lab, [b1, b2, b3]))
    try:
        d.wait_statuses({a[b1]: "up", a[b2]: "up", a[b3]: "up"})
        in_kernel(lab, d, b1, b2, b3)
        r = lab.requests(VIP, 60)
        assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20, "b3": 20}

        # a backend killed under traffic: no failure once it is marked down
        lab.stop_backend(b2)
        d.wait_statuses({a[b2]: "down"})
        in_kernel(lab, d, b1, b3)
        r = lab.requests(VIP, 40)
        assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b3": 20}

        # recovery
        lab.start_backend(b2)
        d.wait_statuses({a[b2]: "up"})
        in_kernel(lab, d, b1, b2, b3)
        assert set(lab.requests(VIP, 30)["counts"]) == {"b1", "b2", "b3"}

        # hoststatectl host disable / enable
        ctl(d, "host", "disable", a[b3])
        d.wait_statuses({a[b3]: "disabled"})
        in_kernel(lab, d, b1, b2)
        r = lab.requests(VIP, 20)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10}
        ctl(d, "host", "enable", a[b3])
        d.wait_statuses({a[b3]: "up"})
        in_kernel(lab, d, b1, b2, b3)
        assert set(lab.requests(VIP, 30)["counts"]) == {"b1", "b2", "b3"}

        # a reload adding a host, under traffic: zero failed requests
        # (traffic until finish: a 5 s window could end before a reload and
        # b4's first check did on a loaded box, and then never reach b4)
        p = lab.traffic(VIP)
        wait_for(lambda: lab.seen(p), 30, what="the traffic flowing")
        d.conf.write_text(conf(lab, [b1, b2, b3, b4]).format(socket=d.socket))
        ctl(d, "reload")
        d.wait_statuses({a[b4]: "up"}, 30)
        wait_for(lambda: lab.seen(p) >= {"b1", "b2", "b3", "b4"}, 30,
                 what=f"the traffic reaching every host (so far {lab.seen(p)})")
        r = lab.finish(p)
        assert r["failed"] == 0, r["errors"]
        assert set(r["counts"]) == {"b1", "b2", "b3", "b4"}

        # someone flushes the ruleset by hand: the next reload (or the
        # periodic resync) repairs it
        lab.ns(lab.director, "nft", "flush", "ruleset")
        assert lab.requests(VIP, 2)["failed"] == 2
        ctl(d, "reload")
        wait_for(lambda: not lab.requests(VIP, 1)["failed"], 10, 0.2, what="the ruleset repaired")
        r = lab.requests(VIP, 40)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10, "b3": 10, "b4": 10}
    finally:
        rc = d.stop(signal.SIGTERM)
    # a clean stop leaves nothing behind
    assert rc == 0, d.read_log()[-2000:]
    assert "hoststated" not in nft_tables(lab)
    assert lab.requests(VIP, 1)["failed"] == 1
