"""How long a host's state change takes to reach every relay process (issue
11: "a host's state change reaches every relay process in under 5 ms").
Not part of the test suite (no wall-clock figure is asserted anywhere). Run
as root (it builds a network namespace), under the lock the root tests share:

    flock /tmp/hoststated-root-tests.lock .venv/bin/python bench/relay_propagation.py
        [--flips 50] [--prefork 3] [--load] [--json FILE]

The daemon runs with `prefork N` (3) and one relay over a checked table of
two hosts. The bench flips host 1 `--flips` times (`hoststatectl host
disable 1`, then `host enable 1`, and waits for its check to bring it back
up): every flip is hce deciding a new state, which it sends to each relay
process in a HOST_STATUS batch stamped with the time of the decision
(CLOCK_MONOTONIC, the same clock in every process of the box). Each relay
process, once it has applied the batch to its tables, logs the delay at
debug level ("host states applied N us after hce's decision"); the bench
turns debug on with `hoststatectl log verbose` and reads those lines.

Printed: the delay per relay process (p50, p99, max) and, per decision, the
delay until the last relay process had it ("every process"), which is the
figure the issue bounds; then hce's share of it: from the decision to its
write on each relay's channel (hce's debug line "host states sent to relay
N ..."), the rest being the kernel's wake-up of the relay process and its
read, decode and apply. With --load, a client keeps opening sessions
through the relay meanwhile (each relay process then has sessions to
serve in the same event loop).

The lab: two namespaces and a veth between them: the daemon's (192.0.2.1,
198.51.100.1) and the other end's, with the client's 192.0.2.2 and the two
hosts' 198.51.100.11/.12 served by one HTTP server (tests/lab.py's Lab
removes it all, also after an error or Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab import CLIENT_SCRIPT, PYTHON, Lab, in_netns  # noqa: E402

CONFIG = """
socket "{socket}"
interval 1
timeout 500
prefork {prefork}
table <web> {{ 198.51.100.11 198.51.100.12 }}
relay www {{
	listen on 192.0.2.1 port 8080
	forward to <web> port 80 check tcp
}}
"""

LINE = re.compile(r"relay (\d+): host states applied (\d+) us after hce's decision")
SENT = re.compile(r"host states sent to relay (\d+) (\d+) us after the decision")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def row(name: str, us: list[float]) -> str:
    if not us:
        return f"{name:<16} no samples"
    return (f"{name:<16} n={len(us):<4} p50 {pct(us, 50) / 1000:7.3f} ms   "
            f"p99 {pct(us, 99) / 1000:7.3f} ms   max {max(us) / 1000:7.3f} ms   "
            f"mean {statistics.fmean(us) / 1000:7.3f} ms")


def samples(log: str) -> dict[int, list[int]]:
    """relay process index -> its delays in µs, in the order it applied them"""
    out: dict[int, list[int]] = {}
    for m in LINE.finditer(log):
        out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return out


def sent_samples(log: str) -> dict[int, list[int]]:
    """relay process index -> hce's delays from the decision to the write
    on that process's channel, in µs (hce writes to one after the other)"""
    out: dict[int, list[int]] = {}
    for m in SENT.finditer(log):
        out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flips", type=int, default=50, help="disable/enable flips (50)")
    ap.add_argument("--prefork", type=int, default=3, help="relay processes (3)")
    ap.add_argument("--load", action="store_true", help="sessions through the relay meanwhile")
    ap.add_argument("--json", metavar="FILE", help="write the samples as JSON")
    a = ap.parse_args()

    with Lab("rp") as lab:
        ns, peer = lab.netns("d"), lab.netns("c")
        lab.veth(peer, ["192.0.2.2/24", "198.51.100.11/24", "198.51.100.12/24"],
                 ns, ["192.0.2.1/24", "198.51.100.1/24"])
        lab.http(peer, "::", 80)
        d = lab.daemon(ns, CONFIG.replace("{prefork}", str(a.prefork)))
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="both hosts up")
        r = d.ctl("log", "verbose")
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)
        load = None
        if a.load:
            load = subprocess.Popen(in_netns(peer, PYTHON, "-c", CLIENT_SCRIPT, "192.0.2.1",
                                             "8080", "192.0.2.2", "0", "3600", "/", "3"),
                                    stdout=subprocess.DEVNULL)
            lab.procs.append(load)

        def lines() -> int:
            return sum(len(v) for v in samples(d.read_log()).values())

        def status() -> str:
            return next(h["status"] for h in d.json("show hosts")["hosts"] if h["id"] == 1)

        for _ in range(a.flips):
            for word, want in (("disable", "disabled"), ("enable", "up")):
                seen = lines()
                r = d.ctl("host", word, "1")
                assert r.returncode == 0, r.stderr
                # every relay process logs each decision: one more line each
                d.wait_for(lambda: status() == want and lines() >= seen + a.prefork,
                           what=f"host 1 {want} in every relay process")
        time.sleep(0.5)
        got = samples(d.read_log())
        sent = sent_samples(d.read_log())
        if load is not None:
            load.kill()

    if len(got) != a.prefork or len({len(v) for v in got.values()}) != 1:
        print(f"relay processes disagree on the decisions they saw: "
              f"{ {k: len(v) for k, v in got.items()} }", file=sys.stderr)
        return 1
    load1 = os.getloadavg()
    every = [max(per[i] for per in got.values()) for i in range(len(next(iter(got.values()))))]
    print(f"host state propagation, hce's decision -> applied in a relay process "
          f"(prefork {a.prefork}, {a.flips} flips, {len(every)} decisions"
          f"{', with sessions flowing' if a.load else ''}; load average {load1[0]:.2f} "
          f"on {os.cpu_count()} CPUs):")
    for idx in sorted(got):
        print(row(f"relay {idx}", got[idx]))
    print(row("every process", every))
    print("of which hce, from the decision to the write on the relay's channel:")
    for idx in sorted(sent):
        print(row(f"  to relay {idx}", sent[idx]))
    if a.json:
        Path(a.json).write_text(json.dumps({"per_process_us": got, "every_us": every,
                                            "hce_sent_us": sent}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
