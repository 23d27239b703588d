"""Control socket benchmark (run as root: the daemon drops privileges).

    .venv/bin/python bench/bench_control.py [--hosts 10000] [--clients 100] [--seconds 5]

Starts hoststated -d with `engine none` and a config of N hosts (100 tables
of N/100 hosts on 127.1.x.y, `check tcp` on port 9 where nothing listens:
every check is a cheap refused connect on loopback, so the hosts go down and
carry an error, interval 60 s), waits until every host has been checked, then
prints:

  1. the latency of `hoststatectl --json show hosts` (the whole command:
     interpreter start, request, 10,000-host reply, JSON printing), median and
     max of 10 runs, and of the same request through the client API alone;
  2. control requests per second the daemon answers, with many clients at
     once each sending `show redirects` back to back (msgpack frames).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoststatectl.client import Client, CtlError  # noqa: E402


def config(n: int, sock: str) -> str:
    per = max(1, n // 100)
    lines = [f'socket "{sock}"', "engine none", "interval 60", "timeout 1000"]
    tables = (n + per - 1) // per
    for t in range(tables):
        hosts = [f"127.1.{t}.{i + 1}" for i in range(min(per, n - t * per))]
        lines.append(f"table <t{t}> {{ {', '.join(hosts)} }}")
    for t in range(tables):
        lines.append(f'redirect "r{t}" {{\n\tlisten on 127.2.0.{t % 250 + 1} port {1000 + t}\n'
                     f'\tforward to <t{t}> port 9 check tcp\n}}')
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_control: run as root", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-ctl-"))
    sock = str(tmp / "ctl.sock")
    conf = tmp / "bench.conf"
    conf.write_text(config(a.hosts, sock))
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
        states = {h["status"] for h in hosts}
        print(f"{a.hosts} hosts up and checked in {time.monotonic() - t0:.1f} s "
              f"(states: {', '.join(sorted(states))})")

        cli = [sys.executable, "-m", "hoststatectl", "-s", sock, "--json", "show", "hosts"]
        times = []
        for _ in range(10):
            s = time.perf_counter()
            out = subprocess.run(cli, cwd=ROOT, capture_output=True, check=True).stdout
            times.append(time.perf_counter() - s)
        print(f"hoststatectl --json show hosts ({a.hosts} hosts, {len(out) >> 10} KiB): "
              f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
        api = []
        with Client(sock) as c:
            for _ in range(10):
                s = time.perf_counter()
                c.request("show hosts")
                api.append(time.perf_counter() - s)
        print(f"Client.request('show hosts') alone: median {statistics.median(api) * 1000:.0f} ms")

        count = [0] * a.clients
        stop = time.monotonic() + a.seconds
        errors = []

        def worker(i: int) -> None:
            try:
                with Client(sock) as c:
                    while time.monotonic() < stop:
                        c.request("show redirects")
                        count[i] += 1
            except CtlError as e:
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.clients)]
        s = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - s
        print(f"control requests answered: {sum(count) / elapsed:.0f}/s "
              f"({a.clients} clients, `show redirects`, {elapsed:.1f} s, {len(errors)} errors)")
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
