"""hce, the health-check engine process: unprivileged, no capabilities.

It owns host state (through CheckEngine), sends state changes to pfe, and
serves the control socket. Its peers: the parent (config, reload results,
shutdown) and pfe (which never talks back). An unexpected message from either
is fatal; EOF from the parent means the daemon is going away.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from typing import Any

from hoststated import log, privsep
from hoststated.conf.model import Config
from hoststated.control import ControlServer
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError, until_one_ends
from hoststated.ipc.messages import (Command, CommandError, ErrorCode, HostStatusBatch,
                                     MsgType, RedirectState)
from hoststated.proc import settle_heap
from hoststated.states import HostError, HostStatus

logger = log.get("hce")

READY_POLL = 0.2          # s between checks for "first round done"
SHOW_CACHE = 1.0          # s a host listing may be reused (counters that old)


class StaticEngine:
    """Stands in for CheckEngine when hoststated.hce_sched is not there: every
    host stays unknown (or disabled). Lets the daemon and its control socket
    run; logged at start."""

    def __init__(self, config: Config, on_change, *, icmp_fds=None, clock=time.monotonic):
        self.reconfigure(config)
        self._stop = asyncio.Event()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.disabled: set[int] = {h.id for t in config.tables if t.disabled for h in t.hosts}

    async def run(self) -> None:
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    def hosts(self) -> list[dict]:
        return [{"id": h.id, "name": h.name, "table": h.table,
                 "status": HostStatus.DISABLED if h.id in self.disabled else HostStatus.UNKNOWN,
                 "error": HostError.NONE, "detail": "", "last_check": 0.0,
                 "latency_ms": None, "check_cnt": 0, "up_cnt": 0, "retry_cnt": 0}
                for h in self.config.hosts()]

    def tables(self) -> list:
        return []

    def stats(self) -> dict:
        return {"engine": "none"}

    def set_host_enabled(self, host_id: int, enabled: bool) -> None:
        (self.disabled.discard if enabled else self.disabled.add)(host_id)

    def set_table_enabled(self, name_or_id, enabled: bool) -> None:
        for t in self.config.tables:
            if name_or_id in (t.id, t.name):
                for h in t.hosts:
                    self.set_host_enabled(h.id, enabled)

    def poll(self) -> None:
        pass


def make_engine(config: Config, on_change, icmp_fds: list[int]):
    try:
        from hoststated.hce_sched import CheckEngine
    except ImportError as e:
        logger.warning("no check engine (%s): hosts stay unknown", e)
        return StaticEngine(config, on_change, icmp_fds=icmp_fds)
    return CheckEngine(config, on_change, icmp_fds=icmp_fds)


def report_dict(r: Any) -> dict:
    """A HostReport (or StaticEngine's dict) as plain data for the control socket."""
    get = r.get if isinstance(r, dict) else (lambda k, d=None: getattr(r, k, d))
    status = get("status", HostStatus.UNKNOWN)
    error = get("error", HostError.NONE)
    check_cnt, up_cnt = get("check_cnt", 0) or 0, get("up_cnt", 0) or 0
    latency = get("latency_ms")
    return {
        "id": get("id"), "name": get("name"), "table": get("table"),
        "address": get("address"), "port": get("port"), "parent": get("parent"),
        "status": str(status),
        "error": "" if status != HostStatus.DOWN or error == HostError.NONE else str(error),
        "result": str(error),             # the last check's word, up or down
        "detail": get("detail", "") or "",
        "last_check": get("last_check", 0.0) or 0.0,
        "latency_ms": round(latency, 3) if isinstance(latency, (int, float)) else None,
        "check_cnt": check_cnt, "up_cnt": up_cnt, "retry_cnt": get("retry_cnt", 0) or 0,
        "availability": round(100.0 * up_cnt / check_cnt, 2) if check_cnt else None,
    }


class Hce:
    def __init__(self, parent: Channel, pfe: Channel, init: messages.Init):
        self.parent = parent
        self.pfe = pfe
        self.config = Config.model_validate(init.config)
        self.generation = init.generation
        self.disabled_redirects = {r.name for r in self.config.redirects if r.disabled}
        self.disabled_tables = {t.name for t in self.config.tables if t.disabled}
        self.engine = make_engine(self.config, self._on_change, list(init.icmp_fds))
        self.servers = [ControlServer(socket.socket(fileno=init.control_fd), self.command)]
        if init.restricted_fd >= 0:
            self.servers.append(ControlServer(socket.socket(fileno=init.restricted_fd),
                                              self.command, restricted=True))
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._changed: dict[int, str] = {}
        self._hosts_cache: tuple[float, list[dict]] | None = None
        self._derived_cache: tuple[tuple, tuple] | None = None
        self._flush_scheduled = False
        self._reloads: dict[int, asyncio.Future] = {}
        self._request_ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self.fatal: str | None = None
        settle_heap()

    # --- state changes -> pfe and monitor clients --------------------------

    def _on_change(self, report: Any) -> None:
        data = report_dict(report)
        self._changed[data["id"]] = data["status"]
        if not self._flush_scheduled:
            # coalesce the changes of one loop iteration into one message
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        ev = messages.event("host", data)
        for s in self.servers:
            s.broadcast(ev)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._changed:
            batch, self._changed = self._changed, {}
            self._outbox.put_nowait((MsgType.HOST_STATUS,
                                     HostStatusBatch(self.generation, batch)))

    def _send_snapshot(self) -> None:
        self._changed = {}
        statuses = {d["id"]: d["status"] for d in map(report_dict, self.engine.hosts())}
        self._outbox.put_nowait((MsgType.HOST_STATUS, HostStatusBatch(self.generation, statuses)))
        self._send_redirects()

    def _send_redirects(self) -> None:
        self._outbox.put_nowait((MsgType.REDIRECT_STATE,
                                 RedirectState(self.generation, sorted(self.disabled_redirects))))

    async def _pfe_sender(self) -> None:
        while True:
            mtype, payload = await self._outbox.get()
            await self.pfe.send(mtype, payload)

    # --- peers ---------------------------------------------------------------

    async def _dispatch_parent(self) -> None:
        while True:
            msg = await self.parent.recv()
            match msg.type:
                case MsgType.RECONFIGURE:
                    self._reconfigure(msg.payload)
                case MsgType.RELOAD_RESULT:
                    fut = self._reloads.pop(msg.payload.request, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.payload)
                case MsgType.LOG_VERBOSE:
                    log.set_verbose(msg.payload.verbose)
                case MsgType.SHUTDOWN:
                    return
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from the parent")

    async def _dispatch_pfe(self) -> None:
        msg = await self.pfe.recv()        # pfe never talks to hce
        raise ChannelError(f"unexpected {msg.type.name} from pfe")

    def _reconfigure(self, payload: messages.Reconfigure) -> None:
        new = Config.model_validate(payload.config)
        self.engine.reconfigure(new)
        old_names = {r.name for r in self.config.redirects}
        # a redirect disabled at run time stays so while it exists; new ones
        # take their state from the config
        self.disabled_redirects = ({n for n in self.disabled_redirects
                                    if any(r.name == n for r in new.redirects)}
                                   | {r.name for r in new.redirects
                                      if r.disabled and r.name not in old_names})
        self.disabled_tables = {t.name for t in new.tables if t.disabled}
        self.config = new
        settle_heap()
        self.generation = payload.generation
        self._hosts_cache = None
        self._send_snapshot()
        logger.info("configuration reloaded (generation %d)", self.generation)

    async def _ready(self) -> None:
        """Tell the parent once the first check round is done (every enabled
        host checked once), or after one interval plus timeout at the latest."""
        deadline = time.monotonic() + self.config.global_.interval + \
            self.config.global_.timeout / 1000.0
        while time.monotonic() < deadline:
            hosts = [report_dict(r) for r in self.engine.hosts()]
            if all(h["check_cnt"] > 0 or h["status"] == HostStatus.DISABLED for h in hosts) \
                    and not isinstance(self.engine, StaticEngine):
                break
            await asyncio.sleep(READY_POLL)
        await self.parent.send(MsgType.HCE_READY)

    # --- control commands ----------------------------------------------------

    async def command(self, cmd: Command) -> Any:
        words, arg = cmd.words, cmd.arg
        if words[0] != "show":
            self._hosts_cache = None
        match words:
            case ("show", what):
                return self.show(what)
            case (("host" | "table" | "redirect") as kind, action):
                return self._enable(kind, arg, action == "enable")
            case ("poll",):
                self.engine.poll()
                return None
            case ("reload",):
                return await self._reload(None)
            case ("load",):
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

    async def _reload(self, path: str | None) -> Any:
        rid = next(self._request_ids)
        fut = asyncio.get_running_loop().create_future()
        self._reloads[rid] = fut
        await self.parent.send(MsgType.CTL_RELOAD, messages.CtlReload(rid, path))
        result: messages.ReloadResult = await fut
        if not result.ok:
            raise CommandError(ErrorCode.FAILED, result.message)
        return {"generation": self.generation}

    def _find(self, kind: str, arg: str):
        objs = {"host": self.config.hosts(), "table": list(self.config.tables),
                "redirect": list(self.config.redirects)}[kind]
        if arg.isdigit():
            for o in objs:
                if o.id == int(arg):
                    return o
        for o in objs:      # the first with that name, as relayd's host_findbyname
            if arg == o.name or (kind == "host" and arg == o.address) or \
                    (kind == "table" and arg == o.template):
                return o
        raise CommandError(ErrorCode.NOT_FOUND, f"no {kind} {arg}")

    def _enable(self, kind: str, arg: str | None, enable: bool) -> Any:
        obj = self._find(kind, arg or "")
        if kind == "host":
            self.engine.set_host_enabled(obj.id, enable)
        elif kind == "table":
            self.engine.set_table_enabled(obj.name, enable)
            (self.disabled_tables.discard if enable else self.disabled_tables.add)(obj.name)
        else:
            (self.disabled_redirects.discard if enable else self.disabled_redirects.add)(obj.name)
            self._send_redirects()
            ev = messages.event("redirect", {"id": obj.id, "name": obj.name,
                                             "status": self._redirect_status(obj)})
            for s in self.servers:
                s.broadcast(ev)
        logger.info("%s %s %s", kind, obj.name, "enabled" if enable else "disabled")
        return {"id": obj.id, "name": obj.name}

    # --- show: the data hoststatectl prints -------------------------------

    def _hosts(self) -> list[dict]:
        """Every host as data, cached: many clients asking at once (or a
        script polling) cost one walk of the hosts per SHOW_CACHE seconds,
        however many hosts flap meanwhile; a command drops the cache at once.
        (Monitor clients get every change as it happens.)"""
        now = time.monotonic()
        if self._hosts_cache is None or now - self._hosts_cache[0] > SHOW_CACHE:
            self._hosts_cache = (now, [report_dict(r) for r in self.engine.hosts()])
        return self._hosts_cache[1]

    def _table_rows(self, hosts: list[dict]) -> list[dict]:
        ups: dict[str, int] = {}
        for h in hosts:
            if h["status"] == HostStatus.UP:
                ups[h["table"]] = ups.get(h["table"], 0) + 1
        rows = []
        for t in self.config.tables:
            up = ups.get(t.name, 0)
            if t.name in self.disabled_tables:
                status = "disabled"
            else:
                status = f"active ({up} hosts)" if up else "empty"
            rows.append({"id": t.id, "name": t.name, "status": status, "up": up,
                         "hosts": len(t.hosts), "check": t.check.kind, "port": t.port,
                         "disabled": t.name in self.disabled_tables})
        return rows

    def _redirect_status(self, r, tables: dict | None = None) -> str:
        if r.name in self.disabled_redirects:
            return "disabled"
        if tables is None:
            tables = {t["name"]: t for t in self._table_rows(self._hosts())}

        def live(fwd):
            t = tables.get(fwd.table) if fwd else None
            return bool(t and not t["disabled"] and t["up"])
        if live(r.forward):
            return "active"
        if live(r.backup):
            return "active (using backup table)"
        return "down"

    def _derived(self) -> tuple[list[dict], list[dict], list[dict]]:
        """(hosts, tables, redirects) rows, recomputed only when the host
        listing or an enable/disable changed."""
        hosts = self._hosts()
        key = (id(hosts), self.generation, frozenset(self.disabled_tables),
               frozenset(self.disabled_redirects))
        if self._derived_cache is None or self._derived_cache[0] != key:
            tables = self._table_rows(hosts)
            by_name = {t["name"]: t for t in tables}
            redirects = [{"id": r.id, "name": r.name,
                          "status": self._redirect_status(r, by_name),
                          "table": r.forward.table,
                          "backup": r.backup.table if r.backup else None}
                         for r in self.config.redirects]
            self._derived_cache = (key, (hosts, tables, redirects))
        return self._derived_cache[1]

    def show(self, what: str) -> dict:
        if what == "relays":
            return {"relays": self._relays()}
        hosts, tables, redirects = self._derived()
        match what:
            case "summary":
                return {"redirects": redirects, "tables": tables, "hosts": hosts,
                        "relays": self._relays(), "stats": self.engine.stats(),
                        "generation": self.generation}
            case "hosts":
                return {"tables": tables, "hosts": hosts}
            case "redirects":
                return {"redirects": redirects}
            case "tables":
                return {"tables": tables}
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"show {what}: not handled")

    def _relays(self) -> list[dict]:
        return [{"id": r.id, "name": r.name, "status": "disabled" if r.disabled else "active"}
                for r in self.config.relays]

    # --- run -----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)   # the parent handles ^C
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        for s in self.servers:
            await s.start()
        self._send_redirects()
        tasks = {
            asyncio.ensure_future(self.engine.run()): "check engine",
            asyncio.ensure_future(self._dispatch_parent()): "parent",
            asyncio.ensure_future(self._dispatch_pfe()): "pfe",
            asyncio.ensure_future(self._pfe_sender()): "pfe sender",
            asyncio.ensure_future(self._stopping.wait()): "signal",
        }
        ready = asyncio.ensure_future(self._ready())
        try:
            self.fatal = await until_one_ends(tasks, logger, vital=("check engine",))
        finally:
            ready.cancel()
            self.engine.stop()
            for s in self.servers:
                s.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, ready, return_exceptions=True)
        if self.fatal:
            raise log.Fatal(self.fatal)


def main(parent_sock: socket.socket, init: messages.Init) -> int:
    privsep.drop_privileges(init.uid, init.gid, keep=set())
    logger.debug("running as uid %d, no capabilities", init.uid)

    async def go() -> None:
        parent = Channel(parent_sock, "parent")
        pfe = Channel(socket.socket(fileno=init.peer_fd), "pfe")
        await Hce(parent, pfe, init).run()
    asyncio.run(go())
    return 0
