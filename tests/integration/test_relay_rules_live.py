"""Filter rules end to end: a relay with an `http protocol` of relayd's rules in
the director, curl and Python's http.client as clients, and echo backends that
answer the request head they got (request line and header lines), so each
test checks what the backend received and what the client got.

One daemon for the module (the namespaces are shared: keep the locked run
short); one test per rule kind and action.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "curl"), reason="needs root, ip and curl")]

VIP = "192.0.2.1"

# the request head it got, as its body: "name: N", the request line, the
# header lines as received; response headers for the response rules
ECHO_HEAD = r"""
import http.server, os, socketserver, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        if self.path.startswith("/slow"):
            # a slow backend: held until the test makes the file ?until= names
            flag = self.path.partition("?until=")[2]
            end = time.monotonic() + 60
            while flag and not os.path.exists(flag) and time.monotonic() < end:
                time.sleep(0.05)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        elif "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            while (size := int(self.rfile.readline().split(b";")[0], 16)):
                self.rfile.read(size + 2)
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        body = (f"name: {sys.argv[2]}\n{self.requestline}\n"
                + "".join(f"{k}: {v}\n" for k, v in self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain" if "/img" not in self.path
                         else "image/png")
        self.send_header("X-Backend-Internal", "secret")
        self.send_header("Set-Cookie", "backend=" + sys.argv[2])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
s = S((sys.argv[1], 8000), H)
print("ready", flush=True)
s.serve_forever()
"""

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <app> {{ 198.51.100.11 }}
table <api> {{ 198.51.100.12 }}
table <pool> {{ 198.51.100.11, 198.51.100.12 }}
http protocol rules {{
	return error
	match request header append "X-Forwarded-For" value "$REMOTE_ADDR"
	match request header set "X-Relay" value "$SERVER_ADDR:$SERVER_PORT"
	match request header remove "X-Secret"
	match request header log "User-Agent"
	match request cookie log "sid"
	match request path "/strip/*" tag "strip"
	match request tagged "strip" path strip 1
	match request path set "/old/*" value "/new/page"
	pass request path "/api/*" forward to <api>
	block request quick url "blocked.example/bad/" label "a bad place"
	block request query "debug" value "1" label "no debugging"
	block request method "DELETE"
	block request cookie "banned" value "yes"
	match response header set "Server" value "$SERVER_NAME"
	match response header remove "X-Backend-Internal"
	match response header "Content-Type" value "text/*" tag "text"
	match response tagged "text" header set "Cache-Control" value "no-cache"
	match response cookie set "backend" value "hidden"
}}
relay www {{
	listen on 192.0.2.1 port 8080
	protocol rules
	forward to <app> port 8000 check tcp
	forward to <api> port 8000 check tcp
}}
http protocol sticky {{
	match request cookie hash "sid"
}}
relay sticky {{
	listen on 192.0.2.1 port 8082
	protocol sticky
	forward to <pool> port 8000 mode hash "fixed key" check tcp
}}
http protocol tagging {{
	match request path "/slow*" tag SLOW
}}
relay slowtag {{
	listen on 192.0.2.1 port 8083
	protocol tagging
	forward to <app> port 8000 check tcp
}}
"""


@pytest.fixture(scope="module")
def relay():
    with Lab("rr") as lab:
        farm = Farm(lab, backends=2, sources=0)
        for b in farm.backends:
            echo = lab.spawn(PYTHON, "-c", ECHO_HEAD, farm.addr[b], farm.names[b], ns=b,
                             stdout=subprocess.PIPE, text=True)
            assert echo.stdout.readline().strip() == "ready"
        d = farm.daemon(CONFIG)
        d.wait_for(lambda: [h["status"] for h in d.json("show hosts")["hosts"]].count("up") == 4,
                   what="the backends up")
        yield farm, d, lab


def curl(farm, path: str, *opts: str, port: int = 8080) -> tuple[str, dict, str]:
    """(status line, response headers, body) of one request."""
    r = subprocess.run(in_netns(farm.client, "curl", "-s", "-i", "--max-time", "10", *opts,
                                f"http://{VIP}:{port}{path}"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.returncode, r.stderr)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    status, *lines = head.split("\n")
    return status, dict(x.split(": ", 1) for x in lines), body


def seen(body: str) -> tuple[str, str, list[tuple[str, str]]]:
    """The echo's answer: (backend, request line, header lines)."""
    name, line, *hs = body.strip().split("\n")
    return name.split(": ", 1)[1], line, [tuple(h.split(": ", 1)) for h in hs]


def test_header_append_set_remove(relay):
    farm, _, _ = relay
    status, _, body = curl(farm, "/", "-H", "X-Forwarded-For: 203.0.113.9",
                           "-H", "X-Secret: hush", "-H", "X-Relay: spoofed")
    assert status.startswith("HTTP/1.1 200")
    name, line, hs = seen(body)
    assert (name, line) == ("b1", "GET / HTTP/1.1")
    xff = [v for k, v in hs if k.lower() == "x-forwarded-for"]
    assert ", ".join(xff) == "203.0.113.9, 192.0.2.2"       # appended
    assert [v for k, v in hs if k == "X-Relay"] == ["192.0.2.1:8080"]   # set, once
    assert not any(k.lower() == "x-secret" for k, _ in hs)   # removed


def test_path_strip_by_tag_and_path_set(relay):
    farm, _, _ = relay
    assert seen(curl(farm, "/strip/a/b?q=1")[2])[1] == "GET /a/b?q=1 HTTP/1.1"
    assert seen(curl(farm, "/old/x")[2])[1] == "GET /new/page HTTP/1.1"
    assert seen(curl(farm, "/other/x")[2])[1] == "GET /other/x HTTP/1.1"


def test_forward_to_routes_api_to_its_table(relay):
    farm, _, _ = relay
    assert seen(curl(farm, "/api/users")[2])[0] == "b2"
    assert seen(curl(farm, "/app")[2])[0] == "b1"


@pytest.mark.parametrize("path,opts,label", [
    ("/bad/thing", ("-H", "Host: www.blocked.example"), "a bad place"),   # url, a parent
    ("/x?debug=1", (), "no debugging"),                                   # query
    ("/", ("-X", "DELETE"), ""),                                          # method
    ("/", ("-H", "Cookie: a=1; banned=yes"), ""),                         # cookie
])
def test_block_answers_the_error_page_with_its_label(relay, path, opts, label):
    farm, _, _ = relay
    status, headers, body = curl(farm, path, *opts)
    assert status == "HTTP/1.0 403 Forbidden", (status, body)
    assert headers["Connection"] == "close" and headers["Content-Type"] == "text/html"
    assert f"<div id='l'>{label}</div>" in body and "<h1>Forbidden</h1>" in body


def test_response_rules(relay):
    farm, _, _ = relay
    _, headers, _ = curl(farm, "/page")
    assert headers["Server"] == "hoststated"                # set
    assert "X-Backend-Internal" not in headers               # removed
    assert headers["Cache-Control"] == "no-cache"            # by the response tag
    assert headers["Set-Cookie"] == "backend=hidden"         # cookie set
    _, headers, _ = curl(farm, "/img/a.png")
    assert headers["Content-Type"] == "image/png" and "Cache-Control" not in headers


def test_log_lines_name_the_header_values(relay):
    farm, d, _ = relay
    curl(farm, "/logged", "-A", "rules-test/1.0", "-H", "Cookie: sid=s42")
    d.wait_for(lambda: "GET /logged [User-Agent: rules-test/1.0] [Cookie: sid=s42]"
               in d.read_log(), what="the log line of the request")


KEEPALIVE = r"""
import http.client, json
c = http.client.HTTPConnection("192.0.2.1", 8080, timeout=10)
out = []
for path in ["/strip/a", "/api/b", "/c", "/old/d"]:
    c.request("POST", path, body=b"x" * 3000)
    r = c.getresponse()
    out.append(r.read().decode().split("\n")[:2])
c.close()
print(json.dumps(out))
"""


def test_keep_alive_with_bodies_through_rewriting_rules(relay):
    farm, _, _ = relay
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", KEEPALIVE),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [["name: b1", "POST /a HTTP/1.1"],
                                    ["name: b2", "POST /api/b HTTP/1.1"],
                                    ["name: b1", "POST /c HTTP/1.1"],
                                    ["name: b1", "POST /new/page HTTP/1.1"]]


def test_chunked_and_pipelined_requests_through_rules(relay):
    farm, _, _ = relay
    script = (
        "import socket\n"
        "s = socket.create_connection(('192.0.2.1', 8080), timeout=10)\n"
        "s.sendall(b'POST /strip/x HTTP/1.1\\r\\nHost: h\\r\\nTransfer-Encoding: chunked\\r\\n"
        "\\r\\n3\\r\\nabc\\r\\n0\\r\\n\\r\\n'\n"
        "          b'GET /y HTTP/1.1\\r\\nHost: h\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(65536):\n"
        "    data += chunk\n"
        "print(data.decode())\n")
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", script),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("HTTP/1.1 200") == 2, r.stdout
    assert "POST /x HTTP/1.1" in r.stdout and "GET /y HTTP/1.1" in r.stdout


def test_a_hashed_cookie_keeps_a_client_on_one_backend(relay):
    farm, _, _ = relay
    where = {}
    for sid in range(12):
        got = {seen(curl(farm, "/", "-H", f"Cookie: sid=user{sid}", port=8082)[2])[0]
               for _ in range(3)}
        assert len(got) == 1, (sid, got)           # the same backend every time
        where[sid] = got.pop()
    assert set(where.values()) == {"b1", "b2"}     # and the cookies spread


SLOW_GET = r"""
import socket, sys
s = socket.create_connection(("192.0.2.1", 8083), timeout=60)
s.sendall(b"GET /slow?until=" + sys.argv[1].encode() + b" HTTP/1.1\r\nHost: h\r\n"
          b"Connection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode())
"""


def test_show_sessions_shows_the_tag_of_a_request_in_flight(relay):
    farm, d, lab = relay
    flag = lab.tmp / "slow-go"
    client = lab.spawn(PYTHON, "-c", SLOW_GET, str(flag), ns=farm.client,
                       stdout=subprocess.PIPE, text=True)
    try:
        def tagged():
            return [r for r in d.json("show sessions")["sessions"]
                    if r["relay_name"] == "slowtag" and r["tag"] == "SLOW"]
        rows = d.wait_for(tagged, what="a session tagged SLOW in show sessions")
        assert len(rows) == 1 and rows[0]["status"] == "running"
        text = d.ctl("show", "sessions")
        assert text.returncode == 0, text.stderr
        line = next(i for i, x in enumerate(text.stdout.splitlines())
                    if x.startswith(f"session {rows[0]['relay']}:{rows[0]['id']} "))
        assert text.stdout.splitlines()[line + 1].endswith(", tag SLOW"), text.stdout
    finally:
        flag.touch()                    # the backend answers
    out, _ = client.communicate(timeout=60)
    assert out.startswith("HTTP/1.1 200") and "GET /slow?until=" in out, out
    # no session of that relay is left tagged
    d.wait_for(lambda: not tagged(), what="the tag gone with its request")
