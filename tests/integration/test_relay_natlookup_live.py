"""`forward to nat lookup` and `forward to destination` on Linux, end to
end: nftables in the director (the relay's namespace) redirects the
client's connections for 203.0.113.0/24 (and 2001:db8:3::/64), addresses
that are not local, to the relay's port; the relay reads where each was
going from conntrack (SO_ORIGINAL_DST) and connects there. Two original
destinations live on two real backends (203.0.113.10 on b1, 203.0.113.20
on b2), each answering its own name, so the answer says which one the
relay reached.

A connection made to the relay's port directly (not redirected) has no
other original destination: it is closed, with one log line, and the relay
does not connect to itself.
"""

from __future__ import annotations

import subprocess

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "nft"), reason="needs root, ip and nft")]

CONFIG = """
socket "{socket}"
log connection errors
relay natlook {{
	listen on 192.0.2.1 port 8030
	listen on 2001:db8:1::1 port 8030
	forward to nat lookup
}}
relay dest {{
	listen on 192.0.2.1 port 8031
	forward to destination
}}
"""

RULES = """
table ip hsnat {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		ip daddr 203.0.113.0/24 tcp dport 80 redirect to :8030
		ip daddr 203.0.113.0/24 tcp dport 8080 redirect to :8031
	}
}
table ip6 hsnat6 {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		ip6 daddr 2001:db8:3::/64 tcp dport 80 redirect to :8030
	}
}
"""

# GET / from host:port, the body (or "FAIL <error>"), one line
GET = r"""
import http.client, sys
try:
    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
    c.request("GET", "/")
    print(c.getresponse().read().decode().strip())
except Exception as e:
    print("FAIL", type(e).__name__)
"""


def get(farm, host: str, port: int) -> str:
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", GET, host, str(port)),
                       capture_output=True, text=True, timeout=30, check=True)
    return r.stdout.strip()


def test_nat_lookup_and_destination_connect_to_the_original_destination():
    with Lab("nl") as lab:
        farm = Farm(lab, backends=2, sources=0)
        b1, b2 = farm.backends
        # the original destinations: on the backends, routed by the director
        for b, a4 in ((b1, "203.0.113.10"), (b2, "203.0.113.20")):
            lab.addr(b, "e0", f"{a4}/32")
            farm.ns(farm.director, "ip", "route", "add", a4, "via", farm.addr[b])
        lab.addr(b1, "e0", "2001:db8:3::10/128")
        farm.ns(farm.director, "ip", "-6", "route", "add", "2001:db8:3::10",
                "via", farm.addr6[b1])
        for b in (b1, b2):                              # port 8080 for `destination`
            lab.http(b, "::", 8080, body=farm.names[b] + " on 8080")
        rules = lab.write("rules.nft", RULES)
        farm.ns(farm.director, "nft", "-f", str(rules))
        d = farm.daemon(CONFIG)
        # the control socket answers before the relay processes run; a
        # request meanwhile waits in the backlog, against the client's 5 s
        d.wait_for(lambda: all(r["status"] == "active" for r in d.json("show relays")["relays"]),
                   30, what="the relays running")

        # nat lookup: each connection to where it was going, many times over
        # (three relay processes, whichever accepts)
        for _ in range(4):
            assert get(farm, "203.0.113.10", 80) == "b1"
            assert get(farm, "203.0.113.20", 80) == "b2"
        assert get(farm, "2001:db8:3::10", 80) == "b1"          # IPv6: IP6T_SO_ORIGINAL_DST
        # destination: the same lookup (Linux has no divert-to; nftables redirects)
        assert get(farm, "203.0.113.10", 8080) == "b1 on 8080"
        assert get(farm, "203.0.113.20", 8080) == "b2 on 8080"
        # the redirected connections did reach the relays, not the backends directly
        d.wait_for(lambda: {r["name"]: r["total"] for r in d.json("show relays")["relays"]}
                   == {"natlook": 9, "dest": 2}, what="the sessions counted")

        # not redirected: nothing to look up; closed and logged, no loop
        assert get(farm, "192.0.2.1", 8030).startswith("FAIL")
        d.wait_for(lambda: "no original destination" in d.read_log(),
                   what="the failed lookup logged")
        line = next(ln for ln in d.read_log().splitlines() if "no original destination" in ln)
        assert "relay natlook, session" in line and "192.0.2.2:" in line, line
        assert get(farm, "203.0.113.20", 80) == "b2"            # and the relay serves on
        assert "Traceback" not in d.read_log()
