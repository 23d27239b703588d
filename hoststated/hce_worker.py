"""A check worker (issue 17, hce_shards): unprivileged, no capabilities.

It runs the check scheduler (hce_sched.CheckEngine) over its shard of the
hosts and tells hce: each state change at once (HOST_CHANGES), and every
hce_shards.REPORT_INTERVAL the rows whose checks ran with its figures
(WORKER_REPORT; every row at start and after a reconfigure). Its peers: the
parent (PING, LOG_VERBOSE, SHUTDOWN) and hce (RECONFIGURE, WORKER_COMMAND).
An unexpected message from either is fatal; EOF from either means the
daemon is going away.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from hoststated import log, privsep
from hoststated.conf.model import Config
from hoststated.hce_sched import CheckEngine
from hoststated.hce_shards import REPORT_CHUNK, REPORT_INTERVAL
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError, until_one_ends
from hoststated.ipc.messages import (HostChanges, HostRow, MsgType, WorkerCommand, WorkerReport,
                                     pack_rows)
from hoststated.proc import from_parent, settle_heap

logger = log.get("worker")


class Worker:
    def __init__(self, parent: Channel, hce: Channel, init: messages.Init) -> None:
        self.parent = parent
        self.hce = hce
        self.index, self.count = init.index, init.workers
        self.config = Config.model_validate(init.config)
        init.config.clear()         # its wire form is done with, as in hce and pfe
        self.generation = init.generation
        self.engine = CheckEngine(self.config, self._on_change, icmp_fds=list(init.icmp_fds),
                                  arp_fd=init.arp_fd, shard=(self.index - 1, self.count))
        self._changed: list[HostRow] = []
        self._flush_scheduled = False
        self._outbox: asyncio.Queue = asyncio.Queue()
        # host id -> the last check and result word its last report said
        # (floats and enum members: no tuple per host for the collector to walk)
        self._sent: dict[int, float] = {}
        self._sent_error: dict[int, object] = {}
        self._stopping = asyncio.Event()
        self.fatal: str | None = None
        settle_heap()

    # --- to hce ---
    def _on_change(self, row: HostRow) -> None:
        self._changed.append(row)
        if not self._flush_scheduled:
            # the changes of one loop iteration in one message, as hce's to pfe
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._changed:
            rows, self._changed = self._changed, []
            self._outbox.put_nowait((MsgType.HOST_CHANGES,
                                     HostChanges(self.generation, pack_rows(rows))))

    async def _report(self, full: bool) -> None:
        """The rows checked (or marked) since the last report, and the
        figures: REPORT_CHUNK rows a message, a message a loop turn, the
        figures (their sort of 40,000 samples: ~5 ms) a turn of their own
        (10,000 rows packed at once held the checks due meanwhile for ~25 ms,
        1000 at once for ~4 ms: the lag's p99). Each message carries the generation of the moment the
        report began: rows of hosts a reconfigure dropped meanwhile are of
        the old one, which hce ignores."""
        self._flush()                           # the changes before the rows that follow them
        generation, entries = self.generation, list(self.engine.entries.items())
        stats = self.engine.stats()
        results = {str(k): v for k, v in self.engine.results.items()}
        await asyncio.sleep(0)
        if full:
            self._sent, self._sent_error = {}, {}
        sent, sent_error = self._sent, self._sent_error
        pid = os.getpid()
        for i in range(0, max(1, len(entries)), REPORT_CHUNK):
            if i:
                await asyncio.sleep(0)
            rows = []
            for hid, e in entries[i:i + REPORT_CHUNK]:
                r = e.report
                # a state change came as HOST_CHANGES; a check changes last_check
                if full or sent.get(hid) != r.last_check or sent_error.get(hid) is not r.error:
                    sent[hid], sent_error[hid] = r.last_check, r.error
                    rows.append(r)
            if rows or not i:
                self._outbox.put_nowait((MsgType.WORKER_REPORT,
                                         WorkerReport(generation, self.index, pid,
                                                      pack_rows(rows), stats, results, full)))

    async def _sender(self) -> None:
        while True:
            mtype, payload = await self._outbox.get()
            await self.hce.send(mtype, payload)

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            await self._report(full=False)

    # --- from hce and the parent ---
    async def _dispatch_hce(self) -> None:
        while True:
            msg = await self.hce.recv()
            match msg.type:
                case MsgType.RECONFIGURE:
                    self._flush()               # of the old generation
                    new = Config.model_validate(msg.payload.config)
                    self.engine.reconfigure(new)
                    self.config, self.generation = new, msg.payload.generation
                    settle_heap()
                    await self._report(full=True)
                    gen = messages.Generation(self.generation)
                    self._outbox.put_nowait((MsgType.RECONFIGURED, gen))
                    await self.parent.send(MsgType.RECONFIGURED, gen)
                case MsgType.WORKER_COMMAND:
                    self._command(msg.payload)
                    if msg.payload.seq:
                        self._flush()           # its changes first
                        self._outbox.put_nowait((MsgType.WORKER_DONE,
                                                 messages.Seq(msg.payload.seq)))
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from hce")

    def _command(self, cmd: WorkerCommand) -> None:
        match cmd.action:
            case "host":
                self.engine.set_host_enabled(cmd.host, cmd.enabled)
            case "table":
                self.engine.set_table_enabled(cmd.table, cmd.enabled)
            case "poll":
                self.engine.poll()
            case "passive":
                self.engine.passive(cmd.host, cmd.word, cmd.detail)
            case _:
                raise ChannelError(f"unknown worker command {cmd.action!r} from hce")

    async def _dispatch_parent(self) -> None:
        while True:
            msg = await self.parent.recv()
            match msg.type:
                case _:
                    if await from_parent(self.parent, msg):
                        return

    async def _started(self) -> None:
        await asyncio.sleep(0)                  # the engine's first schedule is made
        await self._report(full=True)
        await self.parent.send(MsgType.WORKER_READY)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)   # the parent handles ^C
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        tasks: dict[asyncio.Future, str] = {
            asyncio.ensure_future(self.engine.run()): "check engine",
            asyncio.ensure_future(self._dispatch_parent()): "parent",
            asyncio.ensure_future(self._dispatch_hce()): "hce",
            asyncio.ensure_future(self._sender()): "hce sender",
            asyncio.ensure_future(self._reporter()): "reports",
            asyncio.ensure_future(self._started()): "start",
            asyncio.ensure_future(self._stopping.wait()): "signal",
        }
        try:
            while True:
                self.fatal = await until_one_ends(
                    {t: n for t, n in tasks.items() if not t.done()}, logger,
                    vital=("check engine",))
                # the start task ends by design; any other end is the worker's
                if self.fatal or any(t.done() for t, n in tasks.items() if n != "start"):
                    break
        finally:
            self.engine.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.fatal:
            raise log.Fatal(self.fatal)


def main(parent_sock: socket.socket, init: messages.Init) -> int:
    privsep.drop_privileges(init.uid, init.gid, keep=set())
    logger.debug("worker %d of %d running as uid %d, no capabilities", init.index,
                 init.workers, init.uid)

    async def go() -> None:
        parent = Channel(parent_sock, "parent")
        hce = Channel(socket.socket(fileno=init.peer_fd), "hce")
        await Worker(parent, hce, init).run()
    asyncio.run(go())
    return 0
