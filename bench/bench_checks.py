"""Benchmark of the check engine: many hosts checked every second.

    .venv/bin/python bench/bench_checks.py [--hosts 1000,10000] [--check http,tcp] [--window 5]

The listeners run in a separate process (one listening socket per host, on
127.0.x.y:8080, all on one epoll set: accept, recv, send, close) so the
engine's CPU is its own; that process's CPU is printed apart. The engine
runs in this process. Prints, per check kind and size: checks/s achieved and
wanted, the engine's CPU as % of one core (getrusage of this process, in a
window after the start), the scheduler lag (start - due of every check in
the window) p50/p99/max, RSS, time until all hosts are up, time to mark a
dead port down, and the time spent in the garbage collector. As hce, the
bench calls settle_heap() once the engine is configured. --listener-nap S
makes the listener poll every S seconds instead of sleeping in epoll_wait,
so the engine's sends do not pay, on loopback, for waking it up. Figures,
not assertions; on a shared machine, run it more than once.""" 

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import resource
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from hoststated.conf.model import (CheckHttp, CheckOptions, CheckTcp, Config, Global,  # noqa: E402
                                   Host, Table)
from hoststated.hce_sched import CheckEngine  # noqa: E402
from hoststated.proc import settle_heap  # noqa: E402
from hoststated.states import HostStatus  # noqa: E402

PORT = 8080

SERVER = textwrap.dedent(r'''
    # One listening socket per host, all on one epoll set, no asyncio: a
    # connection costs accept, (http) recv + send, close. A tcp check's
    # connection is accepted and closed only to keep the backlog free.
    import _socket, os, resource, select, socket, sys, time
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    RESP = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    http = sys.argv[3] == "http"
    nap = float(sys.argv[4])
    ep = select.epoll()
    listeners, waiting = {}, {}
    for a in sys.argv[1].split(","):
        port = int(sys.argv[2])
        if a.startswith("+"):                       # the host that will die: its own port
            a, port = a[1:], port + 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a, port))
        s.listen(4096)
        s.setblocking(False)
        listeners[s.fileno()] = (a, s)
        ep.register(s.fileno(), select.EPOLLIN)
    ep.register(0, select.EPOLLIN)
    print("ready", flush=True)
    DONTWAIT = socket.MSG_DONTWAIT
    def answer(c):
        try:
            req = c.recv(4096, DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            c.close(); return True
        if req and b"\r\n\r\n" not in req:
            return False                               # (requests come in one piece here)
        try:
            if req:
                c.send(RESP)
        except OSError:
            pass
        c.close()
        return True
    while True:
        events = ep.poll(0)
        if not events:
            if nap:
                time.sleep(nap)
                continue
            events = ep.poll()
        for fd, ev in events:
            if fd == 0:
                line = os.read(0, 4096).decode()
                if not line:
                    sys.exit(0)
                for cmd in line.split("\n"):
                    if cmd.startswith("close "):
                        addr = cmd.split()[1]
                        for lfd, (a, s) in list(listeners.items()):
                            if a == addr:
                                ep.unregister(lfd); s.close(); del listeners[lfd]
                        print("closed", flush=True)
                continue
            entry = listeners.get(fd)
            if entry is None:
                c = waiting.pop(fd)
                ep.unregister(fd)
                if not answer(c):
                    c.close()
                continue
            try:
                cfd, _ = entry[1]._accept()
            except OSError:
                continue
            c = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, cfd)
            if not http:
                c.close()
            elif not answer(c):
                waiting[cfd] = c
                ep.register(cfd, select.EPOLLIN)
''')


def address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sys_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def switches() -> int:
    """Context switches of this process: its wakeups, give or take."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_nvcsw + r.ru_nivcsw


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000.0 if xs else float("nan")


async def bench(n: int, window: float, kind: str = "http", nap: float = 0.0, interval: int = 1,
                timeout_ms: int = 800, max_checks: int = 1000) -> dict:
    addrs = [address(i) for i in range(n)]
    dead = addrs[-1]                  # listens on PORT + 1, alone: closing it kills one host
    server = subprocess.Popen([sys.executable, "-c", SERVER,
                               ",".join(addrs[:-1] + ["+" + dead]), str(PORT), kind, str(nap)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        check = CheckHttp(path="/", code=200) if kind == "http" else CheckTcp()
        hosts = tuple(Host(id=i + 1, name=a, address=a, port=PORT + (a == dead), table="web:8080")
                      for i, a in enumerate(addrs))
        table = Table(id=1, name="web:8080", template="web", port=PORT, check=check,
                      options=CheckOptions(timeout=timeout_ms), hosts=hosts)
        config = Config(**{"global": Global(interval=interval, timeout=timeout_ms,
                                            max_checks=max_checks)}, tables=(table,))
        loop = asyncio.get_running_loop()
        all_up = loop.create_future()
        up: set[int] = set()
        down_fut = loop.create_future()

        def on_change(r):
            if r.status == HostStatus.UP:
                up.add(r.id)
                if len(up) == n and not all_up.done():
                    all_up.set_result(time.monotonic())
            else:
                up.discard(r.id)
                if r.name == dead and r.status == HostStatus.DOWN and not down_fut.done():
                    down_fut.set_result(time.monotonic())

        engine = CheckEngine(config, on_change)
        settle_heap()                                   # as hce does once configured
        t0 = time.monotonic()
        task = asyncio.create_task(engine.run())
        try:
            try:
                up_t = await asyncio.wait_for(all_up, 10 * interval + 10)
                out = {"hosts": n, "all_up_s": up_t - t0}
            except TimeoutError:
                out = {"hosts": n, "all_up_s": float("nan")}
                print("not all up:", collections.Counter(
                    (str(h.status), str(h.error), h.detail[:30]) for h in engine.hosts()
                    if h.status != HostStatus.UP).most_common(5), flush=True)
            await asyncio.sleep(2 * interval)           # settle
            # every check's lag (start - due) in the window, not just the last LAG_WINDOW
            engine.lags = collections.deque(maxlen=int(4 * n * window / interval) + 1000)
            GC.reset()
            srv0 = server_cpu(server.pid)
            c0, s0, w0, d0 = cpu(), sys_cpu(), time.monotonic(), engine.checks_done
            x0 = switches()
            await asyncio.sleep(window)
            c1, s1, w1, d1 = cpu(), sys_cpu(), time.monotonic(), engine.checks_done
            x1 = switches()
            lags = sorted(engine.lags)
            st = engine.stats()
            out.update(cpu_pct=100 * (c1 - c0) / (w1 - w0),
                       sys_pct=100 * (s1 - s0) / (w1 - w0),
                       server_pct=100 * (server_cpu(server.pid) - srv0) / (w1 - w0),
                       checks_per_s=(d1 - d0) / (w1 - w0), wanted_per_s=n / interval,
                       cpu_us_per_check=1e6 * (c1 - c0) / max(1, d1 - d0),
                       wakeups_per_check=(x1 - x0) / max(1, d1 - d0),
                       gc_pct=100 * sum(GC.spent) / (w1 - w0), gc_count=list(GC.count),
                       gc_max_ms=1000 * GC.longest,
                       lag_n=len(lags), lag_p50_ms=pct(lags, 0.50), lag_p99_ms=pct(lags, 0.99),
                       lag_max_ms=lags[-1] * 1000.0 if lags else float("nan"),
                       lat50=st.latency_p50_ms, lat99=st.latency_p99_ms,
                       in_flight=st.checks_in_flight, interval_timeouts=st.interval_timeouts,
                       failing=sum(1 for h in engine.hosts() if h.status != HostStatus.UP))
            # a dead port: the server closes one listener
            # (timed from the order: the reply may come back after the engine,
            # busy, has seen the port die; an upper bound, never negative)
            killed = time.monotonic()
            server.stdin.write(f"close {dead}\n")
            server.stdin.flush()
            await loop.run_in_executor(None, server.stdout.readline)
            down_t = await asyncio.wait_for(down_fut, 10 * interval + 5)
            out["dead_port_down_s"] = down_t - killed
            out["down_bound_s"] = 1 * interval + timeout_ms / 1000     # fall 1
            out["still_up"] = sum(1 for h in engine.hosts() if h.status == HostStatus.UP)
        finally:
            engine.stop()
            await task
        out["rss_mb"] = rss_mb()
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        server.kill()
        server.wait()


class GcClock:
    """Time spent in the garbage collector, by generation."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.spent = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.longest = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
        else:
            g = info["generation"]
            took = time.perf_counter() - self.t0
            self.spent[g] += took
            self.count[g] += 1
            self.longest = max(self.longest, took)

    def reset(self) -> None:
        self.spent, self.count, self.longest = [0.0, 0.0, 0.0], [0, 0, 0], 0.0


GC = GcClock()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", default="1000,10000")
    ap.add_argument("--check", default="http", help="http, tcp, or both: http,tcp")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--max-checks", type=int, default=1000)
    ap.add_argument("--listener-nap", type=float, default=0.0)
    ap.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"),
                    help="the engine's event loop")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    for kind in args.check.split(","):
        for n in (int(x) for x in args.hosts.split(",")):
            coro = bench(n, args.window, kind, args.listener_nap, max_checks=args.max_checks)
            if args.loop == "uvloop":
                import uvloop
                r = uvloop.run(coro)
            else:
                r = asyncio.run(coro)
            print(f"{n} hosts, {kind} every 1 s: {r['checks_per_s']:.0f} checks/s of "
                  f"{r['wanted_per_s']:.0f} wanted; engine CPU {r['cpu_pct']:.1f}% of one core "
                  f"(kernel {r['sys_pct']:.1f}%, {r['cpu_us_per_check']:.0f} us/check, "
                  f"{r['wakeups_per_check']:.2f} wakeups/check); "
                  f"lag p50 {r['lag_p50_ms']:.2f} ms p99 {r['lag_p99_ms']:.2f} ms "
                  f"max {r['lag_max_ms']:.1f} ms ({r['lag_n']} checks); "
                  f"RSS {r['rss_mb']:.0f} MB (peak {r['peak_rss_mb']:.0f} MB); "
                  f"all up in {r['all_up_s']:.2f} s; dead port down in "
                  f"{r['dead_port_down_s']:.2f} s (bound {r['down_bound_s']:.1f} s); "
                  f"check latency p50 {r['lat50']:.1f} ms p99 {r['lat99']:.1f} ms; "
                  f"interval timeouts {r['interval_timeouts']}; not up in the window "
                  f"{r['failing']}; up at end {r['still_up']}/{n}; "
                  f"listener process CPU {r['server_pct']:.0f}%; "
                  f"gc {r['gc_pct']:.1f}% (collections by generation {r['gc_count']}, "
                  f"longest {r['gc_max_ms']:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
