"""Check workers (issue 17): hce's checks sharded over processes.

With `check workers N` (N >= 2, or chosen by auto_workers), the parent
starts N unprivileged worker processes (hce_worker), each running the check
scheduler (hce_sched.CheckEngine) over its shard of the hosts:

- A probe (one address, port and check, shared by the hosts that use it)
  belongs to worker crc32(address, port, check) % N (shard_key, in_shard):
  the timing options are not in the key, so a reload that changes an
  interval or a timeout keeps every host in its worker, with its state. A
  host with `parent N` goes with its parent; a host without a check by its
  (address, port, table).
- A worker sends hce its hosts' state changes at once (HOST_CHANGES: a
  host's changes come from one worker, in order) and, every REPORT_INTERVAL,
  the rows whose checks ran and its figures (WORKER_REPORT).
- hce drives ShardedEngine in place of a CheckEngine: the same interface
  (hosts(), stats(), entries, results, on_change, the commands), answered
  from the mirror the reports keep; the commands go to every worker (one
  that lacks the host does nothing). EOF from a worker ends run() cleanly
  (the parent names the worker that died); anything outside the schema is
  fatal (ChannelError).

The functions at the top are pure (the parent uses auto_workers, hce_sched
in_shard); ShardedEngine is hce's.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
import zlib
from typing import Any, Callable

from hoststated.conf.model import Config
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError
from hoststated.ipc.messages import (HostRow, MsgType, Stats, WorkerCommand, WorkerReport,
                                     unpack_rows)
from hoststated.states import HostError, HostStatus

# auto_workers: one worker per this many checks a second. One process
# carries 10,000 tcp or http checks a second in about half a core with a lag
# p99 of ~3 ms here (bench/checks_vs_haproxy.py, 2026-12-02): below that a
# worker would cost memory (~110 MB at 10,000 hosts) and buy nothing.
CHECKS_PER_WORKER = 10000
REPORT_INTERVAL = 1.0       # s between a worker's reports (rows checked, figures)
REPORT_CHUNK = 250          # rows per WORKER_REPORT message (one loop turn's packing, ~1 ms)
SETTLE_TIMEOUT = 5.0        # s a command waits for the workers to apply it
RATE_WINDOW = 0.5           # s at least between the two reports a worker's checks/s is of


# --- pure: who checks what ------------------------------------------------------

def shard_key(address: str, port: int | None, what: str) -> str:
    """What decides a probe's worker: its address, port and check (or, for a
    host without a check, its table's name)."""
    return f"{address}\0{port}\0{what}"


def shard_of(key: str, count: int) -> int:
    """The worker (from 0) of a shard key, among count."""
    return zlib.crc32(key.encode()) % count


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    index, count = shard
    return shard_of(key, count) == index


def check_rate(config: Config) -> float:
    """The checks a second auto_workers counts: each host checked on its
    own (no parent) once per its table's interval (or the global one)."""
    g = config.global_.interval
    return sum(1.0 / max(1, t.options.interval or g) for t in config.tables
               if t.check.kind != "none" for h in t.hosts if h.checked and h.parent is None)


def auto_workers(config: Config, cpus: int | None) -> int:
    """`check workers` when the config does not say: one per
    CHECKS_PER_WORKER checks a second, rounded up, at most the CPUs."""
    want = max(1, math.ceil(check_rate(config) / CHECKS_PER_WORKER - 1e-9))
    return max(1, min(cpus or 1, want))


def worker_count(config: Config, cpus: int | None) -> int:
    """The number of check workers a start runs (1: none, hce checks)."""
    n = config.global_.check_workers
    return n if n is not None else auto_workers(config, cpus)


# --- hce's side: the facade over the workers -------------------------------------

class _Mirror:
    """A host as hce sees it: the config's, and the last row its worker sent."""
    __slots__ = ("host", "table", "report")

    def __init__(self, host: Any, table: Any, status: HostStatus) -> None:
        self.host = host
        self.table = table
        self.report = HostRow(id=host.id, name=host.name, table=table.name,
                              address=host.address, port=host.port, table_id=table.id,
                              parent=host.parent, weight=host.weight, status=status,
                              last_change=time.time())


class WorkerView:
    """One worker's channel and its last figures."""

    def __init__(self, index: int, chan: Channel) -> None:
        self.index = index
        self.chan = chan
        self.pid = 0
        self.stats = Stats()
        self.results: dict[str, int] = {}
        self.reported = False                 # a full report came (its hosts are known)
        self.rate = 0.0                       # checks/s over its last two reports
        self._last: tuple[float, int] | None = None
        self.reconfigured: asyncio.Future | None = None
        self.done_seq = 0                     # the last WORKER_DONE
        self.waiters: list[tuple[int, asyncio.Future]] = []

    def note(self, report: WorkerReport, now: float) -> None:
        done = report.stats.checks_done or 0
        if self._last is None:
            self._last = (now, done)
        elif now - self._last[0] >= RATE_WINDOW:     # (a report comes in several messages)
            self.rate = max(0.0, (done - self._last[1]) / (now - self._last[0]))
            self._last = (now, done)
        self.pid = report.pid
        self.stats = report.stats
        self.results = report.results


class ShardedEngine:
    """hce's check engine when the checks run in workers."""

    def __init__(self, config: Config, on_change: Callable[[HostRow], Any],
                 channels: list[Channel], generation: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_change = on_change
        self.clock = clock
        self.workers = [WorkerView(i, c) for i, c in enumerate(channels, 1)]
        self.generation = generation
        self.entries: dict[int, _Mirror] = {}
        self._deferred: list[HostRow] | None = None   # changes held while reconfiguring
        self._stopped: asyncio.Future | None = None
        self._seq = 0
        self._mirror(config)

    def _mirror(self, config: Config) -> None:
        self.config = config
        old = self.entries
        self.entries = {}
        for table in config.tables:
            for host in table.hosts:
                m = _Mirror(host, table,
                            HostStatus.DISABLED if table.disabled else HostStatus.UNKNOWN)
                prev = old.get(host.id)
                if prev is not None and (prev.table.name, prev.host.name, prev.host.port) == \
                        (table.name, host.name, host.port) and not table.disabled:
                    # the same host: its last state until its worker's full
                    # report (a `show hosts` meanwhile does not say unknown)
                    p = prev.report
                    m.report = dataclasses.replace(p, id=host.id, table_id=table.id,
                                                   parent=host.parent, weight=host.weight,
                                                   drain=False)
                self.entries[host.id] = m

    # --- the workers' messages ---
    async def _dispatch(self, w: WorkerView) -> None:
        while True:
            msg = await w.chan.recv()
            match msg.type:
                case MsgType.HOST_CHANGES:
                    if msg.payload.generation == self.generation:
                        self._changes(w, _rows(w, msg.payload.rows))
                case MsgType.WORKER_REPORT:
                    rep = msg.payload
                    if rep.index != w.index:
                        raise ChannelError(f"a report of worker {rep.index} from {w.chan.peer}")
                    if rep.generation == self.generation:
                        bad = [k for k in rep.results if k not in _RESULT_WORDS]
                        if bad:
                            raise ChannelError(f"unknown result word {bad[0]!r} from "
                                               f"{w.chan.peer}")
                        self._apply(w, _rows(w, rep.rows))
                        w.note(rep, self.clock())
                        w.reported = w.reported or rep.full
                case MsgType.WORKER_DONE:
                    w.done_seq = max(w.done_seq, msg.payload.seq)
                    for seq, fut in [x for x in w.waiters if x[0] <= w.done_seq]:
                        w.waiters.remove((seq, fut))
                        if not fut.done():
                            fut.set_result(None)
                case MsgType.RECONFIGURED:
                    fut = w.reconfigured
                    if fut is not None and not fut.done() and \
                            msg.payload.generation == self.generation:
                        fut.set_result(None)
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from {w.chan.peer}")

    def _apply(self, w: WorkerView, rows: list[tuple]) -> list[_Mirror]:
        out = []
        entries = self.entries
        for (hid, status, error, detail, last_check, latency, check_cnt, up_cnt, retry_cnt,
             last_change, transitions, previous) in rows:
            m = entries.get(hid)
            if m is None:
                raise ChannelError(f"a row of unknown host id {hid} from {w.chan.peer}")
            r = m.report
            r.status, r.error, r.detail, r.last_check, r.latency_ms = (status, error, detail,
                                                                       last_check, latency)
            r.check_cnt, r.up_cnt, r.retry_cnt = check_cnt, up_cnt, retry_cnt
            r.last_change, r.transitions, r.previous = last_change, transitions, previous
            out.append(m)
        return out

    def _changes(self, w: WorkerView, rows: list[tuple]) -> None:
        for m in self._apply(w, rows):
            row = m.report.copy()
            if self._deferred is not None:
                self._deferred.append(row)
            else:
                self.on_change(row)

    # --- the CheckEngine interface ---
    async def run(self) -> None:
        """Until stop(), or until a worker's channel ends (ChannelClosed: the
        parent names the worker that died) or carries garbage (ChannelError)."""
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        tasks = [asyncio.ensure_future(self._dispatch(w)) for w in self.workers]
        try:
            done, _ = await asyncio.wait([self._stopped, *tasks],
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not self._stopped:
                    t.result()               # raises why it ended
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def hosts(self) -> list[HostRow]:
        return [m.report.copy() for m in self.entries.values()]

    @property
    def results(self) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        for w in self.workers:
            for k, v in w.results.items():
                out[HostError(k)] += v
        return out

    def stats(self) -> Stats:
        """The workers' figures merged: counts summed; a lag or latency
        percentile the highest of the workers' (p50: the mean weighted by
        checks/s)."""
        ss = [w.stats for w in self.workers]

        def total(name: str) -> int:
            return sum(getattr(s, name) or 0 for s in ss)

        def top(name: str) -> float:
            return max((getattr(s, name) or 0.0 for s in ss), default=0.0)

        def mean(name: str) -> float:
            weights = [max(w.rate, 1e-9) for w in self.workers]
            return sum((getattr(w.stats, name) or 0.0) * x
                       for w, x in zip(self.workers, weights)) / sum(weights)
        return Stats(lag_p50_ms=mean("lag_p50_ms"), lag_p99_ms=top("lag_p99_ms"),
                     latency_p50_ms=mean("latency_p50_ms"),
                     latency_p99_ms=top("latency_p99_ms"), lag_max_ms=top("lag_max_ms"),
                     checks_in_flight=total("checks_in_flight"),
                     checks_waiting=total("checks_waiting"), checks_done=total("checks_done"),
                     interval_timeouts=total("interval_timeouts"),
                     local_errors=total("local_errors"), probes=total("probes"),
                     hosts=len(self.entries))

    def worker_rows(self) -> list[messages.WorkerRow]:
        """show summary's workers: each one's pid, hosts, checks/s and lag."""
        owned = collections.Counter()
        for w in self.workers:
            owned[w.index] = w.stats.hosts or 0
        return [messages.WorkerRow(index=w.index, pid=w.pid, hosts=owned[w.index],
                                   probes=w.stats.probes or 0, checks_per_s=round(w.rate, 1),
                                   checks_done=w.stats.checks_done or 0,
                                   lag_p50_ms=w.stats.lag_p50_ms or 0.0,
                                   lag_p99_ms=w.stats.lag_p99_ms or 0.0)
                for w in self.workers]

    @property
    def checks_at_once(self) -> int:
        return 0                              # the workers hold the checks' descriptors

    def _tell(self, cmd: WorkerCommand) -> None:
        self._seq += 1
        cmd = dataclasses.replace(cmd, seq=self._seq)
        for w in self.workers:
            asyncio.ensure_future(_send(w.chan, MsgType.WORKER_COMMAND, cmd))

    async def settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Until every worker has applied the commands sent so far and its
        changes are in the mirror (a `host disable` answers once the host
        shows disabled, as without workers); at most `timeout`."""
        loop = asyncio.get_running_loop()
        seq, futs = self._seq, []
        for w in self.workers:
            if w.done_seq < seq:
                fut = loop.create_future()
                w.waiters.append((seq, fut))
                futs.append(fut)
        if futs:
            await asyncio.wait(futs, timeout=timeout)

    def set_host_enabled(self, host_id: int, enabled: bool) -> bool:
        if host_id not in self.entries:
            return False
        self._tell(WorkerCommand("host", host=host_id, enabled=enabled))
        return True

    def set_table_enabled(self, name_or_id: str | int, enabled: bool) -> bool:
        self._tell(WorkerCommand("table", table=str(name_or_id), enabled=enabled))
        return True

    def poll(self) -> None:
        self._tell(WorkerCommand("poll"))

    def passive(self, host_id: int, action: str, detail: str) -> bool:
        if host_id in self.entries:
            self._tell(WorkerCommand("passive", host=host_id, word=action, detail=detail))
        return False                          # the change, if any, comes as HOST_CHANGES

    def set_weights(self, weights: dict[int, tuple[int, bool]]) -> None:
        for hid, m in self.entries.items():
            m.report.weight, m.report.drain = weights.get(hid, (m.host.weight, False))

    async def reconfigure(self, new: Config, payload: messages.Reconfigure) -> None:
        """Forward a new config to every worker and wait until each runs it
        (and has sent every row of its shard). Changes that arrive meanwhile
        are held and told after the caller's own switch (call_soon)."""
        loop = asyncio.get_running_loop()
        self._mirror(new)
        self.generation = payload.generation
        self._deferred = []
        try:
            for w in self.workers:
                w.reconfigured = loop.create_future()
                w.reported = False
                await w.chan.send(MsgType.RECONFIGURE,
                                  messages.Reconfigure(payload.config, payload.generation))
            for w in self.workers:
                await w.reconfigured
        finally:
            held, self._deferred = self._deferred, None
            for w in self.workers:
                w.reconfigured = None
        if held:
            loop.call_soon(lambda: [self.on_change(r) for r in held])


_RESULT_WORDS = {e.value for e in HostError}


def _rows(w: WorkerView, text: str) -> list[tuple]:
    try:
        return unpack_rows(text)
    except messages.MessageError as e:
        raise ChannelError(f"from {w.chan.peer}: {e}") from None


async def _send(chan: Channel, mtype: MsgType, payload: Any) -> None:
    from hoststated.ipc.channel import ChannelClosed
    try:
        await chan.send(mtype, payload)
    except ChannelClosed:
        pass                                  # run()'s reader reports the end
