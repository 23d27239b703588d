"""Liveness under traffic, with the real daemon in namespaces: a child that
stops answering (SIGSTOP here; a loop stuck in a computation or a deadlock
looks the same to the parent) is noticed by the parent's heartbeat within a
few seconds; the daemon fails stop with one line naming the child, leaves
the nftables table in place, and a restart (as Restart=on-failure) adopts it
and takes the backend that died meanwhile out.

The test prints the failed requests and the failure window (faults-found
2.4/2.5 before: SIGSTOP of hce or pfe for 30 s with a dead backend failed
~20 % of requests for 27 s, until SIGCONT)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, alive, run, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok() or not shutil.which("nft"),
                                 reason="needs root and nft")]

VIP = "203.0.113.10"
B1, B2 = "198.51.100.11", "198.51.100.12"

CONFIG = """
interval 1
timeout 500
socket "{socket}"
engine nftables
table <web> {{ 198.51.100.11, 198.51.100.12 }}
redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
}}
"""

# a new connection every 20 ms, 1 s timeout; the failures' times (monotonic)
CLIENT = r"""
import http.client, json, os, sys, time
vip, stop = sys.argv[1], sys.argv[2]
ok, failed = 0, []
end = time.monotonic() + 120                # a guard: the test stops it sooner
while time.monotonic() < end and not os.path.exists(stop):
    t = time.monotonic()
    try:
        c = http.client.HTTPConnection(vip, 80, timeout=1)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
        ok += 1
    except Exception:
        failed.append(t)
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}))
"""


def director(lab):
    c, lb, b = lab.netns("c"), lab.netns("lb"), lab.netns("b")
    lab.veth(c, "192.0.2.2/24", lb, "192.0.2.1/24", name="c")
    lab.veth(lb, "198.51.100.1/24", b, [f"{B1}/24", f"{B2}/24"], name="b")
    run("ip", "-n", c, "route", "add", "default", "via", "192.0.2.1")
    run("ip", "-n", b, "route", "add", "default", "via", "198.51.100.1")
    run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=lb)
    lab.http(b, B1, 80)
    return c, lb, lab.http(b, B2, 80)


def kernel(ns: str) -> set[str] | None:
    """The backends in hoststated's nftables maps; None without the table."""
    r = run("nft", "-j", "list", "table", "inet", "hoststated", ns=ns, check=False)
    if r.returncode != 0:
        return None
    text = json.dumps([o for o in json.loads(r.stdout)["nftables"] if "map" in o])
    return {a for a in (B1, B2) if a in text}


class Traffic:
    def __init__(self, lab, ns: str, name: str):
        self.stop = lab.tmp / f"stop-{name}"
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-c", CLIENT, VIP,
                                   str(self.stop)], stdout=subprocess.PIPE, text=True)
        lab.procs.append(self.p)

    def finish(self) -> dict:
        self.stop.write_text("")
        out, _ = self.p.communicate(timeout=130)
        return json.loads(out)


def statuses(d) -> dict[str, str]:
    r = d.ctl("show", "hosts", json_out=True, timeout=10)
    if r.returncode != 0:
        return {}
    return {h["name"]: h["status"] for h in json.loads(r.stdout)["hosts"]}


@pytest.mark.parametrize("victim", ["hce", "pfe"])
def test_a_stopped_child_stops_the_daemon_and_the_restart_adopts(lab, victim):
    c, lb, b2 = director(lab)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: statuses(d) == {B1: "up", B2: "up"}, 20, what="hosts up")
    wait_for(lambda: kernel(lb) == {B1, B2}, 10, what="both backends in the map")
    traffic = Traffic(lab, c, victim)
    time.sleep(1.0)                         # traffic flows before the fault
    roles = d.roles()
    fault = time.monotonic()
    os.kill(roles[victim], signal.SIGSTOP)
    lab.kill(b2)                            # a backend dies while nobody looks
    # the parent notices and fails stop: status 1, the child killed
    assert d.proc.wait(30) == 1, d.read_log()
    stopped = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in roles.values()), 15, what="children gone")
    log = d.read_log()
    lines = [ln for ln in log.splitlines() if re.fullmatch(
        rf"parent: {victim} did not answer for \d+\.\d s: stopping", ln)]
    assert len(lines) == 1, log
    assert "Traceback" not in log, log
    assert "kernel objects left in place for the restart to adopt" in log, log
    # dying is not stopping: the table is there, B2 still in it (nobody
    # could take it out), for the restart to adopt
    assert kernel(lb) == {B1, B2}
    # the restart (Restart=on-failure) adopts it and takes B2 out
    d2 = lab.daemon(lb, CONFIG, name="restart.conf")
    wait_for(lambda: kernel(lb) == {B1}, 20, what=f"B2 out of the map ({d2.read_log()})")
    repaired = time.monotonic()
    assert statuses(d2) == {B1: "up", B2: "down"}
    r = traffic.finish()
    # and after the repair, nothing fails
    after = Traffic(lab, c, victim + "-after")
    time.sleep(2.0)
    r2 = after.finish()
    assert r2["ok"] > 0 and not r2["failed"], r2
    failed = [t - fault for t in r["failed"]]
    print(f"\nSIGSTOP {victim} + dead backend: {len(failed)} of {len(failed) + r['ok']} "
          f"requests failed, window {min(failed, default=0):.1f} -> "
          f"{max(failed, default=0):.1f} s after the fault; daemon stopped "
          f"{stopped - fault:.1f} s after it, map repaired {repaired - fault:.1f} s after it "
          f"(restart started at once)")
    assert r["ok"] > 0
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(15) == 0
    assert kernel(lb) is None


def test_a_stopped_child_without_a_fault_costs_no_request(lab):
    """With every backend healthy, the stop and the restart drop nothing:
    the kernel keeps forwarding while no daemon runs."""
    c, lb, b2 = director(lab)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: statuses(d) == {B1: "up", B2: "up"}, 20, what="hosts up")
    wait_for(lambda: kernel(lb) == {B1, B2}, 10, what="both backends in the map")
    traffic = Traffic(lab, c, "clean")
    time.sleep(1.0)
    os.kill(d.roles()["hce"], signal.SIGSTOP)
    assert d.proc.wait(30) == 1, d.read_log()
    assert "parent: hce did not answer for" in d.read_log()
    d2 = lab.daemon(lb, CONFIG, name="restart.conf")
    wait_for(lambda: statuses(d2) == {B1: "up", B2: "up"}, 20, what="hosts up after restart")
    time.sleep(0.5)
    r = traffic.finish()
    assert r["ok"] > 0 and not r["failed"], r
    assert kernel(lb) == {B1, B2}
