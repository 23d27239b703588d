"""Notifications (issue 14): `notify command` and `alert mail`, run by hce.

hce runs as the unprivileged user with no capabilities, so the commands and
the SMTP client run with no privilege. Nothing here may stop the daemon or
hold up a check: commands are started from a bounded queue (NOTIFY_QUEUE
waiting, NOTIFY_AT_ONCE running, those of one object in order), killed with
their process group at their timeout; mail is sent by one worker, from a
bounded queue, in a thread (smtplib, every socket operation bounded by
MAIL_TIMEOUT). What is dropped, killed or failed is counted and logged.

Events: a host changing state, a table going up or down (some host up, or
none), a redirect moving between its table (`up`), its backup table
(`backup`) and none (`down`). A change from unknown to up is not told (the
start, a host added by a reload): what is found working is no news;
unknown to down is.
"""

from __future__ import annotations

import asyncio
import collections
import email.message
import email.utils
import logging
import os
import shlex
import smtplib
import socket
import time
from dataclasses import dataclass, field

from hoststated import commands, log, proc
from hoststated.conf.model import AlertMail, Config, NotifyCommand
from hoststated.states import HostStatus

logger = log.get("hce")

NOTIFY_QUEUE = 64           # events waiting for a command slot; more are dropped
NOTIFY_AT_ONCE = 4          # commands running at once
DROP_LOG_DELAY = 1.0        # s: drops are told in one line per burst
MAIL_QUEUE = 256            # events waiting to be mailed; more are dropped
MAIL_BATCH = 50             # events in one message at most
MAIL_TIMEOUT = 30.0         # s per SMTP socket operation
STATE_LOG_EVERY = 100       # `log state file`: a failed write is logged once in this many
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DOWNISH = ("down", "backup")


@dataclass(slots=True)
class Event:
    kind: str                   # host, table, redirect
    name: str                   # the host's name as written, the table's, the redirect's
    old: str
    new: str
    reason: str = ""
    table: str = ""             # a host's table; a redirect's table now serving
    redirects: tuple[str, ...] = ()
    address: str | None = None
    port: int | None = None
    at: float = field(default_factory=time.time)
    since: float | None = None  # a repeated mail: when the state began
    seq: int = 0                # the event's number since hce started: commands
                                # for different objects run at once, out of order

    @property
    def key(self) -> tuple:
        return (self.kind, self.name, self.table if self.kind == "host" else "")

    def words(self) -> str:
        what = f"{self.kind} {self.name}"
        if self.kind == "host":
            what += f" (table {self.table}" + (f", redirect {' '.join(self.redirects)}"
                                               if self.redirects else "") + ")"
        elif self.kind == "redirect" and self.new == "backup":
            what += f" (backup table {self.table})"
        if self.since is not None:
            return f"{what} still {self.new} since {_when(self.since)}"
        s = f"{what} {self.new} (was {self.old})"
        return s + (f": {self.reason}" if self.reason else "")

    def env(self) -> dict[str, str]:
        return {"PATH": ENV_PATH, "HOSTSTATED_EVENT": self.kind, "HOSTSTATED_NAME": self.name,
                "HOSTSTATED_OLD": self.old, "HOSTSTATED_NEW": self.new,
                "HOSTSTATED_REASON": self.reason,
                "HOSTSTATED_HOST": self.name if self.kind == "host" else "",
                "HOSTSTATED_ADDRESS": self.address or "",
                "HOSTSTATED_PORT": "" if self.port is None else str(self.port),
                "HOSTSTATED_TABLE": self.table,
                "HOSTSTATED_REDIRECT": " ".join(self.redirects),
                "HOSTSTATED_TIME": f"{self.at:.3f}", "HOSTSTATED_SEQ": str(self.seq)}


def wanted(on: str, ev: Event) -> bool:
    """`on up|down|all`: down takes a redirect's fall back to its backup;
    `on fallback`: the redirect events fallback_word() names."""
    if on == "fallback":
        return fallback_word(ev) is not None
    return on == "all" or (ev.new == "up" if on == "up" else ev.new in _DOWNISH)


def fallback_word(ev: Event) -> str | None:
    """`on fallback` (ldirectord's fallbackcommand): `start` when a
    redirect's table has no host up any more (it serves from its backup
    table, or from none; at the start too), `stop` when it has one again;
    None for every other event (a move between backup and none included)."""
    if ev.kind != "redirect":
        return None
    if ev.new in _DOWNISH and ev.old not in _DOWNISH:
        return "start"
    if ev.new == "up" and ev.old in _DOWNISH:
        return "stop"
    return None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


# --- what changed: hosts -> tables -> redirects (pure) ----------------------

class Tracker:
    """The table and redirect states, from the host states fed in."""

    def __init__(self, config: Config, hosts: dict[int, HostStatus] | None = None) -> None:
        self.hosts = {h.id: h for h in config.hosts()}
        self.status: dict[int, HostStatus] = {hid: HostStatus.UNKNOWN for hid in self.hosts}
        self.members: dict[str, list[int]] = collections.defaultdict(list)
        for h in self.hosts.values():
            self.members[h.table].append(h.id)
        self.redirects = config.redirects
        self.users: dict[str, list[str]] = collections.defaultdict(list)
        for r in config.redirects:
            for f in (r.forward, r.backup):
                if f is not None:
                    self.users[f.table].append(r.name)
        for hid, st in (hosts or {}).items():
            if hid in self.status:
                self.status[hid] = st
        self.tables = {t: self._table(t) for t in self.members}
        self.rdr = {r.name: self._redirect(r)[0] for r in self.redirects}

    def _table(self, name: str) -> str:
        sts = [self.status[h] for h in self.members.get(name, ())]
        if any(s == HostStatus.UP for s in sts):
            return "up"
        if any(s == HostStatus.UNKNOWN for s in sts):
            return "unknown"
        return "down"

    def _redirect(self, r) -> tuple[str, str]:
        main = self.tables.get(r.forward.table, "unknown")
        if main == "up":
            return "up", r.forward.table
        backup = self.tables.get(r.backup.table, "unknown") if r.backup else "down"
        if backup == "up":
            return "backup", r.backup.table
        if "unknown" in (main, backup):
            return "unknown", ""
        return "down", ""

    def host(self, hid: int, status: HostStatus, reason: str) -> list[Event]:
        h = self.hosts.get(hid)
        if h is None:
            return []
        old, self.status[hid] = self.status[hid], status
        out = []
        if old != status:
            out.append(Event("host", h.name, str(old), str(status), reason, h.table,
                             tuple(self.users.get(h.table, ())), h.address, h.port))
        t = self._table(h.table)
        if t != self.tables[h.table]:
            out.append(Event("table", h.table, self.tables[h.table], t, reason, h.table,
                             tuple(self.users.get(h.table, ()))))
            self.tables[h.table] = t
            for r in self.redirects:
                if r.name not in self.users.get(h.table, ()):
                    continue
                st, serving = self._redirect(r)
                if st != self.rdr[r.name]:
                    why = {"up": f"table {serving} up", "backup": f"table {r.forward.table} "
                           f"down, backup table {serving} up"}.get(st, "no table up")
                    out.append(Event("redirect", r.name, self.rdr[r.name], st, why, serving,
                                     (r.name,)))
                    self.rdr[r.name] = st
        return [e for e in out if not (e.old == "unknown" and e.new == "up")]


# --- commands ------------------------------------------------------------------

class Commands:
    """Runs the notify commands: bounded queue, bounded concurrency, one
    object's events in order, a timeout each."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[NotifyCommand, Event]] = collections.deque()
        self.running: set[tuple] = set()
        self.tasks: set[asyncio.Task] = set()
        self.ran = self.failed = self.killed = self.dropped = 0
        self._drops_untold = 0
        self._drop_log: asyncio.TimerHandle | None = None

    def submit(self, cmd: NotifyCommand, ev: Event) -> None:
        if len(self.queue) >= NOTIFY_QUEUE:
            self.dropped += 1
            self._drops_untold += 1
            if self._drop_log is None:
                self._drop_log = asyncio.get_running_loop().call_later(
                    DROP_LOG_DELAY, self._tell_drops)
            return
        self.queue.append((cmd, ev))
        self._start()

    def _tell_drops(self) -> None:
        self._drop_log = None
        logger.warning("notify: %d events dropped, %d commands waiting already (%d dropped "
                       "since the start)", self._drops_untold, NOTIFY_QUEUE, self.dropped)
        self._drops_untold = 0

    def _start(self) -> None:
        if len(self.tasks) >= NOTIFY_AT_ONCE or not self.queue:
            return
        for i, (cmd, ev) in enumerate(self.queue):
            key = (cmd.command, ev.key)
            if key in self.running:
                continue          # this object's previous event first
            del self.queue[i]
            self.running.add(key)
            t = asyncio.ensure_future(self._run(cmd, ev))
            self.tasks.add(t)
            t.add_done_callback(lambda t, key=key: self._done(t, key))
            if len(self.tasks) >= NOTIFY_AT_ONCE:
                return
            return self._start()

    def _done(self, task: asyncio.Task, key: tuple) -> None:
        self.tasks.discard(task)
        self.running.discard(key)
        if not task.cancelled() and task.exception() is not None:
            logger.error("notify: %s", task.exception())
        self._start()

    async def _run(self, cmd: NotifyCommand, ev: Event) -> None:
        if cmd.on == "fallback":        # ldirectord's fallbackcommand: start or stop
            # (submitted only when wanted(): the word is there)
            argv = [*shlex.split(cmd.command), str(fallback_word(ev))]
        else:
            argv = [*shlex.split(cmd.command), ev.kind, ev.name, ev.old, ev.new, ev.reason]
        self.ran += 1
        rc, out, timed_out = await commands.run_command(argv, ev.env(), cmd.timeout / 1000.0)
        if timed_out:
            self.killed += 1
            logger.warning("notify command %s (%s): killed after %d ms", argv[0],
                           ev.words(), cmd.timeout)
        elif rc != 0:
            self.failed += 1
            logger.warning("notify command %s (%s): %s%s", argv[0], ev.words(),
                           commands.status(rc), commands.first_line(out))
        else:
            logger.debug("notify command %s (%s): done", argv[0], ev.words())

    def close(self) -> None:
        self.queue.clear()
        if self._drop_log is not None:
            self._drop_log.cancel()
        for t in self.tasks:
            t.cancel()


# --- mail --------------------------------------------------------------------

class Mailer:
    """`alert mail`: one worker sends what is queued, at most MAIL_BATCH
    events a message; a host or redirect still down is mailed again every
    `every` seconds."""

    def __init__(self, alert: AlertMail) -> None:
        self.alert = alert
        self.queue: collections.deque[Event] = collections.deque()
        self.wake = asyncio.Event()
        self.down: dict[tuple, tuple[Event, float]] = {}    # key -> (event, next repeat)
        self.sent = self.failed = self.dropped = 0
        self.task: asyncio.Task | None = None

    def submit(self, ev: Event) -> None:
        if ev.kind == "table":
            return                # its hosts and redirects say it
        if ev.new in _DOWNISH and self.alert.every:
            self.down[ev.key] = (ev, time.monotonic() + self.alert.every)
        else:
            self.down.pop(ev.key, None)
        if wanted(self.alert.on, ev):
            self._queue(ev)

    def _queue(self, ev: Event) -> None:
        if len(self.queue) >= MAIL_QUEUE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                logger.warning("alert mail: %d events dropped (%d waiting already)",
                               self.dropped, MAIL_QUEUE)
            return
        self.queue.append(ev)
        self.wake.set()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._worker())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _repeats(self) -> float | None:
        """Queue the repeats due; the seconds until the next one."""
        now, nxt = time.monotonic(), None
        for key, (ev, due) in list(self.down.items()):
            if due <= now:
                if wanted(self.alert.on, ev):
                    self._queue(Event(ev.kind, ev.name, ev.old, ev.new, ev.reason, ev.table,
                                      ev.redirects, ev.address, ev.port, since=ev.at))
                due = now + self.alert.every
                self.down[key] = (ev, due)
            nxt = due - now if nxt is None else min(nxt, due - now)
        return nxt

    async def _worker(self) -> None:
        while True:
            wait = self._repeats()
            if not self.queue:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [self.queue.popleft() for _ in range(min(MAIL_BATCH, len(self.queue)))]
            try:
                subject = await proc.in_thread(send, self.alert, batch, name="hoststated-mail")
            except (OSError, smtplib.SMTPException) as e:
                self.failed += 1
                logger.warning("alert mail to %s via %s port %d: not sent (%d events): %s",
                               ", ".join(self.alert.to), self.alert.host, self.alert.port,
                               len(batch), e)
            else:
                self.sent += 1
                logger.info("alert mail sent to %s: %s", ", ".join(self.alert.to), subject)


def message(alert: AlertMail, batch: list[Event]) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    first = batch[0]
    subject = f"hoststated: {first.words().split(': ')[0]}"
    if len(batch) > 1:
        subject += f", and {len(batch) - 1} more"
    msg["Subject"] = subject
    msg["From"] = alert.sender or f"hoststated@{socket.gethostname()}"
    msg["To"] = ", ".join(alert.to)
    msg["Date"] = email.utils.formatdate(first.at, localtime=False)
    msg["Message-ID"] = email.utils.make_msgid("hoststated", domain=socket.gethostname())
    msg["X-Hoststated-Event"] = f"{first.kind} {first.name} {first.new}"
    lines = [f"{_when(ev.at)} {ev.words()}" for ev in batch]
    msg.set_content("\n".join(lines) + f"\n\n-- \nhoststated on {socket.gethostname()}\n")
    return msg


def send(alert: AlertMail, batch: list[Event]) -> str:
    """In a thread (names are looked up here): one SMTP conversation with
    the relay. Returns the subject."""
    msg = message(alert, batch)
    with smtplib.SMTP(alert.host, alert.port, timeout=MAIL_TIMEOUT,
                      local_hostname=socket.gethostname()) as s:
        s.send_message(msg, from_addr=msg["From"], to_addrs=list(alert.to))
    return msg["Subject"]


# --- the whole, in hce ---------------------------------------------------------

class StateFile:
    """`log state file` (migrate, issue 14: ldirectord's monitorfile): one
    line per host state change, appended to the file the parent opened at
    start (O_APPEND: logrotate's copytruncate keeps working). A write that
    fails is logged (the first, then every STATE_LOG_EVERY-th), never fatal:
    the checks and the kernel tables matter more than their log."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.failed = 0

    @staticmethod
    def line(ev: Event) -> str:
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ev.at))
        words = ev.words().replace("\r", " ").replace("\n", " ")   # one line, whatever
        return f"{at}.{int(ev.at % 1 * 1000):03d}Z {words}\n"       # the reason holds

    def write(self, ev: Event) -> None:
        try:
            os.write(self.fd, self.line(ev).encode("utf-8", "replace"))
        except OSError as e:
            self.failed += 1
            if self.failed % STATE_LOG_EVERY == 1:
                logger.warning("log state file: %s (%d lines lost)", e.strerror or e,
                               self.failed)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Notifier:
    """The global notify commands and alert mail, and each redirection's:
    a redirection's commands run besides the global ones for its events and
    its tables' (hosts, tables); its mail goes in place of the global one."""

    def __init__(self, config: Config, state_fd: int = -1) -> None:
        self.commands = Commands()
        # migrate (issue 14): `log state file` (ldirectord's monitorfile)
        self.state_file = StateFile(state_fd) if state_fd >= 0 else None
        self.mailers: dict[AlertMail, Mailer] = {}
        self.tracker = Tracker(config)
        self.seq = 0
        self._adopt(config)

    def _adopt(self, config: Config) -> None:
        g = config.global_
        self.notify = g.notify
        self.global_mail = g.alert_mail
        self.rdr_notify = {r.name: r.notify for r in config.redirects if r.notify}
        self.rdr_mail = {r.name: r.alert_mail for r in config.redirects if r.alert_mail}
        wanted_mail = {a for a in (g.alert_mail, *self.rdr_mail.values()) if a is not None}
        for a in list(self.mailers):
            if a not in wanted_mail:
                self.mailers.pop(a).close()
        for a in wanted_mail:
            if a not in self.mailers:
                self.mailers[a] = Mailer(a)
                if _loop_running():
                    self.mailers[a].start()

    def start(self) -> None:
        for m in self.mailers.values():
            if m.task is None:
                m.start()

    @property
    def active(self) -> bool:
        return bool(self.notify or self.rdr_notify or self.mailers)

    def _targets(self, ev: Event) -> tuple[list[NotifyCommand], list[Mailer]]:
        cmds = list(self.notify)
        mails: list[AlertMail] = []
        use_global = not ev.redirects
        for r in ev.redirects:
            cmds.extend(c for c in self.rdr_notify.get(r, ()) if c not in cmds)
            own = self.rdr_mail.get(r)
            if own is None:
                use_global = True
            elif own not in mails:
                mails.append(own)
        if use_global and self.global_mail is not None and self.global_mail not in mails:
            mails.append(self.global_mail)
        return cmds, [self.mailers[a] for a in mails]

    def host_changed(self, hid: int, status: HostStatus, reason: str) -> None:
        events = self.tracker.host(hid, status, reason)
        if self.state_file is not None:
            for ev in events:
                if ev.kind == "host":
                    self.state_file.write(ev)
        if not self.active:
            return
        for ev in events:
            self.seq += 1
            ev.seq = self.seq
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("notify: %s", ev.words())
            cmds, mailers = self._targets(ev)
            for cmd in cmds:
                if wanted(cmd.on, ev):
                    self.commands.submit(cmd, ev)
            for m in mailers:
                m.submit(ev)

    def reconfigure(self, config: Config, hosts: dict[int, HostStatus]) -> None:
        """The new config's tables and redirects, in the states their hosts
        are in now: a reload is no state change."""
        self.tracker = Tracker(config, hosts)
        self._adopt(config)

    def close(self) -> None:
        self.commands.close()
        for m in self.mailers.values():
            m.close()
        if self.state_file is not None:
            self.state_file.close()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
