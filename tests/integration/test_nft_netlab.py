"""The traffic lab for the kernel tests, and a check that the lab itself works.

    client (192.0.2.2-41, 2001:db8:1::2) -- director (192.0.2.1 | br0 198.51.100.1)
                                              |-- b1 198.51.100.11, 2001:db8:2::11
                                              |-- b2 ...12, b3 ...13, b4 ...14

Every backend runs `python -m http.server` serving a page with its own name.
VIPs are 203.0.113.0/24 and 2001:db8::/64, handled by the director. Namespace
names carry the pid; everything is removed (processes by PID) in `close()`.
Other kernel test modules import `Lab` from here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

CLIENT_SCRIPT = r"""
import http.client, json, sys, time, socket
hosts, port, sources, count, duration, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
sources = [s for s in sources.split(",") if s]
counts, failed, errors, seq = {}, 0, [], []
t_end = time.monotonic() + duration
i = 0
while (count and i < count) or (not count and time.monotonic() < t_end):
    src = (sources[i % len(sources)], 0) if sources else None
    host = hosts.split(",")[i % len(hosts.split(","))]
    i += 1
    try:
        c = http.client.HTTPConnection(host, port, timeout=3, source_address=src)
        c.request("GET", path)
        body = c.getresponse().read().decode().strip()
        c.close()
        counts[body] = counts.get(body, 0) + 1
        seq.append(body)
    except Exception as e:
        failed += 1
        seq.append("FAIL")
        if len(errors) < 5:
            errors.append(repr(e))
    if duration and count == 0:
        time.sleep(0.002)
print(json.dumps({"counts": counts, "failed": failed, "errors": errors, "seq": seq}))
"""


def run(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def is_root() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None


class Lab:
    def __init__(self, area: str, backends: int = 3, sources: int = 40) -> None:
        self.sources = sources          # extra client addresses 192.0.2.3...
        self.prefix = f"hs-{area}-{os.getpid()}"
        self.client = f"{self.prefix}-c"
        self.director = f"{self.prefix}-d"
        self.backends = [f"{self.prefix}-b{i + 1}" for i in range(backends)]
        self.addr = {b: f"198.51.100.{11 + i}" for i, b in enumerate(self.backends)}
        self.addr6 = {b: f"2001:db8:2::{11 + i}" for i, b in enumerate(self.backends)}
        self.names = {b: f"b{i + 1}" for i, b in enumerate(self.backends)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.namespaces: list[str] = []

    # -- build --

    def ns(self, name, *cmd, check=True):
        return run("ip", "netns", "exec", name, *cmd, check=check)

    def setup(self) -> "Lab":
        for n in [self.client, self.director] + self.backends:
            run("ip", "netns", "add", n)
            self.namespaces.append(n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        c, d = self.client, self.director
        run("ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "d0", "netns", d)
        self.ns(c, "ip", "addr", "add", "192.0.2.2/24", "dev", "c0")
        for i in range(3, 3 + self.sources):
            self.ns(c, "ip", "addr", "add", f"192.0.2.{i}/24", "dev", "c0")
        self.ns(c, "ip", "addr", "add", "2001:db8:1::2/64", "dev", "c0", "nodad")
        self.ns(c, "ip", "link", "set", "c0", "up")
        self.ns(c, "ip", "route", "add", "default", "via", "192.0.2.1")
        self.ns(c, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
        self.ns(d, "ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
        self.ns(d, "ip", "addr", "add", "2001:db8:1::1/64", "dev", "d0", "nodad")
        self.ns(d, "ip", "link", "set", "d0", "up")
        self.ns(d, "ip", "link", "add", "br0", "type", "bridge")
        self.ns(d, "ip", "addr", "add", "198.51.100.1/24", "dev", "br0")
        self.ns(d, "ip", "addr", "add", "2001:db8:2::1/64", "dev", "br0", "nodad")
        self.ns(d, "ip", "link", "set", "br0", "up")
        self.ns(d, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(d, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for i, b in enumerate(self.backends):
            run("ip", "link", "add", "e0", "netns", b, "type", "veth", "peer",
                "name", f"p{i}", "netns", d)
            self.ns(d, "ip", "link", "set", f"p{i}", "master", "br0", "up")
            self.ns(b, "ip", "addr", "add", f"{self.addr[b]}/24", "dev", "e0")
            self.ns(b, "ip", "addr", "add", f"{self.addr6[b]}/64", "dev", "e0", "nodad")
            self.ns(b, "ip", "link", "set", "e0", "up")
            self.ns(b, "ip", "route", "add", "default", "via", "198.51.100.1")
            self.ns(b, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::1")
            self.start_backend(b)
        for b in self.backends:
            self.wait_backend(b)
        return self

    def start_backend(self, b: str) -> None:
        root = os.path.join(self.tmp, self.names[b])
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write(self.names[b] + "\n")
        log = open(os.path.join(self.tmp, f"{self.names[b]}.log"), "w")
        self.procs[b] = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, "-m", "http.server", "80",
             "--bind", "::", "--directory", root],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_backend(self, b: str, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.ns(b, "ss", "-Hltn", "sport = :80", check=False)
            if r.stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"backend {b} did not listen on :80")

    def stop_backend(self, b: str) -> None:
        p = self.procs.pop(b, None)
        if p is not None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- traffic --

    def client_cmd(self, vip, port=80, sources=(), count=0, duration=0.0, path="/", ns=None):
        return ["ip", "netns", "exec", ns or self.client, sys.executable, "-c", CLIENT_SCRIPT,
                vip, str(port), ",".join(sources), str(count), str(duration), path]

    def requests(self, vip, count, port=80, sources=(), ns=None) -> dict:
        r = run(*self.client_cmd(vip, port, sources, count=count, ns=ns), timeout=120)
        return json.loads(r.stdout)

    def traffic(self, vip, duration, port=80, sources=()) -> subprocess.Popen:
        """Background traffic; collect it with `finish(proc)`."""
        p = subprocess.Popen(self.client_cmd(vip, port, sources, duration=duration),
                             stdout=subprocess.PIPE, text=True)
        self.procs[f"client-{p.pid}"] = p
        return p

    def finish(self, p: subprocess.Popen) -> dict:
        out, _ = p.communicate(timeout=duration_guard())
        self.procs.pop(f"client-{p.pid}", None)
        return json.loads(out)

    # -- teardown --

    def __enter__(self) -> "Lab":
        try:
            return self.setup()
        except BaseException:
            self.close()                    # whatever setup made so far
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for key, p in list(self.procs.items()):
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()
        for n in self.namespaces:
            pids = run("ip", "netns", "pids", n, check=False).stdout.split()
            for pid in pids:            # only ours can be there: the ns is ours
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "del", n, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def duration_guard() -> float:
    return 120.0


class InNetns:
    """Run this process inside a namespace (the director) until exit."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        from pyroute2 import netns
        netns.pushns(self.name)
        return self

    def __exit__(self, *exc):
        from pyroute2 import netns
        netns.popns()


root = pytest.mark.skipif(not is_root(), reason="needs root, ip and nft")


@pytest.fixture
def lab():
    with Lab("nftlab") as lab:
        yield lab


@pytest.mark.root
@root
def test_lab_backends_answer_directly(lab):
    for b in lab.backends:
        r = lab.requests(lab.addr[b], 2)
        assert r == {"counts": {lab.names[b]: 2}, "failed": 0, "errors": [],
                     "seq": [lab.names[b]] * 2}
    r = lab.requests("203.0.113.10", 1)     # no redirect yet: nothing answers
    assert r["failed"] == 1
