"""Reusable pieces for root integration tests: network namespaces, veths,
real HTTP backends and a real hoststated daemon, each removed by name or PID
(never by a broad pattern) when the test ends, even on failure.

    with Lab("dm") as lab:
        lb = lab.netns("lb")
        be = lab.netns("b1")
        lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24"])
        lab.http(be, "198.51.100.11", 80)
        d = lab.daemon(lb, config_text)
        d.wait_for(lambda: d.json("show hosts")["hosts"][0]["status"] == "up")

Addresses only from 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent

HTTP_SERVER = r'''
import http.server, socketserver, sys
addr, port, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = ("backend %s\n" % addr).encode()
class H(http.server.BaseHTTPRequestHandler):
    def _head(self):
        self.send_response(code)
        if code in (301, 302):
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
    def do_HEAD(self):
        self._head()
    def do_GET(self):
        self._head(); self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = __import__("socket").AF_INET6 if ":" in addr else __import__("socket").AF_INET
S((addr, port), H).serve_forever()
'''


def run(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def wait_for(pred, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll pred() until it is truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:             # not there yet (socket absent, ...)
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last: {last_exc})" if last_exc else ""))


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is pid (from /proc, no pattern matching)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


class Daemon:
    """hoststated -d in a namespace, with its stderr in a file."""

    def __init__(self, lab: "Lab", ns: str, conf: Path, socket: str):
        self.lab = lab
        self.ns = ns
        self.conf = conf
        self.socket = socket
        self.log = conf.with_suffix(".log")
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PYTHON, "-m", "hoststated", "-d", "-f", str(conf)],
            stdout=self._logf, stderr=subprocess.STDOUT, cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        # `ip netns exec` execs the program, so this PID is the parent's
        self.pid = self.proc.pid

    def roles(self) -> dict[str, int]:
        """{"hce": pid, "pfe": pid} from the parent's children's command lines."""
        out = {}
        for pid in children_of(self.pid):
            try:
                argv = cmdline(pid)
            except OSError:
                continue
            if "--role" in argv:
                out[argv[argv.index("--role") + 1]] = pid
        return out

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: os.path.exists(self.socket) and self.ctl("show", "summary").returncode == 0,
                 timeout, what=f"hoststated on {self.socket} (log: {self.read_log()})")

    def ctl(self, *words: str, json_out: bool = False, socket: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [PYTHON, "-m", "hoststatectl", "-s", socket or self.socket]
        if json_out:
            argv.append("--json")
        return subprocess.run([*argv, *words], capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})

    def json(self, *words: str):
        r = self.ctl(*words, json_out=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def host(self, name: str) -> dict:
        return next(h for h in self.json("show", "hosts")["hosts"] if h["name"] == name)

    def read_log(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        pids = [self.pid, *self.roles().values()]
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for pid in pids:                   # whatever is left, by PID
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._logf.close()
        return self.proc.returncode


class Lab:
    def __init__(self, area: str):
        self.prefix = f"hs-{area}-{os.getpid()}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.daemons: list[Daemon] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def veth(self, ns_a: str, addrs_a: str | list[str], ns_b: str, addrs_b: str | list[str],
             name: str = "v") -> None:
        a, b = f"{name}a{len(self.namespaces)}", f"{name}b{len(self.namespaces)}"
        run("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            for addr in [addrs] if isinstance(addrs, str) else addrs:
                run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def spawn(self, *argv: str, ns: str | None = None) -> subprocess.Popen:
        if ns:
            argv = ("ip", "netns", "exec", ns, *argv)
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def http(self, ns: str, addr: str, port: int = 80, code: int = 200) -> subprocess.Popen:
        """A real HTTP server answering `code` on addr:port; waits until it listens."""
        p = self.spawn(PYTHON, "-c", HTTP_SERVER, addr, str(port), str(code), ns=ns)
        probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()"
        wait_for(lambda: run(PYTHON, "-c", probe, addr, str(port), ns=ns, check=False).returncode == 0,
                 10, what=f"http server {addr}:{port}")
        return p

    def kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.kill()
        p.wait()

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def daemon(self, ns: str, config: str, name: str = "hoststated.conf",
               wait: bool = True) -> Daemon:
        """Start hoststated on `config`, where `{socket}` and `{tmp}` are
        filled in; the socket lives in the lab's temp dir."""
        socket_path = str(self.tmp / f"{name}.sock")
        conf = self.write(name, config.format(socket=socket_path, tmp=self.tmp))
        d = Daemon(self, ns, conf, socket_path)
        self.daemons.append(d)
        if wait:
            d.wait_ready()
        return d

    def close(self) -> None:
        for d in self.daemons:
            try:
                d.stop()
            except Exception:
                pass
        for p in self.procs:
            try:
                self.kill(p)
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        for f in sorted(self.tmp.glob("*")):
            try:
                f.unlink()
            except OSError:
                pass
        try:
            self.tmp.rmdir()
        except OSError:
            pass
