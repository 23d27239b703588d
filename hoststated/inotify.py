"""inotify(7) through libc (issue 14: maintenance directory, autoreload).

Watch(paths, callback) watches directories: callback() runs from the event
loop after any change in one of them, with the names seen (None: the
queue overflowed or a watched directory itself went away, so look at
everything). The watch is a file descriptor read by the loop: nothing
blocks, nothing polls.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
from typing import Callable

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

DIR_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO |
              IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_HEADER = struct.Struct("iIII")

_libc = None


def _lib():
    global _libc
    if _libc is None:
        # the process's own symbols: libc is loaded (no ctypes.util lookup,
        # which runs ldconfig)
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


class Watch:
    def __init__(self, dirs: list[str], callback: Callable[[set[str] | None], None]) -> None:
        """Raise OSError (with the directory) when one cannot be watched."""
        libc = _lib()
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.callback = callback
        self.wds: dict[int, str] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        try:
            for d in dict.fromkeys(dirs):
                wd = libc.inotify_add_watch(self.fd, os.fsencode(d), DIR_EVENTS)
                if wd < 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e), d)
                self.wds[wd] = d
        except BaseException:
            os.close(self.fd)
            raise

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        names: set[str] | None = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            off = 0
            while off + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, off)
                name = data[off + _HEADER.size:off + _HEADER.size + length].rstrip(b"\0")
                off += _HEADER.size + length
                if mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    names = None
                elif names is not None and wd in self.wds:
                    names.add(os.path.join(self.wds[wd], os.fsdecode(name)))
        self.callback(names)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.loop is not None:
            try:
                self.loop.remove_reader(self.fd)
            except (RuntimeError, ValueError):
                pass
        os.close(self.fd)
        self.fd = -1
