"""Every relay mode, end to end: the daemon in the director namespace
relays real HTTP connections to real backends (tests/lab.Farm: each backend
answers its own name, b1..b4 at 198.51.100.11..14), and the tests count
where the sessions went.

What is exact and what is not:
- one relay process (`prefork 1`): round robin is exact (30 sessions over 3
  hosts: 10/10/10; weights 3:1 over 40: 30/10), least-states is exact (the
  sessions held now decide), random reaches every host, more often the
  heavier one;
- three relay processes (`prefork 3`): the kernel spreads the connections
  over the processes (SO_REUSEPORT), and each process round-robins on its
  own, so a host's count is within the number of processes of the even
  share; the hash modes agree across processes (the key is the table's
  name), so a source always lands on one host, whichever process took it.
- the hash modes hash what relayd's relay_from_table hashes: source-hash
  the client address (not its port), loadbalance the client address and
  the relay's address and port, hash the relay's address and port only.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip"), reason="needs root and ip")]

VIP = Farm.director_client_addr
CHECK = 'check http "/" code 200'

ONE = """
socket "{socket}"
interval 1
timeout 500
prefork 1
table <web> {{ 198.51.100.11 198.51.100.12 198.51.100.13 }}
table <heavy> {{ 198.51.100.11 weight 3, 198.51.100.12 }}
table <three> {{ 198.51.100.11 weight 3, 198.51.100.12, 198.51.100.13 }}
table <drain> {{ 198.51.100.11, 198.51.100.12 weight 0 }}
relay rr {{
	listen on 192.0.2.1 port 8001
	forward to <web> port 80 mode roundrobin {check}
}}
relay wrr {{
	listen on 192.0.2.1 port 8002
	forward to <heavy> port 80 {check}
}}
relay least {{
	listen on 192.0.2.1 port 8003
	forward to <web> port 80 mode least-states {check}
}}
relay rnd {{
	listen on 192.0.2.1 port 8004
	forward to <three> port 80 mode random {check}
}}
relay fixed {{
	listen on 192.0.2.1 port 8005
	forward to 198.51.100.13 port 80
}}
relay drain {{
	listen on 192.0.2.1 port 8006
	forward to <drain> port 80 {check}
}}
""".replace("{check}", CHECK)

BACKUP = """
socket "{socket}"
interval 1
timeout 500
table <main> {{ 198.51.100.11 198.51.100.12 }}
table <spare> {{ 198.51.100.13 }}
table <last> {{ 198.51.100.14 }}
relay bk {{
	listen on 192.0.2.1 port 8010
	forward to <main> port 80 {check}
	forward to <spare> port 80 {check}
	forward to <last> port 80 {check}
}}
""".replace("{check}", CHECK)

THREE = """
socket "{socket}"
interval 1
timeout 500
prefork 3
table <web> {{ 198.51.100.11 198.51.100.12 198.51.100.13 }}
relay rr {{
	listen on 192.0.2.1 port 8020
	forward to <web> port 80 {check}
}}
relay srch {{
	listen on 192.0.2.1 port 8021
	forward to <web> port 80 mode source-hash {check}
}}
relay lb {{
	listen on 192.0.2.1 port 8022
	listen on 192.0.2.1 port 8023
	forward to <web> port 80 mode loadbalance {check}
}}
relay hs {{
	listen on 192.0.2.1 port 8024
	forward to <web> port 80 mode hash {check}
}}
""".replace("{check}", CHECK)

# opens N connections to host:port at once and holds them without a
# request; reads commands from stdin: "close PORT" closes the connection
# from that local port, "open" opens one more; each answered by a line
HOLDER = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = {}
def one():
    s = socket.socket(); s.setblocking(False)
    s.connect_ex((host, port))
    return s
for s in [one() for _ in range(n)]:
    s.setblocking(True); conns[s.getsockname()[1]] = s
print(" ".join(map(str, sorted(conns))), flush=True)
for line in sys.stdin:
    w = line.split()
    if w[0] == "close":
        conns.pop(int(w[1])).close()
        print("closed", flush=True)
    elif w[0] == "open":
        s = socket.create_connection((host, port)); conns[s.getsockname()[1]] = s
        print(s.getsockname()[1], flush=True)
"""


def up(d, n: int) -> None:
    d.wait_for(lambda: sum(h["status"] == "up" for h in d.json("show hosts")["hosts"]) == n,
               what=f"{n} hosts up")


def by_source(r: dict, sources: list[str]) -> dict[str, set[str]]:
    """source address -> the backends its requests reached (the client
    takes the sources in turn)."""
    out: dict[str, set[str]] = {}
    for i, page in enumerate(r["seq"]):
        out.setdefault(sources[i % len(sources)], set()).add(page)
    return out


def sessions_by_port(d, relay: str) -> dict[int, str]:
    """client port -> backend address, of the relay's running sessions"""
    return {s["client_port"]: s["backend"] for s in d.json("show sessions")["sessions"]
            if s["status"] == "running" and s["relay_name"] == relay}


@pytest.fixture(scope="module")
def one():
    """prefork 1: one relay process, so its choices are the whole count."""
    with Lab("rm") as lab:
        farm = Farm(lab, backends=3, sources=0)
        d = farm.daemon(ONE)
        up(d, 3 + 2 + 3 + 2)
        yield farm, d


def test_roundrobin_is_exact_with_one_process(one):
    farm, d = one
    r = farm.requests(VIP, 30, port=8001)
    assert r["failed"] == 0, r["errors"]
    assert r["counts"] == {"b1": 10, "b2": 10, "b3": 10}, r["counts"]
    assert r["seq"][:3] == ["b1", "b2", "b3"] and r["seq"][3:6] == ["b1", "b2", "b3"], r["seq"]


def test_weights_shift_roundrobin_in_proportion(one):
    farm, d = one
    r = farm.requests(VIP, 40, port=8002)
    assert r["failed"] == 0, r["errors"]
    assert r["counts"] == {"b1": 30, "b2": 10}, r["counts"]
    # interleaved: b2 gets one of every 4, not 10 in a row at the end
    assert all("b2" in r["seq"][i:i + 4] for i in range(0, 40, 4)), r["seq"]


def test_weight_zero_takes_no_new_session(one):
    farm, d = one
    r = farm.requests(VIP, 12, port=8006)
    assert r["failed"] == 0 and r["counts"] == {"b1": 12}, r


def test_random_reaches_every_host_the_heavier_more(one):
    farm, d = one
    r = farm.requests(VIP, 150, port=8004)
    assert r["failed"] == 0, r["errors"]
    c = r["counts"]
    assert set(c) == {"b1", "b2", "b3"}, c          # 3 * (4/5)^150: never all missed
    assert c["b1"] > c["b2"] and c["b1"] > c["b3"], c   # weight 3 against 1 and 1
    # not round robin in disguise: some host repeats back to back
    assert any(a == b for a, b in zip(r["seq"], r["seq"][1:])), r["seq"]


def test_forward_to_a_fixed_address(one):
    farm, d = one
    r = farm.requests(VIP, 9, port=8005)
    assert r["failed"] == 0 and r["counts"] == {"b3": 9}, r


def test_least_states_sends_a_new_session_to_the_least_loaded(one):
    farm, d = one
    addr = {farm.addr[b]: farm.names[b] for b in farm.backends}
    hold = farm.lab.spawn(*in_netns(farm.client, PYTHON, "-c",
                                    HOLDER, VIP, "8003", "6"),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ports = [int(p) for p in hold.stdout.readline().split()]
    assert len(ports) == 6
    d.wait_for(lambda: set(ports) <= set(sessions_by_port(d, "least")), what="6 sessions running")
    held = {p: addr[b] for p, b in sessions_by_port(d, "least").items() if p in ports}
    # six accepted at once: counted from the choice, they spread 2/2/2
    assert Counter(held.values()) == {"b1": 2, "b2": 2, "b3": 2}, held

    def close(port):
        hold.stdin.write(f"close {port}\n")
        hold.stdin.flush()
        assert hold.stdout.readline().strip() == "closed"
    for p in [p for p, b in held.items() if b == "b2"] + \
             [next(p for p, b in held.items() if b == "b3")]:
        close(p)
        del held[p]
    d.wait_for(lambda: len(d.json("show sessions")["sessions"]) == 3,
               what="3 sessions left")
    # now b1 2, b2 0, b3 1: every short session goes to b2 (and ends)
    r = farm.requests(VIP, 5, port=8003)
    assert r["failed"] == 0 and r["counts"] == {"b2": 5}, r
    # held ones: b2 (0), then b2 again (1, tied with b3: table order), then b3
    got = []
    for _ in range(3):
        hold.stdin.write("open\n")
        hold.stdin.flush()
        port = int(hold.stdout.readline())
        d.wait_for(lambda: port in sessions_by_port(d, "least"), what="the new session running")
        got.append(addr[sessions_by_port(d, "least")[port]])
    assert got == ["b2", "b2", "b3"], got
    farm.lab.kill(hold)


def test_a_backup_table_takes_over_when_the_main_one_is_down():
    """`forward to` repeated: each next table is the backup of the ones
    before (relayd), used while none of those has a host up."""
    with Lab("rb") as lab:
        farm = Farm(lab, backends=4, sources=0)
        d = farm.daemon(BACKUP)
        up(d, 4)
        b1, b2, b3, b4 = farm.backends
        r = farm.requests(VIP, 20, port=8010)   # prefork 3: each process round-robins
        assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2"}, r

        def down(*names):
            d.wait_for(lambda: all(d.statuses().get(n) == "down" for n in names),
                       what=f"{names} down")
        farm.stop_backend(b1)
        down("198.51.100.11")
        r = farm.requests(VIP, 10, port=8010)      # one host of the main table is enough
        assert r["failed"] == 0 and r["counts"] == {"b2": 10}, r
        farm.stop_backend(b2)
        down("198.51.100.11", "198.51.100.12")
        r = farm.requests(VIP, 10, port=8010)
        assert r["failed"] == 0 and r["counts"] == {"b3": 10}, r
        farm.stop_backend(b3)
        down("198.51.100.13")
        r = farm.requests(VIP, 10, port=8010)
        assert r["failed"] == 0 and r["counts"] == {"b4": 10}, r
        farm.start_backend(b2)                       # the main table is back
        d.wait_for(lambda: d.statuses().get("198.51.100.12") == "up", what="b2 up")
        r = farm.requests(VIP, 10, port=8010)
        assert r["failed"] == 0 and r["counts"] == {"b2": 10}, r
        farm.stop_backend(b4)
        farm.stop_backend(b2)
        down("198.51.100.12", "198.51.100.14")
        r = farm.requests(VIP, 3, port=8010, timeout=2.0)
        assert r["failed"] == 3, r                   # no host up anywhere: closed, not hung
        assert "Traceback" not in d.read_log()


def test_hash_modes_and_roundrobin_across_three_processes():
    with Lab("rh") as lab:
        farm = Farm(lab, backends=3, sources=40)
        d = farm.daemon(THREE)
        up(d, 3)
        sources = [f"192.0.2.{i}" for i in range(3, 43)]
        host_ids = {h["name"]: h["id"] for h in d.json("show hosts")["hosts"]}

        # round robin per process: within 3 (the processes) of 20 each
        r = farm.requests(VIP, 60, port=8020)
        assert r["failed"] == 0, r["errors"]
        assert set(r["counts"]) == {"b1", "b2", "b3"}, r["counts"]
        assert all(abs(n - 20) <= 3 for n in r["counts"].values()), r["counts"]

        # source-hash: each source on one host, whichever process took it;
        # the sources spread over the hosts
        r = farm.requests(VIP, 120, port=8021, sources=sources)
        assert r["failed"] == 0, r["errors"]
        srch = by_source(r, sources)
        assert all(len(v) == 1 for v in srch.values()), srch
        srch = {s: v.pop() for s, v in srch.items()}
        assert set(srch.values()) == {"b1", "b2", "b3"}, srch

        # loadbalance: per source and relay port, one host; the port counts
        lb = {}
        for port in (8022, 8023):
            r = farm.requests(VIP, 80, port=port, sources=sources)
            assert r["failed"] == 0, r["errors"]
            got = by_source(r, sources)
            assert all(len(v) == 1 for v in got.values()), (port, got)
            lb[port] = {s: v.pop() for s, v in got.items()}
            assert set(lb[port].values()) == {"b1", "b2", "b3"}, lb[port]
        assert lb[8022] != lb[8023]

        # hash: the relay's address and port only: every source on one host
        r = farm.requests(VIP, 40, port=8024, sources=sources)
        assert r["failed"] == 0 and len(r["counts"]) == 1, r["counts"]

        # a host disabled moves only its own sources; enabled, they come back
        b2_sources = [s for s, b in srch.items() if b == "b2"]
        assert b2_sources
        ctl = d.ctl("host", "disable", str(host_ids["198.51.100.12"]))
        assert ctl.returncode == 0, ctl.stderr

        def now_on(src):
            return farm.requests(VIP, 1, port=8021, sources=[src])["seq"][0]
        d.wait_for(lambda: now_on(b2_sources[0]) != "b2", what="b2 left by the relays")
        r = farm.requests(VIP, 120, port=8021, sources=sources)
        assert r["failed"] == 0, r["errors"]
        after = by_source(r, sources)
        assert all(len(v) == 1 for v in after.values()), after
        after = {s: v.pop() for s, v in after.items()}
        assert "b2" not in after.values()
        assert {s for s in sources if after[s] != srch[s]} == set(b2_sources), (srch, after)
        ctl = d.ctl("host", "enable", str(host_ids["198.51.100.12"]))
        assert ctl.returncode == 0, ctl.stderr
        d.wait_for(lambda: now_on(b2_sources[0]) == "b2", what="b2 back in the relays")
        r = farm.requests(VIP, 120, port=8021, sources=sources)
        back = {s: v.pop() for s, v in by_source(r, sources).items()}
        assert r["failed"] == 0 and back == srch, (srch, back)
        assert "Traceback" not in d.read_log()
