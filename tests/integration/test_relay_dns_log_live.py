"""`log connection` on a `dns protocol` relay, through the daemon: one
line per query as relayd logs a session per query (real dnspython client,
Debian's dnsmasq as the backend), in the shape of the TCP relays' lines:
relay, session, client -> backend, how it ended, duration, bytes. A query
whose backend never answers ends as "udp timeout" after the relay's
session timeout. `log connection errors` keeps only those."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "dnsmasq"), reason="needs root, ip, dnsmasq")]

CONFIG = """
socket "{socket}"
interval 1
timeout 500
log connection{errors}
table <dns> {{ 198.51.100.11 }}
table <mute> {{ 198.51.100.12 }}
dns protocol dnsp
relay resolver {{
	listen on 192.0.2.1 port 53
	protocol dnsp
	forward to <dns> port 53 check tcp
}}
relay mute {{
	listen on 192.0.2.1 port 5353
	protocol dnsp
	forward to <mute> port 5300
	session timeout 1
}}
"""

# n queries to port; each: the client's port, whether it got an answer
QUERIES = r"""
import json, socket, sys
import dns.message, dns.query, dns.exception
out = []
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("192.0.2.2", 0))
    s.setblocking(False)     # dnspython waits with select on a socket it is given
    q = dns.message.make_query("www.example.test", "A")
    try:
        dns.query.udp(q, "192.0.2.1", port=int(sys.argv[1]), timeout=2, sock=s)
        out.append([s.getsockname()[1], True])
    except dns.exception.Timeout:
        out.append([s.getsockname()[1], False])
    s.close()
print(json.dumps(out))
"""

LINE = re.compile(r"relay (\S+), session (\d+) \((\d+) active\), 192\.0\.2\.2:(\d+) -> "
                  r"(\S+), ([^,]+), (\d+\.\d+)s, (\d+) in / (\d+) out")


def ask(farm, port: int, n: int) -> list:
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", QUERIES, str(port), str(n)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def start(lab, errors: bool):
    farm = Farm(lab, backends=2, sources=0)
    b1 = farm.backends[0]
    conf = lab.write("dnsmasq.conf", "")
    lab.spawn("dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--port=53",
              f"--listen-address={farm.addr[b1]}", "--bind-interfaces", "--no-resolv",
              "--no-hosts", "--user=root", f"--pid-file={lab.tmp}/dnsmasq.pid",
              "--local=/example.test/", "--host-record=www.example.test,192.0.2.101", ns=b1)
    d = farm.daemon(CONFIG.replace("{errors}", " errors" if errors else ""))
    d.wait_for(lambda: d.statuses().get(farm.addr[b1]) == "up", what="dnsmasq up")
    return farm, d


def lines(d) -> list[tuple]:
    return LINE.findall(d.read_log())


def test_each_query_is_logged_with_how_it_ended():
    with Lab("dl") as lab:
        farm, d = start(lab, errors=False)
        answered = ask(farm, 53, 5)
        assert all(ok for _, ok in answered), answered
        d.wait_for(lambda: len(lines(d)) >= 5, what="5 query lines")
        got = {int(m[3]): m for m in lines(d)}
        for port, _ in answered:
            relay, sid, active, _, backend, what, secs, n_in, n_out = got[port]
            assert (relay, backend, what) == ("resolver", "198.51.100.11:53", "done"), got[port]
            assert int(n_in) > 12 and int(n_out) > int(n_in)    # the answer carries the A record
        assert len(lines(d)) == 5                               # one line per query

        (port, ok), = ask(farm, 5353, 1)                        # nothing answers on .12:5300
        assert not ok
        d.wait_for(lambda: any(m[0] == "mute" for m in lines(d)), what="the timeout logged")
        m = next(m for m in lines(d) if m[0] == "mute")
        assert (int(m[3]), m[4], m[5], m[8]) == (port, "198.51.100.12:5300", "udp timeout", "0")
        assert float(m[6]) >= 1.0                                # the session timeout
        assert "Traceback" not in d.read_log()


def test_log_connection_errors_logs_only_the_failed_queries():
    with Lab("de") as lab:
        farm, d = start(lab, errors=True)
        assert all(ok for _, ok in ask(farm, 53, 3))
        (port, ok), = ask(farm, 5353, 1)
        assert not ok
        d.wait_for(lambda: lines(d), what="the timeout logged")
        assert [(m[0], int(m[3]), m[5]) for m in lines(d)] == [("mute", port, "udp timeout")]
