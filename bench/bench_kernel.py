"""Kernel table figures for the nftables backend (root; runs in its own netns).

    sudo .venv/bin/python bench/bench_kernel.py [--changes 300] [--dests 10000]

1. State-change latency: a host goes down/up through Reconciler.update();
   time from the call to the kernel holding it (update() returns after the
   libnftables transaction is acknowledged), p50/p99 over --changes changes,
   in a redirect of 3 hosts and in one of 1,000.
2. A full table at start: after Reconciler.start(), the first update (every
   host up) writes --dests destinations (100 redirects x 100 hosts); then a
   full resync (re-dump + compare), an adopting restart (a new Reconciler on
   the filled kernel) and a clean stop.
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))          # tests/lab.py, the netns lab

from hoststated.conf.model import (CheckTcp, Config, Forward, Global, Host,  # noqa: E402
                                   Listen, Redirect, Table)
from hoststated.kernel import Reconciler  # noqa: E402
from hoststated.proc import settle_heap  # noqa: E402
from hoststated.states import HostStatus as S  # noqa: E402
from lab import Lab, in_netns, run  # noqa: E402


def config(redirects: int, hosts: int, mode: str = "roundrobin", engine: str = "nftables",
           addr=None) -> Config:
    """`redirects` redirects of `hosts` hosts each; addr(r, h) -> (address, port)."""
    addr = addr or (lambda r, h: (f"10.{h // 250}.{h % 250}.{r % 250 + 1}", 80))
    tables, rdrs, hid = [], [], 1
    for r in range(redirects):
        name = f"t{r}:80"
        hs = []
        for h in range(hosts):
            a, port = addr(r, h)
            hs.append(Host(id=hid, name=f"h{hid}", address=a, port=port, table=name))
            hid += 1
        tables.append(Table(id=r + 1, name=name, template=f"t{r}", port=None, check=CheckTcp(),
                            hosts=tuple(hs)))
        vip = f"203.0.{113 + r // 250}.{r % 250 + 1}"
        rdrs.append(Redirect(id=r + 1, name=f"r{r}", listen=(Listen(address=vip, port=80),),
                             forward=Forward(table=name, mode=mode)))
    return Config(**{"global": Global(engine=engine)}, tables=tuple(tables),
                  redirects=tuple(rdrs))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latency(hosts: int, changes: int, mode: str) -> tuple[float, float]:
    cfg = config(1, hosts, mode)
    rec = Reconciler(cfg)
    rec.start()
    rec.update({h.id: S.UP for h in cfg.hosts()})
    settle_heap()                   # as pfe does once the kernel is written
    ids = [h.id for h in cfg.hosts()]
    samples = []
    for i in range(changes):
        hid = ids[i % len(ids)]
        for st in (S.DOWN, S.UP):
            t0 = time.perf_counter()
            rec.update({hid: st})
            samples.append((time.perf_counter() - t0) * 1000)
    rec.stop(clean=True)
    return pct(samples, 50), pct(samples, 99)


def full_table(dests: int) -> dict[str, float]:
    per = 100
    cfg = config(max(1, dests // per), per)
    up = {h.id: S.UP for h in cfg.hosts()}
    out = {}
    rec = Reconciler(cfg)
    rec.start()                     # pfe starts before hce's first states
    nft = rec.backend("nftables")
    nft.nft_seconds = 0.0
    t0 = time.perf_counter()
    rec.update(up)                  # the first round: every host up at once
    out["full table written (first update after start)"] = (time.perf_counter() - t0) * 1000
    out["  of which in libnftables (parse + netlink + kernel)"] = nft.nft_seconds * 1000
    t0 = time.perf_counter()
    ops = rec.resync()
    out["resync (dump + diff), no drift"] = (time.perf_counter() - t0) * 1000
    assert ops == [], ops[:3]
    rec.stop(clean=False)
    rec2 = Reconciler(cfg)
    t0 = time.perf_counter()
    ops = rec2.start()
    out["restart: adopt the filled kernel"] = (time.perf_counter() - t0) * 1000
    assert ops == [], ops[:3]
    t0 = time.perf_counter()
    rec2.stop(clean=True)
    out["clean stop"] = (time.perf_counter() - t0) * 1000
    return out


def rerun_in_netns(area: str, script: str, args: list[str],
                   setup: list[list[str]] = ()) -> int:
    """Run `script --inner args` in a network namespace of its own (after the
    `ip` commands in `setup`), removed afterwards; its exit status."""
    with Lab(area) as lab:
        ns = lab.netns("k")
        for cmd in setup:
            run(*cmd, ns=ns)
        return subprocess.run(in_netns(ns, sys.executable, script, "--inner", *args)).returncode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--dests", type=int, default=10000)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.inner:
        if os.geteuid() != 0:
            print("bench_kernel: needs root (it makes a network namespace)", file=sys.stderr)
            return 1
        return rerun_in_netns("bench-kernel", __file__,
                              ["--changes", str(a.changes), "--dests", str(a.dests)])
    print(f"nftables backend, libnftables in process, {os.cpu_count()} CPUs")
    for hosts, mode in ((3, "roundrobin"), (3, "source-hash"), (1000, "roundrobin")):
        p50, p99 = latency(hosts, a.changes, mode)
        print(f"state change -> kernel, {hosts} hosts {mode}: p50 {p50:.2f} ms  p99 {p99:.2f} ms "
              f"({2 * a.changes} changes)")
    for what, ms in full_table(a.dests).items():
        print(f"{a.dests} destinations ({a.dests // 100} redirects x 100): {what}: {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
