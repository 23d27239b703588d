"""hoststated itself in the director: real HTTP checks, nftables, real traffic.

The daemon runs as `hoststated -d -f FILE` inside the director namespace
(its children drop to an unprivileged uid; pfe keeps CAP_NET_ADMIN), the
client namespace keeps connecting to the virtual address, and the test
changes the backends and talks to the daemon with hoststatectl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_nft_netlab import Lab, root, run

pytestmark = [pytest.mark.root, root, pytest.mark.slow]

VIP = "203.0.113.10"
BIN = os.path.dirname(sys.executable)


def conf(lab, hosts, sock):
    return f"""
interval 1
timeout 500
log state changes
socket "{sock}"
engine nftables
table <web> {{ {", ".join(lab.addr[b] for b in hosts)} }}
redirect "www" {{
	listen on {VIP} port 80
	forward to <web> port 80 mode roundrobin check http "/" code 200
}}
"""


class Daemon:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.sock = os.path.join(lab.tmp, "ctl.sock")
        self.conf = os.path.join(lab.tmp, "hoststated.conf")
        self.log = os.path.join(lab.tmp, "daemon.log")
        self.proc: subprocess.Popen | None = None

    def write(self, hosts):
        with open(self.conf, "w") as f:
            f.write(conf(self.lab, hosts, self.sock))

    def start(self):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.director, os.path.join(BIN, "hoststated"),
             "-d", "-f", self.conf], stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        self.lab.procs["daemon"] = self.proc

    def ctl(self, *words, check=True):
        r = run(os.path.join(BIN, "hoststatectl"), "-s", self.sock, "--json", *words, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"hoststatectl {' '.join(words)}: {r.stderr}{r.stdout}")
        return r.stdout

    def hosts(self) -> dict[str, str]:
        """host address -> status."""
        out = self.ctl("show", "hosts", check=False)
        try:
            data = json.loads(out)
        except ValueError:
            return {}
        rows = data if isinstance(data, list) else data.get("hosts", data.get("rows", []))
        res = {}
        for row in rows:
            if isinstance(row, dict) and row.get("type", "host") == "host" and "name" in row:
                res[row["name"]] = str(row.get("status", ""))
        return res

    def wait(self, want: dict[str, str], timeout=20.0):
        end = time.monotonic() + timeout
        got = {}
        while time.monotonic() < end:
            got = self.hosts()
            if all(got.get(k) == v for k, v in want.items()):
                return
            time.sleep(0.1)
        raise AssertionError(f"hosts {got}, want {want}; log:\n{open(self.log).read()[-3000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.lab.procs.pop("daemon", None)


@pytest.fixture
def lab():
    lab = Lab("traffic", backends=4, sources=0)
    try:
        yield lab.setup()
    finally:
        lab.close()


def nft_tables(lab):
    r = lab.ns(lab.director, "nft", "-j", "list", "tables")
    return [o["table"]["name"] for o in json.loads(r.stdout)["nftables"] if "table" in o]


def test_daemon_with_real_traffic(lab):
    d = Daemon(lab)
    b1, b2, b3, b4 = lab.backends
    a = lab.addr
    d.write([b1, b2, b3])
    d.start()
    try:
        d.wait({a[b1]: "up", a[b2]: "up", a[b3]: "up"})
        r = lab.requests(VIP, 60)
        assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20, "b3": 20}

        # a backend killed under traffic: no failure once it is marked down
        lab.stop_backend(b2)
        d.wait({a[b2]: "down"})
        r = lab.requests(VIP, 40)
        assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b3": 20}

        # recovery
        lab.start_backend(b2)
        d.wait({a[b2]: "up"})
        assert set(lab.requests(VIP, 30)["counts"]) == {"b1", "b2", "b3"}

        # hoststatectl host disable / enable
        d.ctl("host", "disable", a[b3])
        d.wait({a[b3]: "disabled"})
        r = lab.requests(VIP, 20)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10}
        d.ctl("host", "enable", a[b3])
        d.wait({a[b3]: "up"})
        assert set(lab.requests(VIP, 30)["counts"]) == {"b1", "b2", "b3"}

        # a reload adding a host, under traffic: zero failed requests
        p = lab.traffic(VIP, 5.0)
        time.sleep(1.0)
        d.write([b1, b2, b3, b4])
        d.ctl("reload")
        d.wait({a[b4]: "up"})
        time.sleep(0.5)
        r = lab.finish(p)
        assert r["failed"] == 0, r["errors"]
        assert set(r["counts"]) == {"b1", "b2", "b3", "b4"}

        # someone flushes the ruleset by hand: the next reload (or the
        # periodic resync) repairs it
        lab.ns(lab.director, "nft", "flush", "ruleset")
        assert lab.requests(VIP, 2)["failed"] == 2
        d.ctl("reload")
        end = time.monotonic() + 10
        while lab.requests(VIP, 1)["failed"] and time.monotonic() < end:
            time.sleep(0.2)
        r = lab.requests(VIP, 40)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10, "b3": 10, "b4": 10}
    finally:
        d.stop()
    # a clean stop leaves nothing behind
    assert d.proc.returncode == 0, open(d.log).read()[-2000:]
    assert "hoststated" not in nft_tables(lab)
    assert lab.requests(VIP, 1)["failed"] == 1
