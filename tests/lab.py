"""The one network-namespace lab, for the root integration tests, the demo
(`./run demo`) and the benchmarks: namespaces, veths, real HTTP backends and
a real hoststated daemon.

A `Lab` records everything as soon as it is made, and `close()` (the end of
its `with` block, also after an error half-way through a setup or Ctrl-C)
removes it: processes by PID, namespaces by name, never by a pattern.

    with Lab("dm") as lab:
        lb = lab.netns("lb")
        be = lab.netns("b1")
        lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24"])
        lab.http(be, "198.51.100.11", 80)
        d = lab.daemon(lb, config_text)
        d.wait_for(lambda: d.json("show hosts")["hosts"][0]["status"] == "up")

`Farm(lab)` builds the load-balancing topology in a Lab:

    client 192.0.2.2 (+ sources 192.0.2.3...), 2001:db8:1::2
      | c0 -- d0
    director 192.0.2.1, 2001:db8:1::1 | br0 198.51.100.1, 2001:db8:2::1
      |-- b1 198.51.100.11, 2001:db8:2::11   (each backend answers its own name
      |-- b2 ...12, b3 ...13, ...             over HTTP, on IPv4 and IPv6 port 80)

Backends route through the director, so NAT replies come back the way they
went. Virtual addresses are for the caller to choose in 203.0.113.0/24 and
2001:db8::/64.

Every address the lab configures or serves on must be in 192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24 or 2001:db8::/32 (the documentation ranges):
anything else raises ValueError before it reaches the kernel.

Imports only the standard library (the demo and the benchmarks use it too),
and finds the checkout from its own path, so it works from a clone anywhere.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
_TRAFFIC = itertools.count(1)     # a fresh stop file for every traffic process
ROOT = Path(__file__).resolve().parent.parent

ALLOWED_NETS = tuple(ipaddress.ip_network(n) for n in
                     ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))

# argv: address port code [body]. Prints "ready" once it listens, so a caller
# waits on a pipe instead of polling the port.
HTTP_SERVER = r'''
import http.server, socket, socketserver, sys
addr, port, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = (sys.argv[4] if len(sys.argv) > 4 else "backend %s" % addr).encode() + b"\n"
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
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    def server_bind(self):
        if self.address_family == socket.AF_INET6:      # "::" serves IPv4 too
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
s = S((addr, port), H)
print("ready", flush=True)
s.serve_forever()
'''

# a TCP echo server on port 7 of argv[1], one thread a connection; says
# "ready" once listening; half-closes after echoing to the client's end
ECHO_SERVER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7)); s.listen(64)
print("ready", flush=True)
def serve(c):
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR); c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


# argv: hosts port sources count duration path timeout [stop]; prints one JSON
# object. Every request is a new TCP connection; hosts and sources are taken in
# turn. With `stop` (a path) it also ends once that file exists, and appends
# each page the first time it answers to stop + ".seen", so a test can wait
# until the traffic has reached a host instead of hoping a window was long enough.
CLIENT_SCRIPT = r"""
import http.client, json, os, sys, time
hosts, port, sources, count, duration, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], float(sys.argv[7])
stop = sys.argv[8] if len(sys.argv) > 8 else ""
hosts = hosts.split(",")
sources = [s for s in sources.split(",") if s]
counts, failed, errors, seq = {}, 0, [], []
t_end = time.monotonic() + duration
i = 0
while (count and i < count) or (not count and time.monotonic() < t_end
                                and not (stop and os.path.exists(stop))):
    src = (sources[i % len(sources)], 0) if sources else None
    host = hosts[i % len(hosts)]
    i += 1
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout, source_address=src)
        c.request("GET", path)
        body = c.getresponse().read().decode().strip()
        c.close()
        if stop and body not in counts:
            with open(stop + ".seen", "a") as f:
                f.write(body + "\n")
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


# --- small pieces, also used on their own -----------------------------------

def in_netns(ns: str | None, *argv: str) -> list[str]:
    """argv run inside namespace ns (`ip netns exec` execs it: same PID)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


class LabError(subprocess.CalledProcessError):
    """A lab command failed; says which and what it printed on stderr."""

    def __str__(self) -> str:
        return f"lab: {' '.join(self.cmd)}: exit status {self.returncode}: {self.stderr.strip()}"


def run(*argv: str, ns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(in_netns(ns, *argv), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise LabError(r.returncode, r.args, r.stdout, r.stderr)
    return r


def usable(*tools: str) -> bool:
    """Root, and the tools on PATH: what building a lab needs."""
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", *tools))


def check_address(addr: str) -> str:
    """addr (with or without a prefix length) if it is in the documentation
    ranges; the unspecified and loopback addresses pass (they bind, they do
    not route). Anything else is a ValueError."""
    ip = ipaddress.ip_interface(addr).ip
    if ip.is_unspecified or ip.is_loopback or any(ip in n for n in ALLOWED_NETS):
        return addr
    raise ValueError(f"lab: {addr} is outside the documentation ranges "
                     f"({', '.join(map(str, ALLOWED_NETS))})")


def wait_for(pred, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll pred() until it is truthy and return its value; AssertionError
    naming `what` after timeout. An exception from pred counts as not yet."""
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


def wait_dropped(pid: int, timeout: float = 10.0) -> dict[str, str]:
    """The status of child `pid` once it is no longer root: a role imports
    as root before its INIT and drop, and the daemon may answer (hce) or
    check every host up before a slower sibling got there."""
    wait_for(lambda: proc_status(pid)["Uid"].split()[0] != "0", timeout,
             what=f"the privilege drop of pid {pid}")
    return proc_status(pid)


def rss_kb(pid: int) -> int:
    """The resident set of pid now, in kB (VmRSS)."""
    return int(proc_status(pid)["VmRSS"].split()[0])


def peak_rss_kb(pid: int) -> int:
    """The largest resident set pid has had since its start or the last
    reset_peak_rss(), in kB (VmHWM): a peak no sampling can miss."""
    return int(proc_status(pid)["VmHWM"].split()[0])


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current VmRSS (proc(5): clear_refs "5")."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def stop(p: subprocess.Popen, grace: float = 10.0) -> int:
    """SIGTERM p (by its PID only), SIGKILL after `grace`; its exit status."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
    rc = p.wait()
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            f.close()
    return rc


def host_statuses(reply) -> dict[str, str]:
    """host name -> status from a `hoststatectl --json show hosts` reply,
    whatever rows or nesting it uses: every object with a name, a status
    and a table is a host."""
    found: dict[str, str] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            if {"name", "status", "table"} <= node.keys():
                found[node["name"]] = str(node["status"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(reply)
    return found


# --- the daemon -------------------------------------------------------------

class Daemon:
    """hoststated -d in a namespace, with its stderr in a file; from this
    checkout, or from another copy of the source (src). A test that starts
    it another way (a systemd unit's command line) overrides command().
    The lab stops it at its close."""

    def __init__(self, lab: "Lab", ns: str, conf: Path, socket: str, src: Path = ROOT):
        self.lab = lab
        self.ns = ns
        self.conf = conf
        self.socket = socket
        self.src = src
        self.log = conf.with_suffix(".log")
        self._logf = open(self.log, "w")
        argv, env, kw = self.command()
        # every program before the daemon execs the next: this PID is the parent's
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, **kw)
        self.pid = self.proc.pid
        lab.daemons.append(self)

    def command(self) -> tuple[list[str], dict[str, str], dict]:
        """The argv, the environment and other Popen options."""
        return (in_netns(self.ns, PYTHON, "-m", "hoststated", "-d", "-f", str(self.conf)),
                {**os.environ, "PYTHONPATH": str(self.src)}, {"cwd": str(self.src)})

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

    def role_pids(self, role: str) -> list[int]:
        """Every PID of a role (the relays are `prefork` processes)."""
        out = []
        for pid in children_of(self.pid):
            try:
                argv = cmdline(pid)
            except OSError:
                continue
            if "--role" in argv and argv[argv.index("--role") + 1] == role:
                out.append(pid)
        return sorted(out)

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: os.path.exists(self.socket) and self.ctl("show", "summary").returncode == 0,
                 timeout, what=f"hoststated on {self.socket} (log: {self.read_log()})")

    def wait_for(self, pred, timeout: float = 20.0, what: str = "condition"):
        """wait_for, with the daemon's log in the message if it times out."""
        try:
            return wait_for(pred, timeout, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; log:\n{self.read_log()[-3000:]}") from None

    def ctl(self, *words: str, json_out: bool = False, socket: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [PYTHON, "-m", "hoststatectl", "-s", socket or self.socket]
        if json_out:
            argv.append("--json")
        return subprocess.run([*argv, *words], capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})

    def json(self, *words: str):
        # "show hosts" as one word works too
        r = self.ctl(*(w for word in words for w in word.split()), json_out=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def host(self, name: str) -> dict:
        return next(h for h in self.json("show", "hosts")["hosts"] if h["name"] == name)

    def statuses(self) -> dict[str, str]:
        """host name -> status; {} while the daemon does not answer."""
        r = self.ctl("show", "hosts", json_out=True)
        return host_statuses(json.loads(r.stdout)) if r.returncode == 0 else {}

    def wait_statuses(self, want: dict[str, str], timeout: float = 20.0) -> None:
        """Until every host in `want` has its status."""
        self.wait_for(lambda: (lambda got: all(got.get(k) == v for k, v in want.items()))(
            self.statuses()), timeout, what=f"hosts {want}")

    def monitor(self) -> subprocess.Popen:
        """`hoststatectl --json monitor`, one event a line on .stdout; the
        lab stops it."""
        before = self.monitors()
        p = self.lab.spawn(PYTHON, "-m", "hoststatectl", "-s", self.socket, "--json", "monitor",
                           stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        # subscribed before anything happens: the daemon counts it (a fixed
        # sleep was too short for a client starting on a loaded machine)
        self.wait_for(lambda: p.poll() is not None or self.monitors() > before,
                      what="the monitor client subscribed")
        assert p.poll() is None, f"hoststatectl monitor exited {p.returncode}"
        return p

    def monitors(self) -> int:
        """The monitor clients the daemon has now (`show summary`)."""
        return self.json("show", "summary")["daemon"]["monitors"]

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


# --- the lab ----------------------------------------------------------------

class Lab:
    """Namespaces, processes and a temporary directory, removed by close().

    Names are f"hs-{area}-{pid}-..." so that runs never collide; `prefix`
    gives fixed names instead (the demo's), and then a namespace left by an
    earlier run under the same name is removed before it is made again."""

    def __init__(self, area: str = "lab", prefix: str | None = None):
        self.fixed = prefix is not None
        self.prefix = prefix or f"hs-{area}-{os.getpid()}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.daemons: list[Daemon] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._links = 0
        self._servers = 0
        self._http: dict[subprocess.Popen, tuple[str, Path]] = {}

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building --

    def netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        if self.fixed:
            run("ip", "netns", "del", ns, check=False)      # a leftover of an earlier run
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def addr(self, ns: str, dev: str, *addrs: str) -> None:
        """Addresses on dev; IPv6 without duplicate detection (usable at once)."""
        for a in addrs:
            nodad = ("nodad",) if ":" in check_address(a) else ()
            run("ip", "-n", ns, "addr", "add", a, "dev", dev, *nodad)

    def veth(self, ns_a: str, addrs_a: str | list[str], ns_b: str, addrs_b: str | list[str],
             name: str = "v", names: tuple[str, str] | None = None) -> tuple[str, str]:
        """A veth pair between two namespaces, up, with addresses; its two
        device names (`names`, or generated ones unique in this lab)."""
        if names is None:
            self._links += 1
            names = (f"{name}a{self._links}", f"{name}b{self._links}")
        a, b = names
        for addrs in (addrs_a, addrs_b):
            for addr in [addrs] if isinstance(addrs, str) else addrs:
                check_address(addr)
        # made directly in the namespaces: the names never meet the host's
        run("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        # both ends up first, then the addresses: IPv6 addresses added to a
        # link still down lose the first packet sent some 0.5 s after it
        # comes up (an echo request to a neighbour not yet resolved went
        # unanswered in 3 of 6 runs here); added to a link already up, none
        for ns, dev in ((ns_a, a), (ns_b, b)):
            run("ip", "-n", ns, "link", "set", dev, "up")
        for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            self.addr(ns, dev, *([addrs] if isinstance(addrs, str) else addrs))
        return a, b

    # -- processes --

    def spawn(self, *argv: str, ns: str | None = None, **kw) -> subprocess.Popen:
        """A process (in ns), stopped by close(). Output is discarded unless
        stdout/stderr are given; its own session, so a Ctrl-C at the
        terminal reaches the lab's owner, who then stops it in order."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(in_netns(ns, *argv), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def http(self, ns: str, addr: str, port: int = 80, code: int = 200,
             body: str | None = None, wait: bool = True) -> subprocess.Popen:
        """A real HTTP server answering `code` and `body` (default "backend
        ADDR") on addr:port ("::" for every IPv4 and IPv6 address); waits
        until it listens unless wait=False (then call ready())."""
        check_address(addr)
        argv = [PYTHON, "-c", HTTP_SERVER, addr, str(port), str(code)]
        if body is not None:
            argv.append(body)
        self._servers += 1
        log = self.tmp / f"http-{self._servers}.log"     # a file: a pipe could fill up
        with open(log, "w") as err:
            p = self.spawn(*argv, ns=ns, stdout=subprocess.PIPE, stderr=err, text=True)
        self._http[p] = (f"http server {addr}:{port} in {ns}", log)
        if wait:
            self.ready(p)
        return p

    def ready(self, p: subprocess.Popen, timeout: float = 10.0) -> None:
        """Until a server from http() says it listens; its error if it died."""
        if select.select([p.stdout], [], [], timeout)[0]:
            if p.stdout.readline() == "ready\n":
                return
            try:
                p.wait(timeout)                 # end of file: it is on its way out
            except subprocess.TimeoutExpired:
                pass
        what, log = self._http[p]
        if p.poll() is None:
            raise RuntimeError(f"{what} not listening after {timeout:.0f} s")
        last = (log.read_text().strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"{what} failed: {last}")

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> int:
        """Stop a process of this lab now (by PID) and forget it."""
        rc = stop(p, grace)
        if p in self.procs:
            self.procs.remove(p)
        return rc

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
        if wait:
            d.wait_ready()
        return d

    # -- teardown --

    def close(self) -> None:
        """Remove everything, each step on its own so one failure does not
        leave the rest: daemons, processes, anything still running in our
        namespaces (by the PIDs the kernel lists for them), the namespaces
        (by name), the temporary directory."""
        for d in self.daemons:
            try:
                d.stop()
            except Exception:
                pass
        self.daemons.clear()
        for p in reversed(self.procs):
            try:
                stop(p, 5.0)
            except Exception:
                pass
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # only ours can be in there: the namespace is ours
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the web director of the daemon's own tests --------------------------------

WEB_VIP = "203.0.113.10"
WEB_BACKENDS = ("198.51.100.11", "198.51.100.12")
# Lab.daemon fills in {socket}
WEB_CONFIG = """
interval 1
timeout 500
socket "{socket}"
engine nftables
table <web> {{ 198.51.100.11, 198.51.100.12 }}
redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
}}
"""


def web_director(lab: "Lab", *extra: str) -> tuple[str, str, str, list[subprocess.Popen]]:
    """WEB_CONFIG's world: client c (192.0.2.2) -- director lb (192.0.2.1,
    198.51.100.1; forwarding) -- b, which holds WEB_BACKENDS (HTTP on port
    80) and the `extra` addresses (/24s, nothing served); c and b route
    through lb. Returns c, lb, b and the two web servers."""
    c, lb, b = lab.netns("c"), lab.netns("lb"), lab.netns("b")
    lab.veth(c, "192.0.2.2/24", lb, "192.0.2.1/24", name="c")
    lab.veth(lb, "198.51.100.1/24", b, [f"{a}/24" for a in (*WEB_BACKENDS, *extra)], name="b")
    run("ip", "-n", c, "route", "add", "default", "via", "192.0.2.1")
    run("ip", "-n", b, "route", "add", "default", "via", "198.51.100.1")
    run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=lb)
    return c, lb, b, [lab.http(b, a, 80) for a in WEB_BACKENDS]


# a new connection every 20 ms with a 1 s timeout (faults-found's client)
WEB_CLIENT = r"""
import http.client, json, os, sys, time
vip, stop = sys.argv[1], sys.argv[2]
ok, failed_at, errors = 0, [], []
end = time.monotonic() + 120                # a guard: the test stops it sooner
while time.monotonic() < end and not os.path.exists(stop):
    t = time.monotonic()
    try:
        c = http.client.HTTPConnection(vip, 80, timeout=1)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
        ok += 1
        if ok == 1:
            open(stop + ".flowing", "w").close()
    except Exception as e:
        failed_at.append(t)
        if len(errors) < 5:
            errors.append(repr(e))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": len(failed_at), "failed_at": failed_at,
                  "errors": errors}))
"""


class WebTraffic:
    """WEB_CLIENT from namespace ns to the VIP until finish(), which says
    how many requests passed and failed, when (time.monotonic()) each
    failure was, and the first errors. wait_flowing() waits for its first
    answered request (a client starting on a loaded machine may take longer
    than a test's window); finish() does too, so `ok > 0` means what it says."""

    def __init__(self, lab: "Lab", ns: str, vip: str = WEB_VIP):
        self.stop = lab.tmp / f"stop-web-traffic-{next(_TRAFFIC)}"
        self.p = subprocess.Popen(in_netns(ns, PYTHON, "-c", WEB_CLIENT, vip, str(self.stop)),
                                  stdout=subprocess.PIPE, text=True)
        lab.procs.append(self.p)

    def wait_flowing(self, timeout: float = 30.0) -> None:
        flowing = Path(str(self.stop) + ".flowing")
        wait_for(lambda: flowing.exists() or self.p.poll() is not None, timeout,
                 what="the first answered request of the traffic")

    def finish(self) -> dict:
        self.wait_flowing()
        self.stop.write_text("")
        out, _ = self.p.communicate(timeout=130)
        return json.loads(out)


def nft_table(ns: str) -> str:
    """`nft list` of hoststated's table in ns; empty without the table."""
    r = run("nft", "list", "table", "inet", "hoststated", ns=ns, check=False)
    return r.stdout if r.returncode == 0 else ""


def nft_backends(ns: str, addrs=WEB_BACKENDS) -> set[str] | None:
    """Which of addrs are elements of hoststated's nftables maps in ns;
    None without the table."""
    r = run("nft", "-j", "list", "table", "inet", "hoststated", ns=ns, check=False)
    if r.returncode != 0:
        return None
    out: set[str] = set()
    for obj in json.loads(r.stdout)["nftables"]:
        m = obj.get("map")
        for elem in (m or {}).get("elem", ()):
            for part in elem if isinstance(elem, list) else [elem]:
                text = json.dumps(part)
                out |= {a for a in addrs if a in text}
    return out


# --- the load-balancing topology --------------------------------------------

class Farm:
    """A client, a director and `backends` web servers, built in a Lab (see
    the module docstring). Backends are known by their namespace: `backends`
    lists them, `addr`/`addr6`/`names` map them to their addresses and to
    the name their page answers."""

    client_addr = "192.0.2.2"
    director_client_addr = "192.0.2.1"
    director_backend_addr = "198.51.100.1"

    def __init__(self, lab: Lab, backends: int = 3, sources: int = 40,
                 name: str = "b{}") -> None:
        self.lab = lab
        self.tmp = lab.tmp
        self.sources = sources          # extra client addresses 192.0.2.3...
        self.servers: dict[str, subprocess.Popen] = {}
        c = self.client = lab.netns("client")
        d = self.director = lab.netns("dir")
        lab.veth(c, [f"{self.client_addr}/24",
                     *(f"192.0.2.{i}/24" for i in range(3, 3 + sources)), "2001:db8:1::2/64"],
                 d, [f"{self.director_client_addr}/24", "2001:db8:1::1/64"], names=("c0", "d0"))
        self.ns(c, "ip", "route", "add", "default", "via", self.director_client_addr)
        self.ns(c, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
        self.ns(d, "ip", "link", "add", "br0", "type", "bridge")
        lab.addr(d, "br0", f"{self.director_backend_addr}/24", "2001:db8:2::1/64")
        self.ns(d, "ip", "link", "set", "br0", "up")
        self.ns(d, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(d, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self.backends: list[str] = []
        self.addr: dict[str, str] = {}
        self.addr6: dict[str, str] = {}
        self.names: dict[str, str] = {}
        for i in range(backends):
            b = lab.netns(f"b{i + 1}")
            self.backends.append(b)
            self.addr[b], self.addr6[b] = f"198.51.100.{11 + i}", f"2001:db8:2::{11 + i}"
            self.names[b] = name.format(i + 1)
            lab.veth(b, [f"{self.addr[b]}/24", f"{self.addr6[b]}/64"], d, [], names=("e0", f"p{i}"))
            self.ns(d, "ip", "link", "set", f"p{i}", "master", "br0")
            self.ns(b, "ip", "route", "add", "default", "via", self.director_backend_addr)
            self.ns(b, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::1")
        for b in self.backends:             # start them all, then wait for them all
            self.start_backend(b, wait=False)
        for b in self.backends:
            lab.ready(self.servers[b])

    def ns(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*cmd, ns=name, check=check)

    def daemon(self, config: str, **kw) -> Daemon:
        """hoststated in the director (Lab.daemon)."""
        return self.lab.daemon(self.director, config, **kw)

    # -- backends --

    def start_backend(self, b: str, wait: bool = True) -> None:
        self.servers[b] = self.lab.http(b, "::", 80, body=self.names[b], wait=wait)

    def stop_backend(self, b: str) -> None:
        p = self.servers.pop(b, None)
        if p is not None:
            self.lab.stop(p, 5.0)

    # -- traffic --

    def client_cmd(self, vip, port=80, sources=(), count=0, duration=0.0, path="/", ns=None,
                   timeout=3.0, stop=""):
        return in_netns(ns or self.client, PYTHON, "-c", CLIENT_SCRIPT, vip, str(port),
                        ",".join(sources), str(count), str(duration), path, str(timeout),
                        *([str(stop)] if stop else []))

    def requests(self, vip, count, port=80, sources=(), ns=None, timeout=3.0) -> dict:
        """`count` connections to vip:port, each new (from the client, or
        from ns); {"counts": {page: n}, "failed": n, "errors": [first few],
        "seq": [page or "FAIL", ...]}."""
        r = subprocess.run(self.client_cmd(vip, port, sources, count=count, ns=ns,
                                           timeout=timeout),
                           check=True, capture_output=True, text=True, timeout=120)
        return json.loads(r.stdout)

    def traffic(self, vip, duration=None, port=80, sources=()) -> subprocess.Popen:
        """Background traffic for `duration` s, or (None) until finish(proc),
        which collects it. Without a duration seen(proc) says which pages
        have answered so far: a window that has to reach a host lasts until
        it did, however slow the machine (a fixed one ended first on a
        loaded CI box)."""
        stop = "" if duration is not None else self.tmp / f"stop-traffic-{next(_TRAFFIC)}"
        p = subprocess.Popen(self.client_cmd(vip, port, sources, stop=stop,
                                             duration=110.0 if duration is None else duration),
                             stdout=subprocess.PIPE, text=True)
        p.stop_file = stop
        self.lab.procs.append(p)
        return p

    def seen(self, p: subprocess.Popen) -> set[str]:
        """The pages traffic(duration=None) has had answered so far."""
        try:
            return set(Path(str(p.stop_file) + ".seen").read_text().splitlines())
        except OSError:
            return set()

    def finish(self, p: subprocess.Popen) -> dict:
        if getattr(p, "stop_file", ""):
            Path(p.stop_file).write_text("")
        out, _ = p.communicate(timeout=120)
        if p in self.lab.procs:
            self.lab.procs.remove(p)
        return json.loads(out)


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
