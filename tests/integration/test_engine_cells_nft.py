"""The nftables cells of the capability table (conf/engines.py) that no
other test sent traffic through, here through the real daemon on a parsed
configuration: `mode weighted-roundrobin` with host weights, `sticky-address
timeout` (a client is scheduled afresh once its entry times out) and
`listen on ... interface` under NAT (traffic that comes in on another
interface is not translated). And the two cells that said yes and were
false, now refused by -n.

The other nftables "yes" cells have their traffic in test_nft_traffic.py,
test_nft_sticky.py and test_examples.py; the ipvs ones are in
tests/vm/test_ipvs_vm.py.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from hoststated.kernel.nft import key_name
from hoststated.kernel.service import ServiceKey

from lab import PYTHON, ROOT, Farm, Lab, run, usable, wait_for

VIP_WRR, VIP_STICKY, VIP_IF = "203.0.113.30", "203.0.113.31", "203.0.113.32"

# a Lab.daemon template: {socket} is filled in, hence the doubled braces
CONF = """
interval 1
timeout 500
socket "{socket}"
engine nftables
table <w> {{ 198.51.100.11 weight 3, 198.51.100.12, 198.51.100.13 weight 2 }}
table <t> {{ 198.51.100.11, 198.51.100.12, 198.51.100.13 }}
redirect "wrr" {{
	listen on VIP_WRR port 80
	forward to <w> port 80 mode weighted-roundrobin check tcp
}}
redirect "sticky" {{
	listen on VIP_STICKY port 80
	forward to <t> port 80 mode roundrobin check tcp
	sticky-address timeout 2
}}
redirect "iface" {{
	listen on VIP_IF port 80 interface d0
	forward to <t> port 80 check tcp
}}
""".replace("VIP_WRR", VIP_WRR).replace("VIP_STICKY", VIP_STICKY).replace("VIP_IF", VIP_IF)


def sticky_entries(ns: str, vip: str) -> dict[str, dict]:
    """client address -> its set element ({"val", "timeout", "expires"}),
    over the per-host affinity sets of vip:80."""
    prefix = f"aff_{key_name(ServiceKey(4, 'tcp', vip, 80))}__"
    r = run("nft", "-j", "list", "sets", "inet", ns=ns)
    out = {}
    for o in json.loads(r.stdout)["nftables"]:
        s = o.get("set")
        if s and s["table"] == "hoststated" and s["name"].startswith(prefix):
            got = run("nft", "-j", "list", "set", "inet", "hoststated", s["name"], ns=ns)
            (full,) = [x["set"] for x in json.loads(got.stdout)["nftables"] if "set" in x]
            for e in full.get("elem", []):
                e = e.get("elem", e)
                out[e["val"]] = {**e, "host": s["name"][len(prefix):]}
    return out


@pytest.mark.root
@pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")
def test_nftables_cells_with_traffic():
    with Lab("cells") as lab:
        farm = Farm(lab, backends=3, sources=2)
        b1, b2, b3 = (farm.names[b] for b in farm.backends)
        # a second client network on another interface of the director
        c2 = lab.netns("c2")
        lab.veth(farm.director, "203.0.113.65/28", c2, "203.0.113.66/28", names=("d1", "x0"))
        run("ip", "route", "add", "default", "via", "203.0.113.65", ns=c2)
        d = farm.daemon(CONF)
        d.wait_for(lambda: (lambda hs: len(hs) >= 6 and all(h["status"] == "up" for h in hs))(
            d.json("show hosts")["hosts"]), 30, what="every host up")
        wait_for(lambda: farm.requests(VIP_WRR, 6)["counts"] == {b1: 3, b2: 1, b3: 2} and
                 len(farm.requests(VIP_IF, 3)["counts"]) == 3, 20, what="the rules written")

        # mode weighted-roundrobin, weights 3, 1 and 2: exact shares, interleaved
        r = farm.requests(VIP_WRR, 120)
        assert r["failed"] == 0 and r["counts"] == {b1: 60, b2: 20, b3: 40}, r
        assert set(r["seq"][:6]) == {b1, b2, b3}, r["seq"][:6]

        # listen on ... interface d0: the client (on d0) is translated, a
        # client on d1 is not, though it reaches a redirect with no interface
        r = farm.requests(VIP_IF, 30)
        assert r["failed"] == 0 and r["counts"] == {b1: 10, b2: 10, b3: 10}, r
        r = farm.requests(VIP_WRR, 6, ns=c2)
        assert r["failed"] == 0 and r["counts"] == {b1: 3, b2: 1, b3: 2}, r
        r = farm.requests(VIP_IF, 3, ns=c2, timeout=1.0)
        assert r["failed"] == 3, r

        # sticky-address timeout 2: a client keeps its host while it comes
        # back within 2 s of its last new connection; once its entry times
        # out it is scheduled afresh (round robin: the next host)
        client = "192.0.2.3"
        r = farm.requests(VIP_STICKY, 10, sources=[client])
        assert r["failed"] == 0 and len(r["counts"]) == 1, r
        (first,) = r["counts"]
        entry = sticky_entries(farm.director, VIP_STICKY)[client]
        assert entry["timeout"] == 2, entry
        wait_for(lambda: client not in sticky_entries(farm.director, VIP_STICKY), 30,
                 what=f"{client}'s sticky entry timed out")
        r = farm.requests(VIP_STICKY, 10, sources=[client])
        assert r["failed"] == 0 and len(r["counts"]) == 1, r
        assert r["counts"] != {first: 10}, (first, r)
        assert d.stop() == 0


def check(tmp_path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "c.conf"
    path.write_text(text)
    return subprocess.run([PYTHON, "-m", "hoststated", "-n", "--no-lookup", "-f", str(path)],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=60)


def test_nftables_refuses_weights_it_would_ignore(tmp_path):
    # destination-hash is hashed unweighted under nftables (kernel/nft.py)
    r = check(tmp_path, "engine nftables\ntable <t> { 192.0.2.1 weight 3, 192.0.2.2 }\n"
                        "redirect r {\n\tlisten on 192.0.2.9 port 80\n"
                        "\tforward to <t> port 80 mode destination-hash check tcp\n}\n")
    assert r.returncode == 1, r
    assert r.stderr.strip() == (
        f"{tmp_path}/c.conf:2:13: redirect r: host weight with a hash mode or route to "
        "needs engine ipvs: nftables hashes unweighted (host 192.0.2.1 of table <t>)"), r.stderr


def test_nftables_refuses_roundrobin_with_route_to(tmp_path):
    # its direct routing places each packet alone, before conntrack: only an
    # address hash keeps a connection on one host (mode roundrobin is the default)
    r = check(tmp_path, "engine nftables\ntable <t> { 192.0.2.1, 192.0.2.2 }\n"
                        "redirect r {\n\tlisten on 192.0.2.9 port 80 interface lo\n"
                        "\troute to <t> port 80 check tcp interface lo\n}\n")
    assert r.returncode == 1, r
    assert r.stderr.strip() == (
        f"{tmp_path}/c.conf:5:2: redirect r: mode roundrobin with route to needs engine "
        "ipvs or pf: nftables direct routing sees each packet alone (no connection "
        "tracking at ingress): write mode source-hash or destination-hash"), r.stderr
    ok = check(tmp_path, "engine nftables\ntable <t> { 192.0.2.1, 192.0.2.2 }\n"
                         "redirect r {\n\tlisten on 192.0.2.9 port 80 interface lo\n"
                         "\troute to <t> port 80 mode source-hash check tcp interface lo\n}\n")
    assert ok.returncode == 0, ok.stderr
