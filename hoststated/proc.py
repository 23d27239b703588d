"""Privsep plumbing: start a child by re-executing ourselves, as relayd's
proc.c (the child's side is cli.child_main), and open, as root, what a child
cannot open after its privilege drop (the raw ICMP sockets).

The parent spawns `python -m hoststated --role ROLE --ipc-fd N` with the
socketpair end (and, for hce, the control socket and raw ICMP sockets) passed
as inherited fds; the first message on the channel is INIT, which carries the
config as data and the uid to drop to. A child dies with its parent
(PR_SET_PDEATHSIG) and stops on EOF from it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import grp
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading

from hoststated import log, privsep
from hoststated.ipc.channel import Channel, ChannelError
from hoststated.ipc.messages import Message, MsgType

def _in_child() -> None:
    # runs between fork and exec: die with the parent; own process group so
    # a terminal's ^C reaches only the parent, which then stops everyone
    privsep.set_pdeathsig(signal.SIGTERM)


# the parent alone speaks to systemd (NotifyAccess=main): not handed on
_SYSTEMD_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE",
                 "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def spawn(role: str, ipc_fd: int, pass_fds: list[int]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "hoststated", "--role", role, "--ipc-fd", str(ipc_fd)]
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ONLY}
    return subprocess.Popen(argv, pass_fds=[ipc_fd, *pass_fds], close_fds=True, env=env,
                            stdin=subprocess.DEVNULL, cwd="/", start_new_session=True,
                            preexec_fn=_in_child)


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        return f"terminated by signal {name}"
    return f"exited with status {status}" if status else "exited"


NOFILE_WANTED = 65536        # the soft RLIMIT_NOFILE the daemon asks for (= the unit's)
PROBE_TIMEOUT = 2.0          # s for the stale-socket probe's connect


def raise_nofile(want: int = NOFILE_WANTED) -> str | None:
    """Raise the soft RLIMIT_NOFILE to min(hard, want) before the children
    inherit it (hce sizes its control clients' budget from it). None when
    done, else why not (for one log line)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        return f"cannot raise the open files limit from {soft} to {target}: {e}"
    return None


def bind_control(path: str, mode: int, group: str | None) -> socket.socket:
    """Bind the control socket (root, in the parent). A socket file on which
    the connect is refused is stale (a daemon killed with it bound) and
    replaced, with a log line; one that answers means another daemon; any
    other error (no permission, a full backlog that times out) is fatal,
    the file is not ours to remove."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OSError(e.errno, f"{path}: {e.strerror or e}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            log.get("parent").info("removed stale control socket %s (no daemon answered)",
                                   path)
        except (TimeoutError, BlockingIOError):
            # a full backlog (EAGAIN at once, or no answer in time): a
            # daemon is there, too busy to accept
            raise OSError(errno.EBUSY, f"{path}: another hoststated is listening "
                          "(it does not accept: its backlog is full)") from None
        except OSError as e:
            raise OSError(e.errno, f"{path}: {e.strerror or e}") from None
        else:
            raise OSError(f"{path}: another hoststated is listening")
        finally:
            probe.close()
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"socket group {group!r} does not exist") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"{path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    try:
        os.chown(path, 0, gid)
        os.chmod(path, mode)
        sock.listen(1024)
    except OSError:
        unbind(sock, path)
        raise
    sock.set_inheritable(True)
    return sock


def unbind(sock: socket.socket, path: str) -> None:
    """Close a control socket bound by bind_control and remove its file."""
    sock.close()
    try:
        os.unlink(path)
    except OSError:
        pass


def notify_systemd(state: str, fds: list[int] | tuple[int, ...] = ()) -> bool:
    """sd_notify(3) in a few lines: one datagram to $NOTIFY_SOCKET, with
    `fds` as SCM_RIGHTS (sd_pid_notify_with_fds: FDSTORE=1). False when
    there is no such socket or the send failed (logged)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            if fds:
                socket.send_fds(s, [state.encode()], list(fds))
            else:
                s.send(state.encode())
        except OSError as e:
            log.get("parent").warning("notify %s: %s", os.environ["NOTIFY_SOCKET"], e)
            return False
    return True


LISTEN_FDS_START = 3         # sd_listen_fds(3): the first passed descriptor
FDSTORE_FDS_MAX = 253        # SCM_MAX_FD: descriptors in one datagram


def fdstore(name: str, fds: list[int]) -> bool:
    """Keep `fds` in systemd's file descriptor store under `name` (a
    restart gets them back as LISTEN_FDS); several datagrams if need be
    (systemd adds them up under the name)."""
    ok = True
    for i in range(0, len(fds), FDSTORE_FDS_MAX):
        ok = notify_systemd(f"FDSTORE=1\nFDNAME={name}", fds[i:i + FDSTORE_FDS_MAX]) and ok
    return ok


def fdstore_remove(name: str) -> bool:
    """Drop every descriptor stored under `name` (systemd closes its copies)."""
    return notify_systemd(f"FDSTOREREMOVE=1\nFDNAME={name}")


def fdstore_max() -> int | None:
    """The unit's FileDescriptorStoreMax as systemd (>= 254) gives it in
    $FDSTORE; None when not told (an older systemd, or none)."""
    v = os.environ.get("FDSTORE", "")
    return int(v) if v.isdigit() else None


def listen_fds() -> dict[str, list[int]]:
    """sd_listen_fds_with_names(3): name -> descriptors systemd passed (from
    LISTEN_FDS_START on), only when LISTEN_PID names this process (else they
    are another's, not ours to touch). The variables are removed, so no child
    takes them for its own, and the descriptors made close-on-exec."""
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "")
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    n = int(count)
    labels = names.split(":") if names else []
    if len(labels) != n:
        labels = ["unknown"] * n           # systemd's name for an unnamed one
    out: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        fd = LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
        except OSError:
            continue                        # announced, but not there
        out.setdefault(label, []).append(fd)
    return out


def watchdog_usec() -> int | None:
    """sd_watchdog_enabled(3): the unit's WatchdogSec in microseconds when
    systemd watches this very process, else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec)


def pause_gc() -> None:
    """A child's start-up, to its settle_heap(): no cyclic collection while
    it imports, decodes INIT and builds its configuration and tables, all of
    which live as long as the process (or the reload): the collector would
    walk them again and again as they grow, to free nothing (hce's engine
    build at 10,000 hosts: 173 ms with it, 98 ms without). settle_heap()
    freezes what it made and turns it back on."""
    gc.disable()


async def from_parent(parent: Channel, msg: Message) -> bool:
    """What every child takes the same way from the parent, once its own
    cases are done: PING (answered from the event loop, never from a worker
    thread: a loop that is stuck misses it), LOG_VERBOSE, and SHUTDOWN, for
    which it returns True (the caller's dispatch ends). Anything else is the
    parent's error (ChannelError: fatal)."""
    match msg.type:
        case MsgType.PING:
            await parent.send(MsgType.PONG, msg.payload)
        case MsgType.LOG_VERBOSE:
            log.set_verbose(msg.payload.verbose)
        case MsgType.SHUTDOWN:
            return True
        case _:
            raise ChannelError(f"unexpected {msg.type.name} from the parent")
    return False


def settle_heap() -> None:
    """A child's configuration and tables live as long as the process (or
    the reload): take them out of the cyclic collector's way, so that its
    full collections walk only what the work of the moment makes. Without
    this, a full collection stalled every check due at that moment (~40 ms
    at 10,000 hosts) and was the p99 of a host change reaching the kernel
    (12-18 ms against a p50 of 4 ms with a 1,000-host table). What a reload
    left behind is collected first. Ends a start-up's pause_gc(), and
    there collects nothing: a full collection walks every object the
    start-up made (160,000 in hce at 10,000 hosts: 70 ms before its first
    check) to find the few hundred that are garbage; they stay frozen
    until the first reload's collection."""
    starting = not gc.isenabled()
    gc.unfreeze()
    if not starting:
        gc.collect()
    gc.freeze()
    gc.enable()
    trim_heap()


def _malloc_trim():
    # glibc's; None elsewhere (musl has none): then trim_heap does nothing
    try:
        f = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    f.argtypes, f.restype = [ctypes.c_size_t], ctypes.c_int
    return f


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Give the C heap's free pages back to the kernel (malloc_trim(0)).
    What building a configuration freed (the INIT message, its decoded
    data, the validators' scratch) stays in the process's RSS otherwise:
    glibc returns only the top of its heap by itself. Measured with
    bench/checks_vs_haproxy.py: pfe 44 -> 42 MB at 1,000 hosts, 52 -> 50
    MB at 4,000; hce unchanged (its heap is Python objects that stay);
    0.4 ms at 10,000 hosts."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def open_icmp(config) -> list[int]:
    """The raw ICMP sockets hce needs, inheritable, when a table checks icmp;
    none otherwise. An OSError here is fatal to the caller: icmp checks
    without a socket could never pass."""
    if not any(t.check.kind == "icmp" for t in config.tables):
        return []
    fds = privsep.open_raw_sockets()
    for fd in fds:
        os.set_inheritable(fd, True)
    return fds


def open_arp(config) -> int:
    """issue 14: the raw ARP socket hce needs, inheritable, when a table
    checks arp; -1 otherwise. An OSError here is fatal to the caller, as
    for open_icmp."""
    if not any(t.check.kind == "arp" for t in config.tables):
        return -1
    fd = privsep.open_arp_socket()
    os.set_inheritable(fd, True)
    return fd


def open_state_file(config) -> int:
    """migrate (issue 14): `log state file`, opened for appending (created
    0640) as root, inheritable, for hce to write its lines to; -1 when the
    config has none. An OSError (or a path that is not a regular file) is
    fatal to the caller: the lines asked for would go nowhere."""
    path = config.global_.state_file
    if path is None:
        return -1
    # O_NONBLOCK: a FIFO put there must not hang the start (refused below)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY | os.O_NONBLOCK,
                 0o640)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        os.set_inheritable(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unreadable_path(uid: int | None = None) -> str | None:
    """The first directory on the module search path that this process
    (after its privilege drop) cannot enter or list, for the message of an
    ImportError: the usual cause is a checkout or interpreter under a 0700
    directory such as /root."""
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue
        path = entry
        parts = []
        while True:
            parts.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for d in reversed(parts):          # from / down: the first one refused
            if os.path.exists(d) or os.path.lexists(d):
                if not os.access(d, os.R_OK | os.X_OK):
                    return d
            else:
                break
    return None


def in_thread(fn, *args, name: str = "hoststated-worker") -> asyncio.Future:
    """fn(*args) in a daemon thread, awaited from the running loop: unlike
    the default executor's, a thread stuck in a read or on a slow relay
    does not hold up the process's exit (the parent's config load, hce's
    alert mail)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result, exc) -> None:
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def work() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:       # handed to the awaiting task
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:             # the loop is gone: nobody waits
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return fut
