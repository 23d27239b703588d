"""pfe's cost of reading the kernel counters (root; runs in its own netns).

    sudo .venv/bin/python bench/kernel_counters.py [--services 100] [--dests 10] [--reads 30]

Fills nftables (the Reconciler, every host up) with --services redirects of
--dests destinations each, then does --reads reads as pfe does every
COUNTERS_INTERVAL: Reconciler.counters() (one `list table` through
libnftables, its JSON parsed, the totals carried), the KernelCounters
message built and encoded for hce. Prints the CPU time of one read (this
process's, libnftables included) and what it costs at the default rate, as
a share of one core; the target is under 2%. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))          # tests/lab.py, the netns lab
sys.path.insert(2, os.path.join(ROOT, "bench"))

from bench_kernel import config, rerun_in_netns  # noqa: E402
from hoststated import pfe  # noqa: E402
from hoststated.ipc import codec  # noqa: E402
from hoststated.ipc.messages import KernelCounters, Message, MsgType  # noqa: E402
from hoststated.kernel import Reconciler  # noqa: E402
from hoststated.states import HostStatus as S  # noqa: E402


def inner(services: int, dests: int, reads: int) -> None:
    cfg = config(services, dests, addr=lambda r, h: (f"198.51.100.{h + 1}", 80))
    rec = Reconciler(cfg)
    rec.start()
    rec.update({h.id: S.UP for h in cfg.hosts()})
    cpu, wall, size = [], [], 0
    for _ in range(reads):
        c0, w0 = time.process_time(), time.perf_counter()
        rows = rec.counters()
        msg = KernelCounters(1, pfe.COUNTERS_INTERVAL, [pfe._service_counters(*r) for r in rows])
        frame = codec.encode(Message(MsgType.KERNEL_COUNTERS, msg).to_wire())
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        size = len(frame)
    rec.stop(clean=True)
    cpu.sort()
    wall.sort()
    med_cpu, med_wall = cpu[len(cpu) // 2], wall[len(wall) // 2]
    share = 100.0 * med_cpu / pfe.COUNTERS_INTERVAL
    print(f"{services} services x {dests} destinations ({len(rows)} services read, "
          f"{sum(len(r[4]) for r in rows)} destinations), {reads} reads")
    print(f"  one read: {med_cpu * 1000:.1f} ms CPU (median; max {cpu[-1] * 1000:.1f} ms), "
          f"{med_wall * 1000:.1f} ms wall; message to hce {size} bytes")
    print(f"  at one read every {pfe.COUNTERS_INTERVAL:.0f} s: {share:.2f}% of one core "
          f"(target < 2%)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--dests", type=int, default=10)
    ap.add_argument("--reads", type=int, default=30)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.inner:
        return rerun_in_netns("bench-kcount", __file__,
                              ["--services", str(a.services), "--dests", str(a.dests),
                               "--reads", str(a.reads)])
    inner(a.services, a.dests, a.reads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
