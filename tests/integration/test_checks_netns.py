"""Checks across network namespaces (root): ICMP and ICMPv6 echo on raw
sockets opened before a privilege drop, timeouts against a host that drops
packets (nft drop rule in the test's namespace), TCP and HTTP over veth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from lab import Lab, run

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


RULES = """
table inet hschk {
  chain in { type filter hook input priority 0;
    ip daddr 198.51.100.3 drop
    ip6 daddr 2001:db8:7::3 drop
    tcp dport 81 drop
  }
}
"""


@pytest.fixture(scope="module")
def lab():
    with Lab("chk") as lab:
        cli, srv = lab.netns("c"), lab.netns("s")
        # 198.51.100.3 and 2001:db8:7::3 answer nothing: RULES drop every packet to them
        lab.veth(cli, ["198.51.100.1/24", "2001:db8:7::1/64"],
                 srv, ["198.51.100.2/24", "2001:db8:7::2/64", "198.51.100.3/24",
                       "2001:db8:7::3/64"], names=("hschk0", "hschk1"))
        run("nft", "-f", "-", ns=srv, input=RULES)
        for addr, port in (("198.51.100.2", 80), ("2001:db8:7::2", 80), ("198.51.100.2", 81)):
            lab.http(srv, addr, port, code=302)
        time.sleep(0.5)          # let IPv6 neighbour discovery settle
        yield cli


CLIENT = textwrap.dedent("""
    import asyncio, json, os, sys
    sys.path.insert(0, ROOT)
    from hoststated.checks import make_check
    from hoststated.checks.base import Target
    from hoststated.privsep import open_raw_sockets
    from hoststated.checks.runner import IcmpPinger, run_check
    from hoststated.conf import model
    fds = open_raw_sockets()               # as root, before the drop
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    async def main():
        pinger = IcmpPinger(fds)
        out = []
        for kind, addr, port, timeout in json.loads(sys.argv[1]):
            m = {"icmp": model.CheckIcmp(), "tcp": model.CheckTcp(),
                 "http": model.CheckHttp(code=200)}[kind]
            t = Target(addr, port, addr)
            v = await run_check(make_check(m, t), t, timeout, pinger=pinger)
            out.append([v.ok, str(v.error), v.detail])
        # many hosts in one burst, replies matched by id and sequence
        burst = await asyncio.gather(*(pinger.ping(a, 1.0) for a in
                                       ["198.51.100.2", "2001:db8:7::2", "198.51.100.3"] * 5))
        out.append([v.ok for v in burst])
        out.append(os.getuid())
        print(json.dumps(out))
    asyncio.run(main())
""").replace("ROOT", repr(ROOT))


def run_in(ns, checks):
    r = subprocess.run(["ip", "netns", "exec", ns, PY, "-c", CLIENT, json.dumps(checks)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_icmp_tcp_http_and_timeouts_across_namespaces(lab):
    out = run_in(lab, [
        ["icmp", "198.51.100.2", None, 1.0],
        ["icmp", "2001:db8:7::2", None, 1.0],
        ["icmp", "198.51.100.3", None, 0.3],
        ["icmp", "2001:db8:7::3", None, 0.3],
        ["tcp", "198.51.100.2", 80, 1.0],
        ["tcp", "198.51.100.2", 82, 1.0],
        ["tcp", "198.51.100.2", 81, 0.3],
        ["tcp", "198.51.100.3", 80, 0.3],
        ["http", "2001:db8:7::2", 80, 1.0],
    ])
    assert out[0] == [True, "icmp ok", ""]
    assert out[1] == [True, "icmp ok", ""]
    assert out[2][:2] == [False, "icmp read timeout"]
    assert out[3][:2] == [False, "icmp read timeout"]
    assert out[4][:2] == [True, "tcp connect ok"]
    assert out[5] == [False, "tcp connect failed", "Connection refused"]
    assert out[6][:2] == [False, "tcp connect timeout"]     # dropped by nft
    assert out[7][:2] == [False, "tcp connect timeout"]
    assert out[8] == [False, "http code mismatch", "got 302, want 200"]
    assert out[9] == [True, True, False] * 5
    assert out[10] == 65534                                   # pinged after the drop
