"""A `dns protocol` relay in the daemon: real DNS clients (dnspython) in the
client namespace, Debian's dnsmasq in two backend namespaces, each giving
its own answer for www.example.test.

- queries over UDP to the relay get answers from both backends, each with
  the client's own query id;
- a backend hce marks down gets no query after: every answer is the other's;
- `show relays` counts the queries.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "dnsmasq"), reason="needs root, ip, dnsmasq")]

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <dns> {{ 198.51.100.11 198.51.100.12 }}
dns protocol dnsp
relay resolver {{
	listen on 192.0.2.1 port 53
	protocol dnsp
	forward to <dns> port 53 check tcp
}}
"""

QUERIES = r"""
import json, sys
import dns.message, dns.query
out = []
for i in range(int(sys.argv[1])):
    q = dns.message.make_query("www.example.test", "A")
    r = dns.query.udp(q, "192.0.2.1", port=53, timeout=3)
    out.append({"same_id": r.id == q.id, "a": [str(x) for rr in r.answer for x in rr]})
print(json.dumps(out))
"""


def dnsmasq(lab, ns: str, address: str, answer: str):
    conf = lab.write(f"dnsmasq-{ns}.conf", "")
    return lab.spawn("dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--port=53",
                     f"--listen-address={address}", "--bind-interfaces", "--no-resolv",
                     "--no-hosts", "--user=root", f"--pid-file={lab.tmp}/dnsmasq-{ns}.pid",
                     "--local=/example.test/", f"--host-record=www.example.test,{answer}",
                     ns=ns)


def ask(farm, n: int) -> list[dict]:
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", QUERIES, str(n)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_dns_relay_spreads_queries_and_skips_a_down_backend():
    with Lab("rd") as lab:
        farm = Farm(lab, backends=2, sources=0)
        b1, b2 = farm.backends
        servers = {b1: dnsmasq(lab, b1, farm.addr[b1], "192.0.2.101"),
                   b2: dnsmasq(lab, b2, farm.addr[b2], "192.0.2.102")}
        d = farm.daemon(CONFIG)
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="both dnsmasq up")
        out = ask(farm, 12)
        assert all(o["same_id"] for o in out)
        assert {a for o in out for a in o["a"]} == {"192.0.2.101", "192.0.2.102"}, out

        lab.stop(servers[b1])
        d.wait_for(lambda: any(h["name"] == farm.addr[b1] and h["status"] == "down"
                               for h in d.json("show hosts")["hosts"]), what="b1 down")
        out = ask(farm, 8)
        assert all(o["a"] == ["192.0.2.102"] and o["same_id"] for o in out), out
        d.wait_for(lambda: d.json("show relays")["relays"][0]["total"] >= 20,
                   what="the queries counted")
