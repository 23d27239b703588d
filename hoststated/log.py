"""Logging, as relayd's log.c: stderr with -d, syslog (daemon facility)
otherwise; every line names the process role. `log verbose|brief` flips the
level at run time in every process."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

ROOT = "hoststated"
_role = "parent"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def setup(role: str, debug: bool, verbose: int = 0) -> logging.Logger:
    """Configure the "hoststated" logger for this process (call it while the
    process can still open /dev/log, i.e. before a chroot/privilege drop)."""
    global _role
    _role = role
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handler: logging.Handler
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(role)s: %(message)s"))
    else:
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            handler.setFormatter(logging.Formatter(
                f"hoststated[{os.getpid()}]: %(role)s: %(message)s"))
        except OSError:
            handler = logging.StreamHandler(sys.stderr)   # no syslogd: stderr as last resort
            handler.setFormatter(logging.Formatter("%(role)s: %(message)s"))
    handler.addFilter(_RoleFilter())
    logger.addHandler(handler)
    logger.propagate = False
    set_verbose(verbose)
    return logger


def set_verbose(verbose: int | bool) -> None:
    logging.getLogger(ROOT).setLevel(logging.DEBUG if verbose else logging.INFO)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}")


class Fatal(Exception):
    """fatalx(): log, then stop the process (the parent then stops the rest)."""
