"""The parent process: root. It reads and validates the config, binds the
control socket, opens the raw ICMP sockets, starts hce and pfe by
re-executing itself, reloads, and stops everything when asked or when any
child dies (fail-stop, as relayd). It parses no network input, runs no check
and writes no kernel table.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import stat
import subprocess
import time
from typing import Any

from hoststated import hce_shards, log, parent_listen, passive, privsep, proc
from hoststated.autoreload import Autoreload, run_callback
from hoststated.conf import model
from hoststated.conf.model import Config
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelClosed, ChannelError
from hoststated.ipc.messages import MsgType

logger = log.get("parent")

CHILD_STOP_TIMEOUT = 10.0    # s for the children to stop before SIGKILL
RECONFIGURE_TIMEOUT = 60.0   # s for pfe to apply a new config
LOST_CHILD_GRACE = 0.2       # s between a child's exit and naming the child that failed
EXIT_WAIT = 5.0              # s for a child that closed its channel to be seen exiting
LOAD_TIMEOUT = 120.0         # s for reading a config at reload before giving up on it
# Liveness: each child answers PING(seq) with PONG(seq) from its event loop;
# one that leaves a PING unanswered this long is stuck (stopped, a loop in a
# long computation, a deadlock) and the daemon fails stop, so that systemd
# starts one that adopts the kernel. Counted from each child's READY: a
# start that never ends is TimeoutStartSec's, a reload RECONFIGURE_TIMEOUT's.
HEARTBEAT_INTERVAL = 1.0     # s between PINGs
HEARTBEAT_LIMIT = 3.0        # s of silence that loses a child


def wire_config(config: Config) -> dict:
    """Config -> plain data (msgpack-able), secrets included: the children
    need them to run checks. model_validate() on the other side rebuilds it."""
    return _plain(config.model_dump(by_alias=True))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "get_secret_value"):
        return obj.get_secret_value()
    return obj


def load_config(args, path: str | None = None, warnings: list | None = None,
                sources: list | None = None) -> tuple[Config, dict]:
    """The config and the relays' TLS material (conf.keypairs: read once,
    as root, as the load checks the files; the relay processes get it and
    never open a key file). Raise conf.errors.ConfigError with every
    diagnostic on a bad config (a check whose Python package is missing
    included). Its warnings go to `warnings` when given, else to the log.
    A `path` (hoststatectl load) is private: its diagnostics never quote
    the file."""
    from hoststated.conf.load import load
    tls: dict = {}
    config = load(path or args.config_file, defines=dict(args.defines or {}),
                  lookup=not getattr(args, "no_lookup", False), warnings=warnings,
                  private=path is not None, tls=tls, sources=sources)
    return config, tls


def format_errors(e: Exception) -> str:
    diags = getattr(e, "diagnostics", None)
    if diags:
        return "\n".join(str(d) for d in diags)
    return str(e)


def config_path(args) -> str:
    return os.path.abspath(args.config_file)


def not_regular(path: str) -> None:
    """Raise OSError unless path is a regular file: a FIFO or a device would
    block open() for ever (faults-found 3.5), a directory cannot be read.
    A file that cannot be stat()ed is left to the loader to report."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a directory" if stat.S_ISDIR(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        raise OSError(f"{path}: {kind}, not a regular file")


def send_store(changes: list[tuple[str, list[int] | None]]) -> None:
    """parent_listen's changes to systemd's file descriptor store; nothing
    without NOTIFY_SOCKET (no systemd: a restart cannot keep the sockets)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    for name, fds in changes:
        if fds is None:
            proc.fdstore_remove(name)
        else:
            proc.fdstore(name, fds)


def bind_relays(config: Config, passed: dict[str, list[int]]
                ) -> tuple[parent_listen.Listeners, list[dict[str, socket.socket]]]:
    """The relay listeners of the start: adopted from what systemd passed
    (its store kept them across the restart, with the connections that
    arrived meanwhile in their queues) or bound; the store told what
    changed. OSError when one cannot be bound (nothing stays bound)."""
    listeners = parent_listen.Listeners(config.global_.prefork if config.relays else 0, passed)
    socks = listeners.bind(config) if config.relays else []
    stale = listeners.leftover()
    if listeners.adopted:
        logger.info("adopted %d listening sockets kept by systemd across the restart",
                    listeners.adopted)
    if stale:
        logger.info("closed %d descriptors systemd passed that no listener wants: %s",
                    len(stale), ", ".join(stale))
    limit = proc.fdstore_max()
    wanted = len(socks) * len(socks[0]) if socks else 0
    if limit is not None and wanted > limit:
        logger.warning("FileDescriptorStoreMax=%d is below the %d relay listening sockets "
                       "(prefork x listeners): a restart refuses connections on the rest",
                       limit, wanted)
    send_store(listeners.store_changes(stale))
    return listeners, socks


def resolve_user(config: Config) -> tuple[int, int, str]:
    user = config.global_.user
    fallback = model.FALLBACK_USER if user == model.DEFAULT_USER else None
    return privsep.resolve_user(user, fallback)


def pid_path(socket_path: str) -> str:
    """The pid file of a detached daemon: beside its control socket, named
    after it (/run/hoststated.sock -> /run/hoststated.pid), so that daemons
    with their own sockets have their own pid files."""
    base, ext = os.path.splitext(socket_path)
    return (base if ext == ".sock" else socket_path) + ".pid"


def _remove_pidfile(path: str, pid: int) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(pid):
                return                   # another daemon's by now
        os.unlink(path)
    except OSError:
        pass


def daemonize(pidfile: str | None = None, keep_stderr: bool = False) -> None:
    """Detach: fork twice, new session, / as cwd, stdio on /dev/null (stderr
    kept when it is where the log goes: no syslog daemon). The first process
    exits only once the pid file names the daemon, 1 if it could not be
    written, so whoever started us can read it at once; it is removed at exit."""
    ready_r, ready_w = os.pipe()
    if os.fork():
        os.close(ready_w)
        ok = os.read(ready_r, 1)
        os._exit(0 if ok == b"1" else 1)
    os.close(ready_r)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    if pidfile:
        pid = os.getpid()
        tmp = f"{pidfile}.{pid}"
        try:
            with open(tmp, "w") as f:
                f.write(f"{pid}\n")
            os.replace(tmp, pidfile)
        except OSError as e:
            log.stderr_line(f"hoststated: pid file {pidfile}: {e.strerror or e}")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            os._exit(1)
        atexit.register(_remove_pidfile, pidfile, pid)
    os.write(ready_w, b"1")
    os.close(ready_w)
    fd = os.open(os.devnull, os.O_RDWR)
    for i in range(2 if keep_stderr else 3):
        os.dup2(fd, i)
    if fd > 2:
        os.close(fd)


class Child:
    def __init__(self, role: str, popen: subprocess.Popen, chan: Channel, name: str = ""):
        self.role = role
        self.name = name or role                # "relay 2" of role relay
        self.popen = popen
        self.chan = chan
        self.status: int | None = None
        self.seq = 0                            # the last PING sent
        self.pings: dict[int, float] = {}       # unanswered PING seq -> when sent
        self.reconfiguring: float | None = None  # deadline while a RECONFIGURE is unanswered



# --- passive failure detection (issue 15) -----------------------------------------

def open_nflog(config: Config) -> int:
    """hce's NFLOG socket, bound to passive.NFLOG_GROUP as root (nfnetlink
    wants CAP_NET_ADMIN for the binding, not for reading), when the config
    has hosts the kernel rules watch; -1 otherwise. An OSError is fatal to
    the caller (EBUSY: another listener holds the group)."""
    if not passive.targets(config):
        return -1
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, passive.NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, passive.RCVBUF)    # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, passive.RCVBUF)
        sock.bind((0, 0))
        sock.settimeout(2.0)
        requests = passive.bind_requests()
        for i, req in enumerate(requests):
            sock.send(req)
            err = passive.ack_error(sock.recv(8192))
            # the address-family (un)binds do nothing on kernels since 3.17
            # and may be refused there; the group's binding must succeed
            if err and i == len(requests) - 1:
                raise OSError(err, f"NFLOG group {passive.NFLOG_GROUP}: {os.strerror(err)}")
        sock.settimeout(None)
        sock.setblocking(False)
        fd = sock.detach()
    except BaseException:
        sock.close()
        raise
    os.set_inheritable(fd, True)
    return fd

class Parent:
    def __init__(self, args, config: Config, uid: int, gid: int,
                 sockets: list[socket.socket], icmp_fds: list[int],
                 relay_socks: list[dict[str, socket.socket]] | None = None,
                 tls: dict | None = None,
                 listeners: parent_listen.Listeners | None = None,
                 metrics: socket.socket | None = None, nflog_fd: int = -1,
                 sources: list[str] | None = None, arp_fd: int = -1, state_fd: int = -1,
                 worker_fds: list[tuple[list[int], int]] | None = None):
        self.args = args
        # issue 17: per check worker, its raw ICMP sockets and ARP socket
        # (none: hce runs the checks); the number is fixed at start
        self.worker_fds = worker_fds or []
        self.workers = len(self.worker_fds) or 1
        self.state_fd = state_fd                    # issue 14: `log state file`, for hce
        self.arp_fd = arp_fd                        # issue 14: hce's raw ARP socket (check arp)
        self.arp = arp_fd >= 0
        self.nflog_fd = nflog_fd                    # issue 15: hce's NFLOG socket
        self.nflog = nflog_fd >= 0
        self.metrics = metrics                      # `metrics listen on`: hce serves it
        self.config = config
        # the relay processes: none when the config has no relay at start
        if listeners is None or not relay_socks:
            listeners = parent_listen.Listeners(len(relay_socks or ()))
        self.listeners = listeners
        self.listeners.prefork = len(relay_socks or ())
        self.listeners.processes = relay_socks or []
        self.listeners.commit(config)
        self.fd_socks: list[socket.socket] = []     # our end of each relay's fd channel
        self.tls: dict = tls or {}                  # load_config's material
        self.uid, self.gid = uid, gid
        self.sockets = sockets
        self.icmp_fds = icmp_fds
        self.generation = 1
        self.children: dict[str, Child] = {}
        self.verbose = bool(args.verbose)
        self._stop = asyncio.Event()
        # a deliberate stop (SIGTERM, SIGINT, hoststatectl stop) is the only
        # one that lets pfe clean up the kernel; any other is dying
        self._deliberate = False
        self.exit_status = 0
        # reloads run one at a time, in order; each entry is a path (None:
        # the current file) and the futures of the requests it answers
        self._reloads: list[tuple[str | None, list[asyncio.Future], str]] = []
        self._reloading = False
        self._reload_task: asyncio.Future | None = None
        self._heartbeat_task: asyncio.Future | None = None
        self._reconfiguring: dict[str, asyncio.Future] = {}   # child name -> RECONFIGURED
        self._ready: dict[str, bool] = {}
        self._losing = False
        self._notified = False
        self._counts: messages.HostCounts | None = None
        self._refused = False               # the last reload was refused
        self._status = ""                   # the last STATUS= sent
        self._watchdog = proc.watchdog_usec() is not None
        # issue 14: `autoreload`: the files the config was read from, watched
        self._sources: list[str] = list(sources or [config_path(args)])
        self._sources_read: list[str] = []
        self._autoreload: Autoreload | None = None
        self._callbacks: set[asyncio.Future] = set()

    # --- children ----------------------------------------------------------

    def _start_children(self) -> dict[str, messages.Init]:
        """Spawn pfe, hce and the relay processes with their fds; return
        the INIT each is owed."""
        hce_pfe = socket.socketpair()
        hce_chan, hce_end = socket.socketpair()
        pfe_chan, pfe_end = socket.socketpair()
        for s in (hce_end, pfe_end, *hce_pfe):
            s.set_inheritable(True)
        base = dict(config=wire_config(self.config), generation=self.generation,
                    uid=self.uid, gid=self.gid, debug=bool(self.args.debug),
                    verbose=int(self.args.verbose or 0))
        control_fd = self.sockets[0].fileno()
        restricted_fd = self.sockets[1].fileno() if len(self.sockets) > 1 else -1
        metrics_fd = self.metrics.fileno() if self.metrics is not None else -1
        relays = self._relay_ends()
        workers = []                                # issue 17: hce's end, the worker's
        for _ in self.worker_fds:
            hce_w, worker_w = socket.socketpair()
            for s in (hce_w, worker_w):
                s.set_inheritable(True)
            workers.append((hce_w, worker_w))
        inits = {
            "pfe": ("pfe", pfe_chan, pfe_end, [hce_pfe[1].fileno()],
                    messages.Init(**base, peer_fd=hce_pfe[1].fileno())),
            "hce": ("hce", hce_chan, hce_end,
                    [hce_pfe[0].fileno(), control_fd, *self.icmp_fds,
                     *([restricted_fd] if restricted_fd >= 0 else []),
                     *([metrics_fd] if metrics_fd >= 0 else []),
                     *([self.nflog_fd] if self.nflog_fd >= 0 else []),
                     *([self.arp_fd] if self.arp_fd >= 0 else []),
                     *([self.state_fd] if self.state_fd >= 0 else []),
                     *(r[0].fileno() for r in relays), *(w[0].fileno() for w in workers)],
                    messages.Init(**base, peer_fd=hce_pfe[0].fileno(), control_fd=control_fd,
                                  restricted_fd=restricted_fd, icmp_fds=list(self.icmp_fds),
                                  relay_fds=[r[0].fileno() for r in relays],
                                  metrics_fd=metrics_fd, nflog_fd=self.nflog_fd,
                                  arp_fd=self.arp_fd, state_fd=self.state_fd,
                                  worker_fds=[w[0].fileno() for w in workers])),
        }
        for i, (hce_end_i, relay_end, fd_child, listen) in enumerate(relays, 1):
            chan, end = socket.socketpair()
            end.set_inheritable(True)
            listen_fds = {k: sk.fileno() for k, sk in listen.items()}
            inits[f"relay {i}"] = (
                "relay", chan, end, [relay_end.fileno(), fd_child.fileno(), *listen_fds.values()],
                messages.Init(**base, peer_fd=relay_end.fileno(), index=i,
                              listen_fds=listen_fds, fd_socket=fd_child.fileno(),
                              tls=self.tls))
        for i, ((_, worker_w), (icmp, arp)) in enumerate(zip(workers, self.worker_fds), 1):
            chan, end = socket.socketpair()
            end.set_inheritable(True)
            inits[f"worker {i}"] = (
                "worker", chan, end, [worker_w.fileno(), *icmp, *([arp] if arp >= 0 else [])],
                messages.Init(**base, peer_fd=worker_w.fileno(), index=i, workers=len(workers),
                              icmp_fds=list(icmp), arp_fd=arp))
        for name, (role, chan, end, fds, _) in inits.items():
            popen = proc.spawn(role, end.fileno(), fds)
            end.close()
            self.children[name] = Child(role, popen, Channel(chan, name), name)
            self._ready[name] = False
            logger.debug("started %s, pid %d", name, popen.pid)
        # the children hold these now; the parent keeps none of them (a
        # listening socket kept here would take connections nobody accepts)
        for s in (*hce_pfe, *self.sockets):
            s.close()
        if self.metrics is not None:
            self.metrics.close()
        for hce_end_i, relay_end, fd_child, listen in relays:
            for s in (hce_end_i, relay_end, fd_child, *listen.values()):
                s.close()
        for fd in self.icmp_fds:
            os.close(fd)
        for pair in workers:
            for s in pair:
                s.close()
        for icmp, arp in self.worker_fds:
            for fd in (*icmp, *([arp] if arp >= 0 else [])):
                os.close(fd)
        if self.nflog_fd >= 0:
            os.close(self.nflog_fd)
            self.nflog_fd = -1
        if self.arp_fd >= 0:
            os.close(self.arp_fd)
            self.arp_fd = -1
        if self.state_fd >= 0:
            os.close(self.state_fd)
            self.state_fd = -1
        return {name: v[4] for name, v in inits.items()}

    def _relay_ends(self) -> list[tuple]:
        """Per relay process: hce's end of their channel, the relay's end,
        the relay's end of its fd channel (the parent keeps the other in
        self.fd_socks), and its listening sockets by key."""
        out = []
        for i in range(len(self.listeners.processes)):
            hce_end, relay_end = socket.socketpair()
            fd_parent, fd_child = socket.socketpair()
            for s in (hce_end, relay_end, fd_child):
                s.set_inheritable(True)
            self.fd_socks.append(fd_parent)
            listen = self.listeners.processes[i]
            for sk in listen.values():
                sk.set_inheritable(True)
            out.append((hce_end, relay_end, fd_child, listen))
        return out

    def _watch(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(child.popen.pid)

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            child.status = child.popen.wait()
            if not self._stop.is_set() and not self._losing:
                # one child's death often ends the other (its channel closes):
                # a moment later, name the one that failed, not the bystander
                self._losing = True
                loop.call_later(LOST_CHILD_GRACE, self._lost_child)
        loop.add_reader(pidfd, exited)

    def _lost_child(self, waited: float = 0.0) -> None:
        if self._stop.is_set():
            return
        gone = [c for c in self.children.values() if c.status is not None]
        running = len(gone) < len(self.children)
        if running and all(c.status == 0 for c in gone) and waited < EXIT_WAIT:
            # a bystander (its peer closed the channel) left cleanly: the one
            # that failed may be seconds behind it on a loaded machine
            asyncio.get_running_loop().call_later(
                LOST_CHILD_GRACE, self._lost_child, waited + LOST_CHILD_GRACE)
            return
        child = max(gone, key=lambda c: c.status != 0)
        logger.error("lost child: %s %s", child.name, proc.describe_exit(child.status))
        self.exit_status = 1
        self._stop.set()

    async def _dispatch(self, child: Child) -> None:
        while True:
            msg = await child.chan.recv()
            match (child.role, msg.type):
                case ("hce", MsgType.HCE_READY) | ("pfe", MsgType.PFE_READY) | \
                        ("relay", MsgType.RELAY_READY) | ("worker", MsgType.WORKER_READY):
                    self._ready[child.name] = True
                    if all(self._ready.values()) and not self._notified:
                        self._notified = True
                        logger.info("startup: first check round done")
                        proc.notify_systemd(f"READY=1\nSTATUS={self._status_line()}")
                case (_, MsgType.PONG):
                    seq = msg.payload.seq
                    if seq > child.seq:
                        raise ChannelError(f"PONG {seq} from {child.name}, "
                                           f"the last PING was {child.seq}")
                    for s in [s for s in child.pings if s <= seq]:
                        del child.pings[s]
                case (_, MsgType.RECONFIGURED):
                    child.reconfiguring = None
                    child.pings.clear()         # it was busy applying, and now answers
                    waiting = self._reconfiguring.get(child.name)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(msg.payload.generation)
                case ("hce", MsgType.HOST_COUNTS):
                    self._counts = msg.payload
                    self._tell_status()
                case ("hce", MsgType.CTL_RELOAD):
                    asyncio.ensure_future(self._ctl_reload(msg.payload))
                case ("hce", MsgType.CTL_STOP):
                    logger.info("stop requested by hoststatectl")
                    self._stop_deliberately()
                case ("hce", MsgType.CTL_LOG):
                    self._set_verbose(msg.payload.verbose)
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from {child.name}")

    # --- liveness and systemd ------------------------------------------------

    async def _heartbeat(self) -> None:
        """PING every ready child each HEARTBEAT_INTERVAL; a child silent
        for HEARTBEAT_LIMIT is lost. WATCHDOG=1 goes to systemd only while
        every child answered its last PING, so a stuck child (or a stuck
        parent, which sends nothing) trips the unit's WatchdogSec too."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self._stop.is_set():
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = loop.time()
            if now - last > 1.5 * HEARTBEAT_INTERVAL:
                # our own loop was late (stopped, starved): the children owe
                # nothing for that time, and their answers may sit unread
                for c in self.children.values():
                    c.pings.clear()
            last = now
            healthy = True
            for child in self.children.values():
                if not self._ready[child.name] or child.status is not None:
                    healthy = False
                    continue
                if child.reconfiguring is not None:
                    # applying a config: its own deadline, not the heartbeat's
                    if now > child.reconfiguring:
                        self._lost_silent(child, f"{child.name} did not apply the new config "
                                                 f"in {RECONFIGURE_TIMEOUT:.0f} s: stopping")
                        return
                    continue
                if child.pings:
                    healthy = False
                    silent = now - min(child.pings.values())
                    if silent > HEARTBEAT_LIMIT - HEARTBEAT_INTERVAL / 2:
                        self._lost_silent(child, f"{child.name} did not answer for "
                                                 f"{silent:.1f} s: stopping")
                        return
                child.seq += 1
                child.pings[child.seq] = now
                asyncio.ensure_future(self._ping(child, child.seq))
            if healthy and self._watchdog:
                proc.notify_systemd("WATCHDOG=1")

    async def _ping(self, child: Child, seq: int) -> None:
        try:
            await child.chan.send(MsgType.PING, messages.Seq(seq))
        except ChannelClosed:
            pass                            # its exit is reported by _watch

    def _lost_silent(self, child: Child, line: str) -> None:
        logger.error("%s", line)
        self.exit_status = 1
        # stopped or stuck: SIGKILL is the one signal it acts on at once
        # (dying leaves the kernel as it is, for the restart to adopt)
        child.popen.kill()
        self._stop.set()

    def _status_line(self) -> str:
        c = self._counts
        text = (f"{c.up} of {c.total} hosts up, generation {c.generation}" if c
                else f"generation {self.generation}")
        return text + ("; the last reload was refused" if self._refused else "")

    def _tell_status(self) -> None:
        if not self._notified:
            return                          # READY=1 carries the first one
        line = self._status_line()
        if line != self._status:
            self._status = line
            proc.notify_systemd(f"STATUS={line}")

    def _set_verbose(self, verbose: bool) -> None:
        self.verbose = verbose
        log.set_verbose(verbose)
        for child in self.children.values():
            if child.role != "hce":             # hce asked for it, and has set it
                asyncio.ensure_future(child.chan.send(MsgType.LOG_VERBOSE,
                                                      messages.LogVerbose(verbose)))
        logger.info("logging %s", "verbose" if verbose else "brief")

    # --- reload ------------------------------------------------------------

    def request_reload(self, path: str | None, why: str) -> asyncio.Future:
        """Queue a reload of `path` (None: the current file) and return the
        future of its result (None, or the error text). A request that
        arrives while a reload runs waits for it, then runs: the running one
        may have read the file before the edit that prompted this request.
        Requests for the same file that wait together are one reload."""
        fut = asyncio.get_running_loop().create_future()
        if self._reloads and self._reloads[-1][0] == path and (
                len(self._reloads) > 1 or not self._reloading):
            self._reloads[-1][1].append(fut)
            logger.info("%s: reload already queued, it covers this one", why)
        else:
            if self._reloading:
                logger.info("%s: a reload is running, this one is queued after it", why)
            self._reloads.append((path, [fut], why))
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.ensure_future(self._run_reloads())
        return fut

    async def _run_reloads(self) -> None:
        if self._notified:
            # Type=notify(-reload): the unit is "reloading" until READY=1
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            proc.notify_systemd(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        try:
            await self._reload_queue()
        finally:
            if self._notified and not self._stop.is_set():
                # hce's counts for a new generation follow (HOST_COUNTS):
                # until then, no STATUS= that names the old one as current
                state = "READY=1"
                if self._counts is None or self._counts.generation == self.generation:
                    self._status = self._status_line()
                    state += f"\nSTATUS={self._status}"
                proc.notify_systemd(state)

    async def _reload_queue(self) -> None:
        while self._reloads:
            path, waiters, why = self._reloads[0]
            self._reloading = True
            logger.info("reloading %s (%s)", path or self.args.config_file, why)
            try:
                error = await self.reload(path)
                self._autoreload_sync(error is None)
            except log.Fatal as e:
                self._reloads.clear()
                self._fail(str(e))
                error = str(e)
            except Exception as e:       # a bug: report it, keep the daemon
                logger.error("reload: %s: %s", type(e).__name__, e)
                logger.debug("traceback", exc_info=True)
                error = f"internal error: {type(e).__name__}"
            finally:
                self._reloading = False
                if self._reloads and self._reloads[0][1] is waiters:
                    self._reloads.pop(0)
            self._refused = error is not None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(error)

    async def reload(self, path: str | None) -> str | None:
        """Validate first; on error keep the old config and return the
        diagnostics; on success pfe, then hce, switch to the new config.
        Called by _run_reloads only: one at a time."""
        loop = asyncio.get_running_loop()
        target = path or self.args.config_file
        sources: list[str] = []
        self._sources_read = sources      # issue 14: autoreload watches them
        try:
            not_regular(target)
            new, tls = await asyncio.wait_for(proc.in_thread(load_config, self.args, path, None,
                                                         sources), LOAD_TIMEOUT)
        except asyncio.TimeoutError:
            text = f"{target}: not read after {LOAD_TIMEOUT:.0f} s"
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        except Exception as e:
            text = format_errors(e)
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        for what, old_v, new_v in (("socket", self.config.global_.socket, new.global_.socket),
                                   ("user", self.config.global_.user, new.global_.user)):
            if old_v != new_v:
                logger.warning("reload: %s changed from %s to %s; takes effect at restart",
                               what, old_v, new_v)
        # the metrics socket is bound at start, as the control socket
        old_m, new_m = self.config.global_.metrics, new.global_.metrics
        if old_m != new_m:
            def where(ml) -> str:
                return f"{ml.address} port {ml.port}" if ml is not None else "none"
            logger.warning("reload: metrics listen on changed from %s to %s; takes effect "
                           "at restart", where(old_m), where(new_m))
        # issue 14: the state file is opened at start, as the metrics socket
        if self.config.global_.state_file != new.global_.state_file:
            logger.warning("reload: log state file changed from %s to %s; takes effect at "
                           "restart", self.config.global_.state_file or "none",
                           new.global_.state_file or "none")
        if passive.targets(new) and not self.nflog:
            text = (f"{target}: passive detection added to a daemon started without it: "
                    "its NFLOG socket is bound at start; restart the daemon")
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        if any(t.check.kind == "arp" for t in new.tables) and not self.arp:
            text = (f"{target}: check arp added to a daemon started without it: its raw "
                    "ARP socket is opened at start; restart the daemon")
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        relays = [c for c in self.children.values() if c.role == "relay"]
        if new.relays and not relays:
            text = (f"{target}: relays added to a daemon started without any: the relay "
                    "processes start with the daemon; restart it")
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        if relays and new.global_.prefork != len(relays):
            logger.warning("reload: prefork changed from %d to %d; takes effect at restart",
                           len(relays), new.global_.prefork)
        # issue 17: the workers start with the daemon, and own their hosts
        if new.global_.check_workers not in (None, self.workers):
            text = (f"{target}: check workers changes need a restart (running "
                    f"{self.workers}, the new config says {new.global_.check_workers})")
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        kept = parent_listen.wanted(self.config)
        changed = [k for k, v in parent_listen.wanted(new).items()
                   if k in kept and v[4] != kept[k][4]]
        def tls_of(c: Config) -> dict[str, bool]:
            return {parent_listen.key(ln.address, ln.port): ln.tls
                    for r in c.relays for ln in r.listen}
        old_tls, new_tls = tls_of(self.config), tls_of(new)
        changed += [k for k, t in new_tls.items() if k in old_tls and old_tls[k] != t]
        if changed:
            text = (f"{target}: listen on {changed[0].replace(' ', ' port ')} changes between "
                    "TCP, TLS and UDP: its socket is kept across a reload; restart for that")
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        try:
            fresh = self.listeners.bind(new) if relays else []
        except Exception as e:
            text = format_errors(e) if getattr(e, "diagnostics", None) else str(e)
            logger.error("reload failed, keeping the running config:\n%s", text)
            return text
        self.generation += 1
        payload = messages.Reconfigure(wire_config(new), self.generation)
        # the children are busy applying it: RECONFIGURE_TIMEOUT, not the
        # heartbeat, is their deadline until they say RECONFIGURED. pfe
        # first (the kernel), then the relays (which must know the new
        # host ids before hce sends their states), then hce.
        await self._reconfigure(self.children["pfe"], payload)
        if relays:
            keys = sorted(fresh[0]) if fresh else []
            relay_payload = messages.Reconfigure(payload.config, self.generation, listen=keys,
                                                 tls=tls)
            try:
                for child, fd_sock, socks in zip(relays, self.fd_socks, fresh):
                    if keys:
                        # the new sockets first, on the fd channel; RECONFIGURE names them
                        socket.send_fds(fd_sock, ["\n".join(keys).encode()],
                                        [socks[k].fileno() for k in keys])
                await asyncio.gather(*(self._reconfigure(c, relay_payload) for c in relays))
                # systemd keeps the new sockets for a restart, forgets the dropped ones
                send_store(self.listeners.store_changes(self.listeners.commit(new)))
            finally:
                parent_listen.close_all(fresh)
            self.tls = tls
        hce = self.children["hce"]
        hce.reconfiguring = loop.time() + RECONFIGURE_TIMEOUT
        # issue 17: hce forwards it to the check workers; each tells us too
        for c in self.children.values():
            if c.role == "worker":
                c.reconfiguring = loop.time() + RECONFIGURE_TIMEOUT
        await hce.chan.send(MsgType.RECONFIGURE, payload)
        self.config = new
        if path:
            self.args.config_file = path
        logger.info("configuration reloaded from %s (generation %d)", target, self.generation)
        return None

    async def _reconfigure(self, child: Child, payload: messages.Reconfigure) -> None:
        """Send a RECONFIGURE and wait for the child's RECONFIGURED."""
        loop = asyncio.get_running_loop()
        child.reconfiguring = loop.time() + RECONFIGURE_TIMEOUT + HEARTBEAT_LIMIT
        fut = self._reconfiguring[child.name] = loop.create_future()
        try:
            await child.chan.send(MsgType.RECONFIGURE, payload)
            await asyncio.wait_for(fut, RECONFIGURE_TIMEOUT)
        except asyncio.TimeoutError:
            raise log.Fatal(f"{child.name} did not apply the new config in time") from None
        finally:
            self._reconfiguring.pop(child.name, None)

    async def _ctl_reload(self, req: messages.CtlReload, what: str | None = None
                          ) -> str | None:
        # request 0 (SIGHUP): no client waits, hce records the result for
        # show summary (issue 13)
        what = what or f"hoststatectl {'load ' + req.path if req.path else 'reload'}"
        error = await self.request_reload(req.path, what)
        if self._stop.is_set():
            return error
        hce = self.children["hce"]
        try:
            await hce.chan.send(MsgType.RELOAD_RESULT,
                                messages.ReloadResult(req.request, error is None, error or ""))
        except ChannelClosed:
            pass
        return error

    # --- autoreload (issue 14) --------------------------------------------------

    def _autoreload_sync(self, ok: bool | None) -> None:
        """Watch what the config (just loaded, or not) was read from, if it
        says `autoreload`: the new files after a reload that worked, the old
        ones and the new together after one that did not (the broken edit
        is what will be fixed)."""
        read = self._sources_read
        if ok is None:
            files = self._sources
        elif ok:
            files = self._sources = list(read) or [config_path(self.args)]
        else:
            files = list(dict.fromkeys([*self._sources, *read]))
        if self.config.global_.autoreload is None:
            if self._autoreload is not None:
                self._autoreload.close()
                self._autoreload = None
                logger.info("autoreload: off")
            return
        if self._autoreload is None:
            self._autoreload = Autoreload(self._file_changed)
        self._autoreload.watch_files(files)

    def _file_changed(self, path: str) -> None:
        asyncio.ensure_future(self._autoreload_now(f"autoreload: {path} changed"))

    async def _autoreload_now(self, why: str) -> None:
        error = await self._ctl_reload(messages.CtlReload(0, None), why)
        ar = self.config.global_.autoreload
        if error is None and not self._stop.is_set() and ar is not None and ar.callback:
            t = asyncio.ensure_future(run_callback(ar.callback, config_path(self.args),
                                                   self.uid, self.gid))
            self._callbacks.add(t)
            t.add_done_callback(self._callbacks.discard)

    def _sighup(self) -> None:
        asyncio.ensure_future(self._ctl_reload(messages.CtlReload(0, None), "SIGHUP"))

    def _stop_deliberately(self) -> None:
        self._deliberate = True
        self._stop.set()

    def _fail(self, why: str) -> None:
        logger.error("fatal: %s", why)
        self.exit_status = 1
        self._stop.set()

    # --- run -----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        usec = proc.watchdog_usec()
        if usec is not None and usec < 3 * HEARTBEAT_INTERVAL * 1e6:
            logger.warning("WatchdogSec=%.1fs is shorter than 3 heartbeats (%.0f s): "
                           "systemd may kill a healthy daemon", usec / 1e6,
                           3 * HEARTBEAT_INTERVAL)
        inits = self._start_children()
        for child in self.children.values():
            self._watch(child)
        try:
            for name, init in inits.items():
                await self.children[name].chan.send(MsgType.INIT, init)
        except ChannelClosed as e:
            self._fail(f"lost child at startup: {e}")
        # the config's wire form, sent: this frame would hold it while the
        # daemon runs (its maps and lists, ~5 MB at 10,000 hosts)
        inits = init = None
        proc.trim_heap()
        loop.add_signal_handler(signal.SIGTERM, self._stop_deliberately)
        loop.add_signal_handler(signal.SIGINT, self._stop_deliberately)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        self._autoreload_sync(None)           # issue 14
        dispatchers = {asyncio.ensure_future(self._dispatch(c)): c for c in self.children.values()}
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({stop, *dispatchers}, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is stop:
                continue
            exc = t.exception()
            role = dispatchers[t].name
            if isinstance(exc, ChannelClosed):
                # the child is dying: its exit status tells why (_watch names
                # it); on a loaded machine the exit may be seconds behind
                child = dispatchers[t]
                deadline = asyncio.get_running_loop().time() + EXIT_WAIT
                # (once an exit is seen, _lost_child settles it within EXIT_WAIT)
                while not self._stop.is_set() and (self._losing or (
                        child.status is None and
                        asyncio.get_running_loop().time() < deadline)):
                    await asyncio.sleep(0.05)
                if not self._stop.is_set():
                    self._fail(f"lost child: {role} closed its channel")
            elif isinstance(exc, ChannelError):
                self._fail(f"desynchronized: {exc}")
            elif exc is not None:
                self._fail(f"{role}: {type(exc).__name__}: {exc}")
        await self._shutdown(dispatchers)
        return self.exit_status

    async def _shutdown(self, dispatchers) -> None:
        logger.info("stopping" if self._deliberate else "stopping after a failure: "
                    "kernel objects left in place for the restart to adopt")
        proc.notify_systemd("STOPPING=1")
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._reload_task is not None:
            self._reload_task.cancel()      # a reload stuck in a read must not hold the stop
        if self._autoreload is not None:
            self._autoreload.close()
        for t in self._callbacks:
            t.cancel()
        for task, child in dispatchers.items():
            if child.status is not None:
                continue
            if child.role == "pfe" and not self._deliberate:
                # no SHUTDOWN: the EOF tells pfe to leave the kernel as it is
                task.cancel()
                child.chan.close()
                continue
            try:
                await asyncio.wait_for(child.chan.send(MsgType.SHUTDOWN), 1.0)
            except (ChannelClosed, asyncio.TimeoutError, OSError):
                pass
        deadline = asyncio.get_running_loop().time() + CHILD_STOP_TIMEOUT
        while any(c.status is None for c in self.children.values()):
            if asyncio.get_running_loop().time() > deadline:
                for c in self.children.values():
                    if c.status is None:
                        logger.warning("%s did not stop, killing it", c.name)
                        c.popen.kill()
                        c.status = c.popen.wait()
                break
            await asyncio.sleep(0.05)
        for t in dispatchers:
            t.cancel()
        await asyncio.gather(*dispatchers, return_exceptions=True)
        for child in self.children.values():
            if child.status not in (0, None):
                logger.info("%s %s", child.name, proc.describe_exit(child.status))
        for path in self._socket_paths():
            try:
                os.unlink(path)
            except OSError:
                pass
        logger.info("terminating")

    def _socket_paths(self) -> list[str]:
        g = self.config.global_
        return [p for p in (g.socket, g.restricted_socket) if p]


def run(args) -> int:
    log.setup("parent", debug=True, verbose=args.verbose)    # stderr until detached
    if os.geteuid() != 0:
        log.stderr_line("hoststated: need root privileges")
        return 1
    # `hoststated: parent -d -f FILE` in ps (comm: hoststated, even when
    # started as `python -m hoststated`)
    privsep.set_title("hoststated: parent", "hoststated")
    # the sockets systemd kept for us across a restart (its fd store): taken
    # now, while LISTEN_PID still names this process
    passed = proc.listen_fds()
    # before anything inherits it: hce's control clients get a share of it
    why = proc.raise_nofile()
    if why:
        logger.warning("%s", why)
    warnings: list = []
    try:
        not_regular(args.config_file)
    except OSError as e:
        log.stderr_line(f"hoststated: {e}")
        return 1
    sources: list[str] = []
    try:
        config, tls = load_config(args, warnings=warnings, sources=sources)
    except Exception as e:
        if type(e).__name__ != "ConfigError":
            logger.debug("traceback", exc_info=True)
        log.stderr_line(format_errors(e))
        return 1
    g = config.global_
    try:
        uid, gid, user = resolve_user(config)
    except privsep.PrivsepError as e:
        log.stderr_line(f"hoststated: {e.strerror}")
        return 1
    try:
        icmp_fds = proc.open_icmp(config)
    except OSError as e:
        # icmp checks without a socket could never pass: do not start half-blind
        log.stderr_line(f"hoststated: raw ICMP socket for the icmp checks: {e.strerror or e}")
        return 1
    try:
        nflog_fd = open_nflog(config)
    except OSError as e:
        # passive detection without its socket would never see an event
        for fd in icmp_fds:
            os.close(fd)
        log.stderr_line(f"hoststated: NFLOG socket for passive detection: "
                        f"{e.strerror or e}")
        return 1
    try:
        arp_fd = proc.open_arp(config)
    except OSError as e:
        # issue 14: arp checks without their socket could never pass
        for fd in icmp_fds + ([nflog_fd] if nflog_fd >= 0 else []):
            os.close(fd)
        log.stderr_line(f"hoststated: raw ARP socket for the arp checks: {e.strerror or e}")
        return 1
    try:
        state_fd = proc.open_state_file(config)
    except OSError as e:
        # issue 14: the state lines asked for would go nowhere
        for fd in icmp_fds + [f for f in (nflog_fd, arp_fd) if f >= 0]:
            os.close(fd)
        log.stderr_line(f"hoststated: log state file {g.state_file}: {e.strerror or e}")
        return 1
    # issue 17: each check worker's own raw sockets, opened as root
    worker_fds: list[tuple[list[int], int]] = []
    n_workers = hce_shards.worker_count(config, os.cpu_count())
    try:
        for _ in range(n_workers if n_workers > 1 else 0):
            w_icmp = proc.open_icmp(config)
            worker_fds.append((w_icmp, -1))
            worker_fds[-1] = (w_icmp, proc.open_arp(config))
    except OSError as e:
        for fd in icmp_fds + [f for f in (nflog_fd, arp_fd, state_fd) if f >= 0] + \
                [f for w_icmp, w_arp in worker_fds for f in (*w_icmp, w_arp) if f >= 0]:
            os.close(fd)
        log.stderr_line(f"hoststated: raw sockets for the check workers: {e.strerror or e}")
        return 1
    # closed with them on error
    icmp_fds = icmp_fds + [f for f in (nflog_fd, arp_fd, state_fd) if f >= 0]
    icmp_fds += [f for w_icmp, w_arp in worker_fds for f in (*w_icmp, w_arp) if f >= 0]
    sockets: list[socket.socket] = []
    try:
        sockets.append(proc.bind_control(g.socket, 0o660, g.socket_group))
        if g.restricted_socket:
            sockets.append(proc.bind_control(g.restricted_socket, 0o666, g.socket_group))
    except OSError as e:
        # the main socket's file, just bound, goes with the failed start
        for sock, path in zip(sockets, (g.socket, g.restricted_socket)):
            proc.unbind(sock, path)
        for fd in icmp_fds:
            os.close(fd)
        log.stderr_line(f"hoststated: control socket: {e.strerror or e}")
        return 1
    metrics: socket.socket | None = None
    try:
        # as root, before the drop: the relay processes get them, and hce
        # the metrics endpoint's
        if g.metrics is not None:
            metrics = parent_listen.bind_metrics(g.metrics.address, g.metrics.port)
        listeners, relay_socks = bind_relays(config, passed)
    except OSError as e:
        if metrics is not None:
            metrics.close()
        for sock, path in zip(sockets, (g.socket, g.restricted_socket)):
            proc.unbind(sock, path)
        for fd in icmp_fds:
            os.close(fd)
        log.stderr_line(f"hoststated: {e.strerror or e}")
        return 1
    if not args.debug:
        # without a syslog daemon the lines would go nowhere: say so while
        # stderr is still the operator's, and keep logging there
        no_syslog = log.syslog_reachable()
        if no_syslog:
            logger.warning("no syslog daemon on %s (%s): logging to stderr",
                           log.SYSLOG_PATH, no_syslog)
        daemonize(pid_path(g.socket), keep_stderr=no_syslog is not None)
    log.setup("parent", debug=bool(args.debug), verbose=args.verbose)
    # the config's warnings (-n printed them) go where the daemon logs
    for w in warnings:
        logger.warning("%s", w)
    logger.info("startup, running children as %s (uid %d)", user, uid)
    worker_owned = {f for w_icmp, w_arp in worker_fds for f in (*w_icmp, w_arp)}
    if worker_fds:
        logger.info("startup: %d check workers", len(worker_fds))
    try:
        return asyncio.run(Parent(args, config, uid, gid, sockets,
                                  [fd for fd in icmp_fds if fd not in (nflog_fd, arp_fd,
                                                                       state_fd)
                                   and fd not in worker_owned],
                                  relay_socks, tls, listeners, metrics, nflog_fd, sources,
                                  arp_fd, state_fd, worker_fds).run())
    except KeyboardInterrupt:
        return 1
    except Exception as e:          # a bug: the children die with us (PDEATHSIG)
        logger.error("fatal: %s: %s", type(e).__name__, e)
        logger.debug("traceback", exc_info=True)
        return 1

