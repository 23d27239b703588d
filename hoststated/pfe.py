"""pfe, the kernel table writer: the unprivileged uid keeping only
CAP_NET_ADMIN (the redirects' tables, and the routers' routes: the
Reconciler drives kernel.routes as it drives the engines). It reads no control socket and no network input; its only
inputs are the parent (config, shutdown) and hce (host states), and it trusts
neither blindly: every message is checked for type, then shape (ipc layer),
then value and id here. Anything out of line is fatal (desync). Its one
message to hce: the kernel's counters, every COUNTERS_INTERVAL.

Dying is not stopping: only the parent's SHUTDOWN (a deliberate stop) lets
pfe remove its kernel objects, and only with `cleanstop yes`. A lost parent
(channel EOF, PDEATHSIG), a lost hce, a desync or a fatal error leave the
kernel as it is, so that the restart adopts it without dropping traffic.
SIGTERM alone is not a stop order either: systemd signals every process of
the unit at once, so pfe then waits a moment for the parent's word.

Every Reconciler call runs in one dedicated worker thread, awaited from the
loop: pyroute2's sync API (the IPVS backend) drives an asyncio loop of its
own and fails inside a running one, and its sockets belong to the thread
that made them. One thread keeps the calls in the order the loop submits
them; pfe's own view (generation, known ids) changes before a reload's
kernel work is submitted, so what hce sends next is checked against the new
config and reaches the kernel after the reload.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

from hoststated import log, privsep
from hoststated.conf import sysctl
from hoststated.conf.model import Config
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelClosed, ChannelError
from hoststated.ipc.messages import MsgType
from hoststated.kernel import BackendError, Reconciler
from hoststated.proc import from_parent, settle_heap
from hoststated.states import HostStatus

logger = log.get("pfe")

RESYNC_INTERVAL = 30.0      # s between re-dumps of the kernel (drift repair)
COUNTERS_INTERVAL = 10.0    # s between reads of the kernel's counters (to hce)
PARENT_WORD_TIMEOUT = 2.0   # s to wait for the parent's SHUTDOWN after SIGTERM or a lost hce
LEFT = "kernel objects left in place for the restart to adopt"
_STATUSES = {s.value: s for s in HostStatus}


class Pfe:
    def __init__(self, parent: Channel, hce: Channel, init: messages.Init):
        self.parent = parent
        self.hce = hce
        self.config = Config.model_validate(init.config)
        # the wire form is done with (cli.child_main holds INIT for the life of
        # the process): its maps and lists, ~5 MB at 10,000 hosts, go now
        init.config.clear()
        self.generation = init.generation
        # the Reconciler owns the host statuses and the disabled redirects;
        # pfe keeps only what it needs to validate what hce sends
        self.reconciler = Reconciler(self.config)
        # one thread, so one order and one owner of the backends' sockets;
        # it starts on the first call
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pfe-kernel")
        self._known(self.config)
        self._signalled = asyncio.Event()
        self.fatal: str | None = None
        self.clean = False              # set by the parent's SHUTDOWN only

    def _kernel(self, fn, *args) -> asyncio.Future:
        """fn(*args) in the kernel thread. Submitted now, in call order: a
        caller that changes pfe's view first and awaits after keeps the
        kernel's order equal to the loop's."""
        return asyncio.get_running_loop().run_in_executor(
            self._worker, functools.partial(fn, *args))

    def _known(self, config: Config) -> None:
        self.host_ids = frozenset(h.id for h in config.hosts())
        self.redirect_names = frozenset(r.name for r in config.redirects)

    # --- hce: validate value and id, then apply ---------------------------

    def _check_statuses(self, batch: messages.HostStatusBatch) -> dict[int, HostStatus] | None:
        """The changes of one batch, as HostStatus; None for a stale batch."""
        if batch.generation < self.generation:
            return None                # sent before hce switched config: stale
        if batch.generation > self.generation:
            raise ChannelError(f"host status for config generation {batch.generation}, "
                               f"running {self.generation}")
        out = {}
        for host_id, value in batch.statuses.items():
            if host_id not in self.host_ids:
                raise ChannelError(f"host status for unknown host id {host_id}")
            # a HostStatus or its str value (HostStatus is a StrEnum: same hash)
            status = _STATUSES.get(value) if isinstance(value, str) else None
            if status is None:
                raise ChannelError(f"host {host_id}: invalid status {value!r}")
            out[host_id] = status
        return out

    def _check_redirects(self, state: messages.RedirectState) -> frozenset[str] | None:
        if state.generation < self.generation:
            return None
        if state.generation > self.generation:
            raise ChannelError(f"redirect state for config generation {state.generation}, "
                               f"running {self.generation}")
        disabled = frozenset(state.disabled)
        if bad := sorted(disabled - self.redirect_names):
            raise ChannelError(f"redirect state for unknown redirect {bad[0]}")
        return disabled

    def _check_weights(self, w: messages.HostWeights) -> dict[int, int] | None:
        """Runtime weights (issue 13): known ids, weights in range; None: stale."""
        if w.generation < self.generation:
            return None
        if w.generation > self.generation:
            raise ChannelError(f"host weights for config generation {w.generation}, "
                               f"running {self.generation}")
        for host_id, weight in w.weights.items():
            if host_id not in self.host_ids:
                raise ChannelError(f"host weight for unknown host id {host_id}")
            if not 0 <= weight <= messages.MAX_WEIGHT:
                raise ChannelError(f"host {host_id}: invalid weight {weight}")
        return dict(w.weights)

    async def _dispatch_hce(self) -> None:
        while True:
            msg = await self.hce.recv()
            match msg.type:
                case MsgType.HOST_STATUS:
                    batches = [self._check_statuses(msg.payload)]
                    # the batches that came while the kernel thread was
                    # busy with the last: one write (Reconciler.update_batches)
                    while (more := self.hce.take(MsgType.HOST_STATUS)) is not None:
                        batches.append(self._check_statuses(more.payload))
                    batches = [b for b in batches if b]
                    if batches:
                        await self._kernel(self.reconciler.update_batches, batches)
                case MsgType.HOST_WEIGHTS:
                    weights = self._check_weights(msg.payload)
                    if weights is not None:
                        await self._kernel(self.reconciler.set_weights, weights)
                case MsgType.REDIRECT_STATE:
                    disabled = self._check_redirects(msg.payload)
                    if disabled is not None:
                        await self._kernel(self.reconciler.update, {}, disabled)
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from hce")

    # --- parent ----------------------------------------------------------

    async def _dispatch_parent(self) -> None:
        """Returns on SHUTDOWN: the deliberate stop, the only one that cleans."""
        while True:
            msg = await self.parent.recv()
            match msg.type:
                case MsgType.RECONFIGURE:
                    await self._reconfigure(msg.payload)
                case _:
                    # PING from the event loop, never from a kernel-writing thread
                    if await from_parent(self.parent, msg):
                        self.clean = self.config.global_.cleanstop
                        return

    async def _reconfigure(self, payload: messages.Reconfigure) -> None:
        new = Config.model_validate(payload.config)
        if payload.generation <= self.generation:
            raise ChannelError(f"config generation {payload.generation} after {self.generation}")
        # hosts that carry over keep their state (the Reconciler carries it)
        # until hce's snapshot arrives. The view switches before the kernel
        # work is submitted: hce's next batch (new generation) is checked
        # against the new ids and queued behind the reload.
        self._known(new)
        self.config = new
        self.generation = payload.generation
        await self._kernel(self.reconciler.reconfigure, new)
        self._sysctls()
        settle_heap()
        await self.parent.send(MsgType.RECONFIGURED, messages.Generation(self.generation))

    # --- director sysctls (issue 14) -------------------------------------------

    def _sysctls(self) -> None:
        """Set what the config's forwarding needs (conf.sysctl), after the
        kernel write (which loads ip_vs, whose sysctls come with it); each
        change is logged, and what cannot be set is said, not fatal (the
        operator may run it another way)."""
        for need, cur in sysctl.unmet(self.config):
            if cur is None:
                logger.warning("sysctl %s: not in this kernel; %s", need.key, need.why)
                continue
            try:
                sysctl.write(need.key, need.value)
            except OSError as e:
                logger.error("sysctl %s is %s; %s, which needs %s: cannot set it: %s",
                             need.key, cur, need.why, need.value, e.strerror or e)
                continue
            logger.info("sysctl %s set to %s (was %s): %s", need.key, need.value, cur,
                        need.why)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            await self._kernel(self.reconciler.resync)

    # --- kernel counters (to hce) ------------------------------------------

    async def _counters(self) -> None:
        """The kernel's counters to hce, every COUNTERS_INTERVAL: one read
        in the kernel thread, between two writes. A read that fails is
        logged and the next one tries again (the counters are figures; the
        kernel tables, what pfe is for, are not affected)."""
        failing = False
        while True:
            await asyncio.sleep(COUNTERS_INTERVAL)
            generation = self.generation        # the read is queued behind its reload
            try:
                rows = await self._kernel(self.reconciler.counters)
            except BackendError as e:
                if not failing:
                    logger.error("kernel counters: %s", e)
                failing = True
                continue
            failing = False
            await self.hce.send(MsgType.KERNEL_COUNTERS, messages.KernelCounters(
                generation, COUNTERS_INTERVAL, [_service_counters(*r) for r in rows]))

    # --- run -------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._signalled.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        try:
            await self._kernel(self.reconciler.start)
        except BackendError as e:
            try:
                await self._kernel(self.reconciler.stop, False)
            except Exception:
                pass                    # the start's error is the one to report
            self._worker.shutdown()
            raise log.Fatal(f"cannot start the kernel engine: {e}") from None
        self._sysctls()
        settle_heap()
        await self.parent.send(MsgType.PFE_READY)
        parent = asyncio.ensure_future(self._dispatch_parent())
        tasks = {
            parent: "parent",
            asyncio.ensure_future(self._dispatch_hce()): "hce",
            asyncio.ensure_future(self._resync()): "resync",
            asyncio.ensure_future(self._counters()): "counters",
            asyncio.ensure_future(self._signalled.wait()): "signal",
        }
        why = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            why, self.fatal = self._why(done, tasks)
            if why is not None and self.fatal is None and not parent.done():
                # SIGTERM or a lost hce: the parent may be stopping everyone on
                # purpose (systemd signals the whole unit); its SHUTDOWN decides
                why = await self._parent_word(parent, why)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # behind whatever a cancelled task left running in the thread
            await self._stop_kernel(why)
            self._worker.shutdown()
        if self.fatal:
            raise log.Fatal(self.fatal)

    def _why(self, done, tasks) -> tuple[str | None, str | None]:
        """(why the kernel stays, fatal) from the first tasks to end;
        why is None for the parent's SHUTDOWN."""
        why = fatal = None
        for t in done:
            name = tasks[t]
            exc = None if t.cancelled() else t.exception()
            if name == "parent" and exc is None:
                return None, None
            if isinstance(exc, ChannelClosed):
                why = str(exc)
            elif isinstance(exc, ChannelError):
                why = fatal = f"desynchronized: {exc}"
            elif exc is not None:
                why = fatal = f"{name}: {type(exc).__name__}: {exc}"
                logger.debug("traceback", exc_info=exc)
            elif name == "signal":
                why = "SIGTERM"
            else:
                why = fatal = f"{name} stopped"
        return why, fatal

    async def _parent_word(self, parent: asyncio.Future, why: str) -> str | None:
        try:
            await asyncio.wait_for(asyncio.shield(parent), PARENT_WORD_TIMEOUT)
        except asyncio.TimeoutError:
            return f"{why}, no stop from the parent"
        except ChannelClosed as e:
            return f"{why}; {e}"
        except ChannelError as e:
            self.fatal = f"desynchronized: {e}"
            return self.fatal
        except Exception as e:
            self.fatal = f"parent: {type(e).__name__}: {e}"
            return self.fatal
        return None                     # SHUTDOWN: a deliberate stop

    async def _stop_kernel(self, why: str | None) -> None:
        clean = why is None and self.clean
        try:
            await self._kernel(self.reconciler.stop, clean)
        except Exception as e:
            logger.error("stop: %s: %s", type(e).__name__, e)
            return
        if clean:
            logger.info("kernel objects removed")
        elif why is None:
            logger.info("%s (cleanstop no)", LEFT)
        else:
            logger.info("%s (%s)", LEFT, why)


def _service_counters(redirect: str, engine: str, key, svc, dests) -> messages.ServiceCounters:
    return messages.ServiceCounters(
        redirect, str(key), engine, *svc,
        destinations=[messages.DestCounters(a, *c) for a, c in sorted(dests.items())])


def main(parent_sock: socket.socket, init: messages.Init) -> int:
    privsep.drop_privileges(init.uid, init.gid, keep={privsep.CAP_NET_ADMIN})
    logger.debug("running as uid %d with CAP_NET_ADMIN only", init.uid)

    async def go() -> None:
        parent = Channel(parent_sock, "parent")
        hce = Channel(socket.socket(fileno=init.peer_fd), "hce")
        await Pfe(parent, hce, init).run()
    asyncio.run(go())
    return 0
