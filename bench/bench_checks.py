"""Benchmark of the check engine: many hosts checked by HTTP every second.

    .venv/bin/python bench/bench_checks.py [--hosts 1000,10000] [--window 5]

The HTTP servers run in a separate process (one small asyncio server with
one listening socket per host, on 127.0.x.y:8080) so the figures are the
engine's alone. Prints, per size: time until all hosts are up, time to mark
a dead port down, the engine's CPU as % of one core (getrusage of this
process), scheduler lag p50/p99 and peak RSS. Figures, not assertions."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from hoststated.conf.model import CheckHttp, CheckOptions, Config, Global, Host, Table  # noqa: E402
from hoststated.engine import CheckEngine  # noqa: E402
from hoststated.states import HostStatus  # noqa: E402

PORT = 8080

SERVER = textwrap.dedent(r'''
    import asyncio, resource, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    RESP = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    class P(asyncio.Protocol):
        def connection_made(self, t): self.t = t
        def data_received(self, d):
            if b"\r\n\r\n" in d:
                self.t.write(RESP); self.t.close()
    async def main():
        loop = asyncio.get_running_loop()
        addrs = sys.argv[1].split(",")
        servers = {}
        for a in addrs:
            servers[a] = await loop.create_server(P, a, int(sys.argv[2]), backlog=64)
        print("ready", flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd, addr = line.decode().split()
            if cmd == "close":
                servers.pop(addr).close()
                print("closed", flush=True)
    asyncio.run(main())
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


async def bench(n: int, window: float, interval: int = 1, timeout_ms: int = 800,
                max_checks: int = 1000) -> dict:
    addrs = [address(i) for i in range(n)]
    server = subprocess.Popen([sys.executable, "-c", SERVER, ",".join(addrs), str(PORT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        hosts = tuple(Host(id=i + 1, name=a, address=a, port=PORT, table="web:8080")
                      for i, a in enumerate(addrs))
        table = Table(id=1, name="web:8080", template="web", port=PORT,
                      check=CheckHttp(path="/", code=200),
                      options=CheckOptions(timeout=timeout_ms), hosts=hosts)
        config = Config(**{"global": Global(interval=interval, timeout=timeout_ms,
                                            max_checks=max_checks)}, tables=(table,))
        loop = asyncio.get_running_loop()
        all_up = loop.create_future()
        dead = {"addr": addrs[-1], "down_at": None}
        up: set[int] = set()
        down_fut = loop.create_future()

        def on_change(r):
            if r.status == HostStatus.UP:
                up.add(r.id)
                if len(up) == n and not all_up.done():
                    all_up.set_result(time.monotonic())
            else:
                up.discard(r.id)
                if r.name == dead["addr"] and r.status == HostStatus.DOWN and not down_fut.done():
                    down_fut.set_result(time.monotonic())

        engine = CheckEngine(config, on_change)
        t0 = time.monotonic()
        task = asyncio.create_task(engine.run())
        try:
            try:
                up_t = await asyncio.wait_for(all_up, 10 * interval + 10)
                out = {"hosts": n, "all_up_s": up_t - t0}
            except TimeoutError:
                out = {"hosts": n, "all_up_s": float("nan")}
                import collections
                print("not all up:", collections.Counter(
                    (str(h.status), str(h.error), h.detail[:30]) for h in engine.hosts()
                    if h.status != HostStatus.UP).most_common(5), flush=True)
            await asyncio.sleep(2 * interval)           # settle
            engine.lags.clear()
            srv0 = server_cpu(server.pid)
            c0, s0, w0, d0 = cpu(), sys_cpu(), time.monotonic(), engine.checks_done
            await asyncio.sleep(window)
            c1, s1, w1, d1 = cpu(), sys_cpu(), time.monotonic(), engine.checks_done
            st = engine.stats()
            out.update(cpu_pct=100 * (c1 - c0) / (w1 - w0),
                       sys_pct=100 * (s1 - s0) / (w1 - w0),
                       server_pct=100 * (server_cpu(server.pid) - srv0) / (w1 - w0),
                       checks_per_s=(d1 - d0) / (w1 - w0),
                       cpu_us_per_check=1e6 * (c1 - c0) / max(1, d1 - d0),
                       lag_p50_ms=st["lag_p50_ms"], lag_p99_ms=st["lag_p99_ms"],
                       lag_max_ms=st["lag_max_ms"], lat50=st["latency_p50_ms"],
                       lat99=st["latency_p99_ms"], in_flight=st["checks_in_flight"], interval_timeouts=st["interval_timeouts"])
            # a dead port: the server closes one listener
            server.stdin.write(f"close {dead['addr']}\n")
            server.stdin.flush()
            await loop.run_in_executor(None, server.stdout.readline)
            killed = time.monotonic()
            down_t = await asyncio.wait_for(down_fut, 10 * interval + 5)
            out["dead_port_down_s"] = down_t - killed
            out["down_bound_s"] = 1 * interval + timeout_ms / 1000     # fall 1
            out["still_up"] = sum(1 for h in engine.hosts() if h.status == HostStatus.UP)
        finally:
            engine.stop()
            await task
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        server.kill()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", default="1000,10000")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--max-checks", type=int, default=1000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in (int(x) for x in args.hosts.split(",")):
        r = asyncio.run(bench(n, args.window, max_checks=args.max_checks))
        print(f"{n} hosts, http every 1 s: all up in {r['all_up_s']:.2f} s; "
              f"dead port down in {r['dead_port_down_s']:.2f} s (bound {r['down_bound_s']:.1f} s); "
              f"engine CPU {r['cpu_pct']:.1f}% of one core (kernel {r['sys_pct']:.1f}%) "
              f"({r['checks_per_s']:.0f} checks/s, {r['cpu_us_per_check']:.0f} us/check); "
              f"(server process {r['server_pct']:.0f}%); lag p50 {r['lag_p50_ms']:.2f} ms p99 {r['lag_p99_ms']:.2f} ms "
              f"max {r['lag_max_ms']:.1f} ms; check latency p50 {r['lat50']:.1f} ms "
              f"p99 {r['lat99']:.1f} ms; interval timeouts {r['interval_timeouts']}; "
              f"up at end {r['still_up']}/{n}; peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
