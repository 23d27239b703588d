"""IPVS figures, inside the VM (this host's kernel has no IPVS):

    tests/vm/run --bench [--dests 10000] [--changes 50]

In a namespace of its own (a bridge with 198.51.100.1/24, so destinations in
that subnet are accepted): the first update after start writing --dests destinations
(100 redirects x 100 hosts, destinations 198.51.100.x on distinct ports),
state-change latency (update() -> netlink acknowledged), a no-drift resync,
an adopting restart, and a clean stop. Under TCG (software emulation) every
figure is several times what real hardware gives; they are printed, not
judged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from bench_kernel import config, pct, rerun_in_netns  # noqa: E402

from hoststated.kernel import Reconciler  # noqa: E402
from hoststated.states import HostStatus as S  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dests", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.inner:
        subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_rr", "bridge"], capture_output=True)
        if not os.path.exists("/proc/net/ip_vs"):
            print("bench_ipvs_vm: no IPVS here; run it through tests/vm/run --bench",
                  file=sys.stderr)
            return 1
        return rerun_in_netns(
            "bench-ipvs", __file__, ["--dests", str(a.dests), "--changes", str(a.changes)],
            setup=[["ip", "link", "add", "br0", "type", "bridge"],
                   ["ip", "addr", "add", "198.51.100.1/24", "dev", "br0"],
                   ["ip", "link", "set", "br0", "up"]])

    per = 100
    cfg = config(max(1, a.dests // per), per, engine="ipvs",
                 addr=lambda r, h: (f"198.51.100.{h + 2}", 1000 + r))
    up = {h.id: S.UP for h in cfg.hosts()}
    print(f"IPVS backend (pyroute2 generic netlink), kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, TCG")
    rec = Reconciler(cfg)
    rec.start()                      # pfe starts before hce's first states
    t0 = time.perf_counter()
    rec.update(up)                   # the first round: every host up at once
    n = sum(len(s.destinations) for s in rec.state().values())
    print(f"{n} destinations ({len(cfg.redirects)} services): full table written "
          f"(first update after start): {(time.perf_counter() - t0) * 1000:.0f} ms")
    ids = [h.id for h in cfg.hosts()]
    samples = []
    for i in range(a.changes):
        for st in (S.DOWN, S.UP):
            t0 = time.perf_counter()
            rec.update({ids[(i * 7919) % len(ids)]: st})
            samples.append((time.perf_counter() - t0) * 1000)
    print(f"state change -> kernel: p50 {pct(samples, 50):.2f} ms  p99 {pct(samples, 99):.2f} ms "
          f"({len(samples)} changes)")
    t0 = time.perf_counter()
    ops = rec.resync()
    print(f"resync (dump + diff), no drift: {(time.perf_counter() - t0) * 1000:.0f} ms, "
          f"{len(ops)} repairs")
    rec.stop(clean=False)
    rec = Reconciler(cfg)
    t0 = time.perf_counter()
    ops = rec.start()
    print(f"restart: adopt the filled kernel: {(time.perf_counter() - t0) * 1000:.0f} ms, "
          f"{len(ops)} changes")
    t0 = time.perf_counter()
    rec.stop(clean=True)
    print(f"clean stop: {(time.perf_counter() - t0) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
