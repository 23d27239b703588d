"""Dropping privileges, with ctypes: the only module that calls prctl/capset.

hce drops to the unprivileged user with no capabilities at all; pfe drops
to the same uid keeping only CAP_NET_ADMIN (Linux checks netlink admin rights
on every message, so it cannot open-then-drop as relayd's pfe does with
/dev/pf). The sequence, in order:

  1. drop every capability but the kept ones from the bounding set (needs
     CAP_SETPCAP, so while still root);
  2. PR_SET_KEEPCAPS if a capability is kept, so setresuid keeps it permitted;
  3. setgroups([gid]), setresgid, setresuid to the user;
  4. capset: permitted = effective = the kept set, inheritable empty;
  5. clear the ambient set, PR_SET_KEEPCAPS 0, PR_SET_NO_NEW_PRIVS;
  6. PR_SET_PDEATHSIG again (a uid change clears it) and check the parent
     is still the one we were started by.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import signal
import socket

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_NAME = 15

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


class PrivsepError(OSError):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise PrivsepError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_title(title: str, comm: str | None = None) -> None:
    """Name this process for ps, top and `systemctl status`: the kernel's
    comm (top, ps -o comm, pgrep; 15 bytes: `comm`, else title cut) and the
    command line (ps -f, ps aux, systemctl status): `title` in place of the
    interpreter and its script or `-m hoststated`, the arguments after them
    kept (the tests and an admin still see `--role hce`). Best effort: a
    name is cosmetic, nothing fails for want of one."""
    # a buffer that outlives the call (a temporary's address would dangle)
    name = ctypes.create_string_buffer((comm or title).encode()[:15])
    try:
        prctl(PR_SET_NAME, ctypes.addressof(name))
    except PrivsepError:
        pass
    try:
        _set_cmdline(title)
    except (OSError, ValueError, IndexError):
        pass


def _script_args(argv: list[str]) -> list[str]:
    """The arguments after the interpreter and what it runs (sys.orig_argv:
    `python -m hoststated ARGS`, `python /usr/sbin/hoststated ARGS`)."""
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-m":
        i += 1                                   # interpreter options (-I, -u, ...)
    if i < len(argv) and argv[i] == "-m":
        i += 1
    return argv[i + 1:]


def _set_cmdline(title: str) -> None:
    """Overwrite the original argv strings, which the kernel shows as
    /proc/self/cmdline and which Python no longer reads (it copied them at
    startup), as setproctitle(3) does; their span comes from /proc/self/stat
    (arg_start, arg_end). The last byte stays NUL, so the kernel reads no
    further than the span."""
    import sys
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])     # stat(5) fields 48, 49
    if not start or end <= start:
        return
    words = [title, *_script_args(list(sys.orig_argv))]
    data = b"\0".join(w.encode() for w in words)[:end - start - 1]
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def cap_last() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def capset(caps: set[int]) -> None:
    mask = 0
    for c in caps:
        mask |= 1 << c
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = word
        data[i].permitted = word
        data[i].inheritable = 0
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def resolve_user(name: str, fallback: str | None) -> tuple[int, int, str]:
    """The uid and gid to run as: the configured user, else the fallback
    (none by default, conf.model.FALLBACK_USER: a missing user is an error;
    we create nothing)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        if fallback is None:
            raise PrivsepError(0, f"user {name!r} does not exist") from None
        pw = pwd.getpwnam(fallback)
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def drop_privileges(uid: int, gid: int, keep: set[int] = frozenset()) -> None:
    parent = os.getppid()
    for cap in range(cap_last() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)
    if keep:
        prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    capset(set(keep))
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except PrivsepError:
        pass                                  # kernel without ambient caps
    prctl(PR_SET_KEEPCAPS, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    set_pdeathsig()
    if os.getppid() != parent:
        raise PrivsepError(0, "the parent died while we dropped privileges")
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PrivsepError(0, "still root after setresuid")


# --- sockets only root may open, opened before the drop ---------------------

ICMP6_ECHO_REPLY = 129
ICMP6_FILTER = 1            # <netinet/icmp6.h>; the socket module lacks it


def open_raw_sockets() -> list[int]:
    """One raw ICMP and one raw ICMPv6 socket (root, before the privilege
    drop: this machine's ping_group_range refuses datagram ICMP sockets even
    to root) as detached fds for hce, which keeps using them unprivileged. A
    system without IPv6 has no ICMPv6 socket; no IPv4 socket is an error."""
    fds = []
    for family, proto in ((socket.AF_INET, socket.IPPROTO_ICMP),
                          (socket.AF_INET6, socket.IPPROTO_ICMPV6)):
        try:
            s = socket.socket(family, socket.SOCK_RAW, proto)
        except OSError:
            if family == socket.AF_INET:
                for fd in fds:
                    os.close(fd)
                raise
            continue                        # no IPv6 on this system
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
        if family == socket.AF_INET6:
            # only echo replies: ICMP6_FILTER is a 256-bit block mask
            mask = bytearray(b"\xff" * 32)
            mask[ICMP6_ECHO_REPLY >> 3] &= ~(1 << (ICMP6_ECHO_REPLY & 7)) & 0xFF
            try:
                s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, bytes(mask))
            except OSError:
                pass                        # unfiltered: the pinger ignores the rest
        fds.append(s.detach())
    return fds


# issue 14: check arp
ETH_P_ARP = 0x0806


def open_arp_socket() -> int:
    """One raw AF_PACKET socket for ARP frames on every interface (root,
    before the privilege drop: CAP_NET_RAW) as a detached fd for hce, which
    sends its requests and reads the replies unprivileged."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    except OSError:
        s.close()
        raise
    return s.detach()
