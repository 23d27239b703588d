"""hce's answers: the rows `show` replies with, and the lookups `host|table|
redirect enable|disable` act on. Pure: no socket, no event loop, so a test
builds it from a config and host rows in memory.

In: the running config and its generation, the runtime disabled sets of
tables and redirects (kept here, their one owner in hce; the disabled hosts
are the scheduler's), a function returning the host rows (the scheduler's
hosts()) and one returning its figures. Out: ipc.messages rows.

The host listing is cached for SHOW_CACHE seconds, so many clients asking at
once (or a script polling) cost one walk of the hosts, however many flap
meanwhile; hce drops the cache on every command that changes something.
Monitor clients get each change as it happens, not from here.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

from hoststated.conf.model import Config, Host, Redirect, Table
from hoststated.ipc.messages import (CommandError, ErrorCode, HostRow, RedirectRow, RelayRow,
                                     ShowReply, Stats, TableRow, clip, redirect_status,
                                     relay_status, table_status)
from hoststated.states import HostStatus

SHOW_CACHE = 1.0          # s a host listing may be reused (counters that old)

Kind = Literal["host", "table", "redirect"]


class _View:
    """The rows of one moment, and their wire form once asked for."""
    __slots__ = ("stamp", "key", "hosts", "tables", "redirects", "wire")

    def __init__(self, stamp: float, key: tuple, hosts: list[HostRow],
                 tables: list[TableRow], redirects: list[RedirectRow]) -> None:
        self.stamp = stamp
        self.key = key
        self.hosts = hosts
        self.tables = tables
        self.redirects = redirects
        self.wire: dict[str, list[dict]] = {}


class Answers:
    def __init__(self, config: Config, generation: int, hosts: Callable[[], list[HostRow]],
                 stats: Callable[[], Stats], *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.config = config
        self.generation = generation
        self.host_rows = hosts
        self.stats = stats
        self.clock = clock
        self.disabled_tables: set[str] = {t.name for t in config.tables if t.disabled}
        self.disabled_redirects: set[str] = {r.name for r in config.redirects if r.disabled}
        self._view: _View | None = None

    def reconfigure(self, config: Config, generation: int) -> None:
        """A new config: a redirect disabled at run time stays so while it
        exists; new ones, and every table, take their state from the config."""
        old_names = {r.name for r in self.config.redirects}
        names = {r.name for r in config.redirects}
        self.disabled_redirects = ({n for n in self.disabled_redirects if n in names}
                                   | {r.name for r in config.redirects
                                      if r.disabled and r.name not in old_names})
        self.disabled_tables = {t.name for t in config.tables if t.disabled}
        self.config = config
        self.generation = generation
        self._view = None

    def invalidate(self) -> None:
        """Something changed: the next show walks the hosts again."""
        self._view = None

    # --- lookups -------------------------------------------------------------

    def find(self, kind: Kind, arg: str) -> Host | Table | Redirect:
        """An object by id, else the first by name (relayd's host_findbyname):
        a host also by address, a table also by its template's name."""
        objs: list = {"host": self.config.hosts(), "table": list(self.config.tables),
                      "redirect": list(self.config.redirects)}[kind]
        if arg.isdigit():
            for o in objs:
                if o.id == int(arg):
                    return o
        for o in objs:
            if arg == o.name or (kind == "host" and arg == o.address) or \
                    (kind == "table" and arg == o.template):
                return o
        raise CommandError(ErrorCode.NOT_FOUND, f"no {kind} {clip(arg)}")

    def set_enabled(self, kind: Kind, obj: Table | Redirect, enabled: bool) -> None:
        """Record a table or redirect enabled or disabled at run time."""
        names = self.disabled_tables if kind == "table" else self.disabled_redirects
        (names.discard if enabled else names.add)(obj.name)

    # --- rows ----------------------------------------------------------------

    def _current(self) -> _View:
        now = self.clock()
        view = self._view
        fresh = view is None or now - view.stamp > SHOW_CACHE
        key = (self.generation, frozenset(self.disabled_tables),
               frozenset(self.disabled_redirects))
        if fresh or view.key != key:
            hosts = self.host_rows() if fresh else view.hosts
            tables = self._tables(hosts)
            by_name = {t.name: t for t in tables}
            redirects = [self._redirect(r, by_name) for r in self.config.redirects]
            view = self._view = _View(now if fresh else view.stamp, key, hosts, tables,
                                      redirects)
        return view

    def _tables(self, hosts: list[HostRow]) -> list[TableRow]:
        ups: dict[str, int] = {}
        for h in hosts:
            if h.status == HostStatus.UP:
                ups[h.table] = ups.get(h.table, 0) + 1
        rows = []
        for t in self.config.tables:
            up, off = ups.get(t.name, 0), t.name in self.disabled_tables
            rows.append(TableRow(id=t.id, name=t.name, status=table_status(up, off), up=up,
                                 hosts=len(t.hosts), check=t.check.kind, port=t.port,
                                 disabled=off))
        return rows

    def _redirect(self, r: Redirect, tables: dict[str, TableRow]) -> RedirectRow:
        def has_up(table: str | None) -> bool:
            t = tables.get(table) if table else None
            return bool(t and not t.disabled and t.up)
        status = redirect_status(r.name in self.disabled_redirects, has_up(r.forward.table),
                                 has_up(r.backup.table if r.backup else None))
        return RedirectRow(id=r.id, name=r.name, status=status, table=r.forward.table,
                           backup=r.backup.table if r.backup else None)

    def hosts(self) -> list[HostRow]:
        return self._current().hosts

    def tables(self) -> list[TableRow]:
        return self._current().tables

    def redirects(self) -> list[RedirectRow]:
        return self._current().redirects

    def redirect(self, r: Redirect) -> RedirectRow:
        return next(row for row in self.redirects() if row.id == r.id)

    def relays(self) -> list[RelayRow]:
        # no relay role runs yet: an enabled relay is "not running"
        return [RelayRow(id=r.id, name=r.name, status=relay_status(r.disabled, running=False))
                for r in self.config.relays]

    # --- show ----------------------------------------------------------------

    def show(self, what: str) -> ShowReply:
        """The typed reply of `show <what>`."""
        if what == "relays":
            return ShowReply(relays=self.relays())
        v = self._current()
        match what:
            case "summary":
                return ShowReply(redirects=v.redirects, tables=v.tables, hosts=v.hosts,
                                 relays=self.relays(), stats=self.stats(),
                                 generation=self.generation)
            case "hosts":
                return ShowReply(tables=v.tables, hosts=v.hosts)
            case "redirects":
                return ShowReply(redirects=v.redirects)
            case "tables":
                return ShowReply(tables=v.tables)
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"show {what}: not handled")

    def show_wire(self, what: str) -> dict:
        """show(what).to_wire(), with the rows' wire form made once per
        listing (10,000 hosts asked for by many clients: one conversion)."""
        reply = self.show(what)
        v = self._view
        out = {}
        for name, value in (("redirects", reply.redirects), ("tables", reply.tables),
                            ("hosts", reply.hosts), ("relays", reply.relays)):
            if value is None:
                continue
            cached = v is not None and name != "relays" and getattr(v, name) is value
            if cached:
                if name not in v.wire:
                    v.wire[name] = [r.to_wire() for r in value]
                out[name] = v.wire[name]
            else:
                out[name] = [r.to_wire() for r in value]
        if reply.stats is not None:
            out["stats"] = reply.stats.to_wire()
        if reply.generation is not None:
            out["generation"] = reply.generation
        return out
