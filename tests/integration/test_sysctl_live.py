"""Issue 14 item 5 end to end: in a fresh namespace (forwarding off), -n
warns that NAT needs net.ipv4.ip_forward and net.ipv6.conf.all.forwarding,
and pfe, with CAP_NET_ADMIN only, sets them at start and logs each change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, Lab, in_netns, run, usable  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("nft"), reason="needs root, ip and nft")]

CONFIG = """\
socket "{socket}"
engine nftables
interval 1
timeout 500
table <web> {{ 198.51.100.91 }}
table <web6> {{ 2001:db8:91::1 }}
redirect "www" {{
	listen on 203.0.113.91 port 80
	forward to <web> port 80 check tcp
}}
redirect "www6" {{
	listen on 2001:db8:91::100 port 80
	forward to <web6> port 80 check tcp
}}
"""


def sysctl(ns: str, key: str) -> str:
    return run("sysctl", "-n", key, ns=ns).stdout.strip()


def test_pfe_sets_forwarding(tmp_path):
    with Lab(prefix="nt-sys") as lab:
        ns = lab.netns("d")
        lab.addr(ns, "lo", "198.51.100.91/32", "2001:db8:91::1/128")
        lab.http(ns, "198.51.100.91", 80)
        lab.http(ns, "2001:db8:91::1", 80)
        assert sysctl(ns, "net.ipv4.ip_forward") == "0"
        assert sysctl(ns, "net.ipv6.conf.all.forwarding") == "0"
        conf = lab.write("sys-n.conf", CONFIG.format(socket=lab.tmp / "n.sock"))
        r = subprocess.run(in_netns(ns, PYTHON, "-m", "hoststated", "-n", "-f", str(conf)),
                           capture_output=True, text=True, cwd=str(ROOT), timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
        assert f"{conf}:7:1: warning: sysctl net.ipv4.ip_forward is 0; redirect www " \
               "forwards to IPv4 hosts by NAT: pfe sets it to 1 at start" in r.stderr
        assert "sysctl net.ipv6.conf.all.forwarding is 0; redirect www6" in r.stderr
        d = lab.daemon(ns, CONFIG, name="sys.conf")
        d.wait_statuses({"198.51.100.91": "up", "2001:db8:91::1": "up"})
        assert sysctl(ns, "net.ipv4.ip_forward") == "1"
        assert sysctl(ns, "net.ipv6.conf.all.forwarding") == "1"
        log = d.read_log()
        assert "pfe: sysctl net.ipv4.ip_forward set to 1 (was 0): redirect www forwards " \
               "to IPv4 hosts by NAT" in log, log
        assert "pfe: sysctl net.ipv6.conf.all.forwarding set to 1 (was 0)" in log, log
