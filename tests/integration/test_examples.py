"""The shipped examples start, and do what their comments say (issue: tell the
truth). Each etc/*.conf runs as it is shipped, but for its control sockets,
which move into the lab, and its macros, set the way an operator would.

- etc/hoststated.conf: the web farm. Its two web servers come up (rise 2),
  client traffic to the virtual address is shared by them (weight 2 and 1,
  a client keeping its server: sticky-address), none fails, and the host
  outside the table gets none.
- etc/nftables-nat.conf: NAT over a port range with an interface: its app
  server (send/expect) comes up, a client reaches it on every port of the
  range, the disabled redirect writes nothing.
- etc/monitor-only.conf: engine none; it checks and reports, the restricted
  socket answers `show`, and no nftables table appears.
The engine ipvs examples (ipvs-dr.conf, protocols.conf) need IPVS, which
this kernel has not: they start, as shipped, with real servers and clients,
in the IPVS VM (tests/vm/test_ipvs_vm.py, `sh tests/vm/run`), and -n checks
them in tests/unit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lab import PYTHON, Farm, Lab, run, usable

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "nft"), reason="needs root, ip and nft")]


def shipped(name: str, sockets: dict[str, str], macros: dict[str, str] | None = None) -> str:
    """etc/NAME with its socket paths and macros replaced, nothing else."""
    # Lab.daemon fills in {socket} and {tmp}: the file's own braces are kept
    text = (ETC / name).read_text().replace("{", "{{").replace("}", "}}")
    for old, new in sockets.items():
        assert f'"{old}"' in text, (name, old)
        text = text.replace(f'"{old}"', f'"{new}"')
    for macro, value in (macros or {}).items():
        text, n = re.subn(rf'^{macro} = "[^"]*"$', f'{macro} = "{value}"', text, flags=re.M)
        assert n == 1, (name, macro)
    return text


def up_in(d, table: str) -> set[str]:
    """The hosts up in one table (an address may be in several)."""
    return {h["name"] for h in d.json("show hosts")["hosts"]
            if h["table"] == table and h["status"] == "up"}


def nft_json(ns: str) -> list[dict]:
    r = run("nft", "-j", "list", "table", "inet", "hoststated", ns=ns, check=False)
    return json.loads(r.stdout)["nftables"] if r.returncode == 0 else []


def test_the_web_farm():
    with Lab("ex") as lab:
        farm = Farm(lab, backends=3)
        vip = "203.0.113.10"
        text = shipped("hoststated.conf", {"/run/hoststated.sock": "{socket}"},
                       {"ext_addr": vip})
        d = farm.daemon(text)
        web1, web2, other = farm.backends
        d.wait_for(lambda: up_in(d, "webhosts:80") == {farm.addr[web1], farm.addr[web2]}, 45,
                   what="both web servers up (rise 2)")
        sources = [f"192.0.2.{i}" for i in range(3, 3 + farm.sources)]
        got = farm.requests(vip, 120, sources=sources)
        assert got["failed"] == 0, got["errors"]
        counts = got["counts"]
        assert set(counts) == {farm.names[web1], farm.names[web2]}, counts
        # weight 2 against 1, by the clients each is given (sticky-address)
        assert counts[farm.names[web1]] > counts[farm.names[web2]] > 0, counts
        # a client keeps its server
        again = farm.requests(vip, 10, sources=[sources[0]])
        assert again["failed"] == 0 and len(again["counts"]) == 1, again
        assert d.stop() == 0
        assert nft_json(farm.director) == []        # cleanstop: the default


PONG_SERVER = r"""
import socket, socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while self.request.recv(4096):           # a PING, however it is ended
            self.request.sendall(b"+PONG\r\n")
class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

PING = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    s.sendall(b"PING\r\n")
    print(s.makefile().readline().strip())
"""


def test_nat_over_a_port_range():
    """A redis-like app on port 8080 behind 192.0.2.20:8000-8010 on eth0."""
    with Lab("ex") as lab:
        dr, client, app = lab.netns("dir"), lab.netns("cl"), lab.netns("app")
        lab.veth(dr, "192.0.2.20/24", client, "192.0.2.21/24", names=("eth0", "x0"))
        lab.veth(dr, "198.51.100.1/24", app, "198.51.100.41/24")
        run("ip", "route", "add", "default", "via", "198.51.100.1", ns=app)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=dr)
        lab.spawn(PYTHON, "-c", PONG_SERVER, "198.51.100.41", "8080", ns=app)
        d = lab.daemon(dr, shipped("nftables-nat.conf", {}).replace(
            "max checks 200", 'max checks 200\nsocket "{socket}"'))
        d.wait_for(lambda: up_in(d, "app:8080") == {"198.51.100.41"}, 30,
                   what="the app server up (send/expect)")
        rules = json.dumps(nft_json(dr))
        assert '"eth0"' in rules and "8000" in rules and "8010" in rules, rules
        for port in (8000, 8005, 8010):             # the whole range, to the one port
            r = run(PYTHON, "-c", PING, "192.0.2.20", str(port), ns=client)
            assert r.stdout.strip() == "+PONG", (port, r.stdout, r.stderr)
        reds = {r["name"]: r["status"] for r in d.json("show redirects")["redirects"]}
        assert reds == {"app": "active", "tls": "disabled"}, reds
        assert "443" not in rules                    # the disabled redirect writes nothing
        assert d.stop() == 0


def test_monitor_only():
    with Lab("ex") as lab:
        ns = lab.netns("mon")
        ro = str(lab.tmp / "ro.sock")
        d = lab.daemon(ns, shipped("monitor-only.conf", {"/run/hoststated.sock": "{socket}",
                                                         "/run/hoststated.ro.sock": ro}))
        d.wait_for(lambda: d.statuses() and all(s in ("up", "down")
                                                for s in d.statuses().values()),
                   what="every host checked once")
        r = d.ctl("show", "summary", socket=ro)
        assert r.returncode == 0 and "redirect" in r.stdout, r.stderr
        assert d.ctl("host", "disable", "1", socket=ro).returncode != 0
        assert nft_json(ns) == []                    # engine none writes nothing
        assert d.stop() == 0
