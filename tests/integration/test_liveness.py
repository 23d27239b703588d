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
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import (WEB_BACKENDS, WEB_CONFIG, WebTraffic, alive,  # noqa: E402
                 nft_backends, wait_for, web_director)
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok() or not shutil.which("nft"),
                                 reason="needs root and nft")]

B1, B2 = WEB_BACKENDS
CONFIG = WEB_CONFIG


def statuses(d) -> dict[str, str]:
    r = d.ctl("show", "hosts", json_out=True, timeout=10)
    if r.returncode != 0:
        return {}
    return {h["name"]: h["status"] for h in json.loads(r.stdout)["hosts"]}


@pytest.mark.parametrize("victim", ["hce", "pfe"])
def test_a_stopped_child_stops_the_daemon_and_the_restart_adopts(lab, victim):
    c, lb, _, (_, b2) = web_director(lab)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: statuses(d) == {B1: "up", B2: "up"}, 20, what="hosts up")
    wait_for(lambda: nft_backends(lb) == {B1, B2}, 10, what="both backends in the map")
    traffic = WebTraffic(lab, c)
    traffic.wait_flowing()                  # its client started (a loaded box is slow)
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
    assert nft_backends(lb) == {B1, B2}
    # the restart (Restart=on-failure) adopts it and takes B2 out
    d2 = lab.daemon(lb, CONFIG, name="restart.conf")
    wait_for(lambda: nft_backends(lb) == {B1}, 20, what=f"B2 out of the map ({d2.read_log()})")
    repaired = time.monotonic()
    # (B2's refused connect is told at once; B1's first check may come up
    # to an interval later, its traffic served meanwhile as the kernel had it)
    wait_for(lambda: statuses(d2) == {B1: "up", B2: "down"}, 30,
             what=f"B1 up and B2 down ({d2.read_log()})")
    r = traffic.finish()
    # and after the repair, nothing fails
    after = WebTraffic(lab, c)
    after.wait_flowing()
    time.sleep(2.0)
    r2 = after.finish()
    assert r2["ok"] > 0 and not r2["failed"], r2
    failed = [t - fault for t in r["failed_at"]]
    print(f"\nSIGSTOP {victim} + dead backend: {len(failed)} of {len(failed) + r['ok']} "
          f"requests failed, window {min(failed, default=0):.1f} -> "
          f"{max(failed, default=0):.1f} s after the fault; daemon stopped "
          f"{stopped - fault:.1f} s after it, map repaired {repaired - fault:.1f} s after it "
          f"(restart started at once)")
    assert r["ok"] > 0
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(15) == 0
    assert nft_backends(lb) is None


def test_a_stopped_child_without_a_fault_costs_no_request(lab):
    """With every backend healthy, the stop and the restart drop nothing:
    the kernel keeps forwarding while no daemon runs."""
    c, lb, _, (_, b2) = web_director(lab)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: statuses(d) == {B1: "up", B2: "up"}, 20, what="hosts up")
    wait_for(lambda: nft_backends(lb) == {B1, B2}, 10, what="both backends in the map")
    traffic = WebTraffic(lab, c)
    traffic.wait_flowing()                  # its client started (a loaded box is slow)
    time.sleep(1.0)
    os.kill(d.roles()["hce"], signal.SIGSTOP)
    assert d.proc.wait(30) == 1, d.read_log()
    assert "parent: hce did not answer for" in d.read_log()
    d2 = lab.daemon(lb, CONFIG, name="restart.conf")
    wait_for(lambda: statuses(d2) == {B1: "up", B2: "up"}, 20, what="hosts up after restart")
    time.sleep(0.5)
    r = traffic.finish()
    assert r["ok"] > 0 and not r["failed"], r
    assert nft_backends(lb) == {B1, B2}
