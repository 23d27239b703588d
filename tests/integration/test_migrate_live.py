"""migrate (issue 14), live: the ldirectord/ALOHA check options against real
backends in namespaces (im-chk-*), the daemon writing nftables: a check port
that is not the service port, a check source address (the backends drop
checks from any other), an address range, a host that is not checked, a
connect timeout on a host that never answers, an ldirectord-style script;
and an imported ldirectord.cf run the same way (the same servers up)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from lab import ROOT, Lab, run

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

# the backends answer checks on 8080 only from the check source 198.51.100.30
# (the director's first address is .29: a check not bound to .30 is dropped)
RULES = """
table inet imchk {
  chain in { type filter hook input priority 0;
    tcp dport 8080 ip saddr != 198.51.100.30 drop
  }
}
"""

SCRIPT = """#!/bin/sh
# up only when given ldirectord's four arguments
[ "$*" = "203.0.113.33 80 198.51.100.36 80" ]
"""

CONFIG = """
interval 1
timeout 800
socket "{socket}"
engine nftables
table <w> {{ 198.51.100.31-198.51.100.32, 198.51.100.34 no check }}
table <g> {{ 198.51.100.35 }}
table <s> {{ 198.51.100.36 }}
redirect "www" {{
	listen on 203.0.113.31 port 80
	forward to <w> port 80 check http "/" code 200 check port 8080 check source 198.51.100.30 connect checks 1
}}
redirect "ghost" {{
	listen on 203.0.113.32 port 80
	forward to <g> port 80 check http "/" code 200 connect timeout 100
}}
redirect "script" {{
	listen on 203.0.113.33 port 80
	forward to <s> port 80 check script "{tmp}/ld.sh" ldirectord
}}
"""

LDIRECTORD = """\
checktimeout=1
checkinterval=2
virtual=203.0.113.41:80
	real=198.51.100.31:80 masq 3
	real=198.51.100.32:80 masq 1
	real=198.51.100.34:80 masq 2
	service=http
	request="/"
	scheduler=wrr
	checkport=8081
	protocol=tcp
	checktype=negotiate
"""


@pytest.fixture(scope="module")
def lab():
    with Lab(prefix="im-chk") as lab:
        lb, srv = lab.netns("lb"), lab.netns("s")
        lab.veth(lb, ["198.51.100.29/24", "198.51.100.30/24"],
                 srv, ["198.51.100.31/24", "198.51.100.32/24", "198.51.100.34/24",
                       "198.51.100.36/24"], names=("imchk0", "imchk1"))
        run("nft", "-f", "-", ns=srv, input=RULES)
        # port 80 says 200 everywhere; the check port 8080 says who is up
        for addr in ("198.51.100.31", "198.51.100.32", "198.51.100.36"):
            lab.http(srv, addr, 80, code=200)
        lab.http(srv, "198.51.100.31", 8080, code=200)
        lab.http(srv, "198.51.100.32", 8080, code=500)
        lab.http(srv, "198.51.100.31", 8081, code=200)         # the imported file's
        lab.http(srv, "198.51.100.32", 8081, code=500)
        os.chmod(lab.tmp, 0o755)                   # the script runs as the daemon's user
        script = lab.write("ld.sh", SCRIPT)
        script.chmod(0o755)
        yield lab, lb


def kernel(lb: str) -> str:
    return run("nft", "list", "table", "inet", "hoststated", ns=lb, check=False).stdout


def test_check_options_live(lab):
    lab, lb = lab
    d = lab.daemon(lb, CONFIG)
    d.wait_statuses({"198.51.100.31": "up", "198.51.100.32": "down",
                     "198.51.100.34": "up", "198.51.100.35": "down",
                     "198.51.100.36": "up"}, timeout=30)
    hosts = {h["name"]: h for h in d.json("show", "hosts")["hosts"]}
    assert "500" in hosts["198.51.100.32"]["detail"]           # the check port's answer
    assert "100ms" in hosts["198.51.100.35"]["detail"]         # the connect timeout's
    d.wait_for(lambda: "198.51.100.31" in kernel(lb) and "198.51.100.34" in kernel(lb),
               what="up hosts in the kernel")
    assert "198.51.100.32" not in kernel(lb)
    d.stop()


def test_imported_ldirectord_runs_alike(lab):
    lab, lb = lab
    src = lab.write("ldirectord.cf", LDIRECTORD)
    r = subprocess.run([sys.executable, "-m", "hoststated", "import", "ldirectord", str(src)],
                       capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    # ldirectord drives IPVS; this host has none, so the same config on nftables
    text = r.stdout.replace("engine ipvs", "engine nftables")
    d = lab.daemon(lb, 'socket "{socket}"\n' + text.replace("{", "{{").replace("}", "}}"),
                   name="imported.conf")
    d.wait_statuses({"198.51.100.31": "up", "198.51.100.32": "down",
                     "198.51.100.34": "down"}, timeout=30)
    d.wait_for(lambda: "198.51.100.31" in kernel(lb), what="the up host in the kernel")
    assert "198.51.100.32" not in kernel(lb) and "198.51.100.34" not in kernel(lb)
    d.stop()


# --- ldirectord's fallbackcommand and weights, imported (issue 14) ---------------

FALLBACK = """#!/bin/sh
echo "$(id -u) $*" >> {out}
"""

LD_FALLBACK = """\
checktimeout=1
checkinterval=2
fallbackcommand="{tmp}/fb.sh ld"
monitorfile={tmp}/monitor.log
virtual=203.0.113.43:80
	real=198.51.100.37:80 masq 3
	real=198.51.100.38:80 masq 1
	service=http
	request="/"
	receive="backend"
	scheduler=wrr
	protocol=tcp
	checktype=negotiate
"""


def slots(lb: str, addrs: tuple[str, ...]) -> dict[str, int]:
    """How many of the numgen map's slots (`3 : 198.51.100.37`) send to each
    address: the weights as nftables spreads them."""
    text = kernel(lb)
    return {a: len(re.findall(rf"\b\d+ : {re.escape(a)}\b", text)) for a in addrs}


def test_imported_fallbackcommand_monitorfile_and_weights(lab):
    lab, lb = lab
    srv = lab.namespaces[1]
    a, b = "198.51.100.37", "198.51.100.38"
    lab.addr(srv, "imchk1", f"{a}/24", f"{b}/24")
    out = lab.tmp / "fbout"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    fb = lab.write("fb.sh", FALLBACK.format(out=out / "said"))
    fb.chmod(0o755)
    servers = {x: lab.http(srv, x, 80) for x in (a, b)}
    src = lab.write("ldirectord-fb.cf", LD_FALLBACK.format(tmp=lab.tmp))
    r = subprocess.run([sys.executable, "-m", "hoststated", "import", "ldirectord", str(src)],
                       capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert f'notify command "{lab.tmp}/fb.sh ld" on fallback' in r.stdout, r.stdout
    assert f'log state file "{lab.tmp}/monitor.log"' in r.stdout, r.stdout
    text = r.stdout.replace("engine ipvs", "engine nftables")
    d = lab.daemon(lb, 'socket "{socket}"\n' + text.replace("{", "{{").replace("}", "}}"),
                   name="imported-fb.conf")

    def said() -> list[str]:
        try:
            return (out / "said").read_text().splitlines()
        except FileNotFoundError:
            return []
    try:
        d.wait_statuses({a: "up", b: "up"}, timeout=30)
        # the weights the file gives (wrr 3:1) as the kernel's slot shares
        d.wait_for(lambda: (lambda s: s[a] > 0 and s[a] == 3 * s[b])(slots(lb, (a, b))),
                   what=f"slots 3:1 in the kernel: {kernel(lb)}")
        assert said() == []                           # found up: no news
        lab.stop(servers.pop(a))
        d.wait_statuses({a: "down"}, timeout=30)
        assert said() == []                           # one real server is still up
        lab.stop(servers.pop(b))
        d.wait_for(lambda: len(said()) == 1, 30, what="fallbackcommand start")
        servers[b] = lab.http(srv, b, 80)
        d.wait_for(lambda: len(said()) == 2, 30, what="fallbackcommand stop")
        lines = [ln.split(" ", 1) for ln in said()]
        assert [w for _, w in lines] == ["ld start", "ld stop"], lines
        assert all(u != "0" for u, _ in lines), lines  # run unprivileged
        # monitorfile: `log state file`, a line per host change, by hce through the
        # parent's descriptor (the file is root's, 0640)
        mon = lab.tmp / "monitor.log"
        d.wait_for(lambda: f"host {b} (table" in mon.read_text()
                   and mon.read_text().count(f"host {b} ") == 2, 30, what="state lines")
        said_lines = [ln.split(" ", 1)[1] for ln in mon.read_text().splitlines()]
        assert [ln.split(": ", 1)[0] for ln in said_lines] == [
            f"host {a} (table v1:80, redirect 203.0.113.43:80) down (was up)",
            f"host {b} (table v1:80, redirect 203.0.113.43:80) down (was up)",
            f"host {b} (table v1:80, redirect 203.0.113.43:80) up (was down)"], said_lines
        assert (mon.stat().st_uid, mon.stat().st_mode & 0o777) == (0, 0o640)
    finally:
        d.stop()
        lab.daemons.remove(d)
