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

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


@pytest.fixture(scope="module")
def lab():
    tag = f"hs-chk-{os.getpid()}"
    cli, srv = f"{tag}-c", f"{tag}-s"
    procs = []
    try:
        for ns in (cli, srv):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "hschk0", "netns", cli, "type", "veth",
           "peer", "name", "hschk1", "netns", srv)
        for ns, dev, n in ((cli, "hschk0", 1), (srv, "hschk1", 2)):
            sh("ip", "-n", ns, "addr", "add", f"198.51.100.{n}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"2001:db8:7::{n}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        # 198.51.100.3 answers nothing: every packet to it is dropped
        sh("ip", "-n", srv, "addr", "add", "198.51.100.3/24", "dev", "hschk1")
        sh("ip", "-n", srv, "addr", "add", "2001:db8:7::3/64", "dev", "hschk1", "nodad")
        rules = textwrap.dedent("""
            table inet hschk {
              chain in { type filter hook input priority 0;
                ip daddr 198.51.100.3 drop
                ip6 daddr 2001:db8:7::3 drop
                tcp dport 81 drop
              }
            }
        """)
        subprocess.run(["ip", "netns", "exec", srv, "nft", "-f", "-"], input=rules,
                       check=True, text=True, capture_output=True)
        server = textwrap.dedent("""
            import asyncio
            async def h(r, w):
                await r.readuntil(b"\\r\\n\\r\\n")
                w.write(b"HTTP/1.0 302 Found\\r\\n\\r\\n"); await w.drain(); w.close()
            async def main():
                s1 = await asyncio.start_server(h, "198.51.100.2", 80)
                s2 = await asyncio.start_server(h, "2001:db8:7::2", 80)
                s3 = await asyncio.start_server(h, "198.51.100.2", 81)
                print("ready", flush=True)
                await asyncio.sleep(3600)
            asyncio.run(main())
        """)
        p = subprocess.Popen(["ip", "netns", "exec", srv, PY, "-c", server],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.5)          # let IPv6 neighbour discovery settle
        yield cli
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (cli, srv):
            sh("ip", "netns", "del", ns, check=False)


CLIENT = textwrap.dedent("""
    import asyncio, json, os, sys
    sys.path.insert(0, ROOT)
    from hoststated.checks import make_check
    from hoststated.checks.base import Target
    from hoststated.proc import open_raw_sockets
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
