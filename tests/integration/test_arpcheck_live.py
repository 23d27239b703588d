"""check arp (migrate, issue 14) end to end: the real daemon (engine none)
in a namespace, its raw ARP socket opened by the parent before the drop,
asking hosts on a veth segment to another namespace.

    director ns d: arpd0 198.51.100.160/24 ---veth--- arpb0 198.51.100.161/24,
                   route 203.0.113.0/24 via .161          198.51.100.162/24 (ns b)

- both hosts answer ARP: up (the result word is ARP's);
- .162's address removed: it goes down, .161 stays up; put back: up again;
- the backend's interface down: both down; up again: both up;
- -n in the director's namespace: a host behind the gateway, an IPv6 host
  and the director's own address refused at their place; the good config
  passes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, Lab, in_netns, run, usable  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable(), reason="needs root and ip")]

DIRECTOR, A, B = "198.51.100.160", "198.51.100.161", "198.51.100.162"
FAR = "203.0.113.165"

CONFIG = """\
socket "{socket}"
engine none
interval 1
timeout 300
table <lan> {{ 198.51.100.161, 198.51.100.162 }}
redirect "www" {{
	listen on 203.0.113.160 port 80
	forward to <lan> port 80 check arp
}}
"""


@pytest.fixture(scope="module")
def world():
    with Lab(prefix="nt-arp") as lab:
        d = lab.netns("d")
        b = lab.netns("b")
        lab.veth(d, f"{DIRECTOR}/24", b, [f"{A}/24", f"{B}/24"], names=("arpd0", "arpb0"))
        run("ip", "-n", d, "route", "add", "203.0.113.0/24", "via", A)
        yield lab, d, b


def test_hosts_up_while_they_answer_arp(world):
    lab, d_ns, b_ns = world
    d = lab.daemon(d_ns, CONFIG, name="arp.conf")
    try:
        d.wait_statuses({A: "up", B: "up"})
        row = d.host(A)
        assert "arp ok" in str(row), row

        run("ip", "-n", b_ns, "addr", "del", f"{B}/24", "dev", "arpb0")
        d.wait_statuses({B: "down"})
        assert d.statuses()[A] == "up"
        assert "arp read timeout" in str(d.host(B)), d.host(B)
        run("ip", "-n", b_ns, "addr", "add", f"{B}/24", "dev", "arpb0")
        d.wait_statuses({B: "up"})

        run("ip", "-n", b_ns, "link", "set", "arpb0", "down")
        d.wait_statuses({A: "down", B: "down"})
        run("ip", "-n", b_ns, "link", "set", "arpb0", "up")
        d.wait_statuses({A: "up", B: "up"})
        assert d.proc.poll() is None
    finally:
        d.stop()
        lab.daemons.remove(d)


def config_test(lab: Lab, ns: str, text: str, name: str) -> subprocess.CompletedProcess:
    path = lab.write(name, text.format(socket=lab.tmp / "n.sock"))
    return subprocess.run(in_netns(ns, PYTHON, "-m", "hoststated", "-n", "-f", str(path)),
                          capture_output=True, text=True, cwd=str(ROOT), timeout=60)


def test_config_test_refuses_what_arp_cannot_reach(world):
    lab, d_ns, _ = world
    r = config_test(lab, d_ns, CONFIG, "good.conf")
    assert r.returncode == 0, r.stderr
    bad = CONFIG.replace("198.51.100.161, 198.51.100.162",
                         f"{A}, {FAR}, 2001:db8:160::1, {DIRECTOR}")
    r = config_test(lab, d_ns, bad, "bad.conf")
    assert r.returncode != 0
    path = lab.tmp / "bad.conf"
    assert f"{path}:5:31: check arp: host {FAR}: the kernel routes it through the gateway " \
           f"{A}: it is not on a directly connected segment" in r.stderr, r.stderr
    assert f"{path}:5:46: check arp: host 2001:db8:160::1 is an IPv6 address" in r.stderr, \
        r.stderr
    assert f"{path}:5:63: check arp: host {DIRECTOR}: it is an address of this machine" \
        in r.stderr, r.stderr
    assert f"host {A}" not in r.stderr
    assert "Traceback" not in r.stderr
