"""Check workers (issue 17): the sharding of hosts over workers (pure), the
rows' wire form, and hce's mirror (ShardedEngine) driven by real workers
(hce_worker.Worker) over socketpairs, checking closed loopback ports."""

from __future__ import annotations

import asyncio
import socket
import zlib

import pytest

from hoststated import hce_shards
from hoststated.conf.load import load_text
from hoststated.hce_sched import CheckEngine
from hoststated.hce_shards import ShardedEngine, auto_workers, shard_key, shard_of, worker_count
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError
from hoststated.ipc.messages import HostRow, MessageError, MsgType, pack_rows, unpack_rows
from hoststated.states import HostError, HostStatus


def conf(n: int = 40, interval: int = 10, extra: str = "") -> str:
    hosts = ", ".join(f"198.51.100.{i}" for i in range(1, n + 1))
    return f"""
interval {interval}
table <web> {{ {hosts} }}
table <api> {{ 198.51.100.1, 198.51.100.2, 198.51.100.3 }}
{extra}
redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check tcp
}}
redirect "api" {{
	listen on 203.0.113.11 port 80
	forward to <api> port 80 check tcp
}}
"""


def split(text: str, count: int) -> list[dict[int, object]]:
    cfg = load_text(text, lookup=False)
    return [CheckEngine(cfg, lambda r: None, shard=(i, count)).entries for i in range(count)]


@pytest.mark.parametrize("count", [2, 3, 5])
def test_every_host_in_exactly_one_worker(count):
    cfg = load_text(conf(), lookup=False)
    every = {h.id for t in cfg.tables for h in t.hosts}
    parts = split(conf(), count)
    seen = [hid for p in parts for hid in p]
    assert sorted(seen) == sorted(every)          # each once
    assert all(parts), "a worker with no host among 43"


def test_the_shard_is_crc32_of_address_port_check():
    key = shard_key("198.51.100.7", 80, "x")
    assert shard_of(key, 4) == zlib.crc32(key.encode()) % 4
    assert {shard_of(shard_key(f"198.51.100.{i}", 80, "x"), 2) for i in range(50)} == {0, 1}


def test_hosts_sharing_a_probe_share_a_worker():
    # 198.51.100.1-3 are in <web> and <api> with the same check: one probe
    for part in split(conf(), 2):
        names = {}
        for e in part.values():
            names.setdefault(e.host.name, set()).add(e.table.name)
        for addr in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            assert addr not in names or names[addr] == {"web:80", "api:80"}


def test_a_host_with_a_parent_follows_it():
    text = conf(extra="table <kids> { 198.51.100.200 parent 3, 198.51.100.201 parent 41 }\n"
                      'redirect "kids" { listen on 203.0.113.12 port 80\n'
                      "  forward to <kids> port 80 check tcp }")
    cfg = load_text(text, lookup=False)
    by_name = {(h.name, t.name): h.id for t in cfg.tables for h in t.hosts}
    for count in (2, 3, 7):
        parts = split(text, count)
        owner = {hid: i for i, p in enumerate(parts) for hid in p}
        assert owner[by_name["198.51.100.200", "kids:80"]] == owner[3]
        assert owner[by_name["198.51.100.201", "kids:80"]] == owner[41]
        # the child is its parent's child in that worker's engine
        part = parts[owner[3]]
        assert part[by_name["198.51.100.200", "kids:80"]] in part[3].children


def test_an_interval_change_keeps_every_host_in_its_worker_with_its_state():
    cfg = load_text(conf(interval=10), lookup=False)
    engines = [CheckEngine(cfg, lambda r: None, shard=(i, 2)) for i in range(2)]
    for eng in engines:
        for e in eng.entries.values():
            e.state = e.state.__class__(HostStatus.UP, check_cnt=5, up_cnt=5)
    before = [set(eng.entries) for eng in engines]
    new = load_text(conf(interval=3), lookup=False)
    for eng in engines:
        eng.reconfigure(new)
    assert [set(eng.entries) for eng in engines] == before
    assert all(e.state.status is HostStatus.UP and e.state.check_cnt == 5
               for eng in engines for e in eng.entries.values())


def test_auto_workers_by_check_rate_and_cpus():
    small = load_text(conf(n=40), lookup=False)
    assert auto_workers(small, 16) == 1
    big = load_text(conf(n=250, interval=1), lookup=False)     # 253 checks a second
    assert hce_shards.check_rate(big) == pytest.approx(253)
    assert auto_workers(big, 16) == 1
    slow = load_text(conf(n=250, interval=10), lookup=False)
    assert hce_shards.check_rate(slow) == pytest.approx(25.3)
    orig = hce_shards.CHECKS_PER_WORKER
    try:
        hce_shards.CHECKS_PER_WORKER = 100          # 253 checks/s: 3 workers
        assert auto_workers(big, 16) == 3
        assert auto_workers(big, 2) == 2            # no more than the CPUs
        assert auto_workers(big, None) == 1
        assert auto_workers(slow, 16) == 1          # 25 checks/s
    finally:
        hce_shards.CHECKS_PER_WORKER = orig
    explicit = load_text("check workers 4\n" + conf(n=40), lookup=False)
    assert worker_count(explicit, 1) == 4 and worker_count(small, 64) == 1


def test_rows_round_trip_and_garbage_is_refused():
    row = HostRow(7, "198.51.100.7", "web", HostStatus.DOWN, HostError.TCP_CONNECT_FAIL,
                  "refused", 1700000000.5, 0.25, 3, 1, 2, last_change=1699999999.0,
                  transitions=2, previous=HostStatus.UP)
    (t,) = unpack_rows(pack_rows([row]))
    assert t == (7, HostStatus.DOWN, HostError.TCP_CONNECT_FAIL, "refused", 1700000000.5, 0.25,
                 3, 1, 2, 1699999999.0, 2, HostStatus.UP)
    for bad in ("{", "{}", "[[1]]", '[[1,"sideways","none","",0,0,0,0,0,0,0,"up"]]',
                '[["1","up","none","",0,0,0,0,0,0,0,"up"]]',
                '[[1,"up","none","",0,0,true,0,0,0,0,"up"]]'):
        with pytest.raises(MessageError):
            unpack_rows(bad)


# --- hce's mirror, driven by real workers -----------------------------------------

def closed_ports(n: int) -> list[int]:
    """Loopback ports nothing listens on (bound, then closed)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


LOOP_CONF = """
interval 1
timeout 300
table <t> {{ {hosts} }}
redirect "r" {{
	listen on 203.0.113.10 port 80
	forward to <t> port {port} check tcp
}}
"""


def test_mirror_of_two_workers():
    from hoststated.hce_worker import Worker
    from hoststated.parent import wire_config
    (port,) = closed_ports(1)
    hosts = ", ".join(f"127.0.0.{i}" for i in range(1, 13))
    text = LOOP_CONF.format(hosts=hosts, port=port)
    cfg = load_text(text, lookup=False)

    async def go():
        pairs = [socket.socketpair() for _ in range(2)]
        parents = [socket.socketpair() for _ in range(2)]
        workers = [Worker(Channel(parents[i][1], "parent"), Channel(pairs[i][1], "hce"),
                          messages.Init(config=wire_config(cfg), generation=1, uid=0, gid=0,
                                        index=i + 1, workers=2))
                   for i in range(2)]
        changes: list[HostRow] = []
        eng = ShardedEngine(cfg, changes.append,
                            [Channel(pairs[i][0], f"check worker {i + 1}") for i in range(2)], 1)
        tasks = [asyncio.ensure_future(w.engine.run()) for w in workers]
        tasks += [asyncio.ensure_future(w._dispatch_hce()) for w in workers]
        tasks += [asyncio.ensure_future(w._sender()) for w in workers]
        tasks += [asyncio.ensure_future(w._started()) for w in workers]
        run = asyncio.ensure_future(eng.run())
        try:
            for _ in range(60):
                await asyncio.sleep(0.1)
                if len(changes) >= 12:
                    break
            # every host down (refused), told once, by its own worker
            assert sorted(r.id for r in changes) == list(range(1, 13))
            assert all(r.status is HostStatus.DOWN for r in changes)
            for w in workers:
                await w._report(full=False)
            await asyncio.sleep(0.2)
            assert all(h.status is HostStatus.DOWN and h.check_cnt >= 1 for h in eng.hosts())
            st = eng.stats()
            assert st.hosts == 12 and st.checks_done >= 12
            assert sum(w.stats.hosts for w in eng.workers) == 12
            assert eng.results[HostError.TCP_CONNECT_FAIL] >= 12
            # a command reaches the worker that owns the host
            owner = next(w for w in workers if 5 in w.engine.entries)
            eng.set_host_enabled(5, False)
            await asyncio.wait_for(eng.settled(), 5)      # no sleep: applied, and mirrored
            assert owner.engine.entries[5].enabled is False
            assert eng.entries[5].report.status is HostStatus.DISABLED
            # a reload: forwarded, waited for; the hosts keep their state
            new = load_text(text.replace("timeout 300", "timeout 200"), lookup=False)
            await asyncio.wait_for(
                eng.reconfigure(new, messages.Reconfigure(wire_config(new), 2)), 5)
            assert eng.generation == 2 and all(w.generation == 2 for w in workers)
            assert eng.entries[5].report.status is HostStatus.DISABLED
            assert all(eng.entries[i].report.status is HostStatus.DOWN for i in (1, 2, 3))
            # garbage from a worker is fatal
            await workers[0].hce.send(MsgType.HOST_CHANGES, messages.HostChanges(2, "[[99]]"))
            with pytest.raises(ChannelError):
                await asyncio.wait_for(run, 5)
        finally:
            for t in [*tasks, run]:
                t.cancel()
            await asyncio.gather(*tasks, run, return_exceptions=True)
            for w in workers:
                w.engine.stop()
    asyncio.run(go())
