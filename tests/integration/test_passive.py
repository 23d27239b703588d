"""Passive failure detection (issue 15), end to end: client -> director
(hoststated, nftables NAT) -> backends, each in its namespace (`pv-*`).

Active checks run every 600 s (hoststatectl poll brings the hosts up at the
start), so within these tests they cannot be what finds a host: a host
found down here was found by the RSTs its kernel sent to real clients,
logged by pfe's NFLOG rules and read by hce. Every wait polls for its
condition with a generous deadline; nothing asserts on time.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

VIP = "203.0.113.50"
METRICS = "127.0.0.1"

CONF = """
interval 600
timeout 2000
log state changes
socket "{socket}"
engine nftables
metrics listen on METRICS port 9469
table <web> {{ HOSTS }}
redirect "www" {{
	listen on VIP port 80
	forward to <web> port 80 check tcp passive
}}
""".replace("VIP", VIP).replace("METRICS", METRICS)

# argv: client-address n vip: n connections to vip:80, each aborted by the
# client with an RST (SO_LINGER 0) once established
CLIENT_RESETS = r"""
import socket, struct, sys
src, n, vip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
done = 0
for i in range(n):
    s = socket.socket()
    s.settimeout(3)
    s.bind((src, 0))
    try:
        s.connect((vip, 80))
        done += 1
    except OSError:
        pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print(done)
"""

# argv: vip n host,host... mac: n connections to vip:80; for each, the
# server's sequence number read off the wire (AF_PACKET on c0), then an RST
# "from" each host's address and port 80 to the connection's client address
# and port with exactly that sequence number: what a reply of the host
# serving it would carry, in the window conntrack accepts (so the packet is
# the reply of a translated connection). Each leaves c0 as a frame to the
# director's MAC: a packet to the client's own address through a raw IP
# socket would go to its loopback and never reach the director. Prints the
# number of connections spoofed.
SPOOF = r"""
import socket, struct, sys, time
vip, n, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
to_dir = ("c0", 0x0800, 0, 0, bytes.fromhex(sys.argv[4].replace(":", "")))
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
sniff.bind(("c0", 0x0800))
sniff.settimeout(3)
eth = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
vip_b = socket.inet_aton(vip)
def csum(b):
    if len(b) % 2:
        b += bytes(1)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
done = 0
for i in range(n):
    c = socket.create_connection((vip, 80), timeout=3)
    cip, cport = c.getsockname()
    seq = None
    deadline = time.monotonic() + 3
    while seq is None and time.monotonic() < deadline:
        pkt = sniff.recv(2048)
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 6 or pkt[12:16] != vip_b:
            continue
        sport, dport, sq = struct.unpack_from("!HHI", pkt, ihl)
        if sport == 80 and dport == cport and pkt[ihl + 13] & 0x12 == 0x12:
            seq = (sq + 1) & 0xFFFFFFFF
    if seq is None:
        continue
    dst = socket.inet_aton(cip)
    for h in hosts:
        src = socket.inet_aton(h)
        tcp = struct.pack("!HHIIBBHHH", 80, cport, seq, 0, 5 << 4, 0x04, 0, 0, 0)
        ck = csum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)
        tcp = tcp[:16] + struct.pack("!H", ck) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        eth.sendto(ip + tcp, to_dir)
    done += 1
    c.close()
print(done)
"""


@pytest.fixture
def farm():
    with Lab("passive", prefix="pv") as lab:
        yield Farm(lab, backends=3, sources=0)


def start(farm: Farm, backends) -> object:
    a = farm.addr
    d = farm.daemon(CONF.replace("HOSTS", ", ".join(a[b] for b in backends)))
    r = d.ctl("poll")
    assert r.returncode == 0, r.stderr
    d.wait_statuses({a[b]: "up" for b in backends}, timeout=60)
    return d


def metrics(farm: Farm) -> str:
    r = farm.ns(farm.director, PYTHON, "-c",
                "import urllib.request; print(urllib.request.urlopen("
                f"'http://{METRICS}:9469/metrics', timeout=10).read().decode())")
    return r.stdout


def host_events(text: str, address: str) -> int:
    m = re.search(r'^hoststated_host_passive_events_total\{[^}]*host="%s"[^}]*\} (\d+)$'
                  % re.escape(address), text, re.M)
    return int(m.group(1)) if m else 0


def counter(text: str, name: str) -> int:
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    assert m, f"{name} not in the metrics"
    return int(m.group(1))


def down_by_traffic(farm: Farm, d, address: str) -> None:
    """Client requests until `address` is down (each round's failures are
    the connections the dead service reset)."""
    def down() -> bool:
        # concurrent clients, as real traffic: a dropping host's timeouts
        # do not spread the resets of the dead one
        procs = [subprocess.Popen(farm.client_cmd(VIP, count=6, timeout=2.0),
                                  stdout=subprocess.DEVNULL) for _ in range(4)]
        for p in procs:
            p.wait(timeout=120)
        return d.statuses().get(address) == "down"
    d.wait_for(down, timeout=60, what=f"{address} down by passive detection")


def test_a_stopped_service_is_found_by_its_resets_and_a_dropping_host_is_not(farm):
    b1, b2, b3 = farm.backends
    a = farm.addr
    d = start(farm, [b1, b2, b3])
    mon = d.monitor()
    # b2 drops what comes to port 80: no RST, nothing for passive detection
    farm.ns(b2, "nft", "add table inet pv ; add chain inet pv in { type filter hook input "
            "priority 0 ; policy accept ; } ; add rule inet pv in tcp dport 80 drop")
    farm.lab.stop(farm.servers.pop(b1), 5.0)     # b1's kernel now answers RST
    down_by_traffic(farm, d, a[b1])
    row = d.host(a[b1])
    text = json.dumps(row)
    assert "passive" in text and "resets from host in 1 s" in text, row
    # the events of b2's lost packets, had there been any, came before b1's
    # (one socket, in order): b2 is still up, with no event against it
    assert d.statuses()[a[b2]] == "up"
    m = metrics(farm)
    assert host_events(m, a[b2]) == 0 and host_events(m, a[b1]) >= 3, m
    assert counter(m, "hoststated_passive_decisions_total") >= 1
    # b1 is out of the kernel table: b3 serves every request (b2 drops)
    farm.ns(b2, "nft", "delete table inet pv")
    r = farm.requests(VIP, 20)
    assert r["failed"] == 0 and set(r["counts"]) <= {"b2", "b3"}, r
    # the monitor saw the change with the passive reason; the log says it too
    mon.terminate()
    out, _ = mon.communicate(timeout=10)
    assert any("passive: " in line and a[b1] in line for line in out.splitlines()), out
    assert re.search(r"host %s.*passive: \d+ resets from host in 1 s" % re.escape(a[b1]),
                     d.read_log()), d.read_log()[-3000:]
    # only an active check brings it back (rise): the service is back, poll
    farm.start_backend(b1)
    assert d.ctl("poll").returncode == 0
    d.wait_statuses({a[b1]: "up"}, timeout=60)


def nft_counters(farm: Farm, table: str) -> dict[str, int]:
    """A table's counters in the director, by rule comment."""
    out = farm.ns(farm.director, "nft", "-j", "list", "table", "inet", table).stdout
    got: dict[str, int] = {}
    for o in json.loads(out)["nftables"]:
        for e in (o["rule"]["expr"] if "rule" in o and "comment" in o["rule"] else ()):
            if "counter" in e:
                c = o["rule"]["comment"]
                got[c] = got.get(c, 0) + e["counter"]["packets"]
    return got


def test_client_resets_and_spoofed_resets_take_down_no_host(farm):
    b1, b2, b3 = farm.backends
    a = farm.addr
    c = farm.client
    # without the reverse-path filter the director forwards the spoofed
    # packets: only hoststated's own rule stands between them and the hosts
    for k in ("all", "default", "d0"):
        farm.ns(farm.director, "sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0")
    # the director counts, before hoststated's chains see them (forward
    # priority -10): the resets "from" b1 and b2 arriving from the client
    # side, those of them that conntrack takes for the reply of a live
    # translated connection, and the hosts' own resets on such
    # connections (from the backends' side), which passive detection
    # rightly counts: what it counts must be exactly those
    rst = "tcp sport 80 tcp flags & rst == rst"
    unr = "icmp type destination-unreachable icmp code { host-unreachable, port-unreachable }"
    reply = "ct direction reply ct status dnat"
    farm.ns(farm.director, "nft", "add table inet pvspoof ; add chain inet pvspoof f { type "
            "filter hook forward priority -10 ; policy accept ; } ; "
            f"add rule inet pvspoof f iifname d0 ip saddr {{ {a[b1]}, {a[b2]} }} {rst} "
            "counter comment \"spoofed\" ; "
            f"add rule inet pvspoof f iifname d0 ip saddr {{ {a[b1]}, {a[b2]} }} {rst} {reply} "
            "counter comment \"spoofed in window\" ; "
            + " ; ".join(f"add rule inet pvspoof f iifname br0 ip saddr {a[b]} {what} {reply} "
                         f"counter comment \"{b}\"" for b in (b1, b2) for what in (rst, unr)))
    mac = json.loads(farm.ns(farm.director, "ip", "-j", "link", "show", "d0").stdout)[0]["address"]
    d = start(farm, [b1, b2, b3])
    # the client's own resets (connections it aborts)
    r = subprocess.run(in_netns(c, PYTHON, "-c", CLIENT_RESETS, farm.client_addr, "300", VIP),
                       capture_output=True, text=True, timeout=300, check=True)
    assert int(r.stdout) >= 290, r
    # RSTs spoofed with b1's and b2's address and port, each in the window
    # of a live connection
    r = subprocess.run(in_netns(c, PYTHON, "-c", SPOOF, VIP, "300", f"{a[b1]},{a[b2]}", mac),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and int(r.stdout) >= 290, r.stderr
    n = nft_counters(farm, "pvspoof")
    assert n["spoofed"] >= 580, f"the spoofed resets did not cross the director: {n}"
    # one of each connection's two is "from" the host serving it (b1 or b2
    # for two in three connections): a reply in the window
    assert n["spoofed in window"] >= 100, n
    # the sync point: b3 really fails; its events come after all of the above
    farm.lab.stop(farm.servers.pop(b3), 5.0)
    down_by_traffic(farm, d, a[b3])
    st = d.statuses()
    assert st[a[b1]] == "up" and st[a[b2]] == "up", st
    # none of the spoofed resets nor of the client's counted: the events
    # against b1 and b2 are exactly their own resets (hce may read the
    # last of those a moment after the kernel counted them)
    def exact() -> bool:
        m, n = metrics(farm), nft_counters(farm, "pvspoof")
        return all(host_events(m, a[b]) == n[b] for b in (b1, b2))
    d.wait_for(exact, timeout=30, what=f"events equal to the hosts' own resets "
                                        f"({nft_counters(farm, 'pvspoof')})")
    r = farm.requests(VIP, 20)
    assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2"}, r


RELAY_VIP = "203.0.113.60"
RELAY_CONF = """
interval 600
timeout 2000
prefork 1
log state changes
socket "{socket}"
table <app> {{ HOSTS }}
http protocol h {{ }}
relay app {{
	listen on RELAY_VIP port 8080
	protocol h
	forward to <app> port 80 check tcp passive
}}
""".replace("RELAY_VIP", RELAY_VIP)


def down_through_relay(farm: Farm, d, address: str) -> None:
    def down() -> bool:
        procs = [subprocess.Popen(farm.client_cmd(RELAY_VIP, port=8080, count=4, timeout=3.0),
                                  stdout=subprocess.DEVNULL) for _ in range(3)]
        for p in procs:
            p.wait(timeout=120)
        return d.statuses().get(address) == "down"
    d.wait_for(down, timeout=60, what=f"{address} down by the relay's passive detection")


def test_a_relay_counts_5xx_responses_and_refused_connects(farm):
    b1, b2, b3 = farm.backends
    a = farm.addr
    farm.ns(farm.director, "ip", "addr", "add", f"{RELAY_VIP}/32", "dev", "lo")
    # b1 answers 500 to every request (its TCP check passes)
    farm.lab.stop(farm.servers.pop(b1), 5.0)
    farm.servers[b1] = farm.lab.http(b1, "::", 80, code=500, body="b1")
    d = farm.daemon(RELAY_CONF.replace("HOSTS", f"{a[b1]}, {a[b2]}"))
    assert d.ctl("poll").returncode == 0
    d.wait_statuses({a[b1]: "up", a[b2]: "up"}, timeout=60)
    down_through_relay(farm, d, a[b1])
    assert "errors from host in 1 s" in json.dumps(d.host(a[b1]))
    r = farm.requests(RELAY_VIP, 10, port=8080)
    assert r["failed"] == 0 and r["counts"] == {"b2": 10}, r
    # b2's service stops: the relay's connects are refused (resets)
    farm.lab.stop(farm.servers.pop(b2), 5.0)
    down_through_relay(farm, d, a[b2])
    assert "resets from host in 1 s" in json.dumps(d.host(a[b2]))
