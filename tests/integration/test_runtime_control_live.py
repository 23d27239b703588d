"""Issue 13, items 3 and 4, end to end: the real daemon under nftables in
namespaces, with real TCP traffic from a client namespace through the
director's NAT to three backends.

- `host weight` 3:1 shows in the split of new connections;
- `host drain`: no new connection goes to the host, while a connection
  opened before the drain still exchanges data after it (conntrack keeps
  the NATed flow when the host leaves the map); `host undrain` restores;
- weights and drains are kept across a reload; a name matching hosts in
  two tables acts on both and says so; bad weights and unknown hosts are
  refused; the restricted socket refuses every one of these commands;
- state history: show hosts carries last change, transitions, previous;
  show summary the daemon's version, pid, uptime and last reload;
- monitor prints a timestamped event with the previous state when a
  backend goes down, exits 1 when the daemon stops, and with --reconnect
  goes on after a restart.

Each backend runs a line server on port 7 that answers every line with its
name, so a client knows which backend a connection reached.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, Farm, Lab, in_netns, usable, wait_for  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

VIP = "203.0.113.10"

CONFIG = """\
socket "{socket}"
socket restricted "{tmp}/ro.sock"
engine nftables
interval 1
timeout 500
prefork 1
table <web> {{ 198.51.100.11, 198.51.100.12, 198.51.100.13 }}
table <other> {{ 198.51.100.13 }}
redirect "www" {{
	listen on 203.0.113.10 port 7
	forward to <web> port 7 check tcp
}}
redirect "other" {{
	listen on 203.0.113.20 port 7
	forward to <other> port 7 check tcp
}}
relay "tcp" {{
	listen on 192.0.2.1 port 8007
	forward to <web> port 7 check tcp
}}
"""

# argv: name. Answers every line of every connection on port 7 with
# "name\n"; says "ready" once it listens.
NAME_SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7)); s.listen(128)
print("ready", flush=True)
def serve(c):
    f = c.makefile("rb")
    for line in f:
        c.sendall(name + b"\n")
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Reads commands on stdin, one a line, answers one JSON line each:
#   open [A P]    a connection kept open (to A:P, default VIP:7); -> {"name": backend}
#   ask           a line on that connection; -> {"name": backend} or {"error"}
#   burst N [A P] N new connections, one line each; -> {"counts": {...}, "failed": n}
CLIENT = r"""
import json, socket, sys
vip = sys.argv[1]
kept = None
def to(cmd, i):
    return (cmd[i], int(cmd[i + 1])) if len(cmd) > i else (vip, 7)
def one(c):
    c.sendall(b"hello\n")
    data = b""
    while not data.endswith(b"\n"):
        more = c.recv(100)
        if not more:
            raise ConnectionError("closed")
        data += more
    return data.decode().strip()
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "open":
            kept = socket.create_connection(to(cmd, 1), timeout=3)
            out = {"name": one(kept)}
        elif cmd[0] == "ask":
            out = {"name": one(kept)}
        else:
            counts, failed = {}, 0
            for _ in range(int(cmd[1])):
                try:
                    with socket.create_connection(to(cmd, 2), timeout=3) as c:
                        n = one(c)
                    counts[n] = counts.get(n, 0) + 1
                except OSError:
                    failed += 1
            out = {"counts": counts, "failed": failed}
    except OSError as e:
        out = {"error": repr(e)}
    print(json.dumps(out), flush=True)
"""

NAMES = {"198.51.100.11": "b1", "198.51.100.12": "b2", "198.51.100.13": "b3"}


class Client:
    """CLIENT in the client namespace (stopped by the lab)."""

    def __init__(self, farm: Farm) -> None:
        self.p = subprocess.Popen(in_netns(farm.client, PYTHON, "-c", CLIENT, VIP),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        farm.lab.procs.append(self.p)

    def __call__(self, *cmd) -> dict:
        self.p.stdin.write(" ".join(map(str, cmd)) + "\n")
        self.p.stdin.flush()
        if not select.select([self.p.stdout], [], [], 120)[0]:
            raise AssertionError(f"client: no answer to {cmd}")
        return json.loads(self.p.stdout.readline())


@pytest.fixture(scope="module")
def farm():
    if not usable("nft"):
        pytest.skip("needs root, ip and nft")
    with Lab(f"rc{os.getpid() % 1000}") as lab:
        f = Farm(lab, backends=3, sources=0)
        f.names_on_7 = {}
        for b in f.backends:
            f.names_on_7[b] = start_name_server(f, b)
        yield f


def start_name_server(farm: Farm, b: str) -> subprocess.Popen:
    p = farm.lab.spawn(PYTHON, "-c", NAME_SERVER, farm.names[b], ns=b,
                       stdout=subprocess.PIPE, text=True)
    assert select.select([p.stdout], [], [], 10)[0] and p.stdout.readline() == "ready\n"
    return p


@pytest.fixture
def daemon(farm):
    d = farm.daemon(CONFIG)
    try:
        d.wait_statuses({a: "up" for a in NAMES})
        yield d
    finally:
        d.stop()
        farm.lab.daemons.remove(d)


def web_host(d, name: str) -> dict:
    return next(h for h in d.json("show hosts")["hosts"]
                if h["name"] == name and h["table"] == "web:7")


def test_weight_drain_undrain_kept_across_reload(farm, daemon):
    d = daemon
    client = Client(farm)
    # 3:1 (weights 3, 1, 1): 50 new connections, round robin over 5 slots
    r = d.ctl("host", "weight", "198.51.100.11", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"host {web_host(d, '198.51.100.11')['id']} 198.51.100.11 (web:7) " \
                       "weight 3\n"
    assert web_host(d, "198.51.100.11")["weight"] == 3
    got = client("burst", 50)
    assert got["failed"] == 0 and sum(got["counts"].values()) == 50, got
    c = got["counts"]
    assert c["b1"] == 30 and c["b2"] == 10 and c["b3"] == 10, c

    # a long-lived connection, then drain its backend
    kept = client("open")["name"]
    addr = next(a for a, n in NAMES.items() if n == kept)
    r = d.ctl("host", "drain", addr)
    assert r.returncode == 0, r.stderr
    if addr == "198.51.100.13":       # in two tables: both drained, and said so
        assert r.stdout.startswith("2 hosts drained: "), r.stdout
    h = web_host(d, addr)
    assert h["drain"] is True and h["weight"] == (3 if kept == "b1" else 1)
    assert f"\t{addr}" + " " * (24 - len(addr)) in d.ctl("show", "hosts").stdout
    assert "\tup (drain)\n" in d.ctl("show", "hosts").stdout
    got = client("burst", 40)
    assert got["failed"] == 0 and kept not in got["counts"], got
    # the established connection still exchanges data, with the same backend
    assert client("ask") == {"name": kept}

    # a reload keeps the drain and the weight
    r = d.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert web_host(d, addr)["drain"] is True
    assert web_host(d, "198.51.100.11")["weight"] == 3
    got = client("burst", 40)
    assert got["failed"] == 0 and kept not in got["counts"], got
    assert client("ask") == {"name": kept}
    summary = d.json("show summary")["daemon"]
    assert summary["reload_ok"] is True and summary["last_reload"] > 0
    assert summary["pid"] == d.pid and summary["reloads"] == 1
    assert summary["version"] and summary["uptime"] > 0
    # a SIGHUP's reload is recorded too, a failed one with its error
    d.conf.write_text(d.conf.read_text().replace("forward to <web>", "forward to <nosuch>", 1))
    os.kill(d.pid, signal.SIGHUP)
    d.wait_for(lambda: d.json("show summary")["daemon"]["reloads"] == 2, what="SIGHUP reload")
    summary = d.json("show summary")["daemon"]
    assert summary["reload_ok"] is False and "nosuch" in summary["reload_message"]
    assert " last reload " in d.ctl("show", "summary").stdout.splitlines()[-1]
    d.conf.write_text(d.conf.read_text().replace("forward to <nosuch>", "forward to <web>"))

    # undrain: new connections reach it again
    r = d.ctl("host", "undrain", addr)
    assert r.returncode == 0, r.stderr
    assert web_host(d, addr)["drain"] is False
    got = client("burst", 50)
    assert got["failed"] == 0 and got["counts"].get(kept, 0) >= 10, got


def test_relay_takes_weights_and_drains(farm, daemon):
    d = daemon
    relay = ("192.0.2.1", 8007)
    client = Client(farm)
    wait_for(lambda: d.json("show relays")["relays"][0]["status"] == "active",
             what="the relay running")
    assert d.ctl("host", "weight", "198.51.100.11", "3").returncode == 0
    # the reply comes from hce; the relay takes the weights a moment later:
    # until a cycle of 5 gives b1 3 (round robin over 3 never does)
    wait_for(lambda: client("burst", 5, *relay)["counts"].get("b1") == 3,
             what="the relay weighting b1 3")
    # one relay process, smooth weighted round robin: exact over 50 (cycle 5)
    got = client("burst", 50, *relay)
    assert got["failed"] == 0 and got["counts"] == {"b1": 30, "b2": 10, "b3": 10}, got
    kept = client("open", *relay)["name"]
    addr = next(a for a, n in NAMES.items() if n == kept)
    assert d.ctl("host", "drain", addr).returncode == 0
    wait_for(lambda: kept not in client("burst", 5, *relay)["counts"],
             what="the relay draining the host")
    got = client("burst", 20, *relay)
    assert got["failed"] == 0 and kept not in got["counts"], got
    assert client("ask") == {"name": kept}             # its session runs on
    assert d.ctl("host", "undrain", addr).returncode == 0
    wait_for(lambda: kept in client("burst", 5, *relay)["counts"],
             what="the relay taking the host again")
    got = client("burst", 50, *relay)
    assert got["failed"] == 0 and got["counts"].get(kept, 0) >= 10, got


def test_table_drain_bad_input_and_the_restricted_socket(farm, daemon):
    d = daemon
    ro = str(farm.lab.tmp / "ro.sock")
    for words in (("host", "weight", "1", "2"), ("host", "drain", "1"),
                  ("host", "undrain", "1"), ("table", "drain", "web"),
                  ("table", "undrain", "web")):
        r = d.ctl(*words, socket=ro)
        assert r.returncode == 4 and "not allowed on the restricted socket" in r.stderr, words
    assert all(not h["drain"] and h["weight"] == 1 for h in d.json("show hosts")["hosts"])
    r = d.ctl("host", "weight", "198.51.100.11", "70000")
    assert r.returncode == 2 and "from 0 to 65535, not 70000" in r.stderr
    r = d.ctl("host", "drain", "198.51.100.99")
    assert (r.returncode, r.stderr) == (1, "command failed: no host 198.51.100.99\n")
    r = d.ctl("--json", "table", "drain", "web")
    data = json.loads(r.stdout)
    assert r.returncode == 0 and data["message"].startswith("3 hosts drained: ")
    assert [h["drain"] for h in data["hosts"]] == [True] * 3
    client = Client(farm)
    got = client("burst", 2)
    assert got["counts"] == {} and got["failed"] == 2, got      # nothing takes new ones
    assert d.ctl("table", "undrain", "web").returncode == 0
    got = client("burst", 30)
    assert got["failed"] == 0 and set(got["counts"]) == {"b1", "b2", "b3"}, got


def test_history_monitor_and_reconnect(farm):
    d = farm.daemon(CONFIG)
    mon = rmon = None
    b2 = farm.backends[1]
    try:
        d.wait_statuses({a: "up" for a in NAMES})
        h = web_host(d, "198.51.100.12")
        assert h["transitions"] >= 1 and h["previous"] == "unknown" and h["last_change"] > 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ctl = [PYTHON, "-m", "hoststatectl", "-s", d.socket]
        kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, cwd=str(ROOT),
                  env=env)
        mon = farm.lab.spawn(*ctl, "monitor", **kw)
        rmon = farm.lab.spawn(*ctl, "--json", "--reconnect", "monitor", **kw)
        out, rout = Lines(mon.stdout), Lines(rmon.stdout)
        subscribed(d, [out, rout])
        assert d.json("show summary")["daemon"]["monitors"] == 2
        farm.lab.stop(farm.names_on_7.pop(b2), 5.0)                   # b2 goes down
        line = out.find("198.51.100.12 (web:7)")
        # "YYYY-mm-dd HH:MM:SS.mmm host N 198.51.100.12 (web:7): up -> down, error: ..."
        assert " host " in line and ": up -> down, error: tcp connect" in line, line
        assert line[4] == "-" and line[19] == ".", line
        ev = json.loads(rout.find("198.51.100.12"))
        assert (ev["previous"], ev["status"]) == ("up", "down") and ev["time"] > 0
        assert ev["reason"].startswith("tcp connect")
        h2 = web_host(d, "198.51.100.12")
        assert h2["previous"] == "up" and h2["transitions"] == h["transitions"] + 1

        # the daemon stops: monitor says so in one line and exits 1;
        # --reconnect waits for the next one
        d.stop()
        farm.lab.daemons.remove(d)
        assert mon.wait(20) == 1
        err = mon.stderr.read().decode()
        assert err.startswith("hoststatectl: monitor: ") and err.count("\n") == 1, err
        rerr = Lines(rmon.stderr)
        assert "reconnecting" in rerr.find("reconnecting")
        d = farm.daemon(CONFIG)
        assert f"reconnected to {d.socket}" in rerr.find("reconnected")
        # the new daemon's events arrive on the same monitor
        ev = json.loads(rout.find("198.51.100.1"))
        assert ev["event"] == "host" and ev["time"] > 0 and ev["previous"]
    finally:
        if b2 not in farm.names_on_7:
            farm.names_on_7[b2] = start_name_server(farm, b2)
        for p in (mon, rmon):
            if p is not None:
                farm.lab.stop(p, 5.0)
        d.stop()
        if d in farm.lab.daemons:
            farm.lab.daemons.remove(d)


class Lines:
    """Whole lines from an unbuffered pipe, with a deadline."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buf = b""

    def next(self, timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            data = os.read(self.fd, 65536)
            if not data:
                raise AssertionError(f"end of output; so far: {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def find(self, needle: str, timeout: float = 30.0) -> str:
        """The first line holding `needle` (the others are skipped)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            line = self.next(left)
            if line is not None and needle in line:
                return line
        raise AssertionError(f"no line with {needle!r} in {timeout:.0f} s")


def subscribed(d, readers: list[Lines]) -> None:
    """Until every monitor has seen an event: a redirect disabled and
    enabled again (a monitor that subscribes later misses the first ones)."""
    seen = [False] * len(readers)

    def toggle() -> bool:
        assert d.ctl("redirect", "disable", "other").returncode == 0
        assert d.ctl("redirect", "enable", "other").returncode == 0
        for i, r in enumerate(readers):
            while not seen[i] and (line := r.next(0.5)) is not None:
                seen[i] = "other" in line
        return all(seen)
    wait_for(toggle, 60, what="every monitor subscribed")
