"""HTTP relays end to end: an `http protocol` relay in the director, real
clients (curl, Python's http.client) and a backend that echoes the request
headers it got.

- relayd's `match request header append "X-Forwarded-For" value
  "$REMOTE_ADDR"` and `set ... "$SERVER_ADDR:$SERVER_PORT"` reach the
  backend with the macros expanded, on every request of a keep-alive
  connection;
- a response header rule reaches the client;
- a malformed request gets relayd's error page (`return error`) and a
  close, and the relay goes on serving.
"""

from __future__ import annotations

import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "curl"), reason="needs root, ip and curl")]

VIP = Farm.director_client_addr

ECHO_HEADERS = r"""
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        name = f"name: {sys.argv[3]}\n" if len(sys.argv) > 3 else ""
        body = (name + "".join(f"{k}: {v}\n" for k, v in self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
# argv: address [port [name]]: the name answers first, as "name: NAME"
s = S((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8000), H)
print("ready", flush=True)
s.serve_forever()
"""

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <app> {{ 198.51.100.11 }}
http protocol web {{
	return error
	match request header append "X-Forwarded-For" value "$REMOTE_ADDR"
	match request header set "X-Relay" value "$SERVER_ADDR:$SERVER_PORT"
	match response header set "X-Served-By" value "hoststated"
}}
relay www {{
	listen on 192.0.2.1 port 8080
	protocol web
	forward to <app> port 8000 check tcp
}}
"""

KEEPALIVE = r"""
import http.client, json
c = http.client.HTTPConnection("192.0.2.1", 8080, timeout=10)
out = []
for i in range(3):
    c.request("GET", f"/{i}", headers={"X-Forwarded-For": "203.0.113.9"})
    r = c.getresponse()
    out.append({"status": r.status, "served": r.getheader("X-Served-By"),
                "body": r.read().decode()})
print(json.dumps(out))
"""


def test_header_rules_keep_alive_and_a_bad_request():
    import json
    with Lab("rh") as lab:
        farm = Farm(lab, backends=1, sources=0)
        b1 = farm.backends[0]
        echo = lab.spawn(PYTHON, "-c", ECHO_HEADERS, farm.addr[b1], ns=b1,
                         stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "ready"
        d = farm.daemon(CONFIG)
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="the backend up")
        r = subprocess.run(in_netns(farm.client, PYTHON, "-c", KEEPALIVE),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        answers = json.loads(r.stdout)
        assert [a["status"] for a in answers] == [200, 200, 200]
        for a in answers:
            lines = [ln.split(": ", 1) for ln in a["body"].splitlines()]
            headers = dict(lines)
            # appended to the client's own value, as relayd's append does (one
            # line "a, b" or a second line: the same list to HTTP, RFC 9110 5.3)
            xff = ", ".join(v for k, v in lines if k.lower() == "x-forwarded-for")
            assert xff == "203.0.113.9, 192.0.2.2", a["body"]
            assert headers["X-Relay"] == "192.0.2.1:8080", headers
            assert a["served"] == "hoststated"
        # one connection carried the three requests: one session counted
        d.wait_for(lambda: d.json("show relays")["relays"][0]["total"] == 1,
                   what="one session for three requests")

        bad = subprocess.run(in_netns(farm.client, PYTHON, "-c",
                                      "import socket\n"
                                      "s = socket.create_connection(('192.0.2.1', 8080))\n"
                                      "s.sendall(b'GET / HTTP/1.1\\r\\nHost: a\\r\\nHost: b"
                                      "\\r\\n\\r\\n')\n"
                                      "data = b''\n"
                                      "while chunk := s.recv(4096):\n"
                                      "    data += chunk\n"
                                      "print(data.split(b'\\r\\n')[0].decode())\n"),
                             capture_output=True, text=True, timeout=30)
        assert bad.stdout.strip().startswith("HTTP/1.0 400"), (bad.stdout, bad.stderr)
        r = subprocess.run(in_netns(farm.client, "curl", "-s", "--max-time", "10",
                                    f"http://{VIP}:8080/again"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "X-Forwarded-For: 192.0.2.2" in r.stdout, r.stdout


ROUTING = """
socket "{socket}"
interval 1
timeout 500
table <app> {{ 198.51.100.11 }}
table <api> {{ 198.51.100.12 }}
http protocol routed {{
	return error
	pass request header "Host" value "api.example" forward to <api>
	match request path "/v2/*" forward to <api>
}}
relay r {{
	listen on 192.0.2.1 port 8081
	protocol routed
	forward to <app> port 80 check tcp
	forward to <api> port 80 check tcp
}}
"""

ROUTED = r"""
import http.client, json
c = http.client.HTTPConnection("192.0.2.1", 8081, timeout=10)
out = []
for host, path in [("api.example", "/"), ("www.example", "/"), ("api.example", "/x"),
                   ("www.example", "/v2/users"), ("www.example", "/v1")]:
    c.request("GET", path, headers={"Host": host})
    out.append(c.getresponse().read().decode().strip())
print(json.dumps(out))
"""


def test_rules_route_each_request_to_its_table():
    import json
    with Lab("rh") as lab:
        farm = Farm(lab, backends=2, sources=0)
        d = farm.daemon(ROUTING)
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="the backends up")
        r = subprocess.run(in_netns(farm.client, PYTHON, "-c", ROUTED),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # <api> is b2, the relay's own table <app> is b1
        assert json.loads(r.stdout) == ["b2", "b1", "b2", "b2", "b1"]
