"""hce, the health-check engine process: unprivileged, no capabilities.

It owns host state (through the scheduler, hce_sched.CheckEngine), sends
state changes to pfe, and serves the control socket (control.ControlServer),
answering from hce_show.Answers. Its peers: the parent (config, reload
results, shutdown) and pfe (which sends only the kernel's counters). An unexpected message
from either is fatal; EOF from the parent means the daemon is going away.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import signal
import socket
import time
from typing import Any

from hoststated import __version__, log, metrics, passive, privsep
from hoststated.conf.model import Config
from hoststated.control import (METRICS_CLIENTS, PEER_UID, ControlServer, MetricsServer,
                                 clients_per_socket)
from hoststated.hce_sched import CheckEngine
from hoststated.hce_shards import ShardedEngine
from hoststated.hce_show import Answers
from hoststated.hce_weights import Overrides
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError, until_one_ends
from hoststated.maintenance import REASON as MAINTENANCE, Maintenance
from hoststated.notify import Notifier
from hoststated.ipc.messages import (Command, CommandError, DaemonInfo, ErrorCode, Event,
                                     HostRow, HostStatusBatch, HostWeights, MsgType,
                                     RedirectState, ShowReply, check_weight)
from hoststated.proc import from_parent, settle_heap
from hoststated.states import HostStatus

logger = log.get("hce")

READY_POLL = 0.2          # s between checks for "first round done"
COUNTS_INTERVAL = 1.0     # s at least between host counts to the parent (systemd STATUS=)
METRICS_CACHE = 1.0       # s a metrics body may be reused (many scrapers: one render)
SESSIONS_TIMEOUT = 2.0    # s for every relay process to send its sessions


class Hce:
    def __init__(self, parent: Channel, pfe: Channel, init: messages.Init):
        self.parent = parent
        self.pfe = pfe
        self.config = Config.model_validate(init.config)
        # the wire form is done with (cli.child_main holds INIT for the life of
        # the process): its maps and lists, ~5 MB at 10,000 hosts, go now
        init.config.clear()
        self.generation = init.generation
        # issue 17: with check workers, their mirror (the same interface)
        self.engine: CheckEngine | ShardedEngine
        if init.worker_fds:
            self.engine = ShardedEngine(
                self.config, self._on_change,
                [Channel(socket.socket(fileno=fd), f"check worker {i}")
                 for i, fd in enumerate(init.worker_fds, 1)], self.generation)
        else:
            self.engine = CheckEngine(self.config, self._on_change,
                                      icmp_fds=list(init.icmp_fds), arp_fd=init.arp_fd)
        self.answers = Answers(self.config, self.generation, self.engine.hosts,
                               self.engine.stats)
        self.servers = [ControlServer(socket.socket(fileno=init.control_fd), self.command)]
        if init.restricted_fd >= 0:
            self.servers.append(ControlServer(socket.socket(fileno=init.restricted_fd),
                                              self.command, restricted=True))
        # --- metrics (`metrics listen on`): served here, within the same budget
        self.metrics: MetricsServer | None = None
        if init.metrics_fd >= 0:
            self.metrics = MetricsServer(socket.socket(fileno=init.metrics_fd),
                                         self._metrics_body)
        self._renderer = metrics.Renderer()
        self._metrics_cache: tuple[float, bytes] | None = None
        self._metrics_lock = asyncio.Lock()       # scrapes at once: one render
        self._daemon = metrics.Daemon(generation=self.generation, start_time=time.time())
        self._size_servers()
        self._outbox: asyncio.Queue = asyncio.Queue()
        # the relay processes learn host states from us, as pfe does (relayd
        # passes them through pfe; here a relay does not wait on kernel writes)
        self.relays = [Channel(socket.socket(fileno=fd), f"relay {i}")
                       for i, fd in enumerate(init.relay_fds, 1)]
        self._relay_outboxes: list[asyncio.Queue] = [asyncio.Queue() for _ in self.relays]
        # batches queued for a relay and not yet written: while any is, a
        # new one queues behind it (order), else it is written at once
        self._relay_queued = [0] * len(self.relays)
        self._session_queries: dict[int, tuple[asyncio.Future, dict]] = {}
        self._query_ids = itertools.count(1)
        self._changed: dict[int, HostStatus] = {}
        self._decided_ns = 0
        self._flush_scheduled = False
        self._reloads: dict[int, asyncio.Future] = {}
        self._request_ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self._counts_due = asyncio.Event()
        self.fatal: str | None = None
        # issue 13: runtime weights and drains (their one keeper), and the
        # daemon block of show summary
        self.weights = Overrides(self.config)
        self.started, self._started_mono = time.time(), time.monotonic()
        self.last_reload: messages.ReloadResult | None = None
        self.last_reload_at = 0.0
        self.reloads = self.reload_failures = 0
        self.answers.daemon = self._daemon_info
        # issue 15: passive failure detection, from the NFLOG socket the parent bound
        self.detector = passive.Detector(self.config)
        self.nflog = socket.socket(fileno=init.nflog_fd) if init.nflog_fd >= 0 else None
        self._overrun_logged = -1.0
        # issue 14: notify commands and alert mail, run from here (no privilege)
        self.notifier = Notifier(self.config, state_fd=init.state_fd)
        # issue 14: the maintenance directory's files drain hosts (on disk:
        # kept across reloads and restarts); started by run()
        self.maintenance = Maintenance(self.config.global_.maintenance_dir, self.config,
                                       self._send_weights)
        settle_heap()

    # --- state changes -> pfe and monitor clients --------------------------

    def _on_change(self, row: HostRow) -> None:
        if not self._changed:
            self._decided_ns = time.monotonic_ns()     # the batch's first decision
        self._changed[row.id] = row.status
        self._counts_due.set()
        # a state shows at once (the cached listing is for counters): a
        # `show hosts` after pfe acted on it must not say what was before
        self.answers.invalidate()
        if not self._flush_scheduled:
            # coalesce the changes of one loop iteration into one message
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        self._broadcast(Event("host", row, row.last_change, str(row.previous),
                              _event_reason(row)))
        self.notifier.host_changed(row.id, row.status, _event_reason(row))

    def _broadcast(self, ev: Event) -> None:
        wire = ev.to_wire()
        for s in self.servers:
            s.broadcast(wire)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._changed:
            batch, self._changed = self._changed, {}
            self._post(HostStatusBatch(self.generation, batch, self._decided_ns))

    def _post(self, batch: HostStatusBatch | HostWeights,
              mtype: MsgType = MsgType.HOST_STATUS) -> None:
        # the relays first, written now: a host's state reaches every relay
        # process without a task switch per relay (the kernel writes wait
        # on pfe anyway)
        data = None
        for i, (chan, box) in enumerate(zip(self.relays, self._relay_outboxes)):
            if not self._relay_queued[i]:
                data = data or Channel.frame(mtype, batch)
                if chan.post(data):
                    self._sent_to_relay(chan, batch)
                    continue
            self._relay_queued[i] += 1
            box.put_nowait(batch)
        self._outbox.put_nowait((mtype, batch))

    def _send_snapshot(self) -> None:
        self._changed = {}
        self._post(HostStatusBatch(self.generation,
                                   {r.id: r.status for r in self.engine.hosts()}))
        self._send_redirects()
        self._send_weights()

    def _send_weights(self) -> None:
        """The runtime weights, whole, to pfe and the relays (issue 13),
        behind the host states already queued."""
        self._flush()
        shown, effective = self.weights.shown(), self.weights.effective()
        maint = self.maintenance.hosts        # issue 14: drained by a maintenance file
        for hid in maint:
            shown[hid] = (self.weights.weight(hid), True)
            effective[hid] = 0
        self.engine.set_weights(shown)
        for hid, e in self.engine.entries.items():
            e.report.drain_reason = MAINTENANCE if hid in maint else ""
        self.answers.invalidate()
        self._post(HostWeights(self.generation, effective), MsgType.HOST_WEIGHTS)

    def _send_redirects(self) -> None:
        self._outbox.put_nowait((MsgType.REDIRECT_STATE,
                                 RedirectState(self.generation,
                                               sorted(self.answers.disabled_redirects))))

    async def _pfe_sender(self) -> None:
        while True:
            mtype, payload = await self._outbox.get()
            await self.pfe.send(mtype, payload)

    async def _relay_sender(self, i: int, chan: Channel, box: asyncio.Queue) -> None:
        while True:
            batch = await box.get()
            await chan.send(MsgType.HOST_WEIGHTS if isinstance(batch, HostWeights)
                            else MsgType.HOST_STATUS, batch)
            self._relay_queued[i] -= 1
            self._sent_to_relay(chan, batch)

    @staticmethod
    def _sent_to_relay(chan: Channel, batch: HostStatusBatch | HostWeights) -> None:
        if getattr(batch, "decided_ns", 0) and logger.isEnabledFor(logging.DEBUG):
            # hce's share of the propagation delay (bench/relay_propagation.py)
            logger.debug("host states sent to %s %d us after the decision", chan.peer,
                         (time.monotonic_ns() - batch.decided_ns) // 1000)

    async def _dispatch_relay(self, chan: Channel) -> None:
        while True:
            msg = await chan.recv()
            match msg.type:
                case MsgType.RELAY_STATS:
                    st = msg.payload
                    if st.generation == self.generation:
                        names = {r.id: r.name for r in self.config.relays}
                        if bad := sorted(set(st.relays) - set(names)):
                            raise ChannelError(f"figures for unknown relay id {bad[0]} "
                                               f"from {chan.peer}")
                        self.answers.relay_figures.update(st, names)
                case MsgType.PASSIVE_EVENTS:
                    self._relay_passive(msg.payload, chan)
                case MsgType.SESSIONS_REPLY:
                    waiting = self._session_queries.get(msg.payload.seq)
                    if waiting is not None:
                        fut, replies = waiting
                        replies[chan.peer] = msg.payload.sessions
                        if len(replies) == len(self.relays) and not fut.done():
                            fut.set_result(None)
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from {chan.peer}")

    async def _sessions(self) -> dict:
        """`show sessions`: every relay process's table, asked for now."""
        if not self.relays:
            return ShowReply(sessions=[]).to_wire()
        seq = next(self._query_ids)
        fut = asyncio.get_running_loop().create_future()
        replies: dict[str, list] = {}
        self._session_queries[seq] = (fut, replies)
        try:
            for chan in self.relays:
                await chan.send(MsgType.SESSIONS_QUERY, messages.Seq(seq))
            await asyncio.wait_for(fut, SESSIONS_TIMEOUT)
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.FAILED, f"show sessions: {len(self.relays) - len(replies)} "
                                                 "relay processes did not answer") from None
        finally:
            del self._session_queries[seq]
        rows = sorted((r for rs in replies.values() for r in rs), key=lambda r: (r.pid, r.id))
        return ShowReply(sessions=rows).to_wire()

    def _counts(self) -> messages.HostCounts:
        entries = self.engine.entries.values()
        up = sum(e.report.status is HostStatus.UP for e in entries)
        return messages.HostCounts(self.generation, up, len(entries))

    async def _counts_sender(self) -> None:
        """Hosts up of all, to the parent for systemd's STATUS=: after a
        change, at most once per COUNTS_INTERVAL (a flapping table must not
        flood the parent)."""
        while True:
            await self._counts_due.wait()
            self._counts_due.clear()
            await self.parent.send(MsgType.HOST_COUNTS, self._counts())
            await asyncio.sleep(COUNTS_INTERVAL)

    # --- peers ---------------------------------------------------------------

    async def _dispatch_parent(self) -> None:
        while True:
            msg = await self.parent.recv()
            match msg.type:
                case MsgType.RECONFIGURE:
                    await self._reconfigure(msg.payload)
                    # the parent waits for this before it counts our silence again
                    await self.parent.send(MsgType.RECONFIGURED,
                                           messages.Generation(self.generation))
                    self._counts_due.set()
                case MsgType.RELOAD_RESULT:
                    self._note_reload(msg.payload)
                    fut = self._reloads.pop(msg.payload.request, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.payload)
                case _:
                    if await from_parent(self.parent, msg):
                        return

    async def _dispatch_pfe(self) -> None:
        while True:
            msg = await self.pfe.recv()
            if msg.type != MsgType.KERNEL_COUNTERS:
                raise ChannelError(f"unexpected {msg.type.name} from pfe")
            self._kernel_counters(msg.payload)

    def _kernel_counters(self, kc: messages.KernelCounters) -> None:
        if kc.generation != self.generation:
            # read before pfe switched config, or after it did and before
            # we do (the parent reconfigures pfe first): the next read counts
            return
        names = {r.name for r in self.config.redirects}
        if bad := sorted({s.redirect for s in kc.services} - names):
            raise ChannelError(f"kernel counters for unknown redirect {bad[0]}")
        self.answers.kernel.update(kc)
        self.answers.invalidate()

    async def _reconfigure(self, payload: messages.Reconfigure) -> None:
        new = Config.model_validate(payload.config)
        if isinstance(self.engine, ShardedEngine):
            await self.engine.reconfigure(new, payload)     # every worker runs it
        else:
            self.engine.reconfigure(new)
        self.notifier.reconfigure(new, {r.id: r.status for r in self.engine.hosts()})
        self.answers.reconfigure(new, payload.generation)
        self.detector.configure(new)
        for line in self.weights.reconfigure(new):
            logger.info("%s", line)
        self.maintenance.reconfigure(new)
        self.config = new
        self._size_servers()
        settle_heap()
        self.generation = payload.generation
        self._send_snapshot()
        logger.info("configuration reloaded (generation %d)", self.generation)

    def _size_servers(self) -> None:
        """The control clients' share of our descriptors: what the checks leave."""
        n = clients_per_socket(self.engine.checks_at_once,
                               len(self.servers) + (self.metrics is not None))
        for s in self.servers:
            s.max_clients = n
        if self.metrics is not None:
            self.metrics.max_clients = min(n, METRICS_CLIENTS)

    # --- metrics -------------------------------------------------------------

    def metrics_snapshot(self) -> metrics.Snapshot:
        d = self._daemon
        d.generation = self.generation
        # the reloads' one keeper is _note_reload (show summary's figures)
        d.reloads_failed = self.reload_failures
        d.reloads_ok = self.reloads - self.reload_failures
        d.last_reload = self.last_reload_at
        d.last_reload_ok = self.last_reload is None or self.last_reload.ok
        d.stats = self.engine.stats()
        d.results = {str(k): v for k, v in self.engine.results.items()}
        d.workers = self.engine.worker_rows() if isinstance(self.engine, ShardedEngine) else []
        ps = self.detector.stats
        d.passive = None if not self.detector.options else {
            k: getattr(ps, k) for k in ("packets", "events", "unattributed", "dropped",
                                        "overruns", "decisions")}
        tables = self.answers.tables()
        ups = {t.name: t.up for t in tables if not t.disabled}
        # relay tables without a check: their hosts are taken as up
        ups.update({t.name: len(t.hosts) for t in self.config.relay_tables if not t.disabled})
        relay_tables = {r.name: [(f.table, ups.get(f.table, 0))
                                 for f in r.forward if f.table is not None]
                        for r in self.config.relays}
        return metrics.Snapshot(d, self.answers.hosts(), tables, self.answers.redirects(),
                                self.answers.relays(), relay_tables,
                                routers=self.answers.routers(),
                                passive_hosts=dict(self.detector.stats.per_host))

    async def _metrics_body(self) -> tuple[bytes, str]:
        async with self._metrics_lock:
            cached = self._metrics_cache
            if cached is None or time.monotonic() - cached[0] > METRICS_CACHE:
                # a family at a time, the checks running between (the rows
                # are copies: the text is of one moment all the same)
                out: list[str] = []
                for _ in self._renderer.steps(self.metrics_snapshot(), out):
                    await asyncio.sleep(0)
                cached = self._metrics_cache = (time.monotonic(), "".join(out).encode())
        return cached[1], metrics.CONTENT_TYPE

    async def _ready(self) -> None:
        """Tell the parent once the first check round is done (every enabled
        host checked once), or after one interval plus timeout at the latest."""
        deadline = time.monotonic() + self.config.global_.interval + \
            self.config.global_.timeout / 1000.0
        while time.monotonic() < deadline:
            if all(h.check_cnt > 0 or h.status == HostStatus.DISABLED
                   for h in self.engine.hosts()):
                break
            await asyncio.sleep(READY_POLL)
        await self.parent.send(MsgType.HOST_COUNTS, self._counts())
        await self.parent.send(MsgType.HCE_READY)

    # --- control commands ----------------------------------------------------

    async def command(self, cmd: Command) -> Any:
        words, arg = cmd.words, cmd.arg
        if words[0] != "show":
            self.answers.invalidate()
        match words:
            case ("show", "sessions"):
                return await self._sessions()
            case ("show", what):
                out = self.answers.show_wire(what)
                if what == "summary" and isinstance(self.engine, ShardedEngine):
                    # issue 17: each check worker and its share
                    out["workers"] = [w.to_wire() for w in self.engine.worker_rows()]
                return out
            case ("host", ("weight" | "drain" | "undrain") as action):
                return self._host_weight(action, arg or "", cmd.value)
            case ("table", ("drain" | "undrain") as action):
                return self._table_drain(arg or "", action == "drain")
            case (("host" | "table" | "redirect") as kind, action):
                reply = self._enable(kind, arg, action == "enable")
                await self._settled()
                return reply
            case ("poll",):
                self.engine.poll()
                await self._settled()
                return None
            case ("reload",):
                return await self._reload(None)
            case ("load",):
                # the parent reads the file as root: a member of the
                # socket's group must not read /etc/shadow through us
                uid = PEER_UID.get()
                if uid != 0:
                    raise CommandError(ErrorCode.FORBIDDEN,
                                       f"load: only root may load a file, which the daemon "
                                       f"reads as root (this client runs as uid {uid})")
                return await self._reload(arg)
            case ("log", level):
                log.set_verbose(level == "verbose")
                await self.parent.send(MsgType.CTL_LOG, messages.LogVerbose(level == "verbose"))
                return None
            case ("stop",):
                asyncio.get_running_loop().call_later(
                    0.05, lambda: asyncio.ensure_future(self.parent.send(MsgType.CTL_STOP)))
                return None
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"{cmd.name}: not handled")

    async def _settled(self) -> None:
        """issue 17: with check workers, until they have applied the command."""
        if isinstance(self.engine, ShardedEngine):
            await self.engine.settled()

    async def _reload(self, path: str | None) -> Any:
        rid = next(self._request_ids)
        fut = asyncio.get_running_loop().create_future()
        self._reloads[rid] = fut
        await self.parent.send(MsgType.CTL_RELOAD, messages.CtlReload(rid, path))
        result: messages.ReloadResult = await fut
        if not result.ok:
            raise CommandError(ErrorCode.FAILED, result.message)
        return {"generation": self.generation}

    def _enable(self, kind: str, arg: str | None, enable: bool) -> Any:
        obj = self.answers.find(kind, arg or "")
        if kind == "host":
            self.engine.set_host_enabled(obj.id, enable)
        elif kind == "table":
            self.engine.set_table_enabled(obj.name, enable)
            self.answers.set_enabled(kind, obj, enable)
        else:
            self.answers.set_enabled(kind, obj, enable)
            self._send_redirects()
            self._broadcast(Event("redirect", self.answers.redirect(obj)))
        logger.info("%s %s %s", kind, obj.name, "enabled" if enable else "disabled")
        return {"id": obj.id, "name": obj.name}

    # --- passive failure detection (issue 15) ---------------------------------

    async def _passive_reader(self) -> None:
        """Read the NFLOG socket, READ_BUDGET datagrams per wakeup (its
        receive buffer is the bounded queue); an overrun is logged (once per
        OVERRUN_HOLD) and counted, any other error is fatal."""
        loop = asyncio.get_running_loop()
        sock = self.nflog
        sock.setblocking(False)
        failed: asyncio.Future = loop.create_future()

        def readable() -> None:
            for _ in range(passive.READ_BUDGET):
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self._passive_overrun()
                        continue
                    if not failed.done():
                        failed.set_exception(OSError(e.errno, f"NFLOG socket: {e.strerror}"))
                    return
                for d in self.detector.datagram(data, time.monotonic()):
                    self.passive_decision(d)

        loop.add_reader(sock.fileno(), readable)
        try:
            await failed
        finally:
            loop.remove_reader(sock.fileno())

    def _passive_overrun(self) -> None:
        now = time.monotonic()
        self.detector.overrun(now)
        if now - self._overrun_logged >= passive.OVERRUN_HOLD:
            self._overrun_logged = now
            logger.warning("passive: the NFLOG socket overran (events lost, %d overruns so "
                           "far): for %.0f s a full window only checks its host now",
                           self.detector.stats.overruns, passive.OVERRUN_HOLD)

    def _relay_passive(self, ev: messages.PassiveEvents, chan: Channel) -> None:
        """A relay's batch of failures on passive hosts (issue 15)."""
        if ev.generation != self.generation:
            return                          # of a config hce no longer runs
        now = time.monotonic()
        for hid, kinds in ev.events.items():
            if hid not in self.detector.options:
                raise ChannelError(f"passive events for host id {hid}, which is in no "
                                   f"passive table, from {chan.peer}")
            for kind in kinds:
                if kind not in messages.PASSIVE_KINDS:
                    raise ChannelError(f"passive event {kind!r} from {chan.peer}")
                d = self.detector.event(hid, kind, now)
                if d is not None:
                    self.passive_decision(d)

    def passive_decision(self, d: passive.Decision) -> None:
        self.engine.passive(d.host_id, d.action, d.detail)

    # --- runtime control and the daemon block (issue 13) ----------------------

    def _host_weight(self, action: str, arg: str, value: str | None) -> dict:
        hosts = self.answers.find_hosts(arg)
        if action == "weight":
            weight = check_weight(value or "")
            self.weights.set_weight(hosts, weight)
            done = f"weight {weight}"
        else:
            self.weights.set_drain(hosts, action == "drain")
            done = "drained" if action == "drain" else "undrained"
        self._send_weights()
        return self._held(self._acted(hosts, done), hosts, action == "undrain")

    def _table_drain(self, arg: str, drain: bool) -> dict:
        tables, hosts = self.answers.find_table_hosts(arg)
        self.weights.set_drain(hosts, drain)
        self._send_weights()
        reply = self._held(self._acted(hosts, "drained" if drain else "undrained"),
                           hosts, not drain)
        reply["tables"] = [{"id": t.id, "name": t.name} for t in tables]
        return reply

    def _held(self, reply: dict, hosts: list, undrain: bool) -> dict:
        """An undrain cannot lift a maintenance file's drain (issue 14: the
        file is the operator's word on disk, and outlives the command): the
        reply says which hosts stay drained, and why, rather than 'undrained'."""
        held = [h for h in hosts if undrain and h.id in self.maintenance.hosts]
        if held:
            names = ", ".join(f"{h.id} {h.name} ({h.table})" for h in held)
            reply["message"] += (f"; still drained by a file in maintenance directory "
                                 f"{self.maintenance.path}: {names}")
            reply["held"] = [h.id for h in held]
            logger.info("undrain: %s stay drained by maintenance directory %s",
                        names, self.maintenance.path)
        return reply

    def _acted(self, hosts: list, done: str) -> dict:
        """The reply of a command that acted on `hosts`: each, and one line
        that says how many (a name can match the same address in several
        tables)."""
        names = ", ".join(f"{h.id} {h.name} ({h.table})" for h in hosts)
        n = len(hosts)
        message = f"host {names} {done}" if n == 1 else f"{n} hosts {done}: {names}"
        logger.info("%s", message)
        return {"message": message,
                "hosts": [{"id": h.id, "name": h.name, "table": h.table,
                           "weight": self.weights.weight(h.id),
                           "drain": self.weights.drained(h.id)} for h in hosts]}

    def _note_reload(self, result: messages.ReloadResult) -> None:
        self.last_reload, self.last_reload_at = result, time.time()
        self.reloads += 1
        self.reload_failures += not result.ok

    def _daemon_info(self) -> DaemonInfo:
        r = self.last_reload
        return DaemonInfo(version=__version__, pid=os.getppid(), started=self.started,
                          uptime=round(time.monotonic() - self._started_mono, 3),
                          last_reload=self.last_reload_at,
                          reload_ok=None if r is None else r.ok,
                          reload_message="" if r is None else r.message,
                          reloads=self.reloads, reload_failures=self.reload_failures,
                          monitors=sum(s.monitors for s in self.servers))

    # --- run -----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)   # the parent handles ^C
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        for s in self.servers:
            await s.start()
        if self.metrics is not None:
            await self.metrics.start()
        self._send_redirects()
        self.notifier.start()
        self.maintenance.start()
        tasks = {
            asyncio.ensure_future(self.engine.run()): "check engine",
            asyncio.ensure_future(self._dispatch_parent()): "parent",
            asyncio.ensure_future(self._dispatch_pfe()): "pfe",
            asyncio.ensure_future(self._pfe_sender()): "pfe sender",
            asyncio.ensure_future(self._counts_sender()): "host counts",
            asyncio.ensure_future(self._stopping.wait()): "signal",
        }
        if self.nflog is not None:
            tasks[asyncio.ensure_future(self._passive_reader())] = "passive"
        for i, (chan, box) in enumerate(zip(self.relays, self._relay_outboxes)):
            tasks[asyncio.ensure_future(self._relay_sender(i, chan, box))] = f"{chan.peer} sender"
            tasks[asyncio.ensure_future(self._dispatch_relay(chan))] = chan.peer
        ready = asyncio.ensure_future(self._ready())
        try:
            self.fatal = await until_one_ends(tasks, logger, vital=("check engine",))
        finally:
            ready.cancel()
            self.notifier.close()
            self.maintenance.close()
            self.engine.stop()
            for s in self.servers:
                s.close()
            if self.metrics is not None:
                self.metrics.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, ready, return_exceptions=True)
        if self.fatal:
            raise log.Fatal(self.fatal)


def _event_reason(row: HostRow) -> str:
    """Why a host changed state, for a monitor event: the command's word,
    else the check's result (and its detail)."""
    if row.status == HostStatus.DISABLED:
        return "disabled"
    if row.status == HostStatus.UNKNOWN and row.previous == HostStatus.DISABLED:
        return "enabled"
    return row.reason


def main(parent_sock: socket.socket, init: messages.Init) -> int:
    privsep.drop_privileges(init.uid, init.gid, keep=set())
    logger.debug("running as uid %d, no capabilities", init.uid)

    async def go() -> None:
        parent = Channel(parent_sock, "parent")
        pfe = Channel(socket.socket(fileno=init.peer_fd), "pfe")
        await Hce(parent, pfe, init).run()
    asyncio.run(go())
    return 0
