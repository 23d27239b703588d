"""The check scheduler hce drives (CheckEngine): runs every check, keeps host state.

- Each distinct (address, port, check, timeout, intervals) is one *probe*,
  checked once and its verdict fanned out to every table host using it.
- Probes are spread evenly over their interval: the probes of one interval,
  in the order of a hash of their key (deterministic), are interval/n apart.
  (Offsets drawn from the hash alone put 0.81-1.23 of the mean in a 100 ms
  window at 1,000 probes a second.)
- The engine keeps its own timer wheel (buckets TICK wide) and one loop
  timer, set for the next bucket due but no sooner than `batch` after the
  last wakeup that started checks: one wakeup starts every check due by then
  (a turn never starts early, and waits at most `batch`). Each wakeup runs
  the check path cold, so at low rates the turns go in batches: `batch` is
  the time BATCH_CHECKS turns take at the configured rate, between TICK and
  BATCH_MAX (at 1,000 checks/s: 10 ms, 10 turns a wakeup; at 4,000/s:
  2.5 ms; at 10,000/s: 1 ms). Evenly spread, a 100 ms window holds the
  same number of batches wherever it starts.
- A check still running at its next turn is not started twice (and counts
  as `interval timeout` when it has run longer than the interval, as
  relayd).
- Plain-TCP checks (tcp, http, send/expect) run on the runner's fast path
  (checks.poller), with no task per check; the others in a task.
- At most Global.max_checks checks are in flight; the rest wait their turn.
- The lag between a check's due time and its start is kept over a window and
  reported by stats() as p50/p99.
- A host with `parent N` is not checked: it mirrors host N's state.
- reconfigure() carries over the state and counters of every host whose
  (table, address, port, check) is unchanged: an up host stays up.
- A check that fails for a reason of our own (no descriptor, no buffer, no
  memory for its socket: HostError.TCP_SOCKET_LIMIT) says nothing about the
  host: it is a *local error*, counted (stats().local_errors), logged at
  most once per LOCAL_LOG_EVERY, and not counted as a check: the host keeps
  its state. (relayd marks the host down; a local user who can exhaust our
  descriptors could then take every host down.)

Each host's report is an ipc.messages.HostRow, updated in place; hosts()
hands out copies and stats() the figures (the rows of tables and redirects
are hce_show's). State changes go to on_change(row) and, as relayd, to the
log (logger "hoststated.hce") with `log state changes`; every check with
`log host checks`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import functools
import heapq
import itertools
import logging
import math
import time
import zlib
from typing import Any, Callable, Iterable

from hoststated.checks import check_name, make_check
from hoststated.checks.base import Target, Verdict, failed
from hoststated.checks.poller import poller_for
from hoststated.checks.runner import bare_path
from hoststated.checks.tcp import TcpCheck
from hoststated.conf.model import Config, Host, Table
from hoststated.hce_shards import in_shard, shard_key
from hoststated.hce_state import (TRANSITIONS, Event, HostState, fall_count, next_interval,
                                  note_change, step, passive_down)
from hoststated.ipc.messages import HostRow, Stats
from hoststated.relay_proxy import header as _proxy_header
from hoststated.states import HostError, HostStatus

logger = logging.getLogger("hoststated.hce")

LAG_WINDOW = 20000          # lag samples kept for the percentiles
LOCAL_LOG_EVERY = 60.0      # s: at most one log line about local errors this often
# an OSError of ours, not the host's, when a check cannot get its socket
LOCAL_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
TICK = 0.001                # s: the timer wheel's bucket width
BATCH_CHECKS = 10           # turns a wakeup should start, at the configured rate
BATCH_MAX = 0.010           # s: the longest a due turn waits for the ones after it

# hce_state.step's table by event, looked up by status alone (hashing an Event
# costs a Python call; this runs once per host per check)
_ON_SUCCESS = {s: rule for (s, ev), rule in TRANSITIONS.items() if ev is Event.SUCCESS}
_ON_FAILURE = {s: rule for (s, ev), rule in TRANSITIONS.items() if ev is Event.FAILURE}


# _check_key's last answer, (check, key): a table's hosts ask one after the
# other about its one check object (the config is frozen), so at 10,000 hosts
# in 40 tables it dumps 40 checks, not 10,000 (and reads no missing field on a
# pydantic model, each an AttributeError raised in Python)
_last_key: tuple[Any, str] | None = None


def _check_key(check: Any) -> str:
    global _last_key
    last = _last_key
    if last is not None and last[0] is check:
        return last[1]
    # SecretStr dumps as '**********': checks that differ only in a password
    # must not share a probe, so the secrets go into the key, hashed
    import hashlib
    secrets = [s.get_secret_value() for s in (getattr(check, "password", None),
                                              getattr(check, "secret", None)) if s is not None]
    key = check.model_dump_json()
    if secrets:
        key += hashlib.sha256("\0".join(secrets).encode()).hexdigest()
    _last_key = (check, key)
    return key


class _TableReads:
    """What _attach reads of a table, the same for each of its hosts: read
    once per table (the last one's kept, as _check_key's), not per host."""
    __slots__ = ("table", "g", "interval", "timeout", "connect", "check_key", "server_name",
                 "proxy_header", "tls")

    def __init__(self, table: Table, g: Any) -> None:
        self.table, self.g = table, g
        opts, check = table.options, table.check
        self.interval = float(opts.interval or g.interval)
        self.timeout = (opts.timeout if opts.timeout is not None else g.timeout) / 1000.0
        self.connect = opts.connect_timeout / 1000.0 if opts.connect_timeout is not None else None
        if self.connect is not None and check.kind == "tcp":
            # the connect is all of it
            self.timeout, self.connect = min(self.timeout, self.connect), None
        self.check_key = _check_key(check)
        self.server_name = getattr(check, "host", None)
        self.proxy_header = proxy_header(table.proxy_protocol)
        self.tls = check.kind in ("tls", "https") or bool(getattr(check, "tls", False))


_last_reads: _TableReads | None = None


def _table_reads(table: Table, g: Any) -> _TableReads:
    global _last_reads
    r = _last_reads
    if r is None or r.table is not table or r.g is not g:
        r = _last_reads = _TableReads(table, g)
    return r


def _unchecked_state(table: Table) -> HostState:
    """migrate (issue 14): a host that is not checked is up, but for `check
    none off` (ldirectord's checktype off)."""
    down = table.check.kind == "none" and table.check.state == "off"
    return HostState(HostStatus.DOWN if down else HostStatus.UP)


def where(r: HostRow) -> str:
    """A host as log lines name it: with its table, whose name holds the
    port, `198.51.100.12 (web:80)`: the same address is often in several."""
    return f"{r.name} ({r.table})"



def proxy_header(version: int | None) -> bytes | None:
    """What a check sends first to hosts that read the PROXY protocol: a
    connection of our own, v1 UNKNOWN or v2 LOCAL (HAProxy's checks do the
    same; the host then takes the connection's own addresses)."""
    return None if version is None else _proxy_header(version, None, None, local=True)

class _Entry:
    """One host of one table."""
    __slots__ = ("host", "table", "report", "state", "rise", "fall", "probe",
                 "children", "enabled", "check_name")

    def __init__(self, host: Host, table: Table) -> None:
        self.host = host
        self.table = table
        self.report = HostRow(id=host.id, name=host.name, table=table.name,
                              address=host.address, port=host.port, table_id=table.id,
                              parent=host.parent, weight=host.weight,
                              last_change=time.time())   # in its state since now
        self.state = HostState()
        self.rise = max(1, table.options.rise)
        self.fall = max(1, fall_count(host.retry, table.options.fall))
        self.probe: _Probe | None = None
        self.children: list[_Entry] = []
        self.enabled = True
        self.check_name = check_name(table.check)

    @property
    def same_key(self) -> tuple:
        return (self.table.name, self.host.address or self.host.name, self.host.port,
                _check_key(self.table.check))


class _Probe:
    __slots__ = ("key", "check", "target", "timeout", "interval", "fast", "down",
                 "entries", "due", "slot", "task", "started", "ssl_ctx", "offset",
                 "setup_error", "queued", "bare", "library", "on_verdict", "proto", "order",
                 "active", "connect_checks", "connect_timeout", "turns", "connect_only")

    def __init__(self, key: tuple, check: Any, target: Target, timeout: float,
                 interval: float, fast: float | None, down: float | None) -> None:
        self.key = key
        self.check = check
        self.target = target
        self.timeout = timeout
        self.interval = interval
        self.fast = fast
        self.down = down
        self.entries: list[_Entry] = []
        self.due = 0.0
        self.slot = 0                         # its live entry in the engine's heap; 0: none
        self.task: asyncio.Task | None = None
        self.started = 0.0
        self.ssl_ctx = None
        self.setup_error: Verdict | None = None
        self.queued = False                   # waiting for a slot (max_checks)
        self.bare: bool | None = None         # runs on the fast path (known at first run)
        self.library = False                  # a LibraryCheck with its own timeout
        self.proto = None                     # a conversation whose fresh() makes the next
        self.active = False                   # any host enabled, in an enabled table
        # migrate (issue 14): `connect checks N`: N connects between two full checks
        self.connect_checks = 0
        self.connect_timeout = timeout
        self.turns = 0
        self.connect_only = False             # this turn only connects
        # where in the interval this probe's turn falls: its place in the
        # hash order of its interval's probes (_schedule_all)
        self.order = zlib.crc32(repr(key).encode())     # (ties: config order, sort is stable)
        self.offset = 0.0

    def update_active(self) -> None:
        """Recount `active` (kept, not computed per turn: host enable/disable)."""
        self.active = any(e.enabled and not e.table.disabled for e in self.entries)

    def next_in(self) -> float:
        """Seconds to the next turn: the shortest any of its hosts wants."""
        if self.fast is None and self.down is None:
            return self.interval               # the common case: one interval
        best = None
        for e in self.entries:
            if e.enabled:
                want = next_interval(e.state, self.interval, fast_interval=self.fast,
                                     down_interval=self.down)
                best = want if best is None else min(best, want)
        return best if best is not None else self.interval


class _Immediate:
    """Marks a probe whose verdict is known without I/O (setup error), or
    (_STARTING) one whose fast-path check is being started."""
    __slots__ = ()

    def cancel(self) -> None:
        pass


_STARTING = _Immediate()


class CheckEngine:
    def __init__(self, config: Config, on_change: Callable[[HostRow], Any], *,
                 icmp_fds: Iterable[int] | None = None,
                 arp_fd: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 shard: tuple[int, int] | None = None) -> None:
        self.on_change = on_change
        # issue 17: a check worker's (index from 0, count): only the hosts
        # of its shard (hce_shards.in_shard) are kept, checked and reported
        self.shard = shard
        self.clock = clock
        self.icmp_fds = list(icmp_fds) if icmp_fds is not None else None
        self.pinger = None
        # migrate (issue 14): check arp's socket (None: open one, as root: tests)
        self.arp_fd = arp_fd
        self.arper = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.entries: dict[int, _Entry] = {}
        self.probes: dict[tuple, _Probe] = {}
        self.in_flight = 0
        self.checks_done = 0
        self.interval_timeouts = 0
        self.local_errors = 0
        # checks done by result word (metrics: hoststated_checks_total)
        self.results: collections.Counter[HostError] = collections.Counter()
        self._local_logged = 0                  # local_errors when last logged
        self._local_log_at = -math.inf          # clock() before which we do not log again
        self.waiting: collections.deque[_Probe] = collections.deque()
        # the turns to come, in buckets one TICK wide: bucket k starts at
        # k * TICK every check due in ((k-1) * TICK, k * TICK]
        self.buckets: dict[int, list[tuple[float, int, _Probe]]] = {}
        self.bucket_keys: list[int] = []        # heap of the buckets' k
        self.slots = itertools.count(1)
        self.wake: asyncio.TimerHandle | None = None
        self.wake_k = math.inf
        self.batch = TICK                       # s: see the module doc (_schedule_all)
        self.woke = -math.inf                   # clock() of the last wakeup that started checks
        self.lags: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)
        self.latencies: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)
        self._stopped: asyncio.Future | None = None
        self._poll_at_start = False
        self._build(config)

    # --- building ---------------------------------------------------------
    def _build(self, config: Config, old: dict[tuple, _Entry] | None = None) -> None:
        self.config = config
        g = config.global_
        self.max_checks = max(1, g.max_checks)
        self.entries = {}
        self.probes = {}
        for table in config.tables:
            for host in table.hosts:
                e = _Entry(host, table)
                prev = old.get(e.same_key) if old else None
                if prev is not None:
                    e.state = prev.state
                    e.enabled = prev.enabled
                    # the history carries with the report; the weight is the
                    # new config's until hce applies its runtime ones (set_weights)
                    e.report = dataclasses.replace(prev.report, id=host.id, table_id=table.id,
                                                   parent=host.parent, weight=host.weight,
                                                   drain=False)
                old_status = e.report.status
                if table.disabled or not e.enabled:
                    e.state = step(e.state, Event.DISABLE)
                    e.report.status = e.state.status
                elif not host.checked:        # migrate (issue 14): taken as up (or down)
                    e.state = _unchecked_state(table)
                    e.report.status = e.state.status
                    e.report.detail = "not checked"
                elif e.state.status == HostStatus.DISABLED:   # the table was enabled again
                    e.state = step(e.state, Event.ENABLE)
                    e.report.status = e.state.status
                if prev is not None:          # a new host starts in its state
                    note_change(e.report, old_status, time.time())
                self.entries[host.id] = e
        roots: dict[int, bool] = {}           # issue 17: host id -> its shard is ours
        for e in self.entries.values():
            if not e.host.checked:
                # migrate (issue 14): never checked
                if self.shard is not None:
                    roots[e.host.id] = in_shard(shard_key(e.host.address or e.host.name,
                                                          e.host.port, e.table.name), self.shard)
                continue
            if e.host.parent is not None:
                parent = self.entries.get(e.host.parent)
                if parent is not None and parent is not e:
                    parent.children.append(e)
                    continue
            roots[e.host.id] = self._attach(e, g)
        if self.shard is not None:
            self._keep_shard(roots)

    def _keep_shard(self, roots: dict[int, bool]) -> None:
        """issue 17: keep the hosts of this worker's shard: a host checked
        (or not) on its own by its probe's shard, a host with `parent N`
        with its parent (through a chain of parents to the one checked)."""
        def ours(e: _Entry) -> bool:
            seen = set()
            while e.host.id not in roots:
                seen.add(e.host.id)
                up = self.entries.get(e.host.parent)
                if up is None or up.host.id in seen:
                    return False
                e = up
            return roots[e.host.id]
        self.entries = {hid: e for hid, e in self.entries.items() if ours(e)}
        for e in self.entries.values():
            e.children = [c for c in e.children if c.host.id in self.entries]

    def _attach(self, e: _Entry, g: Any) -> bool:
        table, host = e.table, e.host
        opts = table.options
        reads = _table_reads(table, g)
        interval, timeout, connect = reads.interval, reads.timeout, reads.connect
        address = host.address or host.name
        # migrate (issue 14): `check port`, `check source`, `connect timeout`,
        # `connect checks`, and the virtual service an ldirectord script is told
        port = opts.check_port or host.port
        virtual = self._virtual(table) if table.check.kind == "script" else None
        key = (address, port, reads.check_key, timeout, interval,
               opts.fast_interval, opts.down_interval, table.proxy_protocol,
               opts.source, connect, opts.connect_checks, virtual)
        if self.shard is not None and not in_shard(shard_key(address, port, key[2]), self.shard):
            return False                      # issue 17: another worker's
        probe = self.probes.get(key)
        if probe is None:
            from hoststated.checks.registry import port_for  # protocol checks' default ports
            target = Target(address=address, port=port_for(table.check, port), name=host.name,
                            server_name=reads.server_name, ip_ttl=host.ip_ttl,
                            proxy_header=reads.proxy_header,
                            source=opts.source, connect_timeout=connect, virtual=virtual,
                            link=(host.link.ifname, host.link.mac, host.link.source)
                            if host.link is not None else None)
            probe = _Probe(key, table.check, target, timeout, interval,
                           opts.fast_interval, opts.down_interval)
            probe.connect_checks = opts.connect_checks
            probe.connect_timeout = min(timeout, connect) if connect is not None else timeout
            if reads.tls:
                from hoststated.checks.runner import ssl_context
                try:
                    probe.ssl_ctx = ssl_context(getattr(table.check, "verify", False),
                                                getattr(table.check, "ca_file", None))
                except (OSError, ValueError) as ex:
                    probe.setup_error = failed(HostError.TLS_CONNECT_FAIL,
                                               f"ca file {table.check.ca_file}: {ex}")
            self.probes[key] = probe
            probe.on_verdict = functools.partial(self._bare_done, probe)
        probe.entries.append(e)
        probe.update_active()
        e.probe = probe
        return True

    # --- running ----------------------------------------------------------
    async def run(self) -> None:
        """Check until stop()."""
        self.loop = asyncio.get_running_loop()
        self.poller = poller_for(self.loop)
        self._stopped = self.loop.create_future()
        if self.icmp_fds is not None or any(p.check.kind == "icmp" for p in self.probes.values()):
            self._open_pinger()
        self._schedule_all(first=True)
        # migrate (issue 14): hosts that are not checked are up (or down) from
        # the start: said once, as a check's change would be (pfe, monitors)
        for e in list(self.entries.values()):
            if not e.host.checked and e.enabled and not e.table.disabled:
                self._changed(e)
        if self._poll_at_start:
            self.poll()
        try:
            await self._stopped
        finally:
            self._halt()

    def stop(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _open_pinger(self) -> None:
        from hoststated.checks.runner import IcmpPinger
        if self.pinger is not None:
            return
        # no try: icmp checks without their sockets could never pass (fail-stop)
        self.pinger = IcmpPinger(self.icmp_fds)

    def _arp_pinger(self):
        if self.arper is None:
            from hoststated.hce_arp import ArpPinger
            # no try: arp checks without their socket could never pass (fail-stop)
            self.arper = ArpPinger(self.arp_fd)
        return self.arper

    def _halt(self) -> None:
        for p in self.probes.values():
            self._cancel(p)
        self.waiting.clear()
        self.buckets.clear()
        self.bucket_keys.clear()
        if self.wake is not None:
            self.wake.cancel()
            self.wake, self.wake_k = None, math.inf
        if self.pinger is not None:
            self.pinger.close()
            self.pinger = None
        if self.arper is not None:
            self.arper.close()
            self.arper = None

    def _cancel(self, p: _Probe) -> None:
        p.slot = 0                              # its heap entry is stale now
        task = p.task
        if task is not None:
            p.task = None
            task.cancel()
            self.in_flight -= 1

    def _schedule_all(self, first: bool) -> None:
        now = self.clock()
        rate = sum(1.0 / p.interval for p in self.probes.values() if p.interval > 0)
        self.batch = min(BATCH_MAX, max(TICK, BATCH_CHECKS / rate)) if rate else BATCH_MAX
        groups: dict[float, list[_Probe]] = collections.defaultdict(list)
        for p in self.probes.values():
            groups[p.interval].append(p)
        for interval, ps in groups.items():
            ps.sort(key=lambda p: p.order)
            for i, p in enumerate(ps):
                p.offset = i * interval / len(ps)
        self.buckets.clear()                    # a reconfigure leaves only stale entries
        self.bucket_keys.clear()
        for p in self.probes.values():
            self._schedule(p, now + p.offset if first else now + p.offset % p.interval)

    def _schedule(self, p: _Probe, due: float) -> None:
        """p's next turn is at `due` (any earlier entry of p becomes stale)."""
        p.due = due
        p.slot = slot = next(self.slots)
        k = math.ceil(due / TICK)
        bucket = self.buckets.get(k)
        if bucket is None:
            bucket = self.buckets[k] = []
            heapq.heappush(self.bucket_keys, k)
            if k < self.wake_k:
                self._arm(k)
        bucket.append((due, slot, p))

    def _arm(self, k: int) -> None:
        """Wake up at bucket k's time, or `batch` after the last wakeup."""
        if self.wake is not None:
            self.wake.cancel()
        self.wake_k = k
        at = max(k * TICK, self.woke + self.batch)
        self.wake = self.loop.call_at(self.loop.time() + max(0.0, at - self.clock()),
                                      self._tick)

    def _tick(self) -> None:
        """Every turn due by now: one wakeup for all of them."""
        self.wake, self.wake_k = None, -math.inf      # no arming until the end
        keys, buckets = self.bucket_keys, self.buckets
        now = self.clock()
        now_k = math.floor(now / TICK)
        try:
            while keys and keys[0] <= now_k:
                for due, slot, p in buckets.pop(heapq.heappop(keys)):
                    if p.slot == slot:         # else stale: rescheduled or cancelled
                        p.slot = 0
                        self.woke = now        # (a wakeup for stale entries only is no batch)
                        self._turn(p, due)
        finally:
            self.wake_k = math.inf
            if keys:
                self._arm(keys[0])

    def _turn(self, p: _Probe, due: float) -> None:
        """A probe's turn has come."""
        now = self.clock()
        step_s = p.next_in()
        nxt = due + step_s
        if nxt <= now:                         # far behind (suspend, overload): no burst
            nxt = now + step_s
        self._schedule(p, nxt)
        if not p.active:
            return
        if p.task is not None:                 # still running: never twice at once
            if now - p.started >= p.interval:
                self.interval_timeouts += 1
                for e in p.entries:
                    e.report.error = HostError.INTERVAL_TIMEOUT
                    e.report.detail = f"check still running after {p.interval:g}s"
            return
        if p.queued:
            return
        if self.in_flight >= self.max_checks:
            p.queued = True
            self.waiting.append(p)
            p.started = due                    # lag measured when it really starts
            return
        self._launch(p, due, now)

    def _virtual(self, table: Table) -> tuple[str, str]:
        """The (address, port) of the first redirect that uses the table:
        an ldirectord check script's first two arguments (a fwmark service:
        the mark and 0, as ldirectord passes)."""
        for r in self.config.redirects:
            if table.name in (r.forward.table, r.backup.table if r.backup else None):
                for li in r.listen:
                    if li.fwmark is not None:
                        return (str(li.fwmark), "0")
                    return (li.address or "", str(li.port or 0))
        return ("", "0")

    def _launch(self, p: _Probe, due: float, now: float) -> None:
        self.lags.append(now - due)
        self.in_flight += 1
        p.started = now
        verdict: Verdict | None = p.setup_error
        if p.connect_checks and verdict is None:
            # migrate (issue 14): ldirectord's checktype N: the first turn and
            # every (N+1)th run the full check, the others only connect
            turn, p.turns = p.turns, p.turns + 1
            p.connect_only = bool(turn % (p.connect_checks + 1)) and p.target.port is not None
            if p.connect_only:
                p.task = _STARTING
                conn = self.poller.start(TcpCheck(), p.target, p.connect_timeout,
                                         p.on_verdict)
                if p.task is _STARTING:
                    p.task = conn
                return
        if verdict is None:
            try:
                proto = p.proto
                if proto is not None:
                    check = proto.fresh()
                else:
                    check = make_check(p.check, p.target)
                    if p.bare is None:
                        p.bare = (bare_path(check) and p.target.port is not None
                                  and p.target.connect_timeout is None)
                        p.library = hasattr(check, "run") and hasattr(check, "timeout")
                    if p.library:
                        check.timeout = p.timeout   # library checks: their own socket timeouts
                    elif hasattr(check, "fresh"):   # the next ones are copies of this one
                        p.proto = check
                        check = check.fresh()
            except Exception as ex:     # e.g. a protocol module missing or refusing
                verdict = failed(HostError.PROTOCOL_FAIL, f"cannot make check: {ex}")
        if verdict is not None:
            p.task = _Immediate()
            self.loop.call_soon(self._done, p, p.task, verdict)
        elif p.bare:
            # the hot path: no task; the poller calls back, perhaps at once
            p.task = _STARTING
            conn = self.poller.start(check, p.target, p.timeout, p.on_verdict)
            if p.task is _STARTING:
                p.task = conn           # its cancel() drops the callback
        else:
            p.task = self.loop.create_task(self._probe_run(p, check))

    async def _probe_run(self, p: _Probe, check: Any) -> None:
        from hoststated.checks.runner import run_check
        me = asyncio.current_task()
        try:
            if p.check.kind == "icmp" and self.pinger is None:
                self._open_pinger()
            if p.check.kind == "arp":       # migrate (issue 14): hce_arp's raw socket
                verdict = await self._arp_pinger().probe(check, p.timeout)
            else:
                verdict = await run_check(check, p.target, p.timeout,
                                          ssl_context=p.ssl_ctx, pinger=self.pinger)
        except asyncio.CancelledError:
            raise
        except OSError as ex:
            word = HostError.TCP_SOCKET_LIMIT if ex.errno in LOCAL_ERRNOS else \
                HostError.PROTOCOL_FAIL
            verdict = failed(word, f"check error: {ex.strerror or ex!r}")
        except Exception as ex:             # never let one check stop the engine
            verdict = failed(HostError.PROTOCOL_FAIL, f"check error: {ex!r}")
        self._done(p, me, verdict)

    def _bare_done(self, p: _Probe, verdict: Verdict) -> None:
        # a cancelled fast-path check never calls back: p.task is its own
        self._done(p, p.task, verdict)

    def _done(self, p: _Probe, token: Any, verdict: Verdict) -> None:
        if p.task is not token:             # cancelled (reconfigure, stop)
            return
        if verdict.error is HostError.TCP_SOCKET_LIMIT and not verdict.ok:
            self._finish(p)
            self._local_error(p, verdict)
            return
        latency = self.clock() - p.started
        self.latencies.append(latency)
        self._finish(p)
        self.checks_done += 1
        self.results[verdict.error] += 1
        self._apply(p, verdict, latency)
        # a host entering a transition is re-checked sooner (fast interval)
        if p.slot and p.fast is not None:
            want = p.started + p.next_in()
            if want < p.due:
                self._schedule(p, max(want, self.clock()))

    def _local_error(self, p: _Probe, verdict: Verdict) -> None:
        """Our own limit, not the host's failure: counted and (rarely) logged,
        never applied to the host."""
        self.local_errors += 1
        now = self.clock()
        if now < self._local_log_at:
            return
        n = self.local_errors - self._local_logged
        self._local_logged = self.local_errors
        self._local_log_at = now + LOCAL_LOG_EVERY
        logger.warning("check of %s not counted: %s (a limit of this daemon, not the host's "
                       "failure; %d such since the last report, hosts keep their state)",
                       p.target.name or p.target.address, verdict, n)

    def _finish(self, p: _Probe) -> None:
        p.task = None
        self.in_flight -= 1
        while self.waiting and self.in_flight < self.max_checks:
            q = self.waiting.popleft()
            q.queued = False
            if q.task is None and q.active and q.key in self.probes and self.probes[q.key] is q:
                self._launch(q, q.started, self.clock())

    # --- results ----------------------------------------------------------
    def _apply(self, p: _Probe, verdict: Verdict, latency: float) -> None:
        wall = time.time()
        rules = _ON_SUCCESS if verdict.ok else _ON_FAILURE
        g = self.config.global_
        # migrate (issue 14): a connect between two full checks keeps an up host
        # up or takes it down; only the full check brings a host up
        keep_down = p.connect_only and verdict.ok
        # read once a check, not once a host (pydantic attributes, the logger's cache)
        log_changes, log_checks = g.log_state_changes, g.log_host_checks
        debug = None
        error, detail, latency_ms = verdict.error, verdict.detail, latency * 1000.0
        for e in p.entries:
            if not e.enabled or e.table.disabled:
                continue                         # results for a disabled host are ignored
            state = e.state
            old = state.status
            if keep_down and old is not HostStatus.UP:
                continue
            e.state = st = rules[old](state, e.rise, e.fall)   # = step(); rise, fall >= 1
            r = e.report
            r.status = status = st.status
            r.error = error
            r.detail = detail
            r.last_check = wall
            r.latency_ms = latency_ms
            r.check_cnt = st.check_cnt
            r.up_cnt = st.up_cnt
            r.retry_cnt = st.fall_cnt
            changed = status is not old and note_change(r, old, wall)
            if (changed and log_changes) or log_checks:
                logger.info("%s", self.log_line(e, old))
            else:
                if debug is None:
                    debug = logger.isEnabledFor(logging.DEBUG)
                if debug:
                    logger.debug("%s", self.log_line(e, old))
            if changed:
                self._changed(e)

    @staticmethod
    def log_line(e: _Entry, old: HostStatus) -> str:
        r = e.report
        return (f"host {where(r)}, check {e.check_name} ({r.latency_ms:.0f}ms,{r.reason}), "
                f"state {old} -> {r.status}, availability {r.availability or 0.0:.2f}%")

    def _changed(self, e: _Entry) -> None:
        try:
            self.on_change(e.report.copy())
        except Exception:
            logger.exception("on_change failed for host %s", where(e.report))
        for child in e.children:
            self._inherit(child, e)

    def _inherit(self, child: _Entry, parent: _Entry) -> None:
        if not child.enabled or child.table.disabled:
            return
        old = child.state.status
        child.state = dataclasses.replace(parent.state)
        r = child.report
        r.status = parent.report.status
        r.error = HostError.PARENT
        r.detail = f"parent {parent.host.id}: {parent.report.reason}"
        r.last_check = parent.report.last_check
        r.latency_ms = parent.report.latency_ms
        r.check_cnt, r.up_cnt = parent.report.check_cnt, parent.report.up_cnt
        if note_change(r, old, time.time()):
            if self.config.global_.log_state_changes:
                logger.info("host %s, parent %d, state %s -> %s", where(r), parent.host.id, old,
                            r.status)
            self._changed(child)

    # --- passive failure detection (issue 15) ------------------------------
    def passive(self, host_id: int, action: str, detail: str) -> bool:
        """A passive window filled (hoststated.passive.Decision): `down`
        marks an up (or unknown) host down at once, `fail` counts one failed
        check, `fast` checks it now. True when the host changed state."""
        e = self.entries.get(host_id)
        if e is None or not e.enabled or e.table.disabled:
            return False
        old = e.state.status
        if action == "fast" or old not in (HostStatus.UP, HostStatus.UNKNOWN):
            if e.probe is not None and e.probe.task is None and self.loop is not None:
                self._schedule(e.probe, self.clock())       # check it now
            return False
        if action == "down":
            e.state = st = passive_down(e.state)
        else:
            e.state = st = step(e.state, Event.FAILURE, rise=e.rise, fall=e.fall)
        r = e.report
        r.status = st.status
        r.error = HostError.PASSIVE
        r.detail = detail
        r.check_cnt, r.up_cnt, r.retry_cnt = st.check_cnt, st.up_cnt, st.fall_cnt
        changed = note_change(r, old, time.time())
        if changed or self.config.global_.log_host_checks:
            logger.info("host %s, passive: %s, state %s -> %s", where(r), detail, old,
                        r.status)
        if changed:
            self._changed(e)
        elif e.probe is not None and e.probe.task is None and self.loop is not None:
            self._schedule(e.probe, self.clock())           # in transition: check now
        return changed

    # --- control ----------------------------------------------------------
    @property
    def checks_at_once(self) -> int:
        """The most checks that may be in flight together (what their
        descriptors need: control.clients_per_socket)."""
        return min(self.max_checks, len(self.probes))

    def hosts(self) -> list[HostRow]:
        """A snapshot of every host, in config order."""
        return [e.report.copy() for e in self.entries.values()]

    def stats(self) -> Stats:
        lags = sorted(self.lags)
        lat = sorted(self.latencies)

        def pct(q: float, xs: list[float]) -> float:
            if not xs:
                return 0.0
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000.0
        return Stats(
            lag_p50_ms=pct(0.50, lags), lag_p99_ms=pct(0.99, lags),
            latency_p50_ms=pct(0.50, lat), latency_p99_ms=pct(0.99, lat),
            lag_max_ms=(lags[-1] * 1000.0) if lags else 0.0,
            checks_in_flight=self.in_flight, checks_waiting=len(self.waiting),
            checks_done=self.checks_done, interval_timeouts=self.interval_timeouts,
            local_errors=self.local_errors,
            probes=len(self.probes), hosts=len(self.entries))

    def set_host_enabled(self, host_id: int, enabled: bool) -> bool:
        """hoststatectl host enable|disable: False when there is no such host."""
        e = self.entries.get(host_id)
        if e is None:
            return False
        self._set_enabled(e, enabled)
        return True

    def set_table_enabled(self, name_or_id: str | int, enabled: bool) -> bool:
        tables = [t for t in self.config.tables
                  if t.id == name_or_id or t.name == name_or_id or str(t.id) == str(name_or_id)
                  or t.template == name_or_id]
        if not tables:
            return False
        for t in tables:
            for h in t.hosts:
                e = self.entries.get(h.id)
                if e is not None:
                    self._set_enabled(e, enabled)
        return True

    def _set_enabled(self, e: _Entry, enabled: bool) -> None:
        if e.enabled == enabled:
            return
        e.enabled = enabled
        if e.probe is not None:
            e.probe.update_active()
        old = e.state.status
        e.state = step(e.state, Event.ENABLE if enabled else Event.DISABLE)
        if enabled and not e.host.checked:  # migrate (issue 14): back to up (or down)
            e.state = _unchecked_state(e.table)
        e.report.status = e.state.status
        if not enabled:
            e.report.error, e.report.detail = HostError.NONE, ""
        if note_change(e.report, old, time.time()):
            self._changed(e)
        if enabled and e.probe is not None and self.loop is not None and e.probe.task is None:
            self._schedule(e.probe, self.clock())       # check it now

    # --- runtime weights (issue 13) ---
    def set_weights(self, weights: dict[int, tuple[int, bool]]) -> None:
        """Show every host's runtime (weight, drain) from hce's one keeper
        (hce_weights.Overrides); a host not named has its config weight."""
        for hid, e in self.entries.items():
            e.report.weight, e.report.drain = weights.get(hid, (e.host.weight, False))

    def poll(self) -> None:
        """hoststatectl poll: check every host now."""
        if self.loop is None:
            self._poll_at_start = True        # run() has not started yet
            return
        now = self.clock()
        for p in self.probes.values():
            if p.task is None:
                self._schedule(p, now)

    def reconfigure(self, new_config: Config) -> None:
        """Adopt a new configuration; unchanged hosts keep state and counters."""
        old = {e.same_key: e for e in self.entries.values()}
        old_probes = self.probes
        for p in old_probes.values():
            self._cancel(p)
        for p in self.waiting:
            p.queued = False
        self.waiting.clear()
        self._build(new_config, old)
        if self.loop is not None:
            if any(p.check.kind == "icmp" for p in self.probes.values()):
                self._open_pinger()
            self._schedule_all(first=False)
