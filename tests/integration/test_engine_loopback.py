"""CheckEngine against real HTTP servers on loopback (no root needed)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from hoststated.conf.model import (CheckHttp, CheckOptions, CheckScript, Config, Global, Host,
                                   Table)
from hoststated.hce_sched import CheckEngine
from hoststated.hce_show import Answers
from hoststated.states import HostError, HostStatus

sys.path.insert(0, os.path.dirname(__file__))
from test_checks_servers import Server, http, silent  # noqa: E402

UP, DOWN, UNKNOWN, DISABLED = HostStatus.UP, HostStatus.DOWN, HostStatus.UNKNOWN, HostStatus.DISABLED


def table(tid, name, hosts, port, check=None, **opts):
    return Table(id=tid, name=name, template=name.split(":")[0], port=port,
                 check=check or CheckHttp(code=200), options=CheckOptions(**opts),
                 hosts=tuple(Host(id=hid, name=addr, address=addr, port=port, table=name, **kw)
                             for hid, addr, kw in hosts))


def config(*tables, interval=1, timeout=300, **g):
    return Config(**{"global": Global(interval=interval, timeout=timeout, **g)}, tables=tables)


async def until(pred, limit=5.0):
    for _ in range(int(limit / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return False


def status(engine):
    return {h.id: h.status for h in engine.hosts()}


def host(engine, host_id):
    return next(h for h in engine.hosts() if h.id == host_id)


def test_shared_probe_parent_and_fanout():
    async def main():
        async with Server(http(200)) as s:
            cfg = config(
                table(1, "web:p", [(1, "127.0.0.1", {}), (2, "127.0.0.1", {"parent": 1})], s.port),
                table(2, "api:p", [(3, "127.0.0.1", {})], s.port))
            changes = []
            eng = CheckEngine(cfg, changes.append)
            task = asyncio.create_task(eng.run())
            assert await until(lambda: all(v == UP for v in status(eng).values()))
            n = len(s.requests)
            eng.stop()
            await task
            return eng, changes, n
    eng, changes, n = asyncio.run(main())
    assert eng.stats().probes == 1            # one probe for hosts 1 and 3; 2 is a child
    assert n == eng.stats().checks_done       # each check reached the server once
    child = host(eng, 2)
    assert child.error == HostError.PARENT and child.detail.startswith("parent 1: http code ok")
    assert {c.id for c in changes} == {1, 2, 3}


def test_down_reason_and_log_line(caplog):
    async def main():
        async with Server(http(302)) as s:
            cfg = config(table(1, "web:p", [(1, "127.0.0.1", {})], s.port),
                         log_state_changes=True)
            eng = CheckEngine(cfg, lambda r: None)
            task = asyncio.create_task(eng.run())
            assert await until(lambda: status(eng)[1] == DOWN)
            eng.stop()
            await task
            return eng
    with caplog.at_level(logging.INFO, logger="hoststated.hce"):
        eng = asyncio.run(main())
    h = host(eng, 1)
    assert h.reason == "http code mismatch: got 302, want 200" and h.last_check > 0
    line = [r.getMessage() for r in caplog.records if r.name == "hoststated.hce"][0]
    assert line.startswith("host 127.0.0.1 (web:p), check http code ("), line
    assert line.endswith("ms,http code mismatch: got 302, want 200), "
                         "state unknown -> down, availability 0.00%")


def test_disable_enable_poll_and_reconfigure_keeps_state():
    async def main():
        async with Server(http(200), also=("127.0.0.2", "127.0.0.3", "127.0.0.4")) as s:
            cfg = config(table(1, "web:p", [(1, "127.0.0.1", {}), (2, "127.0.0.2", {})], s.port),
                         table(2, "off:p", [(3, "127.0.0.3", {})], s.port).model_copy(
                             update={"disabled": True}), interval=30)
            changes = []
            eng = CheckEngine(cfg, changes.append)
            task = asyncio.create_task(eng.run())
            eng.poll()                              # interval 30 s: poll checks now
            assert await until(lambda: status(eng)[1] == UP and status(eng)[2] == UP, 3)
            assert status(eng)[3] == DISABLED        # disabled tables are not checked
            assert "127.0.0.3" not in s.locals
            assert eng.set_host_enabled(2, False) and status(eng)[2] == DISABLED
            assert not eng.set_host_enabled(99, False)
            before = host(eng, 1).check_cnt
            changes.clear()
            # reload: host 1 unchanged (new id), host 2 gone, a new host 4
            new = config(table(1, "web:p", [(11, "127.0.0.1", {}), (4, "127.0.0.4", {})], s.port),
                         interval=30)
            eng.reconfigure(new)
            kept = host(eng, 11)
            fresh = host(eng, 4)
            eng.poll()
            assert await until(lambda: status(eng)[4] == UP, 3)
            eng.set_table_enabled("web:p", False)
            # the table rows `show tables` answers from these hosts
            tables = Answers(new, 2, eng.hosts, eng.stats).tables()
            eng.stop()
            await task
            return kept, before, fresh, changes, tables
    kept, before, fresh, changes, tables = asyncio.run(main())
    assert kept.status == UP and kept.check_cnt == before      # no pass through unknown
    assert fresh.status == UNKNOWN
    assert [c.id for c in changes if c.status == UP] == [4]    # the kept host never changed
    assert tables[0].name == "web:p" and tables[0].hosts == 2


def test_flapping_host_against_rise_and_fall():
    """The server answers 200, 500, 200, 500...: with fall 2 an up host
    stays up; then a run of failures takes it down, and rise 2 successes
    bring it back."""
    replies = []

    async def flappy(srv, reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        code = replies.pop(0) if replies else 200
        srv.requests.append(code)
        writer.write(b"HTTP/1.0 %d X\r\n\r\n" % code)
        await writer.drain()

    async def main():
        async with Server(flappy) as s:
            replies.extend([200, 200, 500, 200, 500, 200, 500, 500, 200, 200])
            cfg = config(table(1, "web:p", [(1, "127.0.0.1", {})], s.port, rise=2, fall=2,
                               fast_interval=0.05, interval=1))
            seen = []
            eng = CheckEngine(cfg, lambda r: seen.append(r.status))
            task = asyncio.create_task(eng.run())
            # the 10th reply's verdict too (a stall after the server answered
            # left seen at [UP, DOWN] when a fixed 0.1 s ran out), then a
            # moment for a transition that should not come
            assert await until(lambda: len(s.requests) >= 10 and len(seen) >= 3, 20)
            await asyncio.sleep(0.1)
            eng.stop()
            await task
            return seen, s.requests
    seen, codes = asyncio.run(main())
    assert codes[:10] == [200, 200, 500, 200, 500, 200, 500, 500, 200, 200]
    assert seen == [UP, DOWN, UP]


def test_check_still_running_not_started_twice(tmp_path):
    runs = tmp_path / "runs"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\necho x >> {runs}\nsleep 3.5\nexit 1\n")
    script.chmod(0o755)

    async def main():
        cfg = config(table(1, "s", [(1, "127.0.0.1", {})], None,
                           check=CheckScript(path=str(script))), timeout=4000)
        eng = CheckEngine(cfg, lambda r: None)
        task = asyncio.create_task(eng.run())
        await until(lambda: eng.stats().interval_timeouts >= 1, 3.4)
        st = eng.stats()
        eng.stop()
        await task
        return st
    st = asyncio.run(main())
    assert runs.read_text().count("x") == 1
    assert st.interval_timeouts >= 1


def test_max_checks_caps_checks_in_flight():
    async def main():
        async with Server(silent) as s:
            hosts = [(i, f"127.0.0.{i}", {}) for i in range(1, 21)]
            cfg = config(table(1, "web:p", hosts, s.port), timeout=400, max_checks=3)
            eng = CheckEngine(cfg, lambda r: None)
            task = asyncio.create_task(eng.run())
            await asyncio.sleep(1.5)
            st = eng.stats()
            eng.stop()
            await task
            return s.max_active, st, eng
    max_active, st, eng = asyncio.run(main())
    assert 1 <= max_active <= 3
    assert st.checks_done >= 3
    assert any(h.error == HostError.TCP_READ_TIMEOUT for h in eng.hosts())


def test_many_hosts_on_the_fast_path_never_start_early():
    """200 hosts, tcp and http mixed, on the runner's fast path and the
    engine's timer wheel: all come up, a turn never starts before it is
    due (every lag sample >= 0), and poll() mid-run checks each host once
    more, not twice at once."""
    async def main():
        async with Server(http(200), also=tuple(f"127.0.1.{i}" for i in range(1, 101))) as s:
            web = [(i, f"127.0.1.{i}", {}) for i in range(1, 101)]
            tcp = [(100 + i, f"127.0.1.{i}", {}) for i in range(1, 101)]
            from hoststated.conf.model import CheckTcp
            cfg = config(table(1, "web:p", web, s.port),
                         table(2, "tcp:p", tcp, s.port, check=CheckTcp()), interval=1)
            eng = CheckEngine(cfg, lambda r: None)
            task = asyncio.create_task(eng.run())
            # (20 s: 200 hosts on a loaded 2-core box)
            assert await until(lambda: all(v == UP for v in status(eng).values()), 20)
            eng.poll()
            assert await until(lambda: eng.stats().checks_done >= 600, 20)
            lags = list(eng.lags)
            st = eng.stats()
            eng.stop()
            await task
            return lags, st
    lags, st = asyncio.run(main())
    assert st.probes == 200 and st.interval_timeouts == 0
    assert lags and min(lags) >= 0


def test_disabled_host_probe_skips_turns_until_enabled():
    """A probe whose only host is disabled takes no turns (its `active` is
    kept up to date by enable/disable, not recomputed per turn); enabling it
    checks it at once, and a second host sharing the probe keeps it going."""
    async def main():
        async with Server(http(200)) as s:
            cfg = config(table(1, "web:p", [(1, "127.0.0.1", {})], s.port),
                         table(2, "api:p", [(2, "127.0.0.1", {})], s.port), interval=1)
            eng = CheckEngine(cfg, lambda r: None)
            task = asyncio.create_task(eng.run())
            assert await until(lambda: status(eng)[1] == UP and status(eng)[2] == UP)
            eng.set_host_enabled(1, False)
            n = len(s.requests)
            assert await until(lambda: len(s.requests) >= n + 2)     # host 2 still checked
            eng.set_host_enabled(2, False)
            await asyncio.sleep(0.4)                 # a check in flight may end
            quiet = len(s.requests)
            await asyncio.sleep(2.1)                 # two turns, none taken
            after_quiet = len(s.requests)
            eng.set_host_enabled(2, True)
            assert await until(lambda: status(eng)[2] == UP)
            eng.stop()
            await task
            return quiet, after_quiet, status(eng)
    quiet, after_quiet, st = asyncio.run(main())
    assert after_quiet == quiet
    assert st == {1: DISABLED, 2: UP}


def test_turns_spread_evenly_and_batched_by_rate():
    """The probes of one interval are interval/n apart in the first round
    (in the order of their key's hash, not at hash-drawn offsets that bunch
    up), each interval on its own; the wakeup batch is the time BATCH_CHECKS
    turns take at the configured rate, within TICK..BATCH_MAX."""
    from hoststated.hce_sched import BATCH_CHECKS, BATCH_MAX, TICK

    async def main(n_fast, n_slow):
        fast = [(1 + i, f"127.0.{2 + i // 250}.{1 + i % 250}", {}) for i in range(n_fast)]
        slow = [(5000 + i, f"127.0.20.{i}", {}) for i in range(1, n_slow + 1)]
        tables = [table(1, "fast:p", fast, 9, interval=1)]
        if slow:
            tables.append(table(2, "slow:p", slow, 9, interval=4))
        eng = CheckEngine(config(*tables), lambda r: None)
        task = asyncio.create_task(eng.run())
        await asyncio.sleep(0)
        offsets = {iv: sorted(p.offset for p in eng.probes.values() if p.interval == iv)
                   for iv in (1.0, 4.0)}
        batch = eng.batch
        eng.stop()
        await task
        return offsets, batch
    offsets, batch = asyncio.run(main(200, 50))
    assert offsets[1.0] == [i * 1.0 / 200 for i in range(200)]
    assert offsets[4.0] == [i * 4.0 / 50 for i in range(50)]
    assert batch == min(BATCH_MAX, max(TICK, BATCH_CHECKS / (200 + 50 / 4)))
    assert batch == BATCH_MAX              # 212 turns a second: a wakeup every 10 ms at most
    _, batch = asyncio.run(main(2000, 0))
    assert batch == BATCH_CHECKS / 2000    # 5 ms: 10 turns a wakeup
