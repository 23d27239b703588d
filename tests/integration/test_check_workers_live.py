"""Check workers (issue 17 item 4): the whole daemon with `check workers 2`,
as root, in network namespaces with real HTTP backends.

    lb 198.51.100.1 ---veth--- 198.51.100.11..18 (HTTP 200 on port 80)

The hosts split over the two workers by hce_shards' hash; the test reads
which host is whose from the same code (CheckEngine with a shard), so that
it acts on a host of each.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import Lab, alive, wait_dropped, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok(), reason="needs root and iproute2")]

ADDRS = [f"198.51.100.{i}" for i in range(11, 19)]

CONFIG = """\
socket "{socket}"
engine none
interval 1
timeout 500
check workers %s
table <web> { %s }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
}
"""


def config(workers: int = 2, addrs: list[str] = ADDRS) -> str:
    return CONFIG.replace("{", "{{").replace("}", "}}").replace(
        "{{socket}}", "{socket}") % (workers, ", ".join(addrs))


def shards(text: str, tmp: Path) -> list[set[str]]:
    """The host names of each worker, by the daemon's own code."""
    from hoststated.conf.load import load
    from hoststated.hce_sched import CheckEngine
    path = tmp / "shards.conf"
    path.write_text(text.format(socket=str(tmp / "x.sock")))
    cfg = load(str(path))
    return [{e.host.name for e in CheckEngine(cfg, lambda r: None, shard=(i, 2)).entries.values()}
            for i in range(2)]


def test_two_workers(lab: Lab):
    lb, be = lab.netns("lb"), lab.netns("be")
    lab.veth(lb, "198.51.100.1/24", be, [f"{a}/24" for a in ADDRS])
    servers = {a: lab.http(be, a, 80) for a in ADDRS}
    text = config()
    mine = shards(text, lab.tmp)
    assert mine[0] and mine[1] and mine[0] | mine[1] == set(ADDRS) and not mine[0] & mine[1]
    one, two = sorted(mine[0])[0], sorted(mine[1])[0]
    d = lab.daemon(lb, text)
    d.wait_statuses({a: "up" for a in ADDRS})

    # two workers, unprivileged, no capabilities
    workers = d.role_pids("worker")
    assert len(workers) == 2
    for pid in workers:
        st = wait_dropped(pid)
        assert "0" not in st["Uid"].split() and int(st["CapEff"], 16) == 0

    # every host once; show summary names the workers and their checks
    hosts = d.json("show hosts")["hosts"]
    assert sorted(h["name"] for h in hosts) == sorted(ADDRS)
    assert len({h["id"] for h in hosts}) == len(ADDRS)
    d.wait_for(lambda: (lambda s: len(s.get("workers") or []) == 2
                        and all(w["checks_per_s"] > 0 and w["hosts"] > 0 for w in s["workers"])
                        and sum(w["hosts"] for w in s["workers"]) == len(ADDRS))(
        d.json("show summary")), what="both workers in show summary")
    summary = d.ctl("show", "summary").stdout
    assert "worker 1" in summary and "worker 2" in summary, summary

    # a backend port dies on a host of each worker: down, then up again,
    # told to monitor clients by hce as each worker decides
    mon = d.monitor()
    for a in (one, two):
        lab.stop(servers[a])
    d.wait_statuses({one: "down", two: "down"}, timeout=10)
    seen: dict[str, str] = {}
    for line in mon.stdout:
        ev = json.loads(line)
        if ev["event"] == "host":
            seen.setdefault(ev["data"]["name"], ev["data"]["status"])
        if one in seen and two in seen:
            break
    mon.kill()
    assert seen == {one: "down", two: "down"}, seen
    assert all(s == "up" for a, s in d.statuses().items() if a not in (one, two))
    for a in (one, two):
        servers[a] = lab.http(be, a, 80)
    d.wait_statuses({one: "up", two: "up"}, timeout=10)

    # host disable / enable on a host of each
    ids = {h["name"]: h["id"] for h in hosts}
    for a in (one, two):
        assert d.ctl("host", "disable", str(ids[a])).returncode == 0
    st = d.statuses()                   # the reply waits for the workers: no wait here
    assert st[one] == "disabled" and st[two] == "disabled", st
    for a in (one, two):
        assert d.ctl("host", "enable", str(ids[a])).returncode == 0
    d.wait_statuses({one: "up", two: "up"}, timeout=10)

    # reload: a host more; the others keep their state (and their counts)
    before = {h["name"]: h for h in d.json("show hosts")["hosts"]}
    extra = "198.51.100.19"
    lab.addr(be, _peer_dev(lab, be), f"{extra}/24")
    lab.http(be, extra, 80)
    d.conf.write_text(config(addrs=[*ADDRS, extra]).format(socket=d.socket, tmp=lab.tmp))
    r = d.ctl("reload")
    assert r.returncode == 0, r.stderr
    after = {h["name"]: h for h in d.json("show hosts")["hosts"]}
    assert sorted(after) == sorted([*ADDRS, extra])
    for a in ADDRS:
        assert after[a]["status"] == "up", (a, after[a])
        assert after[a]["check_cnt"] >= before[a]["check_cnt"]
    d.wait_statuses({extra: "up"}, timeout=10)

    # a reload that changes the number of workers is refused, clearly
    d.conf.write_text(config(workers=3, addrs=[*ADDRS, extra]).format(socket=d.socket,
                                                                      tmp=lab.tmp))
    r = d.ctl("reload")
    assert r.returncode != 0 and "check workers changes need a restart" in r.stderr, r
    assert len(d.role_pids("worker")) == 2

    # a worker's death stops the daemon, with one line naming it
    victim = d.role_pids("worker")[0]
    os.kill(victim, signal.SIGKILL)
    d.proc.wait(20)
    assert d.proc.returncode != 0
    log = d.read_log()
    lost = [ln for ln in log.splitlines() if "lost child" in ln]
    assert len(lost) == 1 and "worker" in lost[0] and "SIGKILL" in lost[0], log[-2000:]
    wait_for(lambda: not any(alive(p) for p in workers), 10, what="the workers gone")


def _peer_dev(lab: Lab, ns: str) -> str:
    """The name of the veth end in ns (lab.veth names them)."""
    import subprocess
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "type", "veth"],
                         capture_output=True, text=True, check=True).stdout
    return out.split(":")[1].strip().split("@")[0]
