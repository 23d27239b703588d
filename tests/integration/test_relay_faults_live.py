"""The relays under bad input and hostile peers, end to end: real clients in
the client namespace, real backends, the real daemon in the director
(tests/lab.Farm), and what each fault must come to.

- slow readers: a backend sends 200 MB to a client that stops reading,
  then reads slowly; a client sends 200 MB to a backend that stops
  reading, then reads slowly (TCP and HTTP relays): what the relay holds
  while stalled and the relay processes' peak resident memory stay
  bounded, and the bytes arrive intact (sha256 at both ends);
- a client that connects and never sends is closed at the relay's
  `session timeout`, logged once, while a session that talks goes on;
- HTTP: a malformed request line, a head beyond `headerlen`, a 1 MB
  request line, invalid chunking, a backend that answers garbage or
  closes mid-response: relayd's error page (or a clean close), one log
  line, no traceback, and a keep-alive session through the same relay
  serves on;
- TLS: a backend whose certificate the relay's `ca file` does not verify
  (another CA, expired) fails the session cleanly and is logged; a client
  offering only a protocol version the relay excludes is refused in the
  handshake; an expired keypair fails `hoststated -n` with file:line:col;
- a backend hce marks down while traffic flows gets no new session, and
  the session it has keeps running.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab import PYTHON, ROOT, Farm, Lab, in_netns, peak_rss_kb, reset_peak_rss, rss_kb, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip"), reason="needs root and ip")]

VIP = Farm.director_client_addr
BULK = 200 << 20                # bytes each bulk transfer moves
STALL_BOUND = 64 << 20          # bytes the path may hold while a side does not read
RSS_BOUND = 32 << 10            # kB a relay process may grow by during a transfer

# Serves on port 9000 (raw) and 9080 (HTTP):
#   "GET n\n"        -> n bytes of a seeded stream, then a half-close;
#   "PUT n\n" + data -> waits for "go" on stdin, reads slowly, then fast;
#   HTTP GET /n      -> 200 with Content-Length n and the same stream.
# Prints a JSON line per transfer: what it sent or got (sha256, count) and,
# for GET, progress lines {"progress": bytes} after the first chunk and then
# every 256 kB (what the path holds while stalled can be under a few MB: a
# coarser mark would leave a stalled sender looking as if it never began).
BULK_SERVER = r"""
import hashlib, json, random, socket, sys, threading, time
addr = sys.argv[1]
go = threading.Event()
def control():
    for line in sys.stdin:
        go.set()
threading.Thread(target=control, daemon=True).start()
out = threading.Lock()
def say(**kw):
    with out:
        print(json.dumps(kw), flush=True)
def source(c, n, tag):
    rng, h, sent, mark = random.Random(n), hashlib.sha256(), 0, 0
    while sent < n:
        chunk = rng.randbytes(min(n - sent, 1 << 16))
        c.sendall(chunk); h.update(chunk); sent += len(chunk)
        if not mark or sent - mark >= 256 << 10:
            mark = sent; say(progress=sent)
    say(op=tag, sha=h.hexdigest(), n=sent)
def sink(c, f, n):
    go.wait()
    h, got, slow = hashlib.sha256(), 0, 8 << 20
    while got < n:
        d = f.read1(1 << 16)
        if not d:
            break
        h.update(d); got += len(d)
        if got < slow:
            time.sleep(0.002)            # a slow reader, for the first MB
    say(op="put", sha=h.hexdigest(), n=got)
def serve(c, http):
    f = c.makefile("rb")
    try:
        line = f.readline()
    except OSError:
        line = b""
    if not line.strip():            # hce's checks connect and close
        c.close()
        return
    try:
        if http:
            while f.readline() not in (b"\r\n", b""):
                pass
            n = int(line.split()[1].lstrip(b"/"))
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            source(c, n, "http")
        else:
            op, n = line.split()
            if op == b"GET":
                source(c, int(n), "get")
            else:
                sink(c, f, int(n))
        c.shutdown(socket.SHUT_WR)
        while c.recv(1 << 16):
            pass
    except OSError as e:
        say(op="error", error=repr(e))
    finally:
        c.close()
def listen(port, http):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, http), daemon=True).start()
threading.Thread(target=listen, args=(9080, True), daemon=True).start()
threading.Thread(target=listen, args=(9000, False), daemon=True).start()
time.sleep(0.2)
say(ready=True)
threading.Event().wait()
"""

# argv: host port op n [http]. GET: asks, waits for "go" on stdin, reads
# slowly for 8 MB, then fast. PUT: sends n bytes at full speed (progress
# lines as the server's), half-closes, waits for the close. A JSON line at the end.
BULK_CLIENT = r"""
import hashlib, json, random, socket, sys, time
host, port, op, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
http = len(sys.argv) > 5
s = socket.create_connection((host, port), timeout=120)
def say(**kw):
    print(json.dumps(kw), flush=True)
h, count = hashlib.sha256(), 0
if op == "GET":
    s.sendall(b"GET /%d HTTP/1.1\r\nHost: bulk\r\n\r\n" % n if http else b"GET %d\n" % n)
    say(asked=True)
    sys.stdin.readline()
    head = b""
    if http:
        while b"\r\n\r\n" not in head:
            d = s.recv(4096)
            if not d:
                break
            head += d
        head, _, body = head.partition(b"\r\n\r\n")
        h.update(body); count += len(body)
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        h.update(d); count += len(d)
        if count < 8 << 20:
            time.sleep(0.002)
        if http and count >= n:
            break
    say(op="get", sha=h.hexdigest(), n=count, head=head.decode("latin-1"))
else:
    s.sendall(b"PUT %d\n" % n)
    rng, mark = random.Random(n), 0
    while count < n:
        chunk = rng.randbytes(min(n - count, 1 << 16))
        s.sendall(chunk); h.update(chunk); count += len(chunk)
        if not mark or count - mark >= 256 << 10:
            mark = count; say(progress=count)
    s.shutdown(socket.SHUT_WR)
    while s.recv(1 << 16):
        pass
    say(op="put", sha=h.hexdigest(), n=count)
"""


class Lines:
    """A process's JSON lines, read in a thread: progress separately from the
    rest, so a test can wait for a side to stall."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.progress = 0
        self.changed = time.monotonic()
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "progress" in msg:
                self.progress = msg["progress"]
                self.changed = time.monotonic()
            else:
                self.events.put(msg)

    def next(self, timeout: float = 120.0) -> dict:
        return self.events.get(timeout=timeout)

    def stalled(self, quiet: float = 1.5) -> bool:
        """No progress for `quiet` s: the sender is blocked (or done)."""
        return time.monotonic() - self.changed > quiet


BULK_CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <bulk> {{ 198.51.100.11 }}
http protocol web {{
	return error
}}
relay raw {{
	listen on 192.0.2.1 port 9000
	forward to <bulk> port 9000 check tcp
}}
relay web {{
	listen on 192.0.2.1 port 9080
	protocol web
	forward to <bulk> port 9080 check tcp
}}
"""


def bulk_lab(lab):
    farm = Farm(lab, backends=1, sources=0)
    b1 = farm.backends[0]
    server = lab.spawn(PYTHON, "-c", BULK_SERVER, farm.addr[b1], ns=b1,
                       stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    lines = Lines(server)
    assert lines.next(20) == {"ready": True}
    d = farm.daemon(BULK_CONFIG)
    d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
               what="the backend up")
    return farm, d, server, lines


def wait_blocked(d, side: Lines, what: str) -> int:
    """Wait until `side` has sent something and then nothing for a while: every
    buffer on its way is full. Returns what it had sent; a timeout says how far
    it got, which tells a sender that never began from one that never stopped."""
    try:
        d.wait_for(lambda: side.progress and side.stalled(), 60, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n(progress: {side.progress} bytes, last "
                             f"{time.monotonic() - side.changed:.1f} s ago)") from None
    return side.progress


class RelayMemory:
    """The relay processes' resident sets from now on: sampled every 50 ms
    and read from VmHWM (which the kernel updates only now and then, so
    each covers what the other may miss); `growth()` is the most any one
    rose above where it started, in kB."""

    def __init__(self, d):
        pids = d.role_pids("relay")
        assert len(pids) == 3, pids
        self.start = {pid: rss_kb(pid) for pid in pids}
        for pid in pids:
            reset_peak_rss(pid)
        self.top = dict(self.start)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            for pid in self.top:
                try:
                    self.top[pid] = max(self.top[pid], rss_kb(pid))
                except FileNotFoundError:     # the daemon stopped: the test failed
                    return                      # or ends, and says so itself

    def now(self) -> int:
        return max(rss_kb(pid) - kb for pid, kb in self.start.items())

    def growth(self) -> int:
        self._done.set()
        self._thread.join()
        return max(max(self.top[pid], peak_rss_kb(pid)) - kb for pid, kb in self.start.items())


@pytest.mark.parametrize("port,http", [(9000, False), (9080, True)], ids=["tcp", "http"])
def test_a_client_that_stops_reading_costs_the_relay_bounded_memory(port, http):
    with Lab("rf") as lab:
        farm, d, server, srv = bulk_lab(lab)
        mem = RelayMemory(d)
        client = lab.spawn(*in_netns(farm.client, PYTHON, "-c", BULK_CLIENT, VIP, str(port),
                                     "GET", str(BULK), *(["http"] if http else [])),
                           stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        cl = Lines(client)
        assert cl.next() == {"asked": True}
        # the client reads nothing: the backend sends until every buffer on
        # the way is full, and then no more
        held = wait_blocked(d, srv, "the backend blocked")
        grown = mem.now()
        client.stdin.write("go\n")
        client.stdin.flush()
        got = cl.next()
        sent = srv.next()
        peak = mem.growth()
        print(f"download {'http' if http else 'tcp'}: held {held >> 20} MB while stalled, "
              f"relay RSS +{grown} kB stalled, +{peak} kB at most")
        assert held < STALL_BOUND, held
        assert grown < RSS_BOUND and peak < RSS_BOUND, (grown, peak)
        assert sent["op"] == ("http" if http else "get") and sent["n"] == BULK, sent
        assert got["n"] == BULK and got["sha"] == sent["sha"], (got, sent)
        if http:
            assert got["head"].startswith("HTTP/1.1 200 OK"), got["head"]
        assert "Traceback" not in d.read_log()


def test_a_backend_that_stops_reading_costs_the_relay_bounded_memory():
    with Lab("rf") as lab:
        farm, d, server, srv = bulk_lab(lab)
        mem = RelayMemory(d)
        client = lab.spawn(*in_netns(farm.client, PYTHON, "-c", BULK_CLIENT, VIP, "9000",
                                     "PUT", str(BULK)),
                           stdout=subprocess.PIPE, text=True)
        cl = Lines(client)
        # the backend reads nothing yet: the client sends until it blocks
        held = wait_blocked(d, cl, "the client blocked")
        grown = mem.now()
        server.stdin.write("go\n")
        server.stdin.flush()
        got = srv.next()
        sent = cl.next()
        peak = mem.growth()
        print(f"upload tcp: held {held >> 20} MB while stalled, relay RSS +{grown} kB stalled, "
              f"+{peak} kB at most")
        assert held < STALL_BOUND, held
        assert grown < RSS_BOUND and peak < RSS_BOUND, (grown, peak)
        assert got["op"] == "put" and got["n"] == BULK and got["sha"] == sent["sha"], (got, sent)
        assert sent["n"] == BULK
        assert "Traceback" not in d.read_log()


# --- sessions that go quiet, and HTTP faults ----------------------------------------

# A backend on port 8000 that answers by path: /garbage is no HTTP at all,
# /junk-close sends a few bytes of junk and closes, /endless sends a head
# that never ends, /cut closes 10 bytes into a 1000-byte body; anything else
# gets "ok PATH" (keep-alive).
FAULTY_BACKEND = r"""
import socket, sys, threading
def handle(c):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            parts = head.split(b"\r\n")[0].split()
            path = parts[1] if len(parts) > 1 else b""
            if path == b"/garbage":
                c.sendall(b"SSH-2.0-OpenSSH_9.2\r\nnot HTTP at all\r\n\r\n")
                return
            if path == b"/junk-close":
                c.sendall(b"\x00\x01\x02 binary junk")
                return
            if path == b"/endless":
                while True:
                    c.sendall(b"X-Filler: " + b"f" * 1000 + b"\r\n")
            if path == b"/cut":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                return
            body = b"ok " + path + b"\n"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8000)); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

ECHO_SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7)); s.listen(64)
print("ready", flush=True)
def serve(c):
    try:
        while d := c.recv(1 << 16):
            c.sendall(d)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One keep-alive connection: a path per stdin line, a JSON line per answer
# ({"closed": true} once the relay has closed it).
KEEPALIVE_CLIENT = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
buf = b""
for line in sys.stdin:
    s.sendall(b"GET %s HTTP/1.1\r\nHost: good\r\n\r\n" % line.strip().encode())
    try:
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            buf += d
        head, _, buf = buf.partition(b"\r\n\r\n")
        n = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                     if h.lower().startswith(b"content-length:")))
        while len(buf) < n:
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            buf += d
        body, buf = buf[:n], buf[n:]
        print(json.dumps({"status": head.split(b"\r\n")[0].decode(), "body": body.decode()}),
              flush=True)
    except (OSError, ConnectionError):
        print(json.dumps({"closed": True}), flush=True)
        break
"""

# argv: source host port; the payload on stdin. Sends the payload (in a
# thread: the relay may answer and close before it is all sent), reads to the
# end; prints what came back and how the connection ended.
ONE_SHOT = r"""
import json, socket, sys, threading
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = sys.stdin.buffer.read()
s = socket.create_connection((host, port), timeout=20, source_address=(src, 0))
def send():
    try:
        s.sendall(payload)
    except OSError:
        pass
threading.Thread(target=send, daemon=True).start()
data, end = b"", "eof"
try:
    while d := s.recv(65536):
        data += d
except ConnectionResetError:
    end = "reset"
except socket.timeout:
    end = "timeout"
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"status": head.split(b"\r\n")[0].decode("latin-1"),
                  "head": head.decode("latin-1"), "body": body.decode("latin-1"), "end": end,
                  "port": s.getsockname()[1]}))
"""

# argv: source host port seconds: connects and says nothing; prints how the
# relay ended it ("timeout" if it did not within `seconds`).
SILENT_CLIENT = r"""
import json, socket, sys
src, host, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=wait, source_address=(src, 0))
print(json.dumps({"port": s.getsockname()[1]}), flush=True)
try:
    end = "data" if s.recv(1) else "eof"
except ConnectionResetError:
    end = "reset"
except socket.timeout:
    end = "timeout"
print(json.dumps({"end": end}), flush=True)
"""

# argv: source host port count: a byte every 0.5 s, each echoed back
CHATTY_CLIENT = r"""
import socket, sys, time
src, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=10, source_address=(src, 0))
ok = 0
for i in range(count):
    s.sendall(b"x")
    if s.recv(1) == b"x":
        ok += 1
    time.sleep(0.5)
print(ok, flush=True)
"""

FAULT_CONFIG = """
socket "{socket}"
interval 1
timeout 500
log connection errors
table <app> {{ 198.51.100.11 }}
table <echo> {{ 198.51.100.11 }}
http protocol web {{
	return error
	http {{ headerlen 1024 }}
}}
relay www {{
	listen on 192.0.2.1 port 8080
	protocol web
	forward to <app> port 8000 check tcp
}}
relay quiet {{
	listen on 192.0.2.1 port 7007
	session timeout 2
	forward to <echo> port 7 check tcp
}}
relay quietweb {{
	listen on 192.0.2.1 port 8081
	protocol web
	session timeout 2
	forward to <app> port 8000 check tcp
}}
"""


def fault_lab(lab):
    farm = Farm(lab, backends=1, sources=12)
    b1 = farm.backends[0]
    for script in (FAULTY_BACKEND, ECHO_SERVER):
        p = lab.spawn(PYTHON, "-c", script, farm.addr[b1], ns=b1, stdout=subprocess.PIPE,
                      text=True)
        assert p.stdout.readline().strip() == "ready"
    d = farm.daemon(FAULT_CONFIG)
    d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
               what="the backends up")
    return farm, d


def lines_of(d, src: str) -> list[str]:
    """The log lines of the sessions from client address src."""
    return [ln for ln in d.read_log().splitlines() if f", {src}:" in ln]


def test_a_client_that_never_sends_is_closed_at_the_session_timeout():
    with Lab("rf") as lab:
        farm, d = fault_lab(lab)
        silent = {}
        for src, port in (("192.0.2.3", 7007), ("192.0.2.4", 8081)):
            silent[src] = lab.spawn(*in_netns(farm.client, PYTHON, "-c", SILENT_CLIENT, src,
                                              VIP, str(port), "30"),
                                    stdout=subprocess.PIPE, text=True)
        for p in silent.values():
            assert "port" in json.loads(p.stdout.readline())
        # a session that talks every 0.5 s outlives the 2 s timeout, on the same relay
        chatty = subprocess.run(in_netns(farm.client, PYTHON, "-c", CHATTY_CLIENT, "192.0.2.5",
                                         VIP, "7007", "12"),
                                capture_output=True, text=True, timeout=60)
        assert chatty.stdout.strip() == "12", (chatty.stdout, chatty.stderr)
        for src, p in silent.items():
            end = json.loads(p.stdout.readline())["end"]
            assert end in ("eof", "reset"), (src, end)    # not still open after 30 s
        for src in silent:
            d.wait_for(lambda src=src: lines_of(d, src), what=f"{src} logged")
            lines = lines_of(d, src)
            assert len(lines) == 1 and "session timeout" in lines[0], lines
        assert lines_of(d, "192.0.2.5") == []             # `log connection errors`: no error
        r = farm.requests(VIP, 3, port=8081)
        assert r["failed"] == 0, r
        assert "Traceback" not in d.read_log()


def one_shot(farm, src: str, payload: bytes, port: int = 8080) -> dict:
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", ONE_SHOT, src, VIP, str(port)),
                       input=payload, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def request(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: faults\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode()


# (what, payload, the status line the client gets (None: a close without
# one), what the session's one log line says)
HTTP_FAULTS = [
    ("malformed request line", b"HELLO THERE\r\n\r\n",
     "HTTP/1.0 400 Bad Request", "malformed request line (400 Bad Request)"),
    ("header beyond headerlen", request("/", "X-Big: " + "b" * 2000),
     "HTTP/1.0 413 Payload Too Large", "request headers too large (413 Payload Too Large)"),
    ("1 MB request line", request("/" + "a" * (1 << 20)),
     "HTTP/1.0 413 Payload Too Large", "request headers too large (413 Payload Too Large)"),
    ("invalid chunking", b"POST /upload HTTP/1.1\r\nHost: faults\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n",
     "HTTP/1.0 400 Bad Request", "invalid chunk size (400 Bad Request)"),
    ("backend answers garbage", request("/garbage"),
     "HTTP/1.0 502 Bad Gateway", "malformed status line (502 Bad Gateway)"),
    ("backend sends junk and closes", request("/junk-close"),
     "HTTP/1.0 502 Bad Gateway", "server closed in the middle of a response (502 Bad Gateway)"),
    ("backend head never ends", request("/endless"),
     "HTTP/1.0 502 Bad Gateway", "response headers too large (502 Bad Gateway)"),
    ("backend closes mid-response", request("/cut"),
     "HTTP/1.1 200 OK", "server closed in the middle of a response (502 Bad Gateway)"),
]


def test_http_faults_get_relayds_answer_one_log_line_and_spare_other_sessions():
    with Lab("rf") as lab:
        farm, d = fault_lab(lab)
        pids = d.role_pids("relay")
        good = lab.spawn(*in_netns(farm.client, PYTHON, "-c", KEEPALIVE_CLIENT, VIP, "8080"),
                         stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)

        def good_request(i: int) -> dict:
            good.stdin.write(f"/good/{i}\n")
            good.stdin.flush()
            return json.loads(good.stdout.readline())

        assert good_request(0) == {"status": "HTTP/1.1 200 OK", "body": "ok /good/0\n"}
        for i, (what, payload, status, logged) in enumerate(HTTP_FAULTS):
            src = f"192.0.2.{3 + i}"
            got = one_shot(farm, src, payload)
            assert got["status"] == status, (what, got)
            assert got["end"] in ("eof", "reset"), (what, got)
            if status.startswith("HTTP/1.0"):
                # relayd's error page: its reason, its details, its close
                assert "Connection: close" in got["head"], (what, got["head"])
                reason = status.split(" ", 2)[2]
                assert f"<title>{status.split()[1]} {reason}</title>" in got["body"], what
                assert logged.split(" (")[0] in got["body"], (what, got["body"])
            else:
                assert len(got["body"]) == 10, (what, got)    # cut short, then closed
            d.wait_for(lambda src=src: lines_of(d, src), what=f"{what} logged")
            lines = lines_of(d, src)
            assert len(lines) == 1 and logged in lines[0], (what, lines)
            # the keep-alive session through the same relay serves on
            assert good_request(i + 1) == {"status": "HTTP/1.1 200 OK",
                                           "body": f"ok /good/{i + 1}\n"}, what
        assert lines_of(d, "192.0.2.2") == []
        assert "Traceback" not in d.read_log()
        assert d.role_pids("relay") == pids                # no relay process died


# --- TLS ------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from tls_certs import DAY, cert, install, key_pem, pem  # noqa: E402

# argv: address and port:cert:key triples: a TLS server per triple, each
# answering HTTP with "tls PORT"
TLS_BACKEND = r"""
import socket, ssl, sys, threading
def serve(ctx, c, port):
    try:
        with ctx.wrap_socket(c, server_side=True) as t:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = t.recv(4096)
                if not d:
                    return
                buf += d
            body = b"tls %d\n" % port
            t.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                      % len(body) + body)
    except (OSError, ssl.SSLError):
        pass
def listen(port, certfile, keyfile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(ctx, c, port), daemon=True).start()
for spec in sys.argv[2:]:
    port, certfile, keyfile = spec.split(":")
    threading.Thread(target=listen, args=(int(port), certfile, keyfile), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

TLS_CONFIG = """
socket "{socket}"
interval 1
timeout 500
log connection errors
table <good> {{ 198.51.100.11 }}
table <otherca> {{ 198.51.100.11 }}
table <expired> {{ 198.51.100.11 }}
table <othername> {{ 198.51.100.11 }}
table <plain> {{ 198.51.100.11 }}
http protocol verified {{
	return error
	tls ca file "{tmp}/ca.pem"
}}
tcp protocol verifiedtcp {{
	tls ca file "{tmp}/ca.pem"
}}
http protocol only13 {{
	tls keypair front.example
	tls no tlsv1.2
}}
relay good {{
	listen on 192.0.2.1 port 9441
	protocol verified
	forward with tls to <good> port 8441 check tcp
}}
relay otherca {{
	listen on 192.0.2.1 port 9442
	protocol verified
	forward with tls to <otherca> port 8442 check tcp
}}
relay expired {{
	listen on 192.0.2.1 port 9443
	protocol verified
	forward with tls to <expired> port 8443 check tcp
}}
relay othername {{
	listen on 192.0.2.1 port 9444
	protocol verified
	forward with tls to <othername> port 8444 check tcp
}}
relay othercatcp {{
	listen on 192.0.2.1 port 9445
	protocol verifiedtcp
	forward with tls to <otherca> port 8442 check tcp
}}
relay front {{
	listen on 192.0.2.1 port 9450 tls
	protocol only13
	forward to <plain> port 80 check tcp
}}
"""


def test_tls_faults_fail_the_session_cleanly(tmp_path, monkeypatch):
    ca, ca_key = cert("Relay Test CA", ca=True)
    other, other_key = cert("Another CA", ca=True)
    backends = {          # port: (certificate, key) the backend serves
        8441: cert("good.example", ["good.example"], issuer=ca, issuer_key=ca_key),
        8442: cert("good.example", ["good.example"], issuer=other, issuer_key=other_key),
        8443: cert("good.example", ["good.example"], issuer=ca, issuer_key=ca_key,
                   before=-10 * DAY, after=-DAY),
        8444: cert("other.example", ["other.example"], issuer=ca, issuer_key=ca_key),
    }
    ssldir = tmp_path / "ssl"
    ssldir.mkdir(mode=0o700)
    install(str(ssldir), "front.example", *cert("front.example", ["front.example"]))
    monkeypatch.setenv("HOSTSTATED_SSL_DIR", str(ssldir))
    with Lab("rf") as lab:
        farm = Farm(lab, backends=1, sources=8)
        b1 = farm.backends[0]
        (lab.tmp / "ca.pem").write_bytes(pem(ca))
        specs = []
        for port, (c, k) in backends.items():
            lab.write(f"{port}.crt", pem(c).decode())
            lab.write(f"{port}.key", key_pem(k).decode())
            specs.append(f"{port}:{lab.tmp}/{port}.crt:{lab.tmp}/{port}.key")
        p = lab.spawn(PYTHON, "-c", TLS_BACKEND, farm.addr[b1], *specs, ns=b1,
                      stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        d = farm.daemon(TLS_CONFIG)
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="the backends up")

        # verified against the `ca file`: served
        got = one_shot(farm, "192.0.2.3", request("/"), port=9441)
        assert got["status"] == "HTTP/1.1 200 OK" and got["body"] == "tls 8441\n", got
        # relayd checks the chain, never the name (relay.c: "relayd can't
        # verify the name of certs"): a name the table does not give passes
        got = one_shot(farm, "192.0.2.4", request("/"), port=9444)
        assert got["status"] == "HTTP/1.1 200 OK" and got["body"] == "tls 8444\n", got
        # another CA's, or expired: the session fails, relayd's 502, one line
        for src, port, why in (("192.0.2.5", 9442, "certificate verify failed"),
                               ("192.0.2.6", 9443, "certificate has expired")):
            got = one_shot(farm, src, request("/"), port=port)
            assert got["status"] == "HTTP/1.0 502 Bad Gateway", (port, got)
            d.wait_for(lambda src=src: lines_of(d, src), what=f"{src} logged")
            lines = lines_of(d, src)
            assert len(lines) == 1 and why in lines[0], (port, lines)
        # a TCP relay: a close, nothing relayed, one line
        got = one_shot(farm, "192.0.2.7", b"hello\n", port=9445)
        assert got["head"] == "" and got["end"] in ("eof", "reset"), got
        d.wait_for(lambda: lines_of(d, "192.0.2.7"), what="the TCP session logged")
        lines = lines_of(d, "192.0.2.7")
        assert len(lines) == 1 and "certificate verify failed" in lines[0], lines

        # the listener takes TLSv1.3 only: a TLSv1.2 client is refused in the
        # handshake, a TLSv1.3 one served
        old = subprocess.run(in_netns(farm.client, "curl", "-sk", "--tlsv1.2", "--tls-max", "1.2",
                                      "--max-time", "10", f"https://{VIP}:9450/"),
                             capture_output=True, text=True, timeout=30)
        assert old.returncode == 35, (old.returncode, old.stderr)   # CURLE_SSL_CONNECT_ERROR
        new = subprocess.run(in_netns(farm.client, "curl", "-sk", "--tlsv1.3", "--max-time", "10",
                                      f"https://{VIP}:9450/"),
                             capture_output=True, text=True, timeout=30)
        assert new.returncode == 0 and new.stdout.strip() == "b1", (new.returncode, new.stderr)
        assert "Traceback" not in d.read_log()


def test_an_expired_keypair_fails_hoststated_n_with_its_place(tmp_path):
    ssldir = tmp_path / "ssl"
    install(str(ssldir), "old.example", *cert("old.example", before=-10 * DAY, after=-DAY))
    conf = tmp_path / "hoststated.conf"
    conf.write_text("http protocol secure {\n\ttls keypair old.example\n}\n"
                    "relay www {\n\tlisten on 192.0.2.1 port 8443 tls\n\tprotocol secure\n"
                    "\tforward to 198.51.100.11 port 80\n}\n")
    r = subprocess.run([PYTHON, "-m", "hoststated", "-n", "-f", str(conf)],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                       env={**os.environ, "PYTHONPATH": str(ROOT),
                            "HOSTSTATED_SSL_DIR": str(ssldir)})
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert re.search(rf"^{re.escape(str(conf))}:2:6: relay www: keypair old.example: "
                     rf"{re.escape(str(ssldir))}/old.example.crt: the certificate expired on ",
                     r.stderr, re.M), r.stderr


# --- a backend marked down while traffic flows --------------------------------------

# a backend answering its name, and /health with 200 while its flag file exists
HEALTH_BACKEND = r"""
import http.server, os, socketserver, sys
name, flag = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = 200 if self.path != "/health" or os.path.exists(flag) else 503
        body = (name + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/health":          # a check reads to the close
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_HEAD = do_GET                        # hce's http check asks with HEAD
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S((sys.argv[3], 8000), H).serve_forever()
"""

DOWN_CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <web> {{ 198.51.100.11 198.51.100.12 198.51.100.13 }}
relay www {{
	listen on 192.0.2.1 port 8080
	forward to <web> port 8000 mode roundrobin check http "/health" code 200
}}
"""


def test_a_backend_marked_down_gets_no_new_session_and_keeps_its_own():
    with Lab("rf") as lab:
        farm = Farm(lab, backends=3, sources=0)
        for b in farm.backends:
            lab.write(f"{farm.names[b]}.up", "")
            lab.spawn(PYTHON, "-c", HEALTH_BACKEND, farm.names[b],
                      str(lab.tmp / f"{farm.names[b]}.up"), farm.addr[b], ns=b)
        d = farm.daemon(DOWN_CONFIG)
        d.wait_statuses({farm.addr[b]: "up" for b in farm.backends}, 30)
        # sessions held open, one keep-alive connection each, spread over the backends
        held = [lab.spawn(*in_netns(farm.client, PYTHON, "-c", KEEPALIVE_CLIENT, VIP, "8080"),
                          stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
                for _ in range(9)]

        def ask(p) -> str:
            p.stdin.write("/\n")
            p.stdin.flush()
            return json.loads(p.stdout.readline()).get("body", "closed").strip()

        where = [ask(p) for p in held]
        before = farm.requests(VIP, 30, port=8080)
        assert before["failed"] == 0 and set(before["counts"]) == {"b1", "b2", "b3"}, before
        victim = max(set(where), key=where.count)   # the backend holding the most of them
        traffic = farm.traffic(VIP, 6.0, port=8080)
        time.sleep(1.0)
        os.unlink(lab.tmp / f"{victim}.up")         # its checks fail; it serves on
        addr = next(farm.addr[b] for b in farm.backends if farm.names[b] == victim)
        d.wait_statuses({addr: "down"}, 30)
        during = farm.finish(traffic)
        assert during["failed"] == 0, during["errors"]
        after = farm.requests(VIP, 30, port=8080)
        print(f"new sessions per backend: before {before['counts']}, after {after['counts']}; "
              f"held sessions {where}")
        assert after["failed"] == 0 and victim not in after["counts"], after
        assert sum(after["counts"].values()) == 30
        # the sessions it had go on, on the same connections, to the same backends
        for _ in range(3):
            assert [ask(p) for p in held] == where
