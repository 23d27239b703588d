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

from hoststated.conf.model import Config, Host, Redirect, Router, Table
from hoststated.ipc.messages import (CommandError, DaemonInfo, DestCounters, ErrorCode, HostRow,
                                     KernelCounters, RedirectCounters, RedirectRow, RelayRow,
                                     RelayStats, RouterRow, ServiceCounters, ShowReply, Stats,
                                     TableRow, clip, redirect_status, relay_status, table_status)
from hoststated.states import HostStatus

SHOW_CACHE = 1.0          # s a host listing may be reused (counters that old)
ROUTE_METRIC = 8          # a gateway's metric without `priority`: kernel.routes.METRIC

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
        self.relay_figures = RelayFigures(clock=time.time)
        self.kernel = KernelFigures()
        self.disabled_tables: set[str] = {t.name for t in config.tables if t.disabled}
        self.disabled_redirects: set[str] = {r.name for r in config.redirects if r.disabled}
        self._view: _View | None = None
        # issue 13: hce's daemon block for show summary (version, reloads)
        self.daemon: Callable[[], DaemonInfo] | None = None

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
        self.kernel.reconfigure(config)
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

    # --- runtime control lookups (issue 13) ---

    def find_hosts(self, arg: str) -> list[Host]:
        """`host weight|drain|undrain`: the host of that id, else every host
        of that name or address (one address is often in several tables:
        the command acts on all of them, and says so)."""
        hosts = self.config.hosts()
        if arg.isdigit():
            found = [h for h in hosts if h.id == int(arg)]
            if found:
                return found
        found = [h for h in hosts if arg in (h.name, h.address)]
        if not found:
            raise CommandError(ErrorCode.NOT_FOUND, f"no host {clip(arg)}")
        return found

    def find_table_hosts(self, arg: str) -> tuple[list[Table], list[Host]]:
        """`table drain|undrain`: the table of that id, else every table of
        that name or template (`web` is web:80 and web:443), and their hosts."""
        tables = list(self.config.tables)
        found = [t for t in tables if arg.isdigit() and t.id == int(arg)] or \
            [t for t in tables if arg in (t.name, t.template)]
        if not found:
            raise CommandError(ErrorCode.NOT_FOUND, f"no table {clip(arg)}")
        return found, [h for t in found for h in t.hosts]

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
            if fresh:
                self.kernel.attach(hosts, self.config)
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
                           backup=r.backup.table if r.backup else None,
                           kernel=self.kernel.redirect(r.name))

    def hosts(self) -> list[HostRow]:
        return self._current().hosts

    def tables(self) -> list[TableRow]:
        return self._current().tables

    def redirects(self) -> list[RedirectRow]:
        return self._current().redirects

    def redirect(self, r: Redirect) -> RedirectRow:
        return next(row for row in self.redirects() if row.id == r.id)

    def relays(self) -> list[RelayRow]:
        return [self.relay_figures.row(r) for r in self.config.relays]

    def routers(self) -> list[RouterRow]:
        """issue 16: what pfe writes, from the same facts (hce's states and
        weights): kernel.routes.router_routes' choice of next hops."""
        by_id = {h.id: h for h in self._current().hosts}
        return [router_row(self.config, r, by_id) for r in self.config.routers]

    # --- show ----------------------------------------------------------------

    def show(self, what: str) -> ShowReply:
        """The typed reply of `show <what>`."""
        if what == "relays":
            return ShowReply(relays=self.relays())
        if what == "routers":
            return ShowReply(routers=self.routers())
        v = self._current()
        match what:
            case "summary":
                return ShowReply(redirects=v.redirects, tables=v.tables, hosts=v.hosts,
                                 relays=self.relays(), stats=self.stats(),
                                 routers=self.routers(), generation=self.generation,
                                 daemon=self.daemon() if self.daemon else None)
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
                            ("hosts", reply.hosts), ("relays", reply.relays),
                            ("routers", reply.routers)):
            if value is None:
                continue
            cached = v is not None and name not in ("relays", "routers") \
                and getattr(v, name) is value
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
        if reply.daemon is not None:
            out["daemon"] = reply.daemon.to_wire()
        return out


def router_row(config: Config, r: Router, hosts: dict[int, HostRow]) -> RouterRow:
    t = config.table(r.forward.table) if r.forward else None
    gws = list(t.hosts) if t else []
    rows = [(h, hosts.get(h.id)) for h in gws]
    up = [(h, row) for h, row in rows if row is not None and row.status == HostStatus.UP]
    usable = [(h.priority or ROUTE_METRIC, h.address or h.name) for h, row in up
              if row.effective_weight > 0]
    best = min((p for p, _ in usable), default=None)
    return RouterRow(id=r.id, name=r.name, status="disabled" if r.disabled else "active",
                     rtable=r.rtable, rtlabel=r.rtlabel, routes=list(r.routes),
                     table=t.name if t else "", gateways=len(gws), up=len(up),
                     nexthops=[] if r.disabled else [a for p, a in usable if p == best])


SAMPLE_EVERY = 10.0       # s between kept samples of a relay's total
DAY = 86400.0


class RelayFigures:
    """The relays' figures, summed over the relay processes' reports
    (RelayStats, about once a second each): sessions now and total, and
    relayctl's last and average sessions per minute, hour and day. Keyed
    by relay name: a relay keeps its figures across a reload (the relay
    processes carry its counters over too)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        # relay process index -> (generation, {relay name: [now, total, errors]})
        self.procs: dict[int, tuple[int, dict[str, list[int]]]] = {}
        # relay name -> [(time, total)], one sample per SAMPLE_EVERY, a day's worth
        self.samples: dict[str, list[tuple[float, int]]] = {}

    def update(self, stats: RelayStats, names: dict[int, str]) -> None:
        """A process's report; `names`: relay id -> name in its generation."""
        self.procs[stats.index] = (stats.generation,
                                   {names[i]: v for i, v in stats.relays.items() if i in names})
        now = self.clock()
        for name in {n for _, by in self.procs.values() for n in by}:
            kept = self.samples.setdefault(name, [])
            if not kept or now - kept[-1][0] >= SAMPLE_EVERY:
                kept.append((now, self._sum(name)[1]))
                while kept and now - kept[0][0] > DAY + SAMPLE_EVERY:
                    kept.pop(0)

    def _sum(self, name: str) -> list[int]:
        out = [0, 0, 0]
        for _, by in self.procs.values():
            for i, v in enumerate(by.get(name, ())[:3]):
                out[i] += v
        return out

    def _since(self, name: str, total: int, seconds: float) -> int:
        """Sessions begun in the last `seconds` (from the oldest sample in it)."""
        now = self.clock()
        base = None
        for t, n in self.samples.get(name, ()):
            if now - t <= seconds:
                base = n
                break
        if base is None:
            return 0
        return max(0, total - base) if now - self.started > seconds else total

    def row(self, relay) -> RelayRow:
        reporting = [g for g, by in self.procs.values() if relay.name in by]
        active, total, errors = self._sum(relay.name)
        elapsed = max(self.clock() - self.started, 1.0)

        def avg(seconds: float) -> int:
            return int(total / max(1.0, elapsed // seconds))
        return RelayRow(
            id=relay.id, name=relay.name,
            status=relay_status(relay.disabled, running=bool(reporting)),
            sessions=active, total=total, errors=errors,
            last_min=self._since(relay.name, total, 60), last_hour=self._since(relay.name, total, 3600),
            last_day=self._since(relay.name, total, DAY),
            avg_min=avg(60), avg_hour=avg(3600), avg_day=avg(DAY), processes=len(reporting),
            listen=[f"{ln.address}:{ln.port}" + (" tls" if ln.tls else "") for ln in relay.listen])


# --- kernel counters (issue 13 item 2) -----------------------------------------

_FIELDS = ("connections", "packets_in", "packets_out", "bytes_in", "bytes_out",
           "active", "inactive")


def _add(rows) -> list[int | None]:
    """The counter fields of rows, summed (None where no row has one)."""
    out: list[int | None] = [None] * len(_FIELDS)
    for r in rows:
        for i, name in enumerate(_FIELDS):
            v = getattr(r, name)
            if v is not None:
                out[i] = (out[i] or 0) + v
    return out


class _Figures:
    """relayd's pfe_statistics for one redirect: per read, the connections
    since the last one, and the running averages (relayd also resets the
    day's count, which it misses, and averages the day with the day)."""
    __slots__ = ("total", "tick", "last", "average", "max", "last_hour", "average_hour",
                 "last_day", "average_day")

    def __init__(self, total: int) -> None:
        # the first read is the baseline: what the kernel counted before
        # (an adopted IPVS service: since it was made) is no interval's
        self.total = total
        self.tick = 0
        self.last = self.average = self.max = 0
        self.last_hour = self.average_hour = self.last_day = self.average_day = 0

    def add(self, total: int, per_hour: int, per_day: int) -> None:
        self.last = total - self.total if total > self.total else 0
        self.total = total
        self.tick += 1
        self.average = (self.last + self.average) // 2
        self.max = max(self.max, self.last)
        self.last_hour += self.last
        self.last_day += self.last
        if self.tick % per_hour == 0:
            self.average_hour = (self.last_hour + self.average_hour) // 2
            self.last_hour = 0
        if self.tick % per_day == 0:
            self.average_day = (self.last_day + self.average_day) // 2
            self.last_day = 0


class KernelFigures:
    """pfe's kernel counters (KernelCounters, every interval) and the
    figures hce makes of them: per redirect (RedirectCounters, `show
    redirects`) and per host (DestCounters, `show hosts`: the host as a
    destination of the services of the redirects whose table holds it).

    For other readers (metrics): `services` (redirect name -> its
    ServiceCounters as pfe sent them), redirect_counters() and
    host_counters(config)."""

    def __init__(self) -> None:
        self.interval = 0.0
        self.services: dict[str, list[ServiceCounters]] = {}
        self._figures: dict[str, _Figures] = {}

    def update(self, kc: KernelCounters) -> None:
        by: dict[str, list[ServiceCounters]] = {}
        for sc in kc.services:
            by.setdefault(sc.redirect, []).append(sc)
        self.services, self.interval = by, kc.interval
        per_hour = max(1, round(3600 / kc.interval)) if kc.interval > 0 else 1
        per_day = per_hour * 24
        for name, svcs in by.items():
            total = sum(sc.connections for sc in svcs)
            f = self._figures.get(name)
            if f is None:
                self._figures[name] = _Figures(total)
            else:
                f.add(total, per_hour, per_day)

    def reconfigure(self, config: Config) -> None:
        """A redirect keeps its figures across a reload while it exists."""
        names = {r.name for r in config.redirects}
        self.services = {n: v for n, v in self.services.items() if n in names}
        self._figures = {n: v for n, v in self._figures.items() if n in names}

    def redirect(self, name: str) -> RedirectCounters | None:
        svcs = self.services.get(name)
        f = self._figures.get(name)
        if svcs is None or f is None:
            return None
        s = dict(zip(_FIELDS, _add(svcs)))
        return RedirectCounters(
            interval=self.interval, connections=s["connections"] or 0, last=f.last,
            average=f.average, max=f.max, last_hour=f.last_hour, average_hour=f.average_hour,
            last_day=f.last_day, average_day=f.average_day, active=s["active"],
            inactive=s["inactive"], packets_in=s["packets_in"], packets_out=s["packets_out"],
            bytes_in=s["bytes_in"], bytes_out=s["bytes_out"])

    def redirect_counters(self) -> dict[str, RedirectCounters]:
        """Every redirect pfe counted, by name."""
        return {n: c for n in self.services if (c := self.redirect(n)) is not None}

    def host_counters(self, config: Config) -> dict[int, DestCounters]:
        """Per host id: its destinations' counters in the services of the
        redirects whose main or backup table holds it, summed."""
        if not self.services:
            return {}
        by_table: dict[str, list[str]] = {}
        for r in config.redirects:
            for fwd in (r.forward, r.backup):
                if fwd is not None and r.name in self.services:
                    by_table.setdefault(fwd.table, []).append(r.name)
        dests: dict[tuple[str, str], list[DestCounters]] = {}
        for name, svcs in self.services.items():
            for sc in svcs:
                for d in sc.destinations:
                    dests.setdefault((name, d.address), []).append(d)
        out: dict[int, DestCounters] = {}
        for t in config.tables:
            names = by_table.get(t.name)
            if not names:
                continue
            for h in t.hosts:
                rows = [d for n in names for d in dests.get((n, h.address or h.name), ())]
                out[h.id] = DestCounters(h.address or h.name, *_connections_first(_add(rows)))
        return out

    def attach(self, hosts: list[HostRow], config: Config) -> None:
        """Set each host row's kernel counters (rows fresh from the scheduler)."""
        if not self.services:
            return
        by_id = self.host_counters(config)
        for h in hosts:
            h.kernel = by_id.get(h.id)


def _connections_first(sums: list[int | None]) -> list[int | None]:
    return [sums[0] or 0, *sums[1:]]
