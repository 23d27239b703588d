"""Start-up (issue 17 item 5): how long until every host is up, and where
the time goes. Not part of the test suite. Run as root (network namespaces):

    .venv/bin/python bench/startup.py [--hosts 10000] [--rounds 3] [--kind http]
        [--checkers haproxy,hoststated] [--profile]

The lab, the backend and both checkers are bench/checks_vs_haproxy.py's
(250 addresses x hosts/250 ports, every 1 s, timeout 800 ms, rise 1). Per
round and checker, from the spawn (monotonic clock of this process):

  answer   hoststated: its control socket first answers `show tables`
  phases   hoststated: each line of its log (-d: stderr) as it appears,
           polled every 10 ms: `startup` (the parent has loaded the config
           and starts its children), `first check round done` (every
           child ready: hce's first round)
  up       every host up (hoststated `show tables`; HAProxy `show stat`
           with L7OK/L4OK: it marks servers up before their first check),
           polled every 50 ms

  cpu      CPU time (user + system) of each of the checker's processes from
           its spawn to `up`, in s
  rss      each process's RSS 1 s after `up` (checks running), in MB
  others   what the rest of the box used meanwhile (busy less the checker,
           the backend and this process), in % of its cores

The first round is spread over the first interval (1 s) by design, so
`up` is at least start-up + 1 s. --profile: hoststated alone, once, under
py-spy (--subprocesses, 100 samples/s, over the first seconds): the
functions with the most samples per process, with their callees.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks_vs_haproxy import (BASE_PORT, CLK_TCK, HOSTS, PYTHON, ROOT, Backend,  # noqa: E402
                               HAProxy, Hoststated, Lab, build_lab, rss_mb, which)
from relay import box_ticks, cpu_ticks  # noqa: E402
from lab import Daemon  # noqa: E402


class LogWatch:
    """The daemon's log lines with the time each was first seen."""

    def __init__(self, path: Path, t0: float):
        self.path, self.t0 = path, t0
        self.lines: list[tuple[float, str]] = []
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        pos, part = 0, ""
        while not self.stop:
            try:
                with open(self.path) as f:
                    f.seek(pos)
                    data = f.read()
                    pos = f.tell()
            except OSError:
                data = ""
            if data:
                now = time.monotonic() - self.t0
                part += data
                *whole, part = part.split("\n")
                self.lines += [(now, ln) for ln in whole if ln]
            time.sleep(0.01)

    def first(self, pattern: str) -> float:
        for t, ln in self.lines:
            if re.search(pattern, ln):
                return t
        return float("nan")


class Usage:
    """From the spawn: the box's busy ticks, the backend's and our CPU."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.box0 = box_ticks()
        self.be0 = sum(cpu_ticks(backend.pid))
        self.me0 = sum(os.times()[:2])

    def figures(self, pids: dict[str, int], up_cpu: dict[str, float]) -> dict:
        """cpu of each process at `up` (up_cpu), RSS now, others since the spawn."""
        box1 = box_ticks()
        ours = {k: sum(cpu_ticks(p)) / CLK_TCK for k, p in pids.items()}
        be = (sum(cpu_ticks(self.backend.pid)) - self.be0) / CLK_TCK
        me = sum(os.times()[:2]) - self.me0
        ticks = max(1, box1[1] - self.box0[1])        # all cores' ticks
        ncpu = os.cpu_count() or 1
        busy = (box1[0] - self.box0[0]) / CLK_TCK
        wall = ticks / CLK_TCK / ncpu
        out = {"cpu": up_cpu, "rss": {k: rss_mb(p) for k, p in pids.items()},
               "others": max(0.0, busy - sum(ours.values()) - be - me) / (wall * ncpu)}
        return out


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for k, p in pids.items():
        try:
            out[k] = sum(cpu_ticks(p)) / CLK_TCK
        except OSError:
            out[k] = float("nan")
    return out


def run_hoststated(lab: Lab, ns: str, ports: list[int], kind: str, n: int,
                   backend: Backend) -> dict:
    hs = Hoststated(lab, ns)
    usage = Usage(backend)
    t0 = hs.start(ports, kind)
    watch = LogWatch(hs.daemon.log, t0)
    try:
        while not hs.all_up(n):
            if time.monotonic() > t0 + 60:
                raise RuntimeError("not all up after 60 s; " + hs.last_words())
            time.sleep(0.05)
        up = time.monotonic() - t0
        pids = hs.pids()
        cpu = _cpu(pids)
        time.sleep(1.0)
        return {"up_s": up, "answer_s": hs.first_answer - t0,
                "parent_s": watch.first(r"parent: startup"),
                "first_round_s": watch.first(r"first check round done"),
                **usage.figures(pids, cpu)}
    finally:
        watch.stop = True
        hs.stop()


def run_haproxy(lab: Lab, ns: str, ports: list[int], kind: str, n: int,
                backend: Backend) -> dict:
    hp = HAProxy(lab, ns)
    usage = Usage(backend)
    t0 = hp.start(ports, kind)
    try:
        while not hp.all_up(n):
            if time.monotonic() > t0 + 60:
                raise RuntimeError("not all up after 60 s")
            time.sleep(0.05)
        up = time.monotonic() - t0
        pids = hp.pids()
        cpu = _cpu(pids)
        time.sleep(1.0)
        return {"up_s": up, **usage.figures(pids, cpu)}
    finally:
        hp.stop()


def fmt(r: dict) -> str:
    """A round's figures on one line."""
    cells = [f"{k[:-2]} {v:.2f} s" for k, v in r.items() if k.endswith("_s")]
    cells.append("cpu " + " + ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items()) + " s")
    rss = r["rss"]
    cells.append(f"rss {sum(rss.values()):.0f} MB" + (
        " (" + " + ".join(f"{k} {v:.0f}" for k, v in rss.items()) + ")" if len(rss) > 1 else ""))
    cells.append(f"others {100 * r['others']:.0f}%")
    return ", ".join(cells)


class SpiedDaemon(Daemon):
    """hoststated -d under py-spy record --subprocesses (for --profile)."""
    spy = ""
    out = ""
    seconds = 6

    def command(self):
        argv, env, kw = super().command()
        i = argv.index(PYTHON)
        argv = argv[:i] + [self.spy, "record", "--subprocesses", "--nonblocking", "-r", "100",
                           "-f", "raw", "-d", str(self.seconds), "-o", self.out, "--"] + argv[i:]
        return argv, env, kw


def profile(lab: Lab, ns: str, ports: list[int], kind: str, n: int, top: int) -> None:
    spy = Path(PYTHON).with_name("py-spy")
    if not spy.exists():
        spy = Path(shutil.which("py-spy") or "py-spy")
    SpiedDaemon.spy, SpiedDaemon.out = str(spy), str(lab.tmp / "startup.txt")
    hs = Hoststated(lab, ns)
    import checks_vs_haproxy as cx
    real = cx.Lab.daemon

    def daemon(self, ns, config, name="hoststated.conf", wait=True):
        socket_path = str(self.tmp / f"{name}.sock")
        conf = self.write(name, config.format(socket=socket_path, tmp=self.tmp))
        return SpiedDaemon(self, ns, conf, socket_path)
    cx.Lab.daemon = daemon
    try:
        t0 = hs.start(ports, kind)
    finally:
        cx.Lab.daemon = real
    up = float("nan")
    try:
        while time.monotonic() < t0 + SpiedDaemon.seconds:
            if up != up and hs.all_up(n):
                up = time.monotonic() - t0
            time.sleep(0.05)
        hs.daemon.proc.wait(timeout=30)        # py-spy ends after its seconds
    finally:
        hs.client.close()
        lab.daemons.remove(hs.daemon)
        hs.daemon.stop()
    print(f"hoststated under py-spy, {n} hosts: all up {up:.2f} s after the spawn "
          f"(py-spy slows it)")
    raw = Path(SpiedDaemon.out)
    if not raw.exists():
        print("py-spy wrote nothing")
        return
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():   # py-spy may cut a name mid-character
        stack, _, cnt = line.rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        frames = stack.split(";")
        # --subprocesses: a frame "process PID:"argv"" above each process's own
        at = max((i for i, f in enumerate(frames) if f.startswith("process ")), default=-1)
        m = re.search(r"--role (\w+)", frames[at]) if at >= 0 else None
        who = m.group(1) if m else "parent"
        frames = [re.sub(r":\d+\)$", ")", f).replace(str(ROOT) + "/", "")
                  .replace(sys.base_prefix + "/lib/", "") for f in frames[at + 1:]]
        if not frames:
            continue
        c = int(cnt)
        totals[who] += c
        own[who][frames[-1]] += c
        for f in set(frames):
            incl[who][f] += c
    for who, total in totals.most_common():
        print(f"  {who}: {total} samples ({total / 100:.1f} s of CPU or runnable)")
        print("    own time:")
        for k, v in own[who].most_common(top):
            print(f"      {v / total:5.1%}  {k}")
        print("    with callees (the import machinery's own frames left out):")
        for k, v in [kv for kv in incl[who].most_common()
                     if kv[1] < 0.97 * total and "<frozen" not in kv[0]
                     and not kv[0].startswith("<module>")][:top]:
            print(f"      {v / total:5.1%}  {k}")
        print("    imports (a module's top level, with what it imports):")
        for k, v in [kv for kv in incl[who].most_common()
                     if kv[0].startswith("<module>") and "__main__" not in kv[0]][:top]:
            print(f"      {v / total:5.1%}  {k}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kind", default="http", choices=("http", "tcp"))
    ap.add_argument("--checkers", default="haproxy,hoststated")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("startup bench: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    checkers = [c for c in a.checkers.split(",") if c]
    if "haproxy" in checkers and which("haproxy") is None and not a.profile:
        print("startup bench: no haproxy (bench/checks_vs_haproxy.py installs it)",
              file=sys.stderr)
        return 1
    ports = [BASE_PORT + i for i in range(max(1, a.hosts // HOSTS))]
    n = HOSTS * len(ports)

    def stopped(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    results: dict[str, list[dict]] = collections.defaultdict(list)
    with Lab(prefix=f"su-{os.getpid()}") as lab:
        dir_ns, be_ns = build_lab(lab)
        backend = Backend(lab, be_ns, ports, a.kind)
        try:
            if a.profile:
                profile(lab, dir_ns, ports, a.kind, n, a.top)
                return 0
            for rnd in range(a.rounds):
                for c in (checkers if rnd % 2 == 0 else checkers[::-1]):
                    try:
                        r = (run_haproxy if c == "haproxy" else run_hoststated)(
                            lab, dir_ns, ports, a.kind, n, backend)
                    except RuntimeError as e:
                        print(f"  round {rnd + 1} {c}: FAILED: {e}", flush=True)
                        continue
                    results[c].append(r)
                    print(f"  round {rnd + 1} {c}: {fmt(r)}", flush=True)
        finally:
            backend.stop()
    print(f"{n} hosts ({a.kind}, every 1 s, first round spread over it), "
          f"median (min-max) over {a.rounds} rounds, seconds after the spawn:")
    def cell(vals: list[float], f: str = ".2f") -> str:
        vals = [v for v in vals if v == v]
        return (f"{statistics.median(vals):{f}} ({min(vals):{f}}-{max(vals):{f}})"
                if vals else "-")
    for c, rs in results.items():
        cells = [f"{k[:-2]} {cell([r[k] for r in rs])}" for k in rs[0] if k.endswith("_s")]
        print(f"  {c}: " + ", ".join(cells))
        print(f"    cpu to up (s): " + ", ".join(
            f"{k} {cell([r['cpu'][k] for r in rs])}" for k in rs[0]["cpu"]))
        print(f"    rss 1 s after up (MB): all {cell([sum(r['rss'].values()) for r in rs], '.0f')}"
              + "".join(f", {k} {cell([r['rss'][k] for r in rs], '.0f')}"
                        for k in rs[0]["rss"] if len(rs[0]["rss"]) > 1)
              + f"; others {cell([100 * r['others'] for r in rs], '.0f')}%")
    if len(results) == 2:
        h = statistics.median(r["up_s"] for r in results["hoststated"])
        p = statistics.median(r["up_s"] for r in results["haproxy"])
        hm = statistics.median(sum(r["rss"].values()) for r in results["hoststated"])
        pm = statistics.median(sum(r["rss"].values()) for r in results["haproxy"])
        print(f"  up: hoststated / HAProxy = {h / p:.2f}; rss: {hm / pm:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
