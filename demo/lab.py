"""A load-balancing lab in network namespaces: a client, a director and web
backends, joined by veths and a bridge.

    client 192.0.2.2 --- 192.0.2.1 director 198.51.100.1 --- br --- 198.51.100.11 b1
                          (VIP 203.0.113.10)                  +---- 198.51.100.12 b2
                                                              +---- 198.51.100.13 b3

Backends route through the director, so NAT replies come back the way they
went. Everything the lab makes it records, and `close()` removes it all -
processes by PID, namespaces by name - also after an error or Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

BACKEND_SERVER = r'''
import http.server, socketserver, sys
name = sys.argv[1]
body = (name + "\n").encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("0.0.0.0", int(sys.argv[2])), H).serve_forever()
'''


def sh(*argv: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns) + argv
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class Backend:
    name: str
    address: str
    ns: str
    port: int = 80
    proc: subprocess.Popen | None = None


@dataclass
class Lab:
    prefix: str = "hs-demo"
    backends_count: int = 3
    client_ns: str = ""
    director_ns: str = ""
    client_addr: str = "192.0.2.2"
    director_client_addr: str = "192.0.2.1"
    director_backend_addr: str = "198.51.100.1"
    vip: str = "203.0.113.10"
    backends: list[Backend] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client_ns = f"{self.prefix}-client"
        self.director_ns = f"{self.prefix}-dir"
        for i in range(1, self.backends_count + 1):
            self.backends.append(Backend(f"web{i}", f"198.51.100.{10 + i}",
                                         f"{self.prefix}-b{i}"))

    # --- building ---------------------------------------------------------

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)   # a leftover of an earlier run
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)

    def _veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth",
           "peer", "name", if_b, "netns", ns_b)
        sh("ip", "link", "set", if_a, "up", ns=ns_a)
        sh("ip", "link", "set", if_b, "up", ns=ns_b)

    def build(self) -> None:
        d, c = self.director_ns, self.client_ns
        self._netns(d)
        self._netns(c)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=d)
        self._veth(c, "eth0", d, "client0")
        sh("ip", "addr", "add", f"{self.client_addr}/24", "dev", "eth0", ns=c)
        sh("ip", "route", "add", "default", "via", self.director_client_addr, ns=c)
        sh("ip", "addr", "add", f"{self.director_client_addr}/24", "dev", "client0", ns=d)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=d)
        sh("ip", "link", "set", "br0", "up", ns=d)
        sh("ip", "addr", "add", f"{self.director_backend_addr}/24", "dev", "br0", ns=d)
        # the virtual address lives on the director
        sh("ip", "addr", "add", f"{self.vip}/32", "dev", "lo", ns=d)
        for i, b in enumerate(self.backends, 1):
            self._netns(b.ns)
            self._veth(b.ns, "eth0", d, f"b{i}")
            sh("ip", "link", "set", f"b{i}", "master", "br0", ns=d)
            sh("ip", "addr", "add", f"{b.address}/24", "dev", "eth0", ns=b.ns)
            sh("ip", "route", "add", "default", "via", self.director_backend_addr, ns=b.ns)
            self.start_backend(b)

    # --- processes --------------------------------------------------------

    def spawn(self, argv: list[str], ns: str | None = None, **kw) -> subprocess.Popen:
        if ns:
            argv = ["ip", "netns", "exec", ns] + argv
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def start_backend(self, b: Backend) -> None:
        b.proc = self.spawn([sys.executable, "-c", BACKEND_SERVER, b.name, str(b.port)],
                            ns=b.ns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until it listens, so the demo's story is not a race
        for _ in range(100):
            if sh("ss", "-Hltn", f"sport = :{b.port}", ns=b.ns).stdout.strip():
                return
            time.sleep(0.05)

    def stop_backend(self, b: Backend) -> None:
        if b.proc is not None:
            stop(b.proc)
            b.proc = None

    # --- traffic ----------------------------------------------------------

    def requests(self, count: int, port: int = 80, timeout: float = 2.0) -> dict[str, int]:
        """`count` fresh connections from the client to the VIP; answers by backend."""
        script = (
            "import http.client, json, sys, collections\n"
            "c = collections.Counter()\n"
            f"for _ in range({count}):\n"
            "    try:\n"
            f"        h = http.client.HTTPConnection({self.vip!r}, {port}, timeout={timeout})\n"
            "        h.request('GET', '/'); c[h.getresponse().read().decode().strip()] += 1; h.close()\n"
            "    except Exception as e:\n"
            "        c['failed'] += 1\n"
            "print(json.dumps(c))\n")
        out = sh(sys.executable, "-c", script, ns=self.client_ns).stdout
        import json
        return json.loads(out)

    # --- teardown ---------------------------------------------------------

    def close(self) -> None:
        for p in reversed(self.procs):
            stop(p)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop(p: subprocess.Popen, grace: float = 10.0, group: bool = True) -> None:
    """SIGTERM the process (or its whole session), then SIGKILL after `grace`.
    A daemon that stops its own children gets the signal alone (group=False)."""
    if p.poll() is not None:
        return
    try:
        if group:
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
