"""Passive failure detection (issue 15): how fast a backend that resets
real traffic leaves the kernel table, and what a flood of RSTs costs hce.
Not part of the test suite (no figure is asserted anywhere). Run as root,
under the lock the root tests share:

    flock /tmp/hoststated-root-tests.lock .venv/bin/python bench/passive.py
        [--trials 50] [--flood-seconds 5] [--flood-rate 100000] [--flood-procs 2]
        [--json FILE]

The lab is tests/lab.py's Farm (namespaces pvb-*): a client, the director
(hoststated, nftables NAT, `interval 10`, `check tcp passive`) and two
backends. A client loop keeps opening connections through the virtual
address (about 400 a second, over both backends).

Detection, per trial: b1's kernel starts answering RST (an nft `reject with
tcp reset` rule in b1's namespace: the service is gone, the host is up).
t0 is when the first of those RSTs crosses the director: the bench's own
NFLOG group (18600, flushed per packet) logs the RSTs from b1 in a table of
its own. t1 is when pfe's write that takes b1 out reaches the kernel: the
first nftables change event after t0 in the director (its NFNLGRP_NFTABLES
multicast group: pfe is the only writer then), checked: b1 is out of the
map after it. Printed: t1 - t0, p50, p99 and max over the trials, and the
client's failed requests after t1 (connections the kernel still sent to b1
after its removal: want 0; the ones before are what passive detection
needs to see). Between trials the rule goes, `hoststatectl poll` brings b1
back (rise) and the bench waits for it in the map. With checks every 10 s,
a check could land in a trial's window; the bench reads the daemon's log
for each trial's passive decision and counts the trials without one.

Flood: the client sends TCP RSTs as fast as it can (up to --flood-rate a
second), half of them "from" b1's address and port to the client (what b1's
replies carry; sent as frames to the director's MAC, so that they cross its
forward hook, which a counter there shows), half from the client to the
virtual address; the director's reverse-path filter is off (the worst
case: only hoststated's rules judge the packets). Printed: the packets sent
a second (what the sender achieved of the rate), hce's CPU time (utime +
stime from /proc) over the flood as a share of one core, hce's passive
counters over the flood (packets logged, events, drops) and the hosts'
states after it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from lab import PYTHON, Farm, Lab, in_netns  # noqa: E402

from hoststated import passive  # noqa: E402

VIP = "203.0.113.70"
GROUP = 18600
CONF = """
interval 10
log state changes
timeout 1000
socket "{socket}"
engine nftables
metrics listen on 127.0.0.1 port 9470
table <web> {{ HOSTS }}
redirect "www" {{
	listen on VIP port 80
	forward to <web> port 80 check tcp passive
}}
""".replace("VIP", VIP)

# argv: vip seconds: connections to vip:80 until the end, each noted as
# (monotonic time, ok) on stdout when it ends
CLIENT = r"""
import socket, sys, time
vip, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((vip, 80))
        ok = 1
    except OSError:
        ok = 0
    s.close()
    print("%.6f %d" % (time.monotonic(), ok), flush=True)
    time.sleep(0.002)
"""

# argv: vip host client seconds rate mac: TCP RSTs as fast as allowed up to
# `rate` a second, half "from" host:80 to the client (what the host's
# replies carry), half from the client to vip:80. The first half must cross
# the director, not this namespace's loopback: they leave c0 as frames to
# the director's MAC (AF_PACKET), the others by the route. Checksums are
# right (a wrong one is dropped before any hook that matters). Prints the
# packets sent and the seconds taken.
FLOOD = r"""
import socket, struct, sys, time
vip, host, client, secs, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
mac = bytes.fromhex(sys.argv[6].replace(":", ""))
def csum(b):
    if len(b) % 2:
        b += bytes(1)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def pkt(src, dst, sport, dport, seq):
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x04, 0, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(s + d + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, s, d)
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + tcp
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
eth = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
to_dir = ("c0", 0x0800, 0, 0, mac)
batch = []
for i in range(512):
    batch.append((eth, pkt(host, client, 80, 1024 + i, i * 7919), to_dir))
    batch.append((raw, pkt(client, vip, 1024 + i, 80, i * 7919), (vip, 0)))
n, t0 = 0, time.monotonic()
end = t0 + secs
while True:
    now = time.monotonic()
    if now >= end:
        break
    if n > (now - t0) * rate:
        time.sleep(0.0005)
        continue
    k = n % len(batch)
    for s, p, a in batch[k:k + 64]:
        try:
            s.sendto(p, a)
        except BlockingIOError:     # a full queue: counted as not sent
            n -= 1
    n += 64
print(n, time.monotonic() - t0)
"""


NFNLGRP_NFTABLES = 7          # the multicast group of nftables' change events


def netlink_socket(ns_fd_path: str, groups: int = 0) -> socket.socket:
    """A NETLINK_NETFILTER socket made in the director (setns for the call)."""
    import ctypes                   # os.setns is Python 3.12's
    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int) -> None:
        if libc.setns(fd, 0x40000000) != 0:     # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(ns_fd_path, os.O_RDONLY)
    try:
        setns(there)
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, passive.NETLINK_NETFILTER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind((0, groups))
    finally:
        setns(here)
        os.close(here)
        os.close(there)
    return s


def nflog_socket(ns_fd_path: str) -> socket.socket:
    """The bench's own NFLOG socket in the director, one datagram a packet."""
    s = netlink_socket(ns_fd_path)
    for r in passive.bind_requests(GROUP, qthresh=1, timeout=0):
        s.send(r)
        s.recv(8192)
    return s


def nft_events(ns_fd_path: str) -> socket.socket:
    """nftables' change events in the director: each committed write (pfe's,
    the only writer once the bench's own table is made) is a few messages
    sent at its commit."""
    return netlink_socket(ns_fd_path, 1 << (NFNLGRP_NFTABLES - 1))


class Watch(threading.Thread):
    """Reads one stream of (monotonic time, line) into a list; a netlink
    overrun (ENOBUFS) is counted and the reading goes on."""

    def __init__(self, read) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.lines: list[tuple[float, object]] = []
        self.overruns = 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                item = self.read()
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                print(f"watch: {e}", file=sys.stderr)
                return
            except ValueError:
                return
            if not item:
                return
            self.lines.append((time.monotonic(), item))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mac(farm: Farm, dev: str) -> str:
    out = farm.ns(farm.director, "ip", "-j", "link", "show", dev).stdout
    return json.loads(out)[0]["address"]


def passive_counters(farm: Farm) -> dict[str, int]:
    """hce's passive counters (hoststated_passive_*_total) from the metrics."""
    r = farm.ns(farm.director, PYTHON, "-c", "import urllib.request; print(urllib.request."
                "urlopen('http://127.0.0.1:9470/metrics', timeout=10).read().decode())")
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("hoststated_passive_") and " " in line and "{" not in line:
            k, v = line.split()
            out[k[len("hoststated_passive_"):]] = int(float(v))
    return out


def passive_downs(d, address: str) -> int:
    """How often the daemon's log says passive detection took `address` down."""
    return sum(1 for line in d.read_log().splitlines()
               if f"host {address} " in line and ", passive: " in line and "-> down" in line)


def in_map(farm: Farm, address: str) -> bool:
    out = farm.ns(farm.director, "nft", "-j", "list", "table", "inet", "hoststated").stdout
    return address in json.dumps([o for o in json.loads(out)["nftables"] if "map" in o])


def parser_cost(n: int = 20000) -> float:
    """hce's cost of one logged packet (parse, attribute, count), in µs:
    what the kernel rules' cap (passive.KERNEL_RATE a second, over all
    hosts) can cost hce at most. On the datagrams recorded from a real run
    (tests/unit/data/passive_nflog.txt: two resets), against a table whose
    window never fills."""
    import struct
    from hoststated.conf.load import load_text
    lines = (ROOT / "tests" / "unit" / "data" / "passive_nflog.txt").read_text().splitlines()
    data = bytearray(bytes.fromhex(next(x for x in lines if x and not x.startswith("#"))))
    off = 0                             # recorded on group 18516: the detector's group
    while off + 16 <= len(data):
        size, mtype = struct.unpack_from("=IH", data, off)
        if mtype == 0x0400:
            struct.pack_into(">H", data, off + 18, passive.NFLOG_GROUP)
        off += (size + 3) & ~3
    conf = ("table <web> { 198.51.100.11 }\nredirect www {\n\tlisten on 203.0.113.50 port 80\n"
            "\tforward to <web> port 80 check tcp passive limit 10000 in 1\n}\n")
    det = passive.Detector(load_text(conf, "bench.conf", lookup=False))
    data = bytes(data)
    t = time.perf_counter()
    for i in range(n):
        det.datagram(data, i * 0.01)    # 200 packets a second: under RATE_MAX
    cost = (time.perf_counter() - t) / det.stats.packets * 1e6
    assert det.stats.events == det.stats.packets == 2 * n, det.stats
    return cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--flood-seconds", type=float, default=5.0)
    ap.add_argument("--flood-rate", type=int, default=100000)
    ap.add_argument("--flood-procs", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    with Lab("passive-bench", prefix="pvb") as lab:
        farm = Farm(lab, backends=2, sources=0)
        b1, b2 = farm.backends
        a = farm.addr
        d = farm.daemon(CONF.replace("HOSTS", f"{a[b1]}, {a[b2]}"))
        d.ctl("poll")
        d.wait_statuses({a[b1]: "up", a[b2]: "up"}, timeout=60)
        farm.ns(farm.director, "nft", f"add table inet pvbench ; add chain inet pvbench f {{ "
                f"type filter hook forward priority -10 ; }} ; add rule inet pvbench f "
                f"ip saddr {a[b1]} tcp flags & rst == rst log group {GROUP} ; add rule inet pvbench f "
                f"iifname d0 ip saddr {a[b1]} tcp flags & rst == rst counter comment \"flood\"")
        # the worst case: no reverse-path filter drops the flood's spoofed
        # half before the forward hook; only hoststated's rules judge it
        for k in ("all", "default", "d0"):
            farm.ns(farm.director, "sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0")
        nfl = nflog_socket(f"/run/netns/{farm.director}")
        rsts = Watch(lambda: nfl.recv(65536))
        events = nft_events(f"/run/netns/{farm.director}")
        maps = Watch(lambda: events.recv(1 << 16))
        duration = 24 * 3600.0          # until terminated
        client = subprocess.Popen(in_netns(farm.client, PYTHON, "-c", CLIENT, VIP,
                                           str(duration)), stdout=subprocess.PIPE, text=True)
        lab.procs.append(client)
        conns = Watch(client.stdout.readline)
        time.sleep(1.0)
        lat, late_failed, by_check = [], 0, 0
        seen_passive = passive_downs(d, a[b1])
        for trial in range(args.trials):
            n_rst, n_map = len(rsts.lines), len(maps.lines)
            farm.ns(b1, "nft", "add table inet pvb ; add chain inet pvb in { type filter hook "
                    "input priority 0 ; } ; add rule inet pvb in tcp dport 80 reject with "
                    "tcp reset")
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and (len(rsts.lines) == n_rst or not any(
                        t >= rsts.lines[n_rst][0] for t, _ in maps.lines[n_map:])):
                    time.sleep(0.005)
                if len(rsts.lines) == n_rst:
                    print(f"trial {trial}: no RST seen", file=sys.stderr)
                    continue
                t0 = rsts.lines[n_rst][0]
                t1 = next((t for t, _ in maps.lines[n_map:] if t >= t0), None)
                if t1 is None:
                    print(f"trial {trial}: no kernel write within 30 s "
                          f"({d.statuses()})", file=sys.stderr)
                    continue
                time.sleep(0.3)
                if in_map(farm, a[b1]):
                    print(f"trial {trial}: a kernel write, but b1 still in the map",
                          file=sys.stderr)
                    continue
                lat.append(t1 - t0)
                # what took b1 down: its passive line in the log (show hosts
                # may already hold the reason of a check run since)
                n_passive = passive_downs(d, a[b1])
                by_check += n_passive == seen_passive
                seen_passive = n_passive
                # a connection the kernel sent to b1 just before its removal
                # ends within a millisecond; 10 ms on, any failure is a late one
                for _, line in list(conns.lines):
                    end, ok = line.split()
                    if t1 + 0.01 < float(end) <= t1 + 0.3 and ok == "0":
                        late_failed += 1
            finally:
                farm.ns(b1, "nft", "delete table inet pvb")
                d.ctl("poll")
                d.wait_statuses({a[b1]: "up"}, timeout=60)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not in_map(farm, a[b1]):
                    time.sleep(0.05)
                if not in_map(farm, a[b1]):
                    raise SystemExit(f"trial {trial}: b1 up but not back in the map")
        client.terminate()
        # the flood
        hce = d.roles()["hce"]
        c0 = cpu_seconds(hce)
        w0 = time.monotonic()
        before = passive_counters(farm)
        # one Python sender falls short of 100,000 a second: several share the rate
        senders = [subprocess.Popen(in_netns(farm.client, PYTHON, "-c", FLOOD, VIP, a[b1],
                                             farm.client_addr, str(args.flood_seconds),
                                             str(args.flood_rate // args.flood_procs),
                                             mac(farm, "d0")),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(args.flood_procs)]
        got = [p.communicate(timeout=args.flood_seconds + 60) for p in senders]
        wall = time.monotonic() - w0
        cpu = cpu_seconds(hce) - c0
        if any(p.returncode != 0 for p in senders):
            raise SystemExit(f"the flood failed: {[e for _, e in got]}")
        sent = sum(int(o.split()[0]) for o, _ in got)
        secs = max(float(o.split()[1]) for o, _ in got)
        st = d.statuses()
        after = passive_counters(farm)
        crossed = farm.ns(farm.director, "nft", "-j", "list", "table", "inet", "pvbench").stdout
        crossed = sum(e["counter"]["packets"] for o in json.loads(crossed)["nftables"]
                      if "rule" in o and o["rule"].get("comment") == "flood"
                      for e in o["rule"]["expr"] if "counter" in e)
        seen = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0 if lat else float("nan")
    out = {"trials": len(lat), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
           "max_ms": lat[-1] * 1000.0 if lat else None,
           "mean_ms": statistics.mean(lat) * 1000.0 if lat else None,
           "decided_by_active_check": by_check, "failed_after_removal": late_failed,
           "flood_packets": int(sent), "flood_rate": int(sent) / float(secs),
           "hce_cpu_share": cpu / wall, "hosts_after_flood": st,
           "flood_crossed_director": crossed, "hce_passive_counters": seen,
           "bench_netlink_overruns": rsts.overruns + maps.overruns}
    print(f"first RST -> out of the kernel table: {out['trials']} trials, "
          f"p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, "
          f"max {(out['max_ms'] or float('nan')):.1f} ms "
          f"(decided by an active check: {by_check})")
    print(f"client connections failed after the removal: {late_failed}")
    print(f"flood: {out['flood_packets']} RSTs in {float(secs):.1f} s "
          f"({out['flood_rate']:.0f}/s); hce CPU {100 * out['hce_cpu_share']:.1f}% of one core; "
          f"hosts after: {st}")
    print(f"  {crossed} of them crossed the director's forward hook from the client side; "
          f"hce's passive counters over the flood: {seen}")
    cost = parser_cost()
    out["parse_us_per_packet"] = cost
    print(f"hce's parse and count of a logged packet: {cost:.1f} us; at the kernel rules' cap "
          f"({passive.KERNEL_RATE}/s over all hosts) at most {cost * passive.KERNEL_RATE / 1e4:.1f}% "
          f"of a core")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
