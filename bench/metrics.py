"""Metrics benchmark (prints figures; not a test). Run as root (the daemon
drops privileges):

    .venv/bin/python bench/metrics.py [--hosts 10000] [--window 30] [--port 19469]

1. Rendering alone, in this process: a Snapshot of N hosts (100 tables,
   every host checked, half of them down with an error) through
   metrics.Renderer, cold (the first, which makes every host's labels) and
   warm (median of 20), and the size of the text.
2. The real daemon (`engine none`, bench_control's config of N hosts on
   127.1.x.y, `check tcp` on port 9 where nothing listens, interval 60 s)
   with `metrics listen on 127.0.0.1`: once every host has been checked,
   the time of a whole HTTP scrape (connect, GET, read the body) with a
   fresh render (more than hce's 1 s cache apart), median and max of 10.
3. hce's CPU (utime + stime from /proc) over --window seconds with no scrape,
   then over the same window with one scrape every 15 s (the first at once);
   the difference is the scrapes' share of one core, and also per scrape
   (its CPU / 15 s). The target: under 5 %.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_control import config  # noqa: E402
from hoststated import metrics  # noqa: E402
from hoststated.ipc.messages import HostRow, RedirectRow, Stats, TableRow  # noqa: E402
from hoststated.states import HostError, HostStatus  # noqa: E402
from hoststatectl.client import Client, CtlError  # noqa: E402

SCRAPE_EVERY = 15.0
TICK = os.sysconf("SC_CLK_TCK")


def snapshot(n: int) -> metrics.Snapshot:
    per = max(1, n // 100)
    hosts, tables, redirects = [], [], []
    for i in range(n):
        t = i // per
        up = i % 2 == 0
        hosts.append(HostRow(i + 1, f"127.1.{t}.{i % per + 1}", f"t{t}:9",
                             HostStatus.UP if up else HostStatus.DOWN,
                             HostError.TCP_CONNECT_OK if up else HostError.TCP_CONNECT_FAIL,
                             "" if up else "refused", time.time(), 0.3, 40, 20 if up else 0))
    for t in range((n + per - 1) // per):
        tables.append(TableRow(t + 1, f"t{t}:9", f"active ({per // 2} hosts)", up=per // 2,
                               hosts=per, check="tcp"))
        redirects.append(RedirectRow(t + 1, f"r{t}", "active", table=f"t{t}:9"))
    d = metrics.Daemon(stats=Stats(lag_p50_ms=1, lag_p99_ms=2, lag_max_ms=3, latency_p50_ms=1,
                                   latency_p99_ms=2, checks_in_flight=0, checks_waiting=0,
                                   probes=n, hosts=n),
                       results={"tcp connect ok": n * 20, "tcp connect failed": n * 20})
    return metrics.Snapshot(d, hosts, tables, redirects)


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK      # utime, stime


def hce_pid(parent: int) -> int:
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and b"--role" in argv and \
                argv[argv.index(b"--role") + 1] == b"hce":
            return int(d)
    raise RuntimeError("no hce process")


def scrape(url: str) -> tuple[float, int]:
    s = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - s, len(body)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=19469)
    a = ap.parse_args()

    snap = snapshot(a.hosts)
    r = metrics.Renderer()
    s = time.perf_counter()
    text = r.render(snap)
    cold = time.perf_counter() - s
    warm = []
    for _ in range(20):
        s = time.perf_counter()
        r.render(snap)
        warm.append(time.perf_counter() - s)
    print(f"render, in process, {a.hosts} hosts: cold {cold * 1000:.0f} ms, warm median "
          f"{statistics.median(warm) * 1000:.0f} ms, max {max(warm) * 1000:.0f} ms; "
          f"{len(text) >> 10} KiB, {text.count(chr(10))} lines")

    if os.geteuid() != 0:
        print("bench/metrics.py: the daemon part needs root", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-metrics-"))
    sock = str(tmp / "ctl.sock")
    conf = tmp / "bench.conf"
    conf.write_text(config(a.hosts, sock) + f"metrics listen on 127.0.0.1 port {a.port}\n")
    url = f"http://127.0.0.1:{a.port}/metrics"
    logf = open(tmp / "daemon.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "hoststated", "-d", "-f", str(conf)],
                              cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while True:
            if daemon.poll() is not None:
                print((tmp / "daemon.log").read_text(), file=sys.stderr)
                return 1
            try:
                hosts = Client(sock).request("show hosts")["hosts"]
                if len(hosts) == a.hosts and all(h["check_cnt"] > 0 for h in hosts):
                    break
            except CtlError:
                pass
            time.sleep(0.5)
        print(f"{a.hosts} hosts checked in {time.monotonic() - t0:.1f} s")
        hce = hce_pid(daemon.pid)

        times = []
        for _ in range(10):
            time.sleep(1.2)                     # past hce's cache: a fresh render each
            t, size = scrape(url)
            times.append(t)
        print(f"HTTP scrape, fresh render, {a.hosts} hosts ({size >> 10} KiB): median "
              f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")

        per_scrape = []
        for _ in range(5):
            time.sleep(1.2)
            c0 = cpu_s(hce)
            scrape(url)
            per_scrape.append(cpu_s(hce) - c0)
        cost = statistics.median(per_scrape)
        print(f"hce CPU per scrape: median {cost * 1000:.0f} ms "
              f"= {100 * cost / SCRAPE_EVERY:.2f} % of a core at one scrape per "
              f"{SCRAPE_EVERY:.0f} s")

        c0, w0 = cpu_s(hce), time.monotonic()
        time.sleep(a.window)
        idle = (cpu_s(hce) - c0) / (time.monotonic() - w0)
        c0, w0 = cpu_s(hce), time.monotonic()
        n = 0
        while time.monotonic() - w0 < a.window:
            scrape(url)
            n += 1
            time.sleep(max(0.0, min(SCRAPE_EVERY, a.window - (time.monotonic() - w0))))
        busy = (cpu_s(hce) - c0) / (time.monotonic() - w0)
        print(f"hce CPU over {a.window:.0f} s: {100 * idle:.2f} % without scrapes, "
              f"{100 * busy:.2f} % with {n} scrapes (one per {SCRAPE_EVERY:.0f} s): "
              f"the scrapes' share {100 * (busy - idle):.2f} % of a core")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        logf.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
