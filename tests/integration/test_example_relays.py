"""etc/relays.conf starts and does what its comments say, as shipped but for
its control socket (into the lab): in the director of tests/lab.Farm, with
real web servers on port 8080 of the three backends, a TCP echo service on
port 5432 of b1 and dnsmasq on port 53 of b2 and b3.

- www: requests reach <web> (b1, b2) with X-Forwarded-For and
  X-Forwarded-Port added, the answer carries X-Relayed-By, and a Host of
  api.* goes to <api> (b3);
- db: bytes go to b1 and come back;
- dns: queries get an answer from <ns>, with the client's query id.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable
from test_examples import shipped
from test_relay_dns_daemon import dnsmasq
from test_relay_http_live import ECHO_HEADERS

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "dnsmasq"), reason="needs root, ip, dnsmasq")]

ECHO_5432 = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5432)); s.listen(8); print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        while d := c.recv(65536):
            c.sendall(d)
    except OSError:
        pass                    # a check that resets: the next one
    c.close()
"""

CLIENT = r"""
import http.client, json, socket
import dns.message, dns.query
out = {}
for host in ("www.example", "api.example"):
    c = http.client.HTTPConnection("192.0.2.1", 80, timeout=10)
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    out[host] = {"relayed_by": r.getheader("X-Relayed-By"), "body": r.read().decode()}
s = socket.create_connection(("192.0.2.1", 5432), timeout=10)
s.sendall(b"ping"); out["db"] = s.recv(10).decode(); s.close()
q = dns.message.make_query("www.example.test", "A")
r = dns.query.udp(q, "192.0.2.1", port=53, timeout=5)
out["dns"] = {"same_id": r.id == q.id, "a": [str(x) for rr in r.answer for x in rr]}
print(json.dumps(out))
"""


def test_the_relays_example():
    with Lab("er") as lab:
        farm = Farm(lab, backends=3, sources=0)
        b1, b2, b3 = farm.backends
        for b in farm.backends:
            # each answers with the request's headers, and its own name first
            p = lab.spawn(PYTHON, "-c", ECHO_HEADERS, farm.addr[b], "8080", farm.names[b],
                          ns=b, stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
        p = lab.spawn(PYTHON, "-c", ECHO_5432, farm.addr[b1], ns=b1,
                      stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        for b in (b2, b3):
            dnsmasq(lab, b, farm.addr[b], "192.0.2.153")
        d = farm.daemon(shipped("relays.conf", {}).replace(
            "log connection errors", 'log connection errors\nsocket "{socket}"'))
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="every host up", timeout=30)
        r = subprocess.run(in_netns(farm.client, PYTHON, "-c", CLIENT),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        www = dict(ln.split(": ", 1) for ln in out["www.example"]["body"].splitlines())
        assert www["name"] in ("b1", "b2") and www["X-Forwarded-For"] == "192.0.2.2"
        assert www["X-Forwarded-Port"] == "80"
        assert out["www.example"]["relayed_by"] == "hoststated"
        api = dict(ln.split(": ", 1) for ln in out["api.example"]["body"].splitlines())
        assert api["name"] == "b3"
        assert out["db"] == "ping"
        assert out["dns"] == {"same_id": True, "a": ["192.0.2.153"]}
        # told once for the three relay processes, at info (./run setup
        # installs the relay and http extras: no slower fallback here)
        told = [ln for ln in d.read_log().splitlines() if "event loop" in ln]
        assert len(told) == 1 and told[0].endswith(
            "relay 1: event loop uvloop"), told
