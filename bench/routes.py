"""How long pfe takes to write a router's route after a gateway's state
changes (issue 16: "within 5 ms of hce's decision").

    .venv/bin/python bench/routes.py [--updates 200]

Needs root. A scratch namespace with two connected networks (veth) and a gateway
on each; the Reconciler (pfe's kernel side) flips one gateway down and up
and each update() is timed until rtnetlink has acknowledged the new route.
Prints median, p99 and max; the namespace is removed at the end."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = """table <gw> { 198.51.100.2, 198.51.100.18 }
router "uplinks" {
\troute 0.0.0.0/0
\tforward to <gw> check icmp
}
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def measure(n: int) -> None:
    sys.path.insert(0, str(ROOT))
    from hoststated.conf.load import load_text
    from hoststated.kernel import Reconciler
    from hoststated.states import HostStatus as S

    c = load_text(CONF, "bench-routes.conf", lookup=False)
    rec = Reconciler(c)
    rec.start()
    try:
        a, b = [h.id for h in c.hosts()]
        rec.update({a: S.UP, b: S.UP})
        ms = []
        for i in range(n):
            t = time.perf_counter()
            rec.update({a: S.DOWN if i % 2 == 0 else S.UP})
            ms.append((time.perf_counter() - t) * 1000)
    finally:
        rec.stop(clean=True)
    ms.sort()
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"gateway state -> route written ({n} updates, load {os.getloadavg()[0]:.1f}): "
          f"median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        measure(args.updates)
        return 0
    if os.geteuid() != 0:
        print("bench/routes.py: run as root (it makes a network namespace)", file=sys.stderr)
        return 1
    ns = f"bench-rt-{os.getpid()}"
    ip("netns", "add", ns)
    try:
        for dev, addr in (("up1", "198.51.100.1/28"), ("up2", "198.51.100.17/28")):
            # veth (this kernel has no dummy): both ends in the namespace
            ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", f"{dev}p", "up")
            ip("-n", ns, "link", "set", dev, "up")
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__,
                               "--inside", "--updates", str(args.updates)]).returncode
    finally:
        ip("netns", "del", ns)


if __name__ == "__main__":
    sys.exit(main())
