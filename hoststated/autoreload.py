"""`autoreload [callback "CMD"]` (issue 14 item 3, ldirectord's autoreload
and callback), in the parent.

The parent watches the directories of every file the configuration was
read from (the top file and its includes; an editor replaces a file by
renaming, so the file itself is not what to watch). A change to one of
those files, then none for DEBOUNCE seconds, asks for one reload, the same
reload as `hoststatectl reload` (checked first; a bad file keeps the
running config). The callback runs after a reload that succeeded, as the
unprivileged user, bounded in time like a notify command.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from typing import Callable

from hoststated import commands, log
from hoststated.inotify import Watch

logger = log.get("parent")

DEBOUNCE = 0.5              # s without a change before the reload
CALLBACK_TIMEOUT = 10.0     # s
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Autoreload:
    def __init__(self, on_change: Callable[[str], None]) -> None:
        self.on_change = on_change
        self.files: set[str] = set()
        self.dirs: tuple[str, ...] = ()
        self.watch: Watch | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.changed = ""

    def watch_files(self, files: list[str]) -> None:
        """Watch these files (again): the directories of their paths and of
        what their symbolic links point to."""
        names = set()
        for f in files:
            names.add(os.path.abspath(f))
            names.add(os.path.realpath(f))
        dirs = tuple(sorted({os.path.dirname(n) for n in names if os.path.isdir(
            os.path.dirname(n))}))
        self.files = names
        if dirs == self.dirs and self.watch is not None:
            return
        self.close_watch()
        try:
            self.watch = Watch(list(dirs), self._event)
        except OSError as e:
            logger.error("autoreload: cannot watch %s: %s: the configuration is not "
                         "reloaded when it changes", e.filename or ", ".join(dirs),
                         e.strerror or e)
            self.dirs = ()
            return
        self.dirs = dirs
        self.watch.start()
        logger.debug("autoreload: watching %s", ", ".join(sorted(self.files)))

    def _event(self, names: set[str] | None) -> None:
        hit = self.files if names is None else names & self.files
        if not hit:
            return
        self.changed = sorted(hit)[0]
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.on_change(self.changed)

    def close_watch(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def close(self) -> None:
        self.close_watch()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def run_callback(cmd: str, config_file: str, uid: int, gid: int) -> None:
    """The callback after a reload: as uid/gid (no supplementary groups),
    the configuration file as its last argument and in HOSTSTATED_CONFIG."""
    argv = [*shlex.split(cmd), config_file]
    env = {"PATH": ENV_PATH, "HOSTSTATED_CONFIG": config_file}
    rc, out, timed_out = await commands.run_command(argv, env, CALLBACK_TIMEOUT, user=uid,
                                                    group=gid, extra_groups=[])
    if timed_out:
        logger.warning("autoreload callback %s: killed after %.0f s", argv[0],
                       CALLBACK_TIMEOUT)
    elif rc != 0:
        logger.warning("autoreload callback %s: %s%s", argv[0], commands.status(rc),
                       commands.first_line(out))
    else:
        logger.info("autoreload callback %s: done", argv[0])
