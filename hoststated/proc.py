"""Privsep plumbing: start a child by re-executing ourselves, and the child's
side of it (child_main), as relayd's proc.c.

The parent spawns `python -m hoststated --role ROLE --ipc-fd N` with the
socketpair end (and, for hce, the control socket and raw ICMP sockets) passed
as inherited fds; the first message on the channel is INIT, which carries the
config as data and the uid to drop to. A child dies with its parent
(PR_SET_PDEATHSIG) and stops on EOF from it.
"""

from __future__ import annotations

import gc
import grp
import os
import signal
import socket
import stat
import subprocess
import sys

from hoststated import log, privsep
from hoststated.ipc import channel
from hoststated.ipc.messages import MsgType

ROLES = ("hce", "pfe")


def _in_child() -> None:
    # runs between fork and exec: die with the parent; own process group so
    # a terminal's ^C reaches only the parent, which then stops everyone
    privsep.set_pdeathsig(signal.SIGTERM)


def spawn(role: str, ipc_fd: int, pass_fds: list[int]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "hoststated", "--role", role, "--ipc-fd", str(ipc_fd)]
    return subprocess.Popen(argv, pass_fds=[ipc_fd, *pass_fds], close_fds=True,
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


def bind_control(path: str, mode: int, group: str | None) -> socket.socket:
    """Bind the control socket (root, in the parent). A socket file nobody
    answers on is stale and replaced; one that answers means another daemon."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
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
    finally:
        os.umask(old)
    os.chown(path, 0, gid)
    os.chmod(path, mode)
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def notify_systemd(state: str) -> None:
    """sd_notify(3) in a few lines: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.send(state.encode())
        except OSError as e:
            log.get("parent").warning("notify %s: %s", os.environ["NOTIFY_SOCKET"], e)


def settle_heap() -> None:
    """A child's configuration and tables live as long as the process (or
    the reload): take them out of the cyclic collector's way, so that its
    full collections walk only what the work of the moment makes. Without
    this, a full collection stalled every check due at that moment (~40 ms
    at 10,000 hosts) and was the p99 of a host change reaching the kernel
    (12-18 ms against a p50 of 4 ms with a 1,000-host table). What a reload
    left behind is collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def child_main(args) -> int:
    """Entry of a re-executed child: read INIT, set up logging, run the role."""
    role = args.role
    if role not in ROLES:
        print(f"hoststated: unknown role {role!r}", file=sys.stderr)
        return 1
    try:
        sock = socket.socket(fileno=args.ipc_fd)
    except OSError as e:
        print(f"hoststated: {role}: ipc fd {args.ipc_fd}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        msg = channel.recv_blocking(sock)
    except (channel.ChannelClosed, channel.ChannelError, OSError) as e:
        print(f"hoststated: {role}: {e}", file=sys.stderr)
        return 1
    if msg.type != MsgType.INIT:
        print(f"hoststated: {role}: expected INIT, got {msg.type.name}", file=sys.stderr)
        return 1
    init = msg.payload
    log.setup(role, init.debug, init.verbose)
    privsep.set_title(f"hoststated-{role}")
    logger = log.get(role)
    try:
        if role == "hce":
            from hoststated import hce
            return hce.main(sock, init)
        from hoststated import pfe
        return pfe.main(sock, init)
    except log.Fatal as e:
        logger.error("fatal: %s", e)
        return 1
    except privsep.PrivsepError as e:
        logger.error("fatal: cannot drop privileges: %s", e.strerror or e)
        return 1
    except Exception as e:                      # a bug: say so, with the trace at debug
        logger.error("fatal: %s: %s", type(e).__name__, e)
        logger.debug("traceback", exc_info=True)
        return 1
