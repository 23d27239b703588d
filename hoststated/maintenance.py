"""`maintenance directory` (issue 14 item 2, ldirectord's maintenancedir), in hce.

A file named `address`, `address:port`, `[v6address]:port`, `hostname` or
`hostname:port` in the directory drains the matching hosts of every table,
as `host drain` does (hce sends them in HOST_WEIGHTS at weight 0). The
directory is watched (inotify) and read again whole at each change, so what
it says is what is on disk: kept across reloads and restarts. A name that is
neither an address nor a host name is logged once and ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Callable

from hoststated import log
from hoststated.conf.model import Config
from hoststated.inotify import Watch

logger = log.get("hce")

REASON = "maintenance file"
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse(name: str) -> tuple[str, int | None] | None:
    """A file's name -> (address or host name, port or None); None if it is
    neither."""
    host, port = name, None
    if name.startswith("["):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", name)
        if m is None:
            return None
        host, port = m.group(1), m.group(2)
    elif name.count(":") == 1:
        host, port = name.split(":")
    if port is not None:
        if not str(port).isdigit() or not 1 <= int(port) <= 65535:
            return None
        port = int(port)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    if name.startswith("[") or ":" in host:
        return None
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels) \
            or labels[-1].isdigit():
        return None
    return host.lower().rstrip("."), port


class Maintenance:
    def __init__(self, path: str | None, config: Config,
                 on_change: Callable[[], None]) -> None:
        self.path = path
        self.config = config
        self.on_change = on_change
        self.names: dict[tuple[str, int | None], str] = {}   # parsed -> file name
        self.hosts: set[int] = set()
        self.told: set[str] = set()          # bad names already logged
        self.watch: Watch | None = None

    def start(self) -> None:
        """Watch and read the directory; log.Fatal if hce cannot (it runs
        unprivileged: the directory must be readable by its user)."""
        if self.path is None:
            return
        try:
            self.watch = Watch([self.path], lambda names: self.scan())
            os.listdir(self.path)
        except OSError as e:
            raise log.Fatal(f"maintenance directory {self.path}: cannot read it: "
                            f"{e.strerror or e}") from None
        self.watch.start()
        self.scan()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        path = config.global_.maintenance_dir
        if path != self.path:
            self.close()
            self.path, self.names, self.told = path, {}, set()
            if path is not None:
                try:
                    self.start()
                except log.Fatal as e:     # a reload keeps the daemon: say it, drain nothing
                    logger.error("%s", e)
                    self.path = None
        self.hosts = self._match()

    def scan(self) -> None:
        """Read the directory again; on_change() if the drained hosts changed."""
        try:
            files = os.listdir(self.path)
        except OSError as e:
            logger.error("maintenance directory %s: cannot read it: %s (the hosts of its "
                         "files stay drained)", self.path, e.strerror or e)
            return
        names = {}
        for f in files:
            p = parse(f)
            if p is None:
                if f not in self.told:
                    self.told.add(f)
                    logger.warning("maintenance directory %s: file %r is not named address, "
                                   "address:port, hostname or hostname:port: ignored",
                                   self.path, f)
                continue
            names[p] = f
        self.told &= set(files)
        for p in names.keys() - self.names.keys():
            logger.info("maintenance file %s: in maintenance", names[p])
        for p in self.names.keys() - names.keys():
            logger.info("maintenance file %s: removed", self.names[p])
        self.names = names
        hosts = self._match()
        if hosts != self.hosts:
            self.hosts = hosts
            self.on_change()

    def _match(self) -> set[int]:
        out = set()
        for h in self.config.hosts():
            for key in ((h.name.lower(), h.port), (h.name.lower(), None),
                        (h.address, h.port), (h.address, None)):
                if key in self.names:
                    out.add(h.id)
                    break
        return out

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
