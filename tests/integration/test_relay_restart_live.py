"""Reload and restart of the relays drop nothing (issue 11, item 7), end to
end: the daemon in the director namespace, real clients in the client
namespace, real backends.

- a relay a reload removes stops listening at once (a new connection is
  refused), while its established session goes on until its session timeout
  after the reload, and is then closed (logged); a kept relay's session
  goes on;
- a reload under load with an `http protocol` relay and keep-alive clients
  fails no request and closes no keep-alive connection;
- restarts under load with systemd's file descriptor store, the store
  played by this test as in test_systemd_unit_live (PID 1 here is not
  systemd): the daemon, started as the unit starts it, sends each listening
  socket with FDSTORE=1/FDNAME on NOTIFY_SOCKET; the test stops it (SIGTERM,
  as `systemctl restart`) and starts the next one with the stored sockets
  at fd 3.. and LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID. A client makes new
  connections in a loop through the relay: none fails across the
  restarts; a connection made while no daemon runs waits in the kept
  queue and is served by the next daemon; a request in flight at the stop
  is answered.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, Daemon, Farm, Lab, in_netns, usable  # noqa: E402
from test_systemd_unit_live import (command, nofile_limit, setpriv, unit, users,  # noqa: E402
                                    with_users)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "setpriv", "unshare", "systemd-sysusers"),
                                 reason="needs root, ip, setpriv, unshare, systemd-sysusers")]

VIP = Farm.director_client_addr

# An HTTP/1.1 backend (keep-alive) answering its name; GET /slow prints
# "slow" on stdout when the request arrives and answers 1.5 s later.
BACKEND = r"""
import http.server, socketserver, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            print("slow", flush=True)
            time.sleep(1.5)
        body = (sys.argv[3] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
s = S((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""

ECHO = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7)); s.listen(64)
print("ready", flush=True)
def serve(c):
    while d := c.recv(65536):
        c.sendall(d)
    c.close()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

# one long-lived session: a line every 0.2 s (never idle), each echoed
# back; "open" once the first comes back, then "tick" for each, then
# "closed N" (N echoes) when the relay ends it
HOLD = r"""
import socket, sys, time
s = socket.create_connection(("192.0.2.1", int(sys.argv[1])), timeout=30)
n = 0
try:
    while True:
        s.sendall(b"x\n")
        if s.recv(16) == b"":
            break
        n += 1
        print("open" if n == 1 else "tick", flush=True)
        time.sleep(0.2)
except OSError:
    pass
print(f"closed {n}", flush=True)
"""

# keep-alive clients: argv host port clients seconds; each thread keeps one
# connection and sends requests on it in a loop; a request that fails, or a
# connection the server closes, counts as failed
KEEPALIVE = r"""
import http.client, json, sys, threading, time
host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ok, failed, errors, conns = [0], [0], [], [0]
lock = threading.Lock()
def run():
    c = http.client.HTTPConnection(host, port, timeout=10)
    conns[0] += 1
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            c.request("GET", "/")
            r = c.getresponse()
            body = r.read()
            good = r.status == 200 and body.startswith(b"b") and not r.will_close
        except Exception as e:
            good = False
            with lock:
                errors.append(repr(e))
            c.close()
            c = http.client.HTTPConnection(host, port, timeout=10)
            conns[0] += 1
        with lock:
            (ok if good else failed)[0] += 1
        time.sleep(0.005)
    c.close()
ts = [threading.Thread(target=run) for _ in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"ok": ok[0], "failed": failed[0], "errors": errors[:5], "connections": conns[0]}))
"""

# the request answered by the next daemon: connects while none runs,
# says "connected", then sends its request and prints the answer's body
WAITER = r"""
import socket, sys
s = socket.create_connection(("192.0.2.1", 8080), timeout=60)
print("connected", flush=True)
s.settimeout(60)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.split(b"\r\n")[0].decode(), data.rsplit(b"\r\n\r\n", 1)[-1].decode().strip(), flush=True)
"""

# new connections in a loop, one request each, until the file argv[3]
# exists; prints {"counts": {page: n}, "failed": n, "errors": [...]}
NEWCONN = r"""
import http.client, json, os, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts, failed, errors = {}, 0, []
while not os.path.exists(stop):
    try:
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.request("GET", "/")
        body = c.getresponse().read().decode().strip()
        c.close()
        counts[body] = counts.get(body, 0) + 1
    except Exception as e:
        failed += 1
        errors.append(repr(e))
    time.sleep(0.002)
print(json.dumps({"counts": counts, "failed": failed, "errors": errors[:5]}))
"""

SLOW = r"""
import http.client
c = http.client.HTTPConnection("192.0.2.1", 8081, timeout=60)
c.request("GET", "/slow")
r = c.getresponse()
print(r.status, r.read().decode().strip(), flush=True)
"""


def backends(lab, farm, http_port=8000) -> dict[str, subprocess.Popen]:
    """The HTTP/1.1 backends on port 8000, by namespace, and an echo
    server on b1."""
    out = {}
    for b in farm.backends:
        p = out[b] = lab.spawn(PYTHON, "-c", BACKEND, farm.addr[b], str(http_port),
                               farm.names[b], ns=b, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
    echo = lab.spawn(PYTHON, "-c", ECHO, farm.addr[farm.backends[0]], ns=farm.backends[0],
                     stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    return out


def hold(lab, farm, port) -> subprocess.Popen:
    p = lab.spawn(*in_netns(farm.client, PYTHON, "-c", HOLD, str(port)),
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "open"
    return p


DRAIN = """
socket "{socket}"
interval 1
timeout 500
table <echo> {{ 198.51.100.11 }}
relay gone {{
	listen on 192.0.2.1 port 7007
	session timeout 3
	forward to <echo> port 7 check tcp
}}
relay kept {{
	listen on 192.0.2.1 port 7008
	session timeout 3
	forward to <echo> port 7 check tcp
}}
"""


def test_a_removed_relay_drains_its_session_up_to_its_session_timeout():
    with Lab("rr") as lab:
        farm = Farm(lab, backends=1, sources=0)
        backends(lab, farm)
        d = farm.daemon(DRAIN)
        d.wait_for(lambda: d.host("198.51.100.11")["status"] == "up", what="the echo host up")
        gone, kept = hold(lab, farm, 7007), hold(lab, farm, 7008)
        text = d.conf.read_text()
        d.conf.write_text(text[:text.index("relay gone")] + text[text.index("relay kept"):])
        r = d.ctl("reload")
        assert r.returncode == 0, r.stderr
        # its listening socket is closed at once
        ns_refused = subprocess.run(
            in_netns(farm.client, PYTHON, "-c",
                     "import socket\n"
                     "try:\n"
                     "    socket.create_connection(('192.0.2.1', 7007), timeout=5)\n"
                     "    print('accepted')\n"
                     "except ConnectionRefusedError:\n"
                     "    print('refused')\n"),
            capture_output=True, text=True, timeout=30).stdout.strip()
        assert ns_refused == "refused"
        # its session goes on after the reload (never idle: no idle timeout)...
        for _ in range(3):
            assert gone.stdout.readline().strip() == "tick"
        # ...until its session timeout since the reload is over: closed by the relay
        line = ""
        while line != "closed" and (line := gone.stdout.readline().strip()) == "tick":
            pass
        assert line.startswith("closed"), line
        assert gone.wait(10) == 0
        d.wait_for(lambda: "relay gone removed: closed its 1 sessions" in d.read_log(),
                   what="the drain logged")
        assert "relay gone removed: its 1 sessions run on" in d.read_log()
        # the kept relay's session was never touched
        for _ in range(3):
            assert kept.stdout.readline().strip() == "tick"
        assert kept.poll() is None
        assert "Traceback" not in d.read_log()


HTTP = """
socket "{socket}"
interval 1
timeout 500
table <web> {{ 198.51.100.11 198.51.100.12 }}
http protocol web {{
	match request header append "X-Forwarded-For" value "$REMOTE_ADDR"
}}
relay www {{
	listen on 192.0.2.1 port 8080
	protocol web
	forward to <web> port 8000 check tcp
}}
"""


def test_reload_under_keep_alive_http_load_fails_no_request():
    with Lab("rr") as lab:
        farm = Farm(lab, backends=2, sources=0)
        backends(lab, farm)
        d = farm.daemon(HTTP)
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="the backends up")
        clients = subprocess.Popen(in_netns(farm.client, PYTHON, "-c", KEEPALIVE, VIP, "8080",
                                            "4", "8"), stdout=subprocess.PIPE, text=True)
        lab.procs.append(clients)
        time.sleep(1.0)
        base = d.conf.read_text()
        # a relay added, a header rule changed, the added relay removed again
        steps = [base + "relay more {\n\tlisten on 192.0.2.1 port 8081\n\tprotocol web\n"
                        "\tforward to <web> port 8000 check tcp\n}\n",
                 base.replace('"$REMOTE_ADDR"', '"$REMOTE_ADDR:$REMOTE_PORT"'),
                 base]
        for text in steps:
            d.conf.write_text(text)
            r = d.ctl("reload")
            assert r.returncode == 0, r.stderr
            time.sleep(0.5)
        out, _ = clients.communicate(timeout=60)
        seen = json.loads(out)
        assert seen["failed"] == 0, seen
        assert seen["connections"] == 4, seen          # no keep-alive connection closed
        assert seen["ok"] > 100, seen
        assert "Traceback" not in d.read_log()


# --- restarts with systemd's file descriptor store, played by the test --------

RESTART = """
socket "{socket}" group "hoststated"
interval 1
timeout 500
table <web> {{ 198.51.100.11 198.51.100.12 }}
table <slow> {{ 198.51.100.11 }}
relay www {{
	listen on 192.0.2.1 port 8080
	forward to <web> port 8000 check tcp
}}
relay slow {{
	listen on 192.0.2.1 port 8081
	forward to <slow> port 8000 check tcp
}}
"""

# sets LISTEN_PID to its own PID (the daemon's: it execs it) and moves the
# stored descriptors to 3.., as systemd does after its fork
LAUNCH = r"""
import fcntl, os, sys
fds = [int(f) for f in sys.argv[1].split(",") if f]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
if fds:
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class FdStore:
    """systemd's side of NOTIFY_SOCKET for one service: the datagrams, and
    the descriptors FDSTORE=1 hands over, kept by FDNAME (duplicates of
    one socket once, FDSTOREREMOVE=1 drops a name), accepted only from the
    main process (NotifyAccess=main)."""

    def __init__(self, path: Path, limit: int):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.limit = limit
        self.main = 0
        self.fds: dict[str, list[int]] = {}
        self.sent: list[tuple[int, dict[str, str]]] = []
        self.refused: list[tuple[int, bytes]] = []       # not from the main process
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(253 * 4) + socket.CMSG_SPACE(12)
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid, fds = 0, []
            for lvl, typ, raw in anc:
                if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(raw[:4], sys.byteorder)
                elif lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    n = len(raw) // 4
                    fds += [int.from_bytes(raw[i * 4:i * 4 + 4], sys.byteorder) for i in range(n)]
            fields = dict(ln.split("=", 1) for ln in data.decode().split("\n") if "=" in ln)
            with self._lock:
                if pid != self.main:
                    self.refused.append((pid, data))
                    for fd in fds:
                        os.close(fd)
                    continue
                self.sent.append((pid, fields))
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTOREREMOVE") == "1":
                    for fd in self.fds.pop(name, []):
                        os.close(fd)
                if fields.get("FDSTORE") == "1":
                    have = {os.fstat(f).st_ino for fs in self.fds.values() for f in fs}
                    for fd in fds:
                        if os.fstat(fd).st_ino in have or self.count() >= self.limit:
                            os.close(fd)
                        else:
                            self.fds.setdefault(name, []).append(fd)
                            have.add(os.fstat(fd).st_ino)
                else:
                    for fd in fds:
                        os.close(fd)

    def count(self) -> int:
        return sum(len(v) for v in self.fds.values())

    def passed(self) -> tuple[list[int], list[str]]:
        """The descriptors for the next start, in order, and their names."""
        with self._lock:
            pairs = [(name, fd) for name, fds in sorted(self.fds.items()) for fd in fds]
        return [fd for _, fd in pairs], [name for name, _ in pairs]

    def states(self) -> list[dict[str, str]]:
        with self._lock:
            return [f for _, f in self.sent]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()
        for fds in self.fds.values():
            for fd in fds:
                os.close(fd)
        self.fds = {}


class StoredDaemon(Daemon):
    """hoststated as the unit's ExecStart runs it, given what the store holds."""

    def __init__(self, lab, ns, conf: Path, socket_path: str, etc: Path, store: FdStore,
                 log_name: str):
        self.lab, self.ns, self.conf, self.socket = lab, ns, conf, socket_path
        self.log = conf.with_name(log_name)
        self._logf = open(self.log, "w")
        s = unit()
        fds, names = store.passed()
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "NOTIFY_SOCKET": str(store.sock.getsockname()),
               "FDSTORE": s["FileDescriptorStoreMax"]}
        if fds:
            env.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names))
        nofile = nofile_limit(s)
        daemon = command(s["ExecStart"].replace("/etc/hoststated.conf", str(conf)))
        argv = with_users(ns, etc, [*setpriv(s), PYTHON, "-c", LAUNCH,
                                    ",".join(map(str, fds)), *daemon])

        def limits():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        # every program in the chain execs the next: this PID is the daemon's
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=self._logf, cwd="/",
                                     env=env, preexec_fn=limits, pass_fds=fds)
        self.pid = self.proc.pid
        store.main = self.pid
        lab.daemons.append(self)


def wait_ready(store: FdStore, d: Daemon, since: int) -> None:
    d.wait_for(lambda: d.proc.poll() is not None or any(
        f.get("READY") == "1" for f in store.states()[since:]), timeout=60,
        what="READY=1")
    assert d.proc.poll() is None, d.read_log()


def test_restarts_with_the_fd_store_refuse_no_connection():
    with Lab("rr") as lab:
        farm = Farm(lab, backends=2, sources=0)
        http = backends(lab, farm)
        etc = users(lab.tmp)
        sock = str(lab.tmp / "unit.sock")
        conf = lab.write("unit.conf", RESTART.format(socket=sock))
        s = unit()
        assert int(s["FileDescriptorStoreMax"]) >= 6       # prefork 3 x 2 listeners
        store = FdStore(lab.tmp / "notify.sock", int(s["FileDescriptorStoreMax"]))
        try:
            d = StoredDaemon(lab, farm.director, conf, sock, etc, store, "run-0.log")
            wait_ready(store, d, 0)
            # every listening socket stored, by listener, as the daemon made them
            _, names = store.passed()
            assert sorted(set(names)) == ["relay 192.0.2.1 8080", "relay 192.0.2.1 8081"]
            assert len(names) == 6, names
            stop = lab.tmp / "stop-load"
            load = subprocess.Popen(in_netns(farm.client, PYTHON, "-c", NEWCONN, VIP, "8080",
                                             str(stop)), stdout=subprocess.PIPE, text=True)
            lab.procs.append(load)
            logs = [d.read_log]
            restarts = 3
            for n in range(1, restarts + 1):
                time.sleep(1.0)
                # a request in flight when the stop begins is answered
                slow = lab.spawn(*in_netns(farm.client, PYTHON, "-c", SLOW),
                                 stdout=subprocess.PIPE, text=True)
                assert http[farm.backends[0]].stdout.readline().strip() == "slow"
                d.proc.send_signal(signal.SIGTERM)
                assert d.proc.wait(30) == 0, d.read_log()
                assert slow.stdout.readline().strip() == "200 b1", d.read_log()
                # no daemon runs: a new connection waits in the kept queue
                waiter = lab.spawn(*in_netns(farm.client, PYTHON, "-c", WAITER),
                                   stdout=subprocess.PIPE, text=True)
                assert waiter.stdout.readline().strip() == "connected"
                since = len(store.states())
                d = StoredDaemon(lab, farm.director, conf, sock, etc, store, f"run-{n}.log")
                logs.append(d.read_log)
                wait_ready(store, d, since)
                # ...and the next daemon answers it
                assert waiter.stdout.readline().split()[:3] == ["HTTP/1.1", "200", "OK"], \
                    d.read_log()
                assert waiter.wait(10) == 0
                assert "adopted 6 listening sockets" in d.read_log(), d.read_log()
                _, names = store.passed()
                assert len(names) == 6, names                 # the same six, no more
            time.sleep(1.0)
            stop.write_text("")
        finally:
            store.close()
        out, _ = load.communicate(timeout=60)
        lab.procs.remove(load)
        seen = json.loads(out[out.index("{"):]) if "{" in out else {"failed": "no output"}
        assert seen["failed"] == 0, seen
        assert set(seen["counts"]) == {"b1", "b2"} and sum(seen["counts"].values()) > 100, seen
        assert store.refused == [], store.refused          # only the main process spoke
        for read in logs:
            assert "Traceback" not in read()
