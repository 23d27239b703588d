"""Relay benchmark: hoststated's relay role and HAProxy side by side (issue 11,
"Performance"). Not part of the test suite. Run as root (it builds network
namespaces), under the lock the root tests share:

    flock /tmp/hoststated-root-tests.lock .venv/bin/python bench/relay.py --quick
    .venv/bin/python bench/relay.py [--duration 5] [--runs 3] [--warmup 1]
        [--relays haproxy,hs1,hs2] [--cases keep-alive,new-conn,bulk]
        [--spread 3] [--no-spread] [--json FILE] [--no-setup]

Setup: the tools it needs come from Debian's packages, installed here with
apt-get (after `apt-get update`) when missing: haproxy, wrk, nginx-light
(else nginx; else the backend is a Python HTTP server, and the output says
so). A service a package would start is held back with a temporary
/usr/sbin/policy-rc.d when the machine has none.

The lab (tests/lab.py's Lab, which removes every namespace and process it
made, by name and PID, also after an error or Ctrl-C):

    client 192.0.2.2 (wrk -t1)  --  relay 192.0.2.1 | 198.51.100.1  --  backend 198.51.100.11
                                    (HAProxy or hoststated)              (nginx, 1 process)

The relays listen on 192.0.2.1 and relay plain TCP to nginx on port 80:
HAProxy `mode tcp` with `nbthread 1`; hoststated `relay` blocks with
`forward to 198.51.100.11 port 80` and `prefork N` (hs1 = prefork 1, the
per-process comparison with nbthread 1; hs2 = prefork 2), relaying by
splice(2) (hoststated's default for plain TCP, as relayd's); hs1-copy =
prefork 1 with `tcp { no splice }`: bytes copied through asyncio Protocols.

The cases (CASES, a table: an HTTP relay case is one more row with its
`kind`, and a Relay says which kinds it can configure):
  keep-alive      wrk -c50 on a 100-byte file, keep-alive     req/s, relay CPU µs per request
  new-conn        the same with -H "Connection: close"        req/s, relay CPU µs per connection
  bulk            wrk -c4 on a 10 MB file                     Gbit/s, relay CPU-s per GB
  tls-new-conn    new-conn over TLS, terminated by the relay  req/s, relay CPU µs per handshake
  tls-keep-alive  keep-alive over TLS                         req/s, relay CPU µs per request
  http-keep-alive keep-alive through an HTTP relay (port + 200: hoststated
                  `http protocol`, HAProxy `mode http`, no rules)
  http-rules      the same through ten filter rules (port + 300; RULES and
                  HAPROXY_RULES, the same work: X-Forwarded-For appended,
                  Host set, two paths and a header matched, a path blocked,
                  a label, a cookie, a header removed, two response rules);
                  wrk sends a User-Agent and a Cookie that rules match
The TLS cases: each relay also listens on its port + 100 with TLS (HAProxy
`bind ... ssl crt`, hoststated `listen on ... tls` with a keypair), both
with one ECDSA P-256 key and a self-signed certificate the benchmark makes
with `cryptography`, no session tickets; plain TCP to nginx behind.

Relay CPU = Δ(utime+stime) from /proc/PID/stat of every relay process over
the wrk run (HAProxy: its one process; hoststated: every `--role relay`
child of the daemon, counted in the output). Each cell is a warm-up, then
`--runs` runs of `--duration` s: median (min–max). wrk's own CPU and the
whole box's busy share are printed too: on 2 shared cores a relay that
leaves less CPU to wrk and nginx gets fewer req/s, so µs per request and
CPU-s per GB are the steadier figures (../shared/reference/relay-bench.md).

The spread: with `prefork 3` (--spread N), the share of relay CPU each
process took in the new-conn case (a proxy for its share of sessions: each
connection costs about the same), and how many of the keep-alive case's 50
connections each process held at one instant (`show sessions`, once).

Before a relay is measured the 10 MB file is fetched through it and its
sha256 compared with the backend's.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab import PYTHON, Lab, children_of, cmdline, in_netns, run  # noqa: E402

CLIENT_ADDR = "192.0.2.2"
RELAY_ADDR = "192.0.2.1"
RELAY_BACK_ADDR = "198.51.100.1"
BACKEND_ADDR = "198.51.100.11"
BACKEND_PORT = 80
SMALL = "/100"                  # a 100-byte file
BULK = "/10m"                   # a 10 MB file
BULK_SIZE = 10 * 1000 * 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the cases ----------------------------------------------------------------

TLS_OFFSET = 100                # a relay's TLS listener: its plain port + 100
HTTP_OFFSET = 200               # its HTTP relay's listener
RULES_OFFSET = 300              # its HTTP relay with filter rules

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str                   # what the relay must be: "tcp" (later "http", "tls")
    path: str
    conns: int
    headers: tuple[str, ...]
    unit: str                   # "req", "conn" or "GB": what CPU is counted per
    scheme: str = "http"        # "https" for a TLS case
    offset: int = 0             # the relay's listener for it: its port + offset


CASES = [
    Case("keep-alive", "tcp", SMALL, 50, (), "req"),
    Case("new-conn", "tcp", SMALL, 50, ("Connection: close",), "conn"),
    Case("bulk", "tcp", BULK, 4, (), "GB"),
    # TLS termination, plain TCP to nginx: a full handshake per connection
    # (no tickets, and wrk offers no session to resume)
    Case("tls-new-conn", "tls", SMALL, 50, ("Connection: close",), "conn", "https", TLS_OFFSET),
    Case("tls-keep-alive", "tls", SMALL, 50, (), "req", "https", TLS_OFFSET),
    # an HTTP relay (hoststated `http protocol`, HAProxy `mode http`), no rules
    Case("http-keep-alive", "http", SMALL, 50, (), "req", "http", HTTP_OFFSET),
    # the same through ~10 filter rules (issue 12), with headers they match
    Case("http-rules", "http", SMALL, 50, ("User-Agent: curl-bench", "Cookie: session=abc"),
         "req", "http", RULES_OFFSET),
]

# what the issue aims at, per relay process, against HAProxy nbthread 1:
# case -> (max CPU-per-unit ratio, min rate ratio, min Gbit/s, max CPU-s/GB)
AIMS = {
    "keep-alive": (1.1, 1.0, None, None),
    "new-conn": (1.5, None, None, None),
    "bulk": (None, None, 15.0, 0.4),
    "tls-new-conn": (1.2, None, None, None),
    "http-rules": (1.2, None, None, None),            # issue 12
}


# --- setup: Debian's packages -------------------------------------------------

def which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None)


def apt_install(*pkgs: str) -> bool:
    r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs],
                       capture_output=True, text=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0:
        print(f"relay bench: apt-get install {' '.join(pkgs)} failed: "
              f"{(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
    return r.returncode == 0


def setup() -> None:
    """haproxy, wrk and nginx from Debian when missing (apt-get update first)."""
    want = [(t, p) for t, p in (("haproxy", "haproxy"), ("wrk", "wrk"), ("nginx", "nginx-light"))
            if which(t) is None]
    if not want:
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:                 # no service of a package we install starts on the host
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        print(f"relay bench: installing {' '.join(p for _, p in want)} (apt-get)", file=sys.stderr)
        r = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"relay bench: apt-get update failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
        for tool, pkg in want:
            if not apt_install(pkg) and tool == "nginx":
                apt_install("nginx")
    finally:
        if made_policy:
            policy.unlink()


def event_loop() -> str:
    """The event loop the relay processes run (hoststated.relay.event_loop:
    uvloop's when the venv has it)."""
    r = subprocess.run([PYTHON, "-c", "import uvloop; print(uvloop.__version__)"],
                       capture_output=True, text=True)
    return f"uvloop {r.stdout.strip()}" if r.returncode == 0 else "asyncio's event loop"


def version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]


# --- figures from /proc -------------------------------------------------------

def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of pid, all its threads, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def box_ticks() -> tuple[int, int]:
    """(busy, total) ticks of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


# --- the backend --------------------------------------------------------------

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    server {{
        listen {addr}:{port} backlog=4096;
        root {www};
    }}
}}
"""

# argv: address port directory. HTTP/1.1 with keep-alive, files with a
# Content-Length; the fallback when no nginx could be installed
PY_BACKEND = r"""
import http.server, os, socketserver, sys
addr, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        try:
            f = open(os.path.join(root, self.path.lstrip("/")), "rb")
        except OSError:
            self.send_error(404); return
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(f.read())
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
s = S((addr, port), H)
print("ready", flush=True)
s.serve_forever()
"""

# argv: url size sha256 timeout. Fetches url until it answers (the relay may
# still be starting), then checks the body; prints "ok" or why not
FETCH = r"""
import hashlib, sys, time, urllib.request
url, size, digest, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
end = time.monotonic() + timeout
while True:
    try:
        req = urllib.request.Request(url, headers={"Connection": "close"})
        body = urllib.request.urlopen(req, timeout=10).read()
        break
    except OSError as e:
        if time.monotonic() > end:
            print("no answer: %s" % e); sys.exit(1)
        time.sleep(0.2)
got = hashlib.sha256(body).hexdigest()
print("ok" if len(body) == size and got == digest else "corrupt: %d bytes, sha256 %s" % (len(body), got))
"""

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "bytes": %d, "duration_us": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class Backend:
    def __init__(self, lab: Lab, ns: str):
        self.lab = lab
        self.www = lab.tmp / "www"
        self.www.mkdir()
        (self.www / SMALL[1:]).write_bytes(b"x" * 99 + b"\n")
        big = random.Random(11).randbytes(BULK_SIZE)
        (self.www / BULK[1:]).write_bytes(big)
        self.bulk_sha = hashlib.sha256(big).hexdigest()
        nginx = which("nginx")
        if nginx:
            conf = lab.write("nginx.conf", NGINX_CONF.format(
                tmp=lab.tmp, addr=BACKEND_ADDR, port=BACKEND_PORT, www=self.www))
            self.proc = lab.spawn(nginx, "-e", str(lab.tmp / "nginx-error.log"),
                                  "-c", str(conf), "-p", str(lab.tmp), ns=ns)
            self.what = version([nginx, "-v"]).replace("nginx version: ", "") + \
                " (master_process off: one process, sendfile, access_log off)"
            self._wait_port(ns)
        else:
            self.proc = lab.spawn(PYTHON, "-c", PY_BACKEND, BACKEND_ADDR, str(BACKEND_PORT),
                                  str(self.www), ns=ns, stdout=subprocess.PIPE, text=True)
            if self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the Python backend did not start")
            self.what = "python http.server (threads; NO nginx could be installed)"

    def _wait_port(self, ns: str) -> None:
        for _ in range(100):
            if self.proc.poll() is not None:
                err = (self.lab.tmp / "nginx-error.log")
                raise RuntimeError("nginx did not start: " +
                                   (err.read_text().strip()[-300:] if err.exists() else "?"))
            r = run("ss", "-Hltn", f"sport = :{BACKEND_PORT}", ns=ns, check=False)
            if r.stdout.strip():
                return
            time.sleep(0.1)
        raise RuntimeError("nginx is not listening after 10 s")


def wait_listening(ns: str, port: int, alive, log: Path, timeout: float = 20.0) -> None:
    """Until something listens on port in ns; what its log says if it died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive():
            text = log.read_text().strip() if log.exists() else ""
            raise RuntimeError(f"the relay for port {port} exited: "
                               f"{(text.splitlines() or ['no output'])[-1]}")
        if run("ss", "-Hltn", f"sport = :{port}", ns=ns, check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


# --- the relays ---------------------------------------------------------------

class Unsupported(Exception):
    pass


class Relay:
    """One relay under test: start() it in the relay namespace for a listen
    port, pids() its relay processes, stop() it."""

    label = "?"
    kinds = ("tcp", "tls", "http")

    def start(self, lab: Lab, ns: str, port: int) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self, lab: Lab) -> None:
        raise NotImplementedError


HAPROXY_CONF = """
global
    nbthread {nbthread}
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind {addr}:{port}
    default_backend nginx
frontend benchtls
    bind {addr}:{tport} ssl crt {pem} no-tls-tickets
    default_backend nginx
frontend benchhttp
    mode http
    bind {addr}:{hport}
    default_backend nginxhttp
frontend benchrules
    mode http
    bind {addr}:{rport}
{rules}
    default_backend nginxhttp
backend nginxhttp
    mode http
    server s1 {backend}:{bport}
backend nginx
    server s1 {backend}:{bport}
"""


class HAProxy(Relay):
    def __init__(self, nbthread: int = 1):
        self.nbthread = nbthread
        self.label = f"HAProxy nbthread {nbthread}"
        self.proc = None

    def start(self, lab, ns, port):
        conf = lab.write(f"haproxy-{port}.cfg", HAPROXY_CONF.format(
            nbthread=self.nbthread, addr=RELAY_ADDR, port=port, backend=BACKEND_ADDR,
            bport=BACKEND_PORT, tport=port + TLS_OFFSET, pem=lab.tls_pem,
            hport=port + HTTP_OFFSET, rport=port + RULES_OFFSET, rules=HAPROXY_RULES))
        log = lab.tmp / f"haproxy-{port}.log"
        with open(log, "w") as f:
            # -db: in the foreground, one process, so this PID is the relay's
            self.proc = lab.spawn(which("haproxy"), "-db", "-f", str(conf), ns=ns,
                                  stdout=f, stderr=subprocess.STDOUT)
        wait_listening(ns, port, lambda: self.proc.poll() is None, log)

    def pids(self):
        return [self.proc.pid]

    def stop(self, lab):
        lab.stop(self.proc)


HOSTSTATED_CONF = """
socket "{{socket}}"
prefork {prefork}
{protocol}
relay bench {{{{
	listen on {addr} port {port}
	{use}
	forward to {backend} port {bport}
}}}}
tcp protocol tlsp {{{{ tls {{{{ keypair bench, no session tickets }}}} }}}}
relay benchtls {{{{
	listen on {addr} port {tport} tls
	protocol tlsp
	forward to {backend} port {bport}
}}}}
http protocol httpp {{{{ }}}}
relay benchhttp {{{{
	listen on {addr} port {hport}
	protocol httpp
	forward to {backend} port {bport}
}}}}
http protocol rulesp {{{{
{rules}
}}}}
relay benchrules {{{{
	listen on {addr} port {rport}
	protocol rulesp
	forward to {backend} port {bport}
}}}}
"""

# the http-rules case: ten rules of relayd's language and HAProxy's doing
# the same (`return error`: a block answers 403, as HAProxy's deny)
RULES = """\treturn error
\tmatch request header append "X-Forwarded-For" value "$REMOTE_ADDR"
\tmatch request header set "Host" value "bench.example"
\tmatch request path "/api/*" tag API
\tmatch request path "/static/*" header set "X-Static" value "1"
\tmatch request header "User-Agent" value "*curl*" label "curl"
\tblock request quick path "/admin*" label "no admin"
\tmatch request cookie "session" value "*" tag SESSION
\tmatch request header remove "X-Debug"
\tmatch response header set "X-Relay" value "hoststated"
\tmatch response header remove "X-Powered-By"
"""
HAPROXY_RULES = """\
    acl api path_beg /api/
    acl static path_beg /static/
    acl admin path_beg /admin
    acl curl hdr_sub(User-Agent) curl
    acl session req.cook(session) -m found
    http-request deny if admin
    http-request add-header X-Forwarded-For %[src]
    http-request set-header Host bench.example
    http-request set-var(txn.tag) str(API) if api
    http-request set-header X-Static 1 if static
    http-request set-var(txn.label) str(curl) if curl
    http-request set-var(txn.tag) str(SESSION) if session
    http-request del-header X-Debug
    http-response set-header X-Relay haproxy
    http-response del-header X-Powered-By"""

# `tcp { no splice }`: the relay copies through asyncio Protocols instead
NO_SPLICE = "tcp protocol plain {{ tcp {{ no splice }} }}"   # formatted again by Lab.daemon


class Hoststated(Relay):
    def __init__(self, prefork: int, splice: bool = True):
        self.prefork = prefork
        self.splice = splice
        self.label = f"hoststated prefork {prefork}" + ("" if splice else " no splice")
        self.daemon = None

    def start(self, lab, ns, port):
        conf = HOSTSTATED_CONF.format(prefork=self.prefork, addr=RELAY_ADDR, port=port,
                                      backend=BACKEND_ADDR, bport=BACKEND_PORT,
                                      tport=port + TLS_OFFSET, hport=port + HTTP_OFFSET,
                                      rport=port + RULES_OFFSET, rules=RULES,
                                      protocol="" if self.splice else NO_SPLICE,
                                      use="" if self.splice else "protocol plain")
        self.daemon = lab.daemon(ns, conf, name=f"hoststated-{port}.conf")
        n = self.daemon.wait_for(lambda: len(self.pids()) == self.prefork and self.prefork,
                                 what=f"{self.prefork} relay processes")
        assert n
        wait_listening(ns, port, lambda: self.daemon.proc.poll() is None, self.daemon.log)

    def pids(self):
        out = []
        for pid in children_of(self.daemon.pid):
            try:
                argv = cmdline(pid)
            except OSError:
                continue
            if "--role" in argv and argv[argv.index("--role") + 1] == "relay":
                out.append(pid)
        return sorted(out)

    def stop(self, lab):
        self.daemon.stop()
        lab.daemons.remove(self.daemon)


RELAYS = {
    "haproxy": lambda: HAProxy(1),
    "hs1": lambda: Hoststated(1),
    "hs1-copy": lambda: Hoststated(1, splice=False),
    "hs2": lambda: Hoststated(2),
}
BASELINE = "haproxy"


# --- one run --------------------------------------------------------------------

@dataclasses.dataclass
class Sample:
    requests: int
    bytes: int
    seconds: float              # wrk's own duration
    wall: float                 # the interval the CPU figures cover
    relay_user: float           # CPU-s of all relay processes
    relay_sys: float
    per_process: list[float]    # CPU-s of each relay process
    wrk_cpu: float
    box_busy: float             # share of the whole machine busy (1.0 = every core)
    errors: dict
    probed: dict | None = None  # what a probe saw half-way through

    @property
    def relay_cpu(self) -> float:
        return self.relay_user + self.relay_sys

    def rate(self, case: Case) -> float:
        """req/s, or Gbit/s for a bulk case."""
        if case.unit == "GB":
            return self.bytes * 8 / self.seconds / 1e9
        return self.requests / self.seconds

    def per_unit(self, case: Case) -> float:
        """relay CPU µs per request/connection, or CPU-s per GB."""
        if case.unit == "GB":
            return self.relay_cpu / (self.bytes / 1e9) if self.bytes else float("nan")
        return self.relay_cpu / self.requests * 1e6 if self.requests else float("nan")


def wrk(lab: Lab, ns: str, case: Case, port: int, seconds: float, pids: list[int],
        probe=None) -> Sample:
    script = lab.tmp / "report.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    argv = ["wrk", "-t1", f"-c{case.conns}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(script)]
    for h in case.headers:
        argv += ["-H", h]
    port += case.offset
    argv.append(f"{case.scheme}://{RELAY_ADDR}:{port}{case.path}")
    before = {pid: cpu_ticks(pid) for pid in pids}
    box0 = box_ticks()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(in_netns(ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    lab.procs.append(p)
    probed = None
    if probe is not None:
        time.sleep(min(1.0, seconds / 2))
        probed = probe()
    out, err = p.communicate(timeout=seconds + 60)
    lab.procs.remove(p)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    box1 = box_ticks()
    after = {pid: cpu_ticks(pid) for pid in pids}
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {err.strip()[-300:]}")
    w = json.loads(line[len("WRKJSON "):])
    d_user = sum(after[p][0] - before[p][0] for p in pids) / CLK_TCK
    d_sys = sum(after[p][1] - before[p][1] for p in pids) / CLK_TCK
    s = Sample(requests=w["requests"], bytes=w["bytes"], seconds=w["duration_us"] / 1e6,
               wall=wall, relay_user=d_user, relay_sys=d_sys,
               per_process=[sum(after[p]) / CLK_TCK - sum(before[p]) / CLK_TCK for p in pids],
               wrk_cpu=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
               box_busy=(box1[0] - box0[0]) / max(1, box1[1] - box0[1]),
               errors={k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]})
    s.probed = probed
    return s


# --- printing -------------------------------------------------------------------

def fmt_rate(v: float, case: Case) -> str:
    if case.unit == "GB":
        return f"{v:.1f}"
    return f"{v / 1000:.1f}k"


def fmt_unit(v: float, case: Case) -> str:
    return f"{v:.2f}" if case.unit == "GB" else f"{v:.0f}"


def spread(values: list[float], f) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f(med)
    return f"{f(med)} ({f(min(values))}–{f(max(values))})"


def unit_name(case: Case) -> str:
    return {"req": "µs/req", "conn": "µs/conn", "GB": "CPU-s/GB"}[case.unit]


def rate_name(case: Case) -> str:
    return "Gbit/s" if case.unit == "GB" else "req/s"


def print_results(results: dict, cases: list[Case], relays: dict[str, Relay]) -> None:
    print()
    hdr = f"{'case':<15} {'relay':<40} {'rate':<28} {'relay CPU':>9} {'user/sys':>9}  " \
          f"{'cost':<30} {'wrk CPU':>7} {'box':>5}  per process / errors"
    print(hdr)
    print("-" * len(hdr))
    for case in cases:
        for key, relay in relays.items():
            samples = results.get((case.name, key))
            if not samples:
                continue
            rate = spread([s.rate(case) for s in samples], lambda v: fmt_rate(v, case))
            cost = spread([s.per_unit(case) for s in samples], lambda v: fmt_unit(v, case))
            cpu = statistics.median(s.relay_cpu / s.wall for s in samples)
            us = statistics.median(s.relay_user / s.wall for s in samples)
            sy = statistics.median(s.relay_sys / s.wall for s in samples)
            wrk_cpu = statistics.median(s.wrk_cpu / s.wall for s in samples)
            box = statistics.median(s.box_busy for s in samples)
            errs = {}
            for s in samples:
                for k, v in s.errors.items():
                    errs[k] = errs.get(k, 0) + v
            procs = len(samples[0].per_process)
            name = relay.label + (f" ({procs} proc)" if isinstance(relay, Hoststated) else "")
            each = "/".join(f"{statistics.median(s.per_process[i] / s.wall for s in samples):.0%}"
                            for i in range(procs)) if procs > 1 else ""
            tail = ", ".join([*([each] if each else []), *(f"{k} errors {v}" for k, v in errs.items())])
            print(f"{case.name:<15} {name:<40} {rate + ' ' + rate_name(case):<28} "
                  f"{cpu:>9.0%} {f'{us:.0%}/{sy:.0%}':>9}  "
                  f"{cost + ' ' + unit_name(case):<30} {wrk_cpu:>7.0%} {box:>5.0%}  {tail or '-'}")
    if BASELINE not in relays:
        return
    print()
    print(f"ratios against {relays[BASELINE].label} (medians; the issue's aim per relay "
          f"process in brackets)")
    for case in cases:
        base = results.get((case.name, BASELINE))
        if not base:
            continue
        b_rate = statistics.median(s.rate(case) for s in base)
        b_cost = statistics.median(s.per_unit(case) for s in base)
        for key, relay in relays.items():
            if key == BASELINE or not results.get((case.name, key)):
                continue
            samples = results[(case.name, key)]
            rate = statistics.median(s.rate(case) for s in samples)
            cost = statistics.median(s.per_unit(case) for s in samples)
            max_cost, min_rate, min_gbit, max_cpugb = AIMS.get(case.name, (None,) * 4)
            line = (f"  {case.name:<15} {relay.label:<31}  {rate_name(case)} "
                    f"{rate / b_rate:.2f}×" + (f" [≥ {min_rate:g}×]" if min_rate else "") +
                    f"   {unit_name(case)} {cost / b_cost:.2f}×" +
                    (f" [≤ {max_cost:g}×]" if max_cost else ""))
            if case.unit == "GB":
                line += f"   ({rate:.1f} Gbit/s, {cost:.2f} CPU-s/GB" + \
                        (f" [≥ {min_gbit:g} Gbit/s at ≤ {max_cpugb:g}]" if min_gbit else "") + ")"
            print(line)


# --- main -------------------------------------------------------------------------

def build_lab(lab: Lab) -> tuple[str, str, str]:
    c, r, b = lab.netns("client"), lab.netns("relay"), lab.netns("backend")
    lab.veth(c, f"{CLIENT_ADDR}/24", r, f"{RELAY_ADDR}/24", names=("c0", "r0"))
    lab.veth(r, f"{RELAY_BACK_ADDR}/24", b, f"{BACKEND_ADDR}/24", names=("r1", "b0"))
    for ns in (c, r):
        # tens of thousands of connections a run: room for their ports
        run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", ns=ns)
        run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", ns=ns)
    return c, r, b


TLS_KEY = "ECDSA P-256 key, SHA-256 certificate"


def tls_material(lab: Lab) -> None:
    """One keypair (cryptography, tests/unit/tls_certs) where hoststated
    looks for keypair `bench` ($HOSTSTATED_SSL_DIR, inherited by the
    daemon) and as HAProxy's crt PEM (certificate and key in one file)."""
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from tls_certs import cert, install, key_pem, pem
    c, k = cert("bench", sans=["bench"])
    ssldir = lab.tmp / "ssl"
    ssldir.mkdir(mode=0o700)
    install(str(ssldir), "bench", c, k)
    os.environ["HOSTSTATED_SSL_DIR"] = str(ssldir)
    lab.tls_pem = lab.tmp / "haproxy-bench.pem"
    lab.tls_pem.write_bytes(pem(c) + key_pem(k))
    lab.tls_pem.chmod(0o600)


def check_integrity(ns: str, port: int, backend: Backend) -> None:
    r = subprocess.run(in_netns(ns, PYTHON, "-c", FETCH, f"http://{RELAY_ADDR}:{port}{BULK}",
                                str(BULK_SIZE), backend.bulk_sha, "20"),
                       capture_output=True, text=True, timeout=60)
    if r.stdout.strip() != "ok":
        raise RuntimeError(f"10 MB through port {port}: {r.stdout.strip() or r.stderr.strip()}")


# argv: host port. The rules act: the response rule's X-Relay is there, the
# blocked path gets a 403; prints "ok" or what came instead
RULES_CHECK = r"""
import http.client, sys
def get(path):
    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
    c.request("GET", path, headers={"User-Agent": "curl-bench", "Cookie": "session=abc"})
    r = c.getresponse()
    r.read()
    return r.status, r.getheader("X-Relay")
ok, blocked = get("/100"), get("/admin/x")
print("ok" if ok[0] == 200 and ok[1] and blocked[0] == 403 else "got %r and %r" % (ok, blocked))
"""


def check_rules(ns: str, port: int) -> None:
    r = subprocess.run(in_netns(ns, PYTHON, "-c", RULES_CHECK, RELAY_ADDR, str(port)),
                       capture_output=True, text=True, timeout=60)
    if r.stdout.strip() != "ok":
        raise RuntimeError(f"the rules on port {port}: {r.stdout.strip() or r.stderr.strip()}")


def measure(lab, client, relay_ns, relay: Relay, port: int, cases, a, results, key) -> None:
    relay.start(lab, relay_ns, port)
    try:
        check_integrity(client, port, lab.backend)
        if any(c.offset == RULES_OFFSET for c in cases):
            wait_listening(relay_ns, port + RULES_OFFSET, lambda: True, Path("/dev/null"))
            check_rules(client, port + RULES_OFFSET)
        for case in cases:
            if case.kind not in relay.kinds:
                continue
            if a.warmup > 0:
                wrk(lab, client, case, port, a.warmup, relay.pids())
            for _ in range(a.runs):
                s = wrk(lab, client, case, port, a.duration, relay.pids())
                results.setdefault((case.name, key), []).append(s)
                print(f"  {case.name:<15} {relay.label:<24} {fmt_rate(s.rate(case), case)} "
                      f"{rate_name(case)}, relay CPU {s.relay_cpu / s.wall:.0%}, "
                      f"{fmt_unit(s.per_unit(case), case)} {unit_name(case)}", file=sys.stderr)
    finally:
        relay.stop(lab)


def measure_spread(lab, client, relay_ns, n: int, port: int, a) -> list[str]:
    relay = Hoststated(n)
    relay.start(lab, relay_ns, port)
    try:
        check_integrity(client, port, lab.backend)
        by_name = {c.name: c for c in CASES}
        nc = by_name["new-conn"]
        if a.warmup > 0:
            wrk(lab, client, nc, port, a.warmup, relay.pids())
        s = wrk(lab, client, nc, port, a.duration, relay.pids())
        ka = by_name["keep-alive"]

        def held() -> dict[int, int]:
            r = relay.daemon.json("show", "sessions")
            counts = {pid: 0 for pid in relay.pids()}
            for row in r["sessions"]:
                counts[row["pid"]] = counts.get(row["pid"], 0) + 1
            return counts
        k = wrk(lab, client, ka, port, max(2.0, min(a.duration, 3.0)), relay.pids(), probe=held)
    finally:
        relay.stop(lab)
    total = sum(s.per_process) or 1.0
    shares = [v / total for v in s.per_process]
    counts = list(k.probed.values()) if k.probed else []
    return [
        f"spread over prefork {n} (SO_REUSEPORT, one listening socket per process):",
        f"  {nc.name}, {a.duration:g} s, {s.requests / s.seconds / 1000:.1f}k conn/s: relay CPU "
        "share per process " + "  ".join(f"{v:.0%}" for v in shares) +
        f"  (max/min {max(shares) / max(min(shares), 1e-9):.2f}; even: {1 / n:.0%} each)",
        f"  {ka.name}: of wrk's {ka.conns} connections, held per process at one instant "
        "(show sessions): " + "  ".join(str(c) for c in counts),
    ]


def profile(lab, client, relay_ns, case: Case, a) -> list[str]:
    """case against hoststated prefork 1 with py-spy sampling its relay
    process (without stopping it: --nonblocking; idle samples dropped); the
    functions with the most samples, by their own time and with callees."""
    spy = Path(PYTHON).with_name("py-spy")
    if not spy.exists():
        spy = Path(shutil.which("py-spy") or "py-spy")
    relay = Hoststated(1)
    relay.start(lab, relay_ns, 8095)
    out = lab.tmp / "profile.txt"
    try:
        check_integrity(client, 8095, lab.backend)
        if a.warmup > 0:
            wrk(lab, client, case, 8095, a.warmup, relay.pids())
        pid = relay.pids()[0]
        rec = lab.spawn(str(spy), "record", "--nonblocking", "-r", "250", "-f", "raw",
                        "-d", f"{a.duration + 1:g}", "-o", str(out), "-p", str(pid),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        s = wrk(lab, client, case, 8095, a.duration, relay.pids())
        msg, _ = rec.communicate(timeout=a.duration + 30)
        lab.procs.remove(rec)
    finally:
        relay.stop(lab)
    if not out.exists():
        return [f"py-spy wrote nothing: {msg.strip()[-300:]}"]
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        # "func (file:line)" -> "func (file)": by function, not by line
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        frames = [f.replace(str(ROOT) + "/", "").replace(sys.base_prefix + "/lib/", "")
                  for f in frames]
        total += int(n)
        own[frames[-1]] = own.get(frames[-1], 0) + int(n)
        for f in set(frames):
            incl[f] = incl.get(f, 0) + int(n)
    lines = [f"py-spy, {case.name} through hoststated prefork 1: {s.rate(case):.0f} "
             f"{rate_name(case)}, relay CPU {s.relay_cpu / s.wall:.0%} "
             f"(user {s.relay_user / s.wall:.0%}, sys {s.relay_sys / s.wall:.0%}), "
             f"{fmt_unit(s.per_unit(case), case)} {unit_name(case)}; {total} busy samples",
             "  own time:"]
    lines += [f"    {v / total:5.1%}  {k}" for k, v in
              sorted(own.items(), key=lambda kv: -kv[1])[:a.top]]
    # the event loop's own frames are on (nearly) every stack: left out
    loop = max(incl.values(), default=0) * 0.95
    lines.append("  with callees (the event loop's frames, on every stack, left out):")
    lines += [f"    {v / total:5.1%}  {k}" for k, v in
              sorted(incl.items(), key=lambda kv: -kv[1]) if v < loop][:a.top]
    lines.append("  (samples of a thread that can run: on a busy box that includes waiting for a "
                 "core, which shows as EpollSelector.select; --nonblocking may tear a stack)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="s per measured run (5)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per cell (3)")
    ap.add_argument("--warmup", type=float, default=1.0, help="s of warm-up per cell (1)")
    ap.add_argument("--quick", action="store_true", help="3 s per cell, 1 run")
    ap.add_argument("--relays", default=",".join(RELAYS),
                    help=f"which, of {','.join(RELAYS)} (all)")
    ap.add_argument("--cases", default=",".join(c.name for c in CASES),
                    help=f"which, of {','.join(c.name for c in CASES)} (all)")
    ap.add_argument("--spread", type=int, default=3, help="prefork N for the spread (3)")
    ap.add_argument("--no-spread", action="store_true", help="skip the spread")
    ap.add_argument("--json", help="write every sample to this file")
    ap.add_argument("--no-setup", action="store_true", help="install nothing")
    ap.add_argument("--profile", metavar="CASE",
                    help="only this case through hoststated prefork 1, sampled by py-spy "
                         "(pip install py-spy into the venv)")
    ap.add_argument("--top", type=int, default=20, help="functions --profile prints (20)")
    a = ap.parse_args()
    if a.quick:
        a.duration, a.runs = 3.0, 1
    if os.geteuid() != 0:
        print("relay bench: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    try:
        relays = {k: RELAYS[k]() for k in a.relays.split(",") if k}
        cases = [next(c for c in CASES if c.name == n) for n in a.cases.split(",") if n]
    except (KeyError, StopIteration):
        ap.error("unknown relay or case")
    if a.profile:
        a.runs = 1
    if not a.no_setup:
        setup()
    missing = [t for t in ("haproxy", "wrk") if which(t) is None and
               (t == "wrk" or "haproxy" in relays)]
    if missing:
        print(f"relay bench: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    results: dict = {}
    spread_lines: list[str] = []
    with Lab("rb") as lab:
        client, relay_ns, backend_ns = build_lab(lab)
        lab.backend = Backend(lab, backend_ns)
        tls_material(lab)
        print(f"relay benchmark, plain TCP relaying: {a.duration:g} s per run, {a.runs} run(s) "
              f"per cell after {a.warmup:g} s of warm-up")
        print(f"  backend: {lab.backend.what}")
        print(f"  client: {version(['wrk', '-v'])}, -t1")
        print(f"  TLS cases: {TLS_KEY}, self-signed, the same for both; no session "
              "tickets; TLS termination, plain TCP to nginx")
        if "haproxy" in relays:
            print(f"  {version([which('haproxy'), '-v'])}: mode tcp, nbthread 1")
        b0 = box_ticks()
        time.sleep(1.0)
        b1 = box_ticks()
        print(f"  the box before the runs (1 s, others' work): "
              f"{(b1[0] - b0[0]) / max(1, b1[1] - b0[1]):.0%} busy")
        print(f"  hoststated: {PYTHON} ({sys.version.split()[0]}), {event_loop()}, "
              f"relay processes = prefork; plain TCP by splice(2) unless `no splice` "
              f"(then asyncio Protocols); "
              f"{os.cpu_count()} CPUs shared by client, relay, backend (and anything else running)")
        print("  relay CPU: 100% = one core; box: the whole machine busy, 100% = every core")
        if a.profile:
            case = next((c for c in CASES if c.name == a.profile), None)
            if case is None:
                ap.error(f"--profile: unknown case {a.profile}")
            print("\n".join(profile(lab, client, relay_ns, case, a)))
            return 0
        try:
            for i, (key, relay) in enumerate(relays.items()):
                measure(lab, client, relay_ns, relay, 8080 + i, cases, a, results, key)
            if not a.no_spread and a.spread > 0:
                spread_lines = measure_spread(lab, client, relay_ns, a.spread, 8090, a)
        finally:
            print_results(results, cases, relays)
            if spread_lines:
                print()
                print("\n".join(spread_lines))
            if a.json:
                Path(a.json).write_text(json.dumps(
                    {f"{c} {k}": [dataclasses.asdict(s) for s in v]
                     for (c, k), v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
