"""IPVS for real: runs inside a Debian kernel under QEMU (tests/vm/run).

Small on purpose: everything here runs 5-10x slower under TCG. The lab
(namespaces, veths, http.server backends) is the host suite's. The backend
and the Reconciler are driven directly, then the real daemon runs with
`engine ipvs` (its pfe calls them from an asyncio process: the case the
direct tests cannot see).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))              # tests/lab.py

from lab import Farm, InNetns, Lab  # noqa: E402

from hoststated.conf.model import (IPVS_SCHEDULER, CheckTcp, Config, Forward, Global,  # noqa: E402
                                   Host, Listen, Redirect, Table)
from hoststated.kernel import Reconciler, make_backend  # noqa: E402
from hoststated.kernel.diff import AddService, DelDest, SetDest, diff  # noqa: E402
from hoststated.kernel.service import Destination, Service, ServiceKey  # noqa: E402
from hoststated.states import HostStatus as S  # noqa: E402

pytestmark = pytest.mark.vm

SCHEDULERS = sorted(set(IPVS_SCHEDULER.values()))
VIP = "203.0.113.10"
B = ["198.51.100.11", "198.51.100.12", "198.51.100.13"]


def have_ipvs() -> bool:
    try:
        subprocess.run(["modprobe", "-a", "ip_vs", "veth", "bridge"] +
                       [f"ip_vs_{s}" for s in SCHEDULERS], capture_output=True)
    except OSError:             # no modprobe: the kernel has what it has
        pass
    return os.path.exists("/proc/net/ip_vs")


if not have_ipvs():
    pytest.skip("no IPVS in this kernel: run through tests/vm/run", allow_module_level=True)


class SlowLab(Lab):
    """Under TCG on a busy host, starting python can take longer than the
    host suite's 10 s for a backend to listen."""

    def ready(self, p, timeout: float = 60.0) -> None:
        super().ready(p, timeout)


@pytest.fixture(scope="module")
def lab():
    with SlowLab("ipvs") as lab:
        farm = Farm(lab, backends=3, sources=0)
        farm.ns(farm.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        yield farm


def ipvsadm(lab, *args):
    return lab.ns(lab.director, "ipvsadm", *args).stdout


def test_roundtrips_every_scheduler_method_and_flag(lab):
    with InNetns(lab.director):
        be = make_backend("ipvs")
        try:
            state = {}
            methods = ["nat", "route", "tunnel"]
            for i, sched in enumerate(SCHEDULERS):
                mode = next(m for m, s in IPVS_SCHEDULER.items() if s == sched)
                key = ServiceKey(4, "tcp" if i % 2 else "udp", VIP, 1000 + i)
                svc = Service(key, mode=mode, method=methods[i % 3],
                              persistence=60 if i % 4 == 0 else 0,
                              netmask="255.255.255.0" if i % 4 == 0 else None,
                              one_packet=(key.protocol == "udp" and i % 3 == 0),
                              destinations=(Destination(B[0], 80, 1, 100, 10),
                                            Destination(B[1], 80, 2), Destination(B[2], 80, 3)))
                state.update(be.project({key: svc}))
            k6 = ServiceKey(6, "tcp", "2001:db8::10", 80)
            kf = ServiceKey(4, "fwmark", fwmark=7)
            state.update(be.project({
                k6: Service(k6, mode="weighted-roundrobin", persistence=30, netmask="64",
                            destinations=(Destination("2001:db8:2::11", 80, 5),)),
                kf: Service(kf, mode="source-hash", destinations=(Destination(B[0], 0, 1),))}))
            be.apply([AddService(s) for s in state.values()])
            got = be.dump(state)
            assert got == state
            out = ipvsadm(lab, "-L", "-n")
            assert "Masq" in out and "Route" in out and "Tunnel" in out
            assert "persistent 60 mask 255.255.255.0" in out and "ops" in out

            # weight to 0 (drain), thresholds, remove one: fwd_method must not move
            key = ServiceKey(4, "udp", VIP, 1000)      # nat, 1st scheduler
            svc = state[key]
            assert svc.method == "nat"
            want = svc.with_destinations([Destination(B[0], 80, 0, 100, 10),
                                          Destination(B[1], 80, 2, 50, 5)])
            ops = diff({key: svc}, {key: want})
            assert {type(o) for o in ops} == {SetDest, DelDest}
            be.apply(ops)
            assert be.dump({key}) == {key: want}
            assert "Masq" in ipvsadm(lab, "-L", "-n", "-u", f"{VIP}:1000")
        finally:
            be.remove(be.dump(state))
            be.close()
    assert ipvsadm(lab, "-S", "-n").strip() == ""


def mk_config(quiescent=True):
    hosts = tuple(Host(id=i + 1, name=a, address=a, port=80, table="web:80", weight=1)
                  for i, a in enumerate(B[:2]))
    sorry = (Host(id=100, name=B[2], address=B[2], port=80, table="sorry:80"),)
    tables = (Table(id=1, name="web:80", template="web", port=80, check=CheckTcp(), hosts=hosts),
              Table(id=2, name="sorry:80", template="sorry", port=80, check=CheckTcp(), hosts=sorry))
    r = Redirect(id=1, name="www", listen=(Listen(address=VIP, port=80),),
                 forward=Forward(table="web:80", mode="roundrobin"),
                 backup=Forward(table="sorry:80", mode="roundrobin"), quiescent=quiescent)
    return Config(**{"global": Global(engine="ipvs")}, tables=tables, redirects=(r,))


def test_nat_traffic_through_reconciler(lab):
    ipvsadm(lab, "-A", "-t", "203.0.113.99:80", "-s", "rr")        # not ours
    with InNetns(lab.director):
        rec = Reconciler(mk_config())
        try:
            rec.start()
            rec.update({1: S.UP, 2: S.UP, 100: S.UP})
            r = lab.requests(VIP, 40)
            assert r["failed"] == 0 and r["counts"] == {"b1": 20, "b2": 20}
            rec.update({2: S.DOWN})                     # quiescent: weight 0
            assert "198.51.100.12:80" in ipvsadm(lab, "-L", "-n")
            r = lab.requests(VIP, 20)
            assert r["failed"] == 0 and r["counts"] == {"b1": 20}
            rec.update({1: S.DOWN})                     # sorry server takes over
            r = lab.requests(VIP, 10)
            assert r["failed"] == 0 and r["counts"] == {"b3": 10}
            rec.update({1: S.UP, 2: S.UP})
            # someone deletes a destination by hand; resync puts it back
            ipvsadm(lab, "-d", "-t", f"{VIP}:80", "-r", "198.51.100.11:80")
            assert rec.resync()
            assert "Masq" in ipvsadm(lab, "-L", "-n", "-t", f"{VIP}:80")
            # a restart adopts the kernel: no op
            rec.stop(clean=False)
            rec = Reconciler(mk_config())
            assert rec.start() == []
            r = lab.requests(VIP, 20)
            assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10}
        finally:
            rec.stop(clean=True)
    out = ipvsadm(lab, "-S", "-n")
    assert "203.0.113.99" in out and VIP + ":80" not in out.replace("203.0.113.99", "")


# a Lab.daemon template ({socket} is filled in, hence the doubled braces);
# timeouts generous: everything is slow under TCG
DAEMON_CONF = """
interval 2
timeout 1500
log state changes
socket "{socket}"
engine ipvs
table <web> {{ HOSTS }}
redirect "www" {{
	listen on VIP port 80
	forward to <web> port 80 mode roundrobin check http "/" code 200
}}
""".replace("VIP", VIP)
SVC = f"-t {VIP}:80"
SLOW = 120.0        # s: a daemon start or reload under TCG (it imports from source)


def until(d, pred, timeout: float, what: str) -> None:
    """Poll pred at a pace that leaves the slow guest's CPU to the daemon;
    fails at once if the daemon exits, with its log."""
    def ok():
        if d.proc.poll() is not None:
            raise AssertionError(f"hoststated exited with status {d.proc.returncode} "
                                 f"waiting for {what}; log:\n{d.read_log()[-3000:]}")
        return pred()
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; log:\n{d.read_log()[-3000:]}")
        time.sleep(0.5)


def ipvs_table(lab) -> dict[str, dict[str, tuple[str, int]]]:
    """`ipvsadm -S -n` as {"-t VIP:80": {"ADDR:PORT": (method flag, weight)}}."""
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for line in ipvsadm(lab, "-S", "-n").splitlines():
        w = line.split()
        if w[:1] == ["-A"]:
            out.setdefault(f"{w[1]} {w[2]}", {})
        elif w[:1] == ["-a"]:
            method = next(f for f in w if f in ("-m", "-g", "-i"))
            out.setdefault(f"{w[1]} {w[2]}", {})[w[w.index("-r") + 1]] = (
                method, int(w[w.index("-w") + 1]))
    return out


def test_daemon_engine_ipvs_follows_hosts_and_cleans_at_stop(lab):
    b1, b2, b3 = lab.backends
    a = lab.addr

    def hosts(*bs):
        return ", ".join(a[b] for b in bs)
    ipvsadm(lab, "-A", "-t", "203.0.113.98:80", "-s", "rr")         # not ours
    d = lab.daemon(DAEMON_CONF.replace("HOSTS", hosts(b1, b2)), wait=False)

    def dests(want):
        return lambda: ipvs_table(lab).get(SVC) == {f"{a[b]}:80": ("-m", w) for b, w in want.items()}
    try:
        until(d, dests({b1: 1, b2: 1}), SLOW, what="both hosts up in IPVS")
        assert "fatal" not in d.read_log()
        r = lab.requests(VIP, 20)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10}

        # a host goes down: quiescent (the default), so weight 0, then back
        lab.stop_backend(b2)
        until(d, dests({b1: 1, b2: 0}), 60, what=f"{a[b2]} at weight 0")
        r = lab.requests(VIP, 10)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10}
        lab.start_backend(b2)
        until(d, dests({b1: 1, b2: 1}), 60, what=f"{a[b2]} back at weight 1")

        # a reload (SIGHUP) adding a host: pfe's reconfigure, in the same thread
        d.conf.write_text(DAEMON_CONF.replace("HOSTS", hosts(b1, b2, b3)).format(socket=d.socket))
        os.kill(d.pid, signal.SIGHUP)
        until(d, dests({b1: 1, b2: 1, b3: 1}), SLOW, what=f"{a[b3]} added by the reload")
        r = lab.requests(VIP, 30)
        assert r["failed"] == 0 and r["counts"] == {"b1": 10, "b2": 10, "b3": 10}
    finally:
        rc = d.stop(signal.SIGTERM, timeout=60)
        log = d.read_log()
    # cleanstop yes (the default): our service is gone, the other one stays
    assert rc == 0, log[-3000:]
    assert "kernel objects removed" in log, log[-3000:]
    left = ipvs_table(lab)
    assert SVC not in left and "-t 203.0.113.98:80" in left
    ipvsadm(lab, "-D", "-t", "203.0.113.98:80")
    assert lab.requests(VIP, 1, timeout=1.0)["failed"] == 1
