"""WebSocket through an HTTP relay, end to end (relayd.conf(5) `http {
websockets }`): a real RFC 6455 backend and client (the handshake and the
frames written here with the standard library) through the daemon in the
director.

- with `websockets` the upgrade passes (the client checks the backend's
  Sec-WebSocket-Accept), frames go both ways (the backend speaks first, the
  client's text comes back changed), a 4 MiB binary message arrives intact
  both ways (sha256 at each end) and the close handshake completes;
- without it the upgrade is refused as relayd's relay_http.c does: 403
  "Websocket Forbidden" with relayd's page under `return error`, a close
  without an answer otherwise; the backend never sees the request.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip"), reason="needs root and ip")]

VIP = "192.0.2.1"

# The frame codec both ends share: RFC 6455 5.2 (FIN, opcode, mask bit,
# 7/16/64-bit length); a client masks what it sends, a server does not.
FRAMES = r"""
import hashlib, os, struct
def send(sock, opcode, payload, mask):
    head = bytes([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
            (int.from_bytes(payload, "big") ^ int.from_bytes(key * (n // 4) + key[:n % 4], "big")
             ).to_bytes(n, "big")
    sock.sendall(head + payload)
def exactly(sock, n, buf):
    while len(buf) < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise EOFError("closed with %d of %d bytes" % (len(buf), n))
        buf += chunk
    out = bytes(buf[:n]); del buf[:n]; return out
def recv(sock, buf):
    b0, b1 = exactly(sock, 2, buf)
    n = b1 & 0x7f
    if n == 126:
        n = struct.unpack("!H", exactly(sock, 2, buf))[0]
    elif n == 127:
        n = struct.unpack("!Q", exactly(sock, 8, buf))[0]
    key = exactly(sock, 4, buf) if b1 & 0x80 else None
    payload = exactly(sock, n, buf)
    if key:
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(
            key * (n // 4) + key[:n % 4], "big")).to_bytes(n, "big") if n else b""
    return b0 & 0x0f, payload, bool(key)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def accept_key(key):
    import base64
    return base64.b64encode(hashlib.sha1(key + GUID).digest())
"""

# argv: address log. Answers an upgrade (the path goes to the log, one line
# a request), says "hello", then for each message: text -> "echo:" + text,
# binary -> the same bytes and then their sha256 as text; close -> close.
BACKEND = FRAMES + r"""
import socket, sys, threading
addr, log = sys.argv[1], sys.argv[2]
def serve(c):
    buf = bytearray()
    try:
        while b"\r\n\r\n" not in buf:
            chunk = c.recv(65536)
            if not chunk:
                return                      # a health check's connect
            buf += chunk
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf = bytearray(rest)
        lines = head.split(b"\r\n")
        with open(log, "a") as f:
            f.write(lines[0].decode() + "\n")
        hs = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " +
                  accept_key(hs[b"sec-websocket-key"]) + b"\r\n\r\n")
        send(c, 1, b"hello", False)
        while True:
            op, payload, masked = recv(c, buf)
            if not masked:
                send(c, 1, b"error: an unmasked client frame", False)
            if op == 1:
                send(c, 1, b"echo:" + payload, False)
            elif op == 2:
                send(c, 2, payload, False)
                send(c, 1, hashlib.sha256(payload).hexdigest().encode(), False)
            elif op == 8:
                send(c, 8, payload, False)
                return
    except (OSError, EOFError):
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 8000))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# argv: port path. The handshake, then the exchange; prints one JSON line
CLIENT = FRAMES + r"""
import base64, json, socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("192.0.2.1", port), timeout=30)
key = base64.b64encode(os.urandom(16))
s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n"
          b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
          b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
buf = bytearray()
while b"\r\n\r\n" not in buf:
    chunk = s.recv(65536)
    if not chunk:
        print(json.dumps({"closed": True, "answer": buf.decode("latin-1")})); sys.exit(0)
    buf += chunk
head, _, rest = bytes(buf).partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.1 101"):
    while chunk := s.recv(65536):
        rest += chunk
    print(json.dumps({"closed": False, "answer": (head + b"\r\n\r\n" + rest).decode("latin-1")}))
    sys.exit(0)
buf = bytearray(rest)
got = {"accept_ok": b"Sec-WebSocket-Accept: " + accept_key(key) in head.split(b"\r\n")}
got["first"] = recv(s, buf)[1].decode()
send(s, 1, b"ping", True)
got["echo"] = recv(s, buf)[1].decode()
big = os.urandom(4 << 20)
send(s, 2, big, True)
op, back, masked = recv(s, buf)
got["big_back"] = op == 2 and back == big and not masked
got["big_sha_at_backend"] = recv(s, buf)[1].decode() == hashlib.sha256(big).hexdigest()
send(s, 8, b"\x03\xe8bye", True)
op, payload, _ = recv(s, buf)
got["close"] = [op, payload[2:].decode()]
print(json.dumps(got))
"""

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <ws> {{ 198.51.100.11 }}
http protocol ws {{
	http {{ websockets }}
}}
relay ws {{
	listen on 192.0.2.1 port 8080
	protocol ws
	forward to <ws> port 8000 check tcp
}}
http protocol nows {{
	return error
}}
relay nows {{
	listen on 192.0.2.1 port 8081
	protocol nows
	forward to <ws> port 8000 check tcp
}}
http protocol plain {{
}}
relay plain {{
	listen on 192.0.2.1 port 8082
	protocol plain
	forward to <ws> port 8000 check tcp
}}
"""


@pytest.fixture(scope="module")
def relay():
    with Lab("ws") as lab:
        farm = Farm(lab, backends=1, sources=0)
        (b,) = farm.backends
        log = lab.tmp / "ws-requests.log"
        log.touch()
        backend = lab.spawn(PYTHON, "-c", BACKEND, farm.addr[b], str(log), ns=b,
                            stdout=subprocess.PIPE, text=True)
        assert backend.stdout.readline().strip() == "ready"
        d = farm.daemon(CONFIG)
        d.wait_for(lambda: [h["status"] for h in d.json("show hosts")["hosts"]] == ["up"],
                   what="the backend up (one table for the three relays)")
        yield farm, d, log


def client(farm, port: int, path: str) -> dict:
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", CLIENT, str(port), path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_upgrade_passes_and_frames_go_both_ways_intact(relay):
    farm, _, log = relay
    got = client(farm, 8080, "/chat")
    assert got == {"accept_ok": True, "first": "hello", "echo": "echo:ping",
                   "big_back": True, "big_sha_at_backend": True, "close": [8, "bye"]}
    assert "GET /chat HTTP/1.1" in log.read_text().splitlines()


def test_without_websockets_the_upgrade_gets_relayds_403(relay):
    farm, d, log = relay
    got = client(farm, 8081, "/refused-403")
    answer = got["answer"]
    assert answer.startswith("HTTP/1.0 403 Forbidden\r\n"), answer
    assert "<div id='m'>Websocket Forbidden</div>" in answer and "Connection: close" in answer
    assert not any("/refused" in x for x in log.read_text().splitlines())
    # the relay goes on: the allowed one still upgrades
    assert client(farm, 8080, "/again")["echo"] == "echo:ping"


def test_without_return_error_the_upgrade_is_closed_unanswered(relay):
    farm, _, log = relay
    got = client(farm, 8082, "/refused-close")
    assert got == {"closed": True, "answer": ""}
    assert not any("/refused" in x for x in log.read_text().splitlines())
