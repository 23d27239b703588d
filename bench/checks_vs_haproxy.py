"""The check engine side by side with HAProxy (issue 17 item 1). Not part of
the test suite. Run as root (it builds network namespaces):

    .venv/bin/python bench/checks_vs_haproxy.py [--rates 1000,4000,10000]
        [--kinds http,tcp] [--rounds 3] [--duration 10] [--settle 3]
        [--checkers haproxy,hoststated] [--json FILE] [--no-setup] [--workers N]
    .venv/bin/python bench/checks_vs_haproxy.py --profile 4000 [--kinds http]
        [--duration 10] [--top 25]          (py-spy on hce: pip install py-spy)

Setup: HAProxy from Debian's package (`flock /tmp/apt.lock apt-get install
-y haproxy`) when it is missing; never by the test setup.

The lab (tests/lab.py's Lab, namespaces cx-<pid>-dir and cx-<pid>-be, all
removed with every process by PID and name also after an error or Ctrl-C):

    director 198.51.100.254  --veth--  backend 198.51.100.1-250
    (HAProxy or hoststated)            ports 8080.. (P = rate / 250 ports):
                                       one Python process, one epoll set, one
                                       listening socket per address and port

Both checkers check the same 250 x P addresses and ports, every 1 s,
timeout 800 ms, fall 1, rise 1: `http` = GET / expecting 200 (HAProxy
`option httpchk GET /`), `tcp` = a connect. HAProxy 2.6 with `nbthread 1`,
`-db` (one process); hoststated `engine none` (parent, hce, pfe).

Per run (one checker, one rate, one kind), after a fresh backend and the
checker start:
  up       time from the checker's spawn until every host is up: HAProxy
           marks servers UP before their first check, so its servers count
           once UP with check_status L7OK/L4OK (stats socket `show stat`);
           hoststated's from `show tables` (up == hosts); both polled every
           50 ms by this process
  CPU      after --settle s, over --duration s: utime+stime (procfs
           <pid>/stat, all threads) of all the checker's processes, per
           check; user/sys split. A check is a connection attempt: TCP
           ActiveOpens of the director's namespace (/proc/<pid>/net/snmp).
           A tcp check is half-open in both (SYN, SYN-ACK, RST: the backend
           never accepts it), so the backend's PassiveOpens (printed as
           "accepted at the backend") are 0 there
  rate     checks/s achieved, from the same count
  pacing   the count sampled every 100 ms over the window: min and max of
           the 100 ms buckets against their mean
  wakeups  context switches per second of the checker's processes
           (voluntary + involuntary, /proc/<pid>/task/*/status)
  RSS      VmRSS of every process of the checker after the window, and
           the sum of their PSS (smaps_rollup: shared pages split)
  detect   the backend closes port 8080 on all 250 addresses; time from
           just before the close until each of the 250 hosts is down in
           the checker's own event stream: hoststated's `monitor` events,
           HAProxy's "Server b8080/sN is DOWN" log lines (its log goes to
           a unix datagram socket this process reads); median and max
  box      the whole machine busy (100% = both cores) over the window, and
           what was not the checker, the backend or this process (others)

--workers N (issue 17 item 4) runs hoststated with `check workers N`
(default 1, written out: the automatic rule picks 2 at 20,000 checks/s): the
processes then include each worker ("worker 1".."worker N"), and the
report adds each worker's share from show summary (hosts, checks/s, lag)
and its CPU per check (its CPU over the checks it made, from its own
checks_done).

Rounds alternate the order of the two checkers; each cell prints the median
(min-max) over the rounds, then the ratios hoststated / HAProxy of the
medians. On a shared machine the `others` column says how loaded it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from lab import PYTHON, Lab, children_of, cmdline, run  # noqa: E402
from relay import box_ticks, cpu_ticks, version, which  # noqa: E402

from hoststatectl.client import Client, CtlError  # noqa: E402

HOSTS = 250
DIR_ADDR = "198.51.100.254"
BASE_PORT = 8080
DEAD_PORT = BASE_PORT           # the port that dies on all 250 hosts
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def addresses() -> list[str]:
    return [f"198.51.100.{i}" for i in range(1, HOSTS + 1)]


# --- setup ----------------------------------------------------------------------

def setup() -> None:
    """HAProxy from Debian's package when missing (under the apt lock the
    helpers share; no service a package brings starts on the host)."""
    if which("haproxy"):
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        print("checks bench: installing haproxy (apt-get)", file=sys.stderr)
        r = subprocess.run(["flock", "/tmp/apt.lock", "apt-get", "install", "-y", "-q",
                            "--no-install-recommends", "haproxy"], capture_output=True, text=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode != 0:
            print(f"checks bench: apt-get install haproxy failed: "
                  f"{(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
    finally:
        if made:
            policy.unlink()


# --- the backend ------------------------------------------------------------------

# argv: addresses ports kind. One listening socket per address and port on
# one epoll set: accept, (http) recv + send + close, (tcp) close. stdin:
# "close PORT" closes that port's listeners and answers "closed T" (T: the
# monotonic clock just before the first close).
BACKEND = r'''
import _socket, os, select, socket, sys, time
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
RESP = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
http = sys.argv[3] == "http"
ep = select.epoll()
listeners, waiting = {}, {}
for port in map(int, sys.argv[2].split(",")):
    for a in sys.argv[1].split(","):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a, port))
        s.listen(4096)
        s.setblocking(False)
        listeners[s.fileno()] = (port, s)
        ep.register(s.fileno(), select.EPOLLIN)
ep.register(0, select.EPOLLIN)
print("ready", flush=True)
DONTWAIT = socket.MSG_DONTWAIT
def answer(c):
    try:
        req = c.recv(4096, DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        c.close(); return True
    if req and b"\r\n\r\n" not in req:
        return False                      # (a check's request comes in one piece)
    try:
        if req:
            c.send(RESP)
    except OSError:
        pass
    c.close()
    return True
while True:
    for fd, ev in ep.poll():
        if fd == 0:
            line = os.read(0, 4096).decode()
            if not line:
                sys.exit(0)
            for cmd in line.split("\n"):
                if cmd.startswith("close "):
                    port = int(cmd.split()[1])
                    t = time.monotonic()
                    for lfd, (p, s) in list(listeners.items()):
                        if p == port:
                            ep.unregister(lfd); s.close(); del listeners[lfd]
                    print("closed %.6f" % t, flush=True)
            continue
        entry = listeners.get(fd)
        if entry is None:
            c = waiting.pop(fd)
            ep.unregister(fd)
            if not answer(c):
                c.close()
            continue
        try:
            cfd, _ = entry[1]._accept()
        except OSError:
            continue
        c = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, cfd)
        if not http:
            c.close()
        elif not answer(c):
            waiting[cfd] = c
            ep.register(cfd, select.EPOLLIN)
'''


# listeners per backend process: under RLIMIT_NOFILE (20,000 here, and not
# raised in a container); above 10,000 checks/s the ports are split over
# several processes (each its own epoll set)
LISTENERS_PER_PROCESS = 12500


class Backend:
    def __init__(self, lab: Lab, ns: str, ports: list[int], kind: str):
        self.lab = lab
        per = max(1, LISTENERS_PER_PROCESS // HOSTS)
        self.procs = []
        for i in range(0, len(ports), per):
            self.procs.append(lab.spawn(PYTHON, "-c", BACKEND, ",".join(addresses()),
                                        ",".join(map(str, ports[i:i + per])), kind, ns=ns,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True))
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("the backend did not start")
        self.proc = self.procs[0]
        self.pid = self.proc.pid            # ip netns exec execs: the server's own PID
        self.pids = [p.pid for p in self.procs]

    def opens(self) -> int:
        """TCP PassiveOpens of the backend's namespace: connections set up."""
        return tcp_counter(self.pid, "PassiveOpens")

    def cpu(self) -> int:
        return sum(sum(cpu_ticks(pid)) for pid in self.pids)

    def close_port(self, port: int) -> float:
        """Close the port in every process; the time just before the first close."""
        ts = []
        for p in self.procs:
            p.stdin.write(f"close {port}\n")
            p.stdin.flush()
        for p in self.procs:
            line = p.stdout.readline().split()
            if not line or line[0] != "closed":
                raise RuntimeError(f"the backend did not close port {port}: {line}")
            ts.append(float(line[1]))
        return min(ts)

    def stop(self) -> None:
        for p in self.procs:
            self.lab.stop(p, 5.0)


# --- figures from /proc -----------------------------------------------------------

def tcp_counter(pid: int, name: str) -> int:
    """A Tcp: counter of /proc/net/snmp in the namespace of pid."""
    with open(f"/proc/{pid}/net/snmp") as f:
        rows = [ln.split() for ln in f if ln.startswith("Tcp:")]
    return int(rows[1][rows[0].index(name)])


def ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of pid."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def pss_mb(pid: int) -> float:
    """Proportional set size: a page shared by k processes counts 1/k (the
    daemon's three interpreters share their executable and libraries; a sum
    of RSS counts those pages three times)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Window:
    """CPU, context switches, the checks and the whole box over a window;
    the count sampled every 100 ms for the pacing. A check is a connection
    attempt: TCP ActiveOpens of the director's namespace (a SYN sent).
    A tcp check is half-open in both checkers (SYN, SYN-ACK, RST: the
    backend never accepts it), so the backend's PassiveOpens count only
    completed connections; printed apart."""

    def __init__(self, pids: dict[str, int], backend: Backend, seconds: float):
        self.pids = pids
        ns_pid = next(iter(pids.values()))          # any process of the director's namespace
        passive0 = backend.opens()
        cpu0 = {k: cpu_ticks(p) for k, p in pids.items()}
        ctx0 = {k: ctx_switches(p) for k, p in pids.items()}
        be0 = backend.cpu()
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        box0 = box_ticks()
        t0 = time.monotonic()
        n0 = tcp_counter(ns_pid, "ActiveOpens")
        samples = [(t0, n0)]
        tick = t0
        while True:
            tick += 0.1
            if tick > t0 + seconds + 1e-6:
                break
            time.sleep(max(0.0, tick - time.monotonic()))
            samples.append((time.monotonic(), tcp_counter(ns_pid, "ActiveOpens")))
        t1, n1 = samples[-1]
        self.accepted = backend.opens() - passive0
        box1 = box_ticks()
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        be1 = backend.cpu()
        cpu1 = {k: cpu_ticks(p) for k, p in pids.items()}
        ctx1 = {k: ctx_switches(p) for k, p in pids.items()}
        self.wall = t1 - t0
        self.checks = n1 - n0
        self.user = sum(cpu1[k][0] - cpu0[k][0] for k in pids) / CLK_TCK
        self.sys = sum(cpu1[k][1] - cpu0[k][1] for k in pids) / CLK_TCK
        self.per_process = {k: (sum(cpu1[k]) - sum(cpu0[k])) / CLK_TCK for k in pids}
        self.wakeups = sum(ctx1[k] - ctx0[k] for k in pids) / self.wall
        self.backend_cpu = (be1 - be0) / CLK_TCK
        me = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
        ticks = max(1, box1[1] - box0[1])
        self.box = (box1[0] - box0[0]) / ticks
        ncpu = os.cpu_count() or 1
        # what was busy but not ours: others' work on the shared cores
        self.others = max(0.0, self.box - (self.user + self.sys + self.backend_cpu + me)
                          / self.wall / ncpu)
        # per 100 ms, scaled to the bucket's own length (the sampler can be late)
        rates = [(b[1] - a[1]) / (b[0] - a[0]) * 0.1 for a, b in zip(samples, samples[1:])
                 if b[0] > a[0]]
        mean = statistics.fmean(rates) if rates else float("nan")
        self.pace_min = min(rates) / mean if rates and mean else float("nan")
        self.pace_max = max(rates) / mean if rates and mean else float("nan")

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def us_per_check(self) -> float:
        return 1e6 * self.cpu / self.checks if self.checks else float("nan")

    @property
    def rate(self) -> float:
        return self.checks / self.wall


# --- the checkers -----------------------------------------------------------------

HAPROXY_GLOBAL = """
global
    nbthread 1
    maxconn 4000
    stats socket {tmp}/haproxy.sock mode 600 level admin
    log {tmp}/haproxy-log.sock len 1024 local0 info
defaults
    mode {mode}
    log global
    timeout connect 800ms
    timeout client 5s
    timeout server 5s
    timeout check 800ms
"""

HOSTSTATED_GLOBAL = """
socket "{{socket}}"
engine none
interval 1
timeout 800
table <be> {{{{ {hosts} }}}}
"""


# argv: a unix datagram socket's path to bind; prints "ready", then each
# datagram as one line: the monotonic time it was read and its text
LOG_READER = r'''
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
print("ready", flush=True)
while True:
    d = s.recv(4096)
    sys.stdout.write("%.6f %s\n" % (time.monotonic(), d.decode(errors="replace").replace("\n", " ")))
    sys.stdout.flush()
'''


class HAProxy:
    name = "haproxy"
    first_answer = 0.0                  # when its stats socket first answered

    def __init__(self, lab: Lab, ns: str):
        self.lab, self.ns = lab, ns
        self.proc = None
        self.events: list[tuple[float, str, int, str]] = []   # (t, status, port, server)
        self.reader = None

    def start(self, ports: list[int], kind: str) -> float:
        tmp = self.lab.tmp
        conf = [HAPROXY_GLOBAL.format(tmp=tmp, mode="http" if kind == "http" else "tcp")]
        for port in ports:
            conf.append(f"backend b{port}")
            if kind == "http":
                conf.append("    option httpchk GET /")
            conf += [f"    server s{i} {a}:{port} check inter 1s fall 1 rise 1"
                     for i, a in enumerate(addresses(), 1)]
        path = self.lab.write("haproxy.cfg", "\n".join(conf) + "\n")
        logp = tmp / "haproxy-log.sock"
        if logp.exists():
            logp.unlink()
        # the log's reader in the director's namespace, where the unix
        # datagram queue may be longer than the default 10 (max_dgram_qlen
        # is per namespace): 250 DOWN lines at once are not dropped
        self.events = []
        self.reader = self.lab.spawn(PYTHON, "-c", LOG_READER, str(logp), ns=self.ns,
                                     stdout=subprocess.PIPE, text=True)
        if self.reader.stdout.readline().strip() != "ready":
            raise RuntimeError("the log reader did not start")
        threading.Thread(target=self._read_log, args=(self.reader.stdout,), daemon=True).start()
        self.out = open(tmp / "haproxy.out", "w")
        t0 = time.monotonic()
        self.proc = self.lab.spawn(which("haproxy"), "-db", "-f", str(path), ns=self.ns,
                                   stdout=self.out, stderr=subprocess.STDOUT)
        return t0

    LOG_RE = re.compile(r"^(\S+) .*Server b(\d+)/(s\d+) is (UP|DOWN)")

    def _read_log(self, f) -> None:
        for line in f:
            m = self.LOG_RE.search(line)
            if m:
                self.events.append((float(m.group(1)), m.group(4).lower(), int(m.group(2)),
                                    m.group(3)))

    def stat(self) -> list[dict]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(self.lab.tmp / "haproxy.sock"))
            s.sendall(b"show stat\n")
            chunks = []
            while (b := s.recv(1 << 16)):
                chunks.append(b)
        finally:
            s.close()
        lines = b"".join(chunks).decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        return [dict(zip(head, ln.split(","))) for ln in lines[1:] if ln]

    def all_up(self, n: int) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {self.last_words()}")
        try:
            rows = [r for r in self.stat() if r["svname"] not in ("FRONTEND", "BACKEND")]
        except OSError:
            return False
        self.first_answer = self.first_answer or time.monotonic()
        return len(rows) == n and all(
            r["status"] == "UP" and r["check_status"].lstrip("* ") in ("L7OK", "L4OK")
            for r in rows)

    def last_words(self) -> str:
        text = (self.lab.tmp / "haproxy.out").read_text().strip()
        return (text.splitlines() or ["no output"])[-1]

    def pids(self) -> dict[str, int]:
        return {"haproxy": self.proc.pid}

    def watch_down(self) -> None:
        pass                                  # the log reader runs all along

    def stats(self) -> dict:
        return {}

    def downs(self, port: int, since: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, status, p, srv in list(self.events):
            if p == port and status == "down" and t >= since:
                out.setdefault(srv, t)
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, 5.0)
            self.proc = None
        if self.reader is not None:
            self.lab.stop(self.reader, 5.0)
            self.reader = None
        self.out.close()


class Hoststated:
    name = "hoststated"
    first_answer = 0.0                  # when its control socket first answered

    def __init__(self, lab: Lab, ns: str, workers: int | None = None):
        self.lab, self.ns = lab, ns
        self.workers = workers
        self.daemon = None
        self.downs_seen: dict[tuple[str, str], float] = {}
        self.mon: Client | None = None

    def start(self, ports: list[int], kind: str) -> float:
        check = 'check http "/" code 200' if kind == "http" else "check tcp"
        conf = [HOSTSTATED_GLOBAL.format(hosts=", ".join(addresses()))]
        if self.workers is not None:
            conf.append(f"check workers {self.workers}")
        for port in ports:
            conf.append(f'redirect "p{port}" {{{{\n\tlisten on 203.0.113.10 port {port}\n'
                        f'\tforward to <be> port {port} {check}\n}}}}')
        t0 = time.monotonic()
        self.daemon = self.lab.daemon(self.ns, "\n".join(conf) + "\n", wait=False)
        self.client = Client(self.daemon.socket, timeout=30)
        return t0

    def all_up(self, n: int) -> bool:
        if self.daemon.proc.poll() is not None:
            raise RuntimeError("hoststated exited: " +
                               (self.daemon.read_log().strip().splitlines() or ["?"])[-1])
        try:
            tables = self.client.request("show tables")["tables"]
        except (CtlError, OSError):
            self.client.close()
            return False
        self.first_answer = self.first_answer or time.monotonic()
        return sum(t["hosts"] for t in tables) == n and sum(t["up"] for t in tables) == n

    def last_words(self) -> str:
        return "its log ends: " + " | ".join(self.daemon.read_log().strip().splitlines()[-3:])

    def pids(self) -> dict[str, int]:
        out = {"parent": self.daemon.pid}
        for role, pid in self.daemon.roles().items():
            if role != "worker":
                out[role] = pid
        # issue 17: the check workers, by their number (their title says it)
        for pid in self.daemon.role_pids("worker"):
            out[f"worker {worker_index(pid)}"] = pid
        return out

    def summary(self) -> dict:
        try:
            return self.client.request("show summary")
        except (CtlError, OSError):
            return {}

    def stats(self) -> dict:
        """The scheduler's figures (`show summary`): lag, latency; with
        check workers, each worker's share under "workers"."""
        s = self.summary()
        out = dict(s.get("stats") or {})
        if s.get("workers"):
            out["workers"] = s["workers"]
        return out

    def watch_down(self) -> None:
        """Subscribe (the reply comes once subscribed), then read events."""
        self.downs_seen = {}
        self.mon = Client(self.daemon.socket, timeout=30)
        events = self.mon.monitor()

        def read():
            try:
                for ev in events:
                    d = ev.get("data") or {}
                    if ev.get("event") == "host" and d.get("status") == "down":
                        self.downs_seen.setdefault((d.get("table", ""), d.get("name", "")),
                                                   time.monotonic())
            except (CtlError, OSError, AttributeError):     # closed at stop
                return
        threading.Thread(target=read, daemon=True).start()

    def downs(self, port: int, since: float) -> dict[str, float]:
        return {name: t for (table, name), t in list(self.downs_seen.items())
                if table.endswith(f":{port}") and t >= since}

    def stop(self) -> None:
        for c in (self.mon, getattr(self, "client", None)):
            if c is not None:
                c.close()
        self.mon = None
        if self.daemon is not None:
            self.daemon.stop()
            self.lab.daemons.remove(self.daemon)
            self.daemon = None


CHECKERS = {"haproxy": HAProxy, "hoststated": Hoststated}


def worker_index(pid: int) -> int:
    """A check worker's number, from its comm (`hoststated: w2`)."""
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    return int(comm.rsplit("w", 1)[1]) if comm.rsplit("w", 1)[-1].isdigit() else 0


# --- one run ----------------------------------------------------------------------

def one_run(lab: Lab, dir_ns: str, be_ns: str, checker_name: str, rate: int, kind: str,
            a) -> dict:
    ports = [BASE_PORT + i for i in range(max(1, rate // HOSTS))]
    n = HOSTS * len(ports)
    backend = Backend(lab, be_ns, ports, kind)
    checker = CHECKERS[checker_name](lab, dir_ns, *([a.workers] if checker_name == "hoststated"
                                                    and a.workers else []))
    out = {"checker": checker_name, "rate": rate, "kind": kind, "hosts": n}
    try:
        t0 = checker.start(ports, kind)
        end = t0 + 60
        while True:
            if checker.all_up(n):
                out["up_s"] = time.monotonic() - t0
                out["answer_s"] = checker.first_answer - t0
                break
            if time.monotonic() > end:
                raise RuntimeError(f"{checker_name}: not all {n} hosts up after 60 s")
            time.sleep(0.05)
        time.sleep(a.settle)
        pids = checker.pids()
        done0 = {x["index"]: x["checks_done"]
                 for x in (checker.stats().get("workers") or [])}
        try:
            w = Window(pids, backend, a.duration)
        except OSError as e:                # a process is gone: say why
            raise RuntimeError(f"{checker_name}: {e}; {checker.last_words()}") from None
        # one show summary after the window: in hce (no workers), a summary
        # of 10,000 hosts holds the checks for tens of ms, and the lag
        # figures are of the last 20,000 checks
        after = checker.stats()
        done1 = {x["index"]: x["checks_done"] for x in (after.get("workers") or [])}
        # issue 17: each worker's checks over the window and its CPU (its
        # own count comes in its reports: up to a report interval off at either end, so the
        # window's checks (ActiveOpens, exact) are split by their shares)
        counted = sum(done1[i] - done0.get(i, 0) for i in done1) or 1
        out["workers"] = {i: {"checks": w.checks * (done1[i] - done0.get(i, 0)) / counted,
                              "cpu": w.per_process.get(f"worker {i}", float("nan"))}
                          for i in done1}
        out.update(checks=w.checks, accepted=w.accepted, wall=w.wall, rate_achieved=w.rate,
                   cpu=w.cpu, user=w.user, sys=w.sys, us_per_check=w.us_per_check, per_process=w.per_process,
                   wakeups=w.wakeups, pace_min=w.pace_min, pace_max=w.pace_max,
                   backend_cpu=w.backend_cpu / w.wall, box=w.box, others=w.others)
        try:
            out["rss"] = {k: rss_mb(p) for k, p in pids.items()}
            out["pss_total"] = sum(pss_mb(p) for p in pids.values())
        except OSError as e:
            raise RuntimeError(f"{checker_name}: {e}; {checker.last_words()}") from None
        out["rss_total"] = sum(out["rss"].values())
        out["stats"] = after
        if not checker.all_up(n):
            out["note"] = "not all up after the window"
        # a port dies on all 250 hosts
        checker.watch_down()
        time.sleep(0.2)
        closed = backend.close_port(DEAD_PORT)
        end = closed + 10
        while time.monotonic() < end and len(checker.downs(DEAD_PORT, closed)) < HOSTS:
            time.sleep(0.05)
        times = sorted(t - closed for t in checker.downs(DEAD_PORT, closed).values())
        out["detected"] = len(times)
        out["detect_p50"] = statistics.median(times) if times else float("nan")
        out["detect_max"] = times[-1] if times else float("nan")
        if out["detected"] < HOSTS and getattr(checker, "daemon", None) is not None:
            # why some downs were not seen: the daemon's words, if any
            said = [ln for ln in checker.daemon.read_log().splitlines()
                    if "too slow" in ln or "monitor" in ln or "error" in ln.lower()]
            out["note"] = f"downs seen {len(times)}/{HOSTS}; log: " + (" | ".join(said[-3:])
                                                                      or "nothing about it")
    finally:
        checker.stop()
        backend.stop()
    return out


def fmt_cell(vals: list[float], f: str) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return format(med, f)
    return f"{format(med, f)} ({format(min(vals), f)}-{format(max(vals), f)})"


def per_check(r: dict, key: str) -> float:
    return 1e6 * r[key] / r["checks"] if r["checks"] else float("nan")


def report(results: list[dict], checkers: list[str]) -> None:
    keys = sorted({(r["kind"], r["rate"]) for r in results}, key=lambda k: (k[0], k[1]))
    print()
    print("median (min-max) over the rounds; CPU of all the checker's processes; "
          "box = both cores busy, others = not the checker, backend or bench")
    for kind, rate in keys:
        print(f"\n{kind}, {rate} checks/s wanted ({rate // HOSTS} ports x {HOSTS} hosts)")
        for c in checkers:
            rs = [r for r in results if (r["kind"], r["rate"], r["checker"]) == (kind, rate, c)]
            if not rs:
                continue
            procs = list(rs[0]["rss"])
            print(f"  {c:<10} CPU/check {fmt_cell([r['us_per_check'] for r in rs], '.0f')} µs"
                  f" (user {fmt_cell([per_check(r, 'user') for r in rs], '.0f')},"
                  f" sys {fmt_cell([per_check(r, 'sys') for r in rs], '.0f')});"
                  f" CPU {fmt_cell([100 * r['cpu'] / r['wall'] for r in rs], '.1f')}% of a core"
                  f" [" + " ".join(f"{k} {fmt_cell([100 * r['per_process'][k] / r['wall'] for r in rs], '.1f')}%"
                                   for k in procs) + "]")
            print(f"  {'':<10} checks/s {fmt_cell([r['rate_achieved'] for r in rs], '.0f')}"
                  f" (accepted at the backend {fmt_cell([r['accepted'] / r['wall'] for r in rs], '.0f')}/s);"
                  f" pacing per 100 ms {fmt_cell([r['pace_min'] for r in rs], '.2f')}"
                  f" .. {fmt_cell([r['pace_max'] for r in rs], '.2f')} of the mean;"
                  f" wakeups {fmt_cell([r['wakeups'] for r in rs], '.0f')}/s")
            print(f"  {'':<10} RSS {fmt_cell([r['rss_total'] for r in rs], '.0f')} MB [" +
                  " ".join(f"{k} {fmt_cell([r['rss'][k] for r in rs], '.0f')}" for k in procs) +
                  f"], PSS {fmt_cell([r.get('pss_total', float('nan')) for r in rs], '.0f')} MB;"
                  f" all up in {fmt_cell([r['up_s'] for r in rs], '.2f')} s"
                  f" (socket answered at {fmt_cell([r['answer_s'] for r in rs], '.2f')} s);"
                  f" port {DEAD_PORT} down on {fmt_cell([r['detected'] for r in rs], '.0f')}"
                  f"/{HOSTS} hosts in p50 {fmt_cell([r['detect_p50'] for r in rs], '.2f')}"
                  f" max {fmt_cell([r['detect_max'] for r in rs], '.2f')} s")
            print(f"  {'':<10} backend CPU {fmt_cell([100 * r['backend_cpu'] for r in rs], '.0f')}%;"
                  f" box {fmt_cell([100 * r['box'] for r in rs], '.0f')}%,"
                  f" others {fmt_cell([100 * r['others'] for r in rs], '.0f')}%" +
                  "".join(f"; {r['note']}" for r in rs if r.get("note")))
            if rs[0].get("stats"):
                print(f"  {'':<10} scheduler (show summary):" + ";".join(
                    f" {k} {fmt_cell([r['stats'].get(k, float('nan')) for r in rs], '.1f')}"
                    for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms", "latency_p50_ms",
                              "latency_p99_ms")))
            for i in sorted(rs[0].get("workers") or {}):
                # issue 17: a worker's share: what a 16-core machine multiplies
                ws = [r["workers"][i] for r in rs if i in (r.get("workers") or {})]
                sw = [x for r in rs for x in r["stats"].get("workers", []) if x["index"] == i]
                print(f"  {'':<10} worker {i}: {fmt_cell([x['checks'] / r['wall'] for x, r in zip(ws, rs)], '.0f')} checks/s,"
                      f" CPU {fmt_cell([100 * x['cpu'] / r['wall'] for x, r in zip(ws, rs)], '.1f')}% of a core,"
                      f" {fmt_cell([1e6 * x['cpu'] / x['checks'] if x['checks'] else float('nan') for x in ws], '.0f')} µs/check;"
                      f" hosts {fmt_cell([x['hosts'] for x in sw], '.0f')},"
                      f" lag p50 {fmt_cell([x['lag_p50_ms'] for x in sw], '.1f')}"
                      f" p99 {fmt_cell([x['lag_p99_ms'] for x in sw], '.1f')} ms;"
                      f" RSS {fmt_cell([r['rss'].get(f'worker {i}', float('nan')) for r in rs], '.0f')} MB")
        h = [r for r in results if (r["kind"], r["rate"], r["checker"]) == (kind, rate, "haproxy")]
        s = [r for r in results if (r["kind"], r["rate"], r["checker"]) == (kind, rate, "hoststated")]
        if h and s:
            def med(rs, f):
                return statistics.median(f(r) for r in rs)
            print(f"  ratio hoststated/haproxy: CPU per check "
                  f"{med(s, lambda r: r['us_per_check']) / med(h, lambda r: r['us_per_check']):.2f}x"
                  f" (per round: " + ", ".join(
                      f"{a['us_per_check'] / b['us_per_check']:.2f}" for a, b in zip(s, h)) + ")"
                  f"; RSS {med(s, lambda r: r['rss_total']) / med(h, lambda r: r['rss_total']):.2f}x"
                  f" (PSS {med(s, lambda r: r['pss_total']) / med(h, lambda r: r['pss_total']):.2f}x)"
                  f"; up time {med(s, lambda r: r['up_s']) / med(h, lambda r: r['up_s']):.2f}x")


# --- the profile (item 2) ----------------------------------------------------------

def profile(lab: Lab, dir_ns: str, be_ns: str, rate: int, kind: str, a) -> None:
    """hoststated alone at `rate`: py-spy samples hce (--nonblocking, idle
    samples dropped) over the window while /proc gives the user/sys split
    and the wakeups; the functions with the most samples, by their own time
    and with callees."""
    spy = Path(PYTHON).with_name("py-spy")
    if not spy.exists():
        spy = Path(shutil.which("py-spy") or "py-spy")
    ports = [BASE_PORT + i for i in range(max(1, rate // HOSTS))]
    n = HOSTS * len(ports)
    backend = Backend(lab, be_ns, ports, kind)
    hs = Hoststated(lab, dir_ns)
    raw = lab.tmp / "profile.txt"
    try:
        t0 = hs.start(ports, kind)
        while not hs.all_up(n):
            if time.monotonic() > t0 + 60:
                raise RuntimeError("not all up")
            time.sleep(0.05)
        time.sleep(a.settle)
        pids = hs.pids()
        rec = lab.spawn(str(spy), "record", "--nonblocking", "-r", "200", "-f", "raw",
                        "-d", f"{a.duration:g}", "-o", str(raw), "-p", str(pids["hce"]),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        w = Window(pids, backend, a.duration - 0.6)
        msg, _ = rec.communicate(timeout=a.duration + 30)
        lab.procs.remove(rec)
    finally:
        hs.stop()
        backend.stop()
    hce = w.per_process["hce"]
    print(f"hoststated alone, {kind}, {w.rate:.0f} checks/s, {n} hosts: CPU per check "
          f"{w.us_per_check:.0f} µs (all processes; hce {1e6 * hce / w.checks:.0f} µs), "
          f"user {1e6 * w.user / w.checks:.0f} µs + sys {1e6 * w.sys / w.checks:.0f} µs; "
          f"wakeups {w.wakeups:.0f}/s; per process " +
          ", ".join(f"{k} {100 * v / w.wall:.1f}%" for k, v in w.per_process.items()) +
          f"; box {100 * w.box:.0f}%, others {100 * w.others:.0f}%  (py-spy running on a core too)")
    if not raw.exists():
        print(f"py-spy wrote nothing: {msg.strip()[-300:]}")
        return
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    lines: dict[str, int] = {}
    total = 0
    src: dict[str, list[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        leaf = stack.split(";")[-1]
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        frames = [f.replace(str(ROOT) + "/", "").replace(sys.base_prefix + "/lib/", "")
                  for f in frames]
        total += int(cnt)
        own[frames[-1]] = own.get(frames[-1], 0) + int(cnt)
        # by line: a C call's time (a syscall's included) is its caller's line
        m = re.match(r"(.*) \((.*):(\d+)\)$", leaf)
        if m:
            path, no = m.group(2), int(m.group(3))
            if path not in src:
                try:
                    src[path] = Path(path).read_text().splitlines()
                except OSError:
                    src[path] = []
            text = src[path][no - 1].strip() if 0 < no <= len(src[path]) else "?"
            key = f"{m.group(1)} {Path(path).name}:{no}  {text[:70]}"
            lines[key] = lines.get(key, 0) + int(cnt)
        for f in set(frames):
            incl[f] = incl.get(f, 0) + int(cnt)
    print(f"py-spy on hce, {total} busy samples at 200/s over {a.duration:g} s "
          f"(= {total / 200 / a.duration:.0%} of the time runnable: running, or waiting for a core on a busy box)")
    print("  own time:")
    for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"    {v / total:5.1%}  {k}")
    print("  own time by line (a C call, a syscall included, counts on its caller's line):")
    for k, v in sorted(lines.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"    {v / total:5.1%}  {k}")
    print("  with callees (frames on >95% of the stacks left out):")
    top = max(incl.values(), default=0) * 0.95
    for k, v in [kv for kv in sorted(incl.items(), key=lambda kv: -kv[1]) if kv[1] < top][:a.top]:
        print(f"    {v / total:5.1%}  {k}")


# --- main ---------------------------------------------------------------------------

def build_lab(lab: Lab) -> tuple[str, str]:
    d, b = lab.netns("dir"), lab.netns("be")
    lab.veth(d, f"{DIR_ADDR}/24", b, [f"{x}/24" for x in addresses()], names=("d0", "b0"))
    run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", ns=d)
    run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", ns=d)
    run("sysctl", "-qw", "net.unix.max_dgram_qlen=4096", ns=d)     # HAProxy's log lines
    return d, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,4000,10000", help="checks/s (1000,4000,10000)")
    ap.add_argument("--kinds", default="http,tcp", help="http,tcp")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per cell (3)")
    ap.add_argument("--duration", type=float, default=10.0, help="s of the CPU window (10)")
    ap.add_argument("--settle", type=float, default=3.0, help="s after all up (3)")
    ap.add_argument("--checkers", default="haproxy,hoststated")
    ap.add_argument("--json", help="write every run to this file")
    ap.add_argument("--no-setup", action="store_true", help="install nothing")
    ap.add_argument("--profile", type=int, metavar="RATE",
                    help="only hoststated at RATE with py-spy on hce (first of --kinds)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--workers", type=int, metavar="N", default=1,
                    help="hoststated with `check workers N` (issue 17; default 1: one "
                         "process checks, as HAProxy's nbthread 1, whatever the automatic "
                         "rule would choose for the hosts)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("checks bench: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    rates = [int(x) for x in a.rates.split(",") if x]
    kinds = [k for k in a.kinds.split(",") if k]
    checkers = [c for c in a.checkers.split(",") if c]
    if any(k not in ("http", "tcp") for k in kinds) or any(c not in CHECKERS for c in checkers):
        ap.error("kinds: http, tcp; checkers: haproxy, hoststated")
    if not a.no_setup and "haproxy" in checkers and not a.profile:
        setup()
    if "haproxy" in checkers and not a.profile and which("haproxy") is None:
        print("checks bench: no haproxy", file=sys.stderr)
        return 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # root: 20,000 checks/s is 20,000 listeners in the backend alone
        want = max(hard, 1 << 17)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def stopped(signum, frame):
        raise KeyboardInterrupt
    # the lab's cleanup runs on SIGTERM too, and on SIGINT also when started
    # in the background by a shell (which leaves SIGINT ignored)
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    results: list[dict] = []
    with Lab(prefix=f"cx-{os.getpid()}") as lab:
        dir_ns, be_ns = build_lab(lab)
        b0 = box_ticks()
        time.sleep(1.0)
        b1 = box_ticks()
        print(f"checks bench: {os.cpu_count()} CPUs shared by checker, backend, this process "
              f"and anything else running; the box before the runs (1 s): "
              f"{(b1[0] - b0[0]) / max(1, b1[1] - b0[1]):.0%} busy, load average "
              f"{os.getloadavg()[0]:.2f}")
        if a.profile:
            profile(lab, dir_ns, be_ns, a.profile, kinds[0], a)
            return 0
        if "haproxy" in checkers:
            print(f"  {version([which('haproxy'), '-v'])}: nbthread 1, -db")
        print(f"  hoststated: {PYTHON} ({sys.version.split()[0]}), engine none; "
              f"{a.rounds} rounds, {a.duration:g} s windows after {a.settle:g} s")
        print("  backend: one Python process, one epoll set, one listener per address and port")
        try:
            for kind in kinds:
                for rate in rates:
                    for rnd in range(a.rounds):
                        order = checkers if rnd % 2 == 0 else checkers[::-1]
                        for c in order:
                            try:
                                r = one_run(lab, dir_ns, be_ns, c, rate, kind, a)
                            except RuntimeError as e:       # one run lost, not the rest
                                print(f"  {kind} {rate}/s round {rnd + 1} {c}: FAILED: {e}",
                                      flush=True)
                                continue
                            r["round"] = rnd
                            results.append(r)
                            print(f"  {kind} {rate}/s round {rnd + 1} {c}: "
                                  f"{r['rate_achieved']:.0f} checks/s, "
                                  f"{r['us_per_check']:.0f} µs/check, "
                                  f"RSS {r['rss_total']:.0f} MB, up {r['up_s']:.2f} s, "
                                  f"down {r['detected']}/{HOSTS} max {r['detect_max']:.2f} s, "
                                  f"others {100 * r['others']:.0f}%", flush=True)
        finally:
            report(results, checkers)
            if a.json:
                Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
