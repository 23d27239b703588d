"""pfe, the kernel table writer: the unprivileged uid keeping only
CAP_NET_ADMIN. It reads no control socket and no network input; its only
inputs are the parent (config, shutdown) and hce (host states), and it trusts
neither blindly: every message is checked for type, then shape (ipc layer),
then value and id here. Anything out of line is fatal (desync).
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket

from hoststated import log, privsep
from hoststated.conf.model import Config
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError, until_one_ends
from hoststated.ipc.messages import MsgType
from hoststated.proc import settle_heap
from hoststated.states import HostStatus

logger = log.get("pfe")

RESYNC_INTERVAL = 30.0      # s between re-dumps of the kernel (drift repair)
_STATUSES = {s.value: s for s in HostStatus}


class NoReconciler:
    """engine none, or no hoststated.kernel.Reconciler yet: change nothing."""

    def __init__(self, config: Config, backend=None):
        pass

    def start(self): pass
    def update(self, statuses, disabled_redirects=frozenset()): pass
    def reconfigure(self, new_config): pass
    def resync(self): pass
    def stop(self, clean: bool = True): pass


def make_reconciler(config: Config):
    try:
        from hoststated.kernel import Reconciler
    except ImportError as e:
        logger.warning("no kernel Reconciler (%s): running as engine none", e)
        return NoReconciler(config)
    return Reconciler(config)


async def _call(result):
    # the Reconciler's methods may be plain or coroutines
    if inspect.isawaitable(result):
        return await result
    return result


class Pfe:
    def __init__(self, parent: Channel, hce: Channel, init: messages.Init):
        self.parent = parent
        self.hce = hce
        self.config = Config.model_validate(init.config)
        self.generation = init.generation
        self.reconciler = make_reconciler(self.config)
        self.statuses: dict[int, HostStatus] = {h.id: HostStatus.UNKNOWN
                                                for h in self.config.hosts()}
        self.disabled_redirects: set[str] = {r.name for r in self.config.redirects
                                             if r.disabled}
        self._stopping = asyncio.Event()
        self.fatal: str | None = None

    # --- hce: validate value and id, then apply ---------------------------

    def _check_statuses(self, batch: messages.HostStatusBatch) -> dict[int, HostStatus] | None:
        if batch.generation < self.generation:
            return None                # sent before hce switched config: stale
        if batch.generation > self.generation:
            raise ChannelError(f"host status for config generation {batch.generation}, "
                               f"running {self.generation}")
        out = {}
        for host_id, value in batch.statuses.items():
            if host_id not in self.statuses:
                raise ChannelError(f"host status for unknown host id {host_id}")
            status = _STATUSES.get(value)
            if status is None:
                raise ChannelError(f"host {host_id}: invalid status {value!r}")
            out[host_id] = status
        return out

    async def _dispatch_hce(self) -> None:
        while True:
            msg = await self.hce.recv()
            match msg.type:
                case MsgType.HOST_STATUS:
                    changes = self._check_statuses(msg.payload)
                    if changes is None:
                        continue
                    self.statuses.update(changes)
                    await self._apply()
                case MsgType.REDIRECT_STATE:
                    p = msg.payload
                    if p.generation < self.generation:
                        continue
                    names = {r.name for r in self.config.redirects}
                    bad = [n for n in p.disabled if n not in names]
                    if p.generation > self.generation or bad:
                        raise ChannelError(f"redirect state for unknown redirect "
                                           f"{bad[0] if bad else p.generation}")
                    self.disabled_redirects = set(p.disabled)
                    await self._apply()
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from hce")

    async def _apply(self) -> None:
        await _call(self.reconciler.update(dict(self.statuses),
                                           frozenset(self.disabled_redirects)))

    # --- parent ----------------------------------------------------------

    async def _dispatch_parent(self) -> None:
        while True:
            msg = await self.parent.recv()
            match msg.type:
                case MsgType.RECONFIGURE:
                    await self._reconfigure(msg.payload)
                case MsgType.LOG_VERBOSE:
                    log.set_verbose(msg.payload.verbose)
                case MsgType.SHUTDOWN:
                    return
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from the parent")

    async def _reconfigure(self, payload: messages.Reconfigure) -> None:
        new = Config.model_validate(payload.config)
        if payload.generation <= self.generation:
            raise ChannelError(f"config generation {payload.generation} after {self.generation}")
        await _call(self.reconciler.reconfigure(new))
        # hosts that carry over keep their state until hce's snapshot arrives
        self.statuses = {h.id: self.statuses.get(h.id, HostStatus.UNKNOWN) for h in new.hosts()}
        self.disabled_redirects &= {r.name for r in new.redirects}
        self.config = new
        self.generation = payload.generation
        settle_heap()
        await self.parent.send(MsgType.RECONFIGURED, messages.Generation(self.generation))

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            await _call(self.reconciler.resync())

    # --- run -------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        await _call(self.reconciler.start())
        settle_heap()
        await self.parent.send(MsgType.PFE_READY)
        tasks = {
            asyncio.ensure_future(self._dispatch_parent()): "parent",
            asyncio.ensure_future(self._dispatch_hce()): "hce",
            asyncio.ensure_future(self._resync()): "resync",
            asyncio.ensure_future(self._stopping.wait()): "signal",
        }
        try:
            self.fatal = await until_one_ends(tasks, logger)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            clean = self.config.global_.cleanstop
            try:
                await _call(self.reconciler.stop(clean))
            except Exception as e:
                logger.error("stop: %s: %s", type(e).__name__, e)
            logger.info("kernel objects %s", "removed" if clean else "left in place")
        if self.fatal:
            raise log.Fatal(self.fatal)


def main(parent_sock: socket.socket, init: messages.Init) -> int:
    privsep.drop_privileges(init.uid, init.gid, keep={privsep.CAP_NET_ADMIN})
    logger.debug("running as uid %d with CAP_NET_ADMIN only", init.uid)

    async def go() -> None:
        parent = Channel(parent_sock, "parent")
        hce = Channel(socket.socket(fileno=init.peer_fd), "hce")
        await Pfe(parent, hce, init).run()
    asyncio.run(go())
    return 0
