"""Logging, as relayd's log.c: stderr with -d, syslog (daemon facility)
otherwise; every line names the process role. `log verbose|brief` flips the
level at run time in every process.

Every line carries its priority where the operator looks:
- to syslog, the priority of its level (SysLogHandler's <facility*8+level>);
- on stderr when stderr is the journal (systemd sets JOURNAL_STREAM to the
  device:inode of the stream it connected), each line starts with the
  sd-daemon(3) prefix `<3>` (SD_ERR) ... `<7>` (SD_DEBUG), which journald
  strips and stores as PRIORITY, so `journalctl -p err` finds the errors;
- on any other stderr (a terminal, a file), plain "role: message".
Without -d and with no syslog daemon listening on /dev/log, nothing would
read the lines: the parent says so and keeps stderr (syslog_reachable(),
parent.daemonize)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

ROOT = "hoststated"
SYSLOG_PATH = "/dev/log"
_role = "parent"

# sd-daemon(3) / syslog(3) priorities
SD_CRIT, SD_ERR, SD_WARNING, SD_NOTICE, SD_INFO, SD_DEBUG = 2, 3, 4, 5, 6, 7


def priority(levelno: int) -> int:
    """A logging level's syslog priority (the nearest one at or above it)."""
    if levelno >= logging.CRITICAL:
        return SD_CRIT
    if levelno >= logging.ERROR:
        return SD_ERR
    if levelno >= logging.WARNING:
        return SD_WARNING
    if levelno >= logging.INFO:
        return SD_INFO
    return SD_DEBUG


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


class _JournalFormatter(logging.Formatter):
    """`<N>role: message`, with the prefix on every line: journald reads
    each line as a record of its own (a traceback stays at its priority)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(stream=None) -> bool:
    """True when stream (default stderr) is the journal stream systemd
    connected: JOURNAL_STREAM names its device and inode (systemd.exec(5));
    a stderr redirected elsewhere by the service is not."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def stderr_line(text: str, levelno: int = logging.ERROR) -> None:
    """print() to stderr for what comes before logging is set up (a refused
    config, no root): with the sd-daemon prefix when stderr is the journal,
    so that `journalctl -p err` finds these lines too."""
    if stderr_is_journal(sys.stderr):
        prefix = f"<{priority(levelno)}>"
        text = "\n".join(prefix + line for line in text.split("\n"))
    print(text, file=sys.stderr)


def _probe_syslog() -> None:
    """Raise OSError unless something listens on SYSLOG_PATH (SysLogHandler
    itself ignores a failed connect and then drops every line)."""
    last: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as s:
            try:
                s.connect(SYSLOG_PATH)
                return
            except OSError as e:
                last = e
    raise last


def _syslog_handler() -> logging.Handler:
    """Raises OSError when nothing listens on SYSLOG_PATH."""
    _probe_syslog()
    handler = logging.handlers.SysLogHandler(
        address=SYSLOG_PATH, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    # %(process)d, not the pid at setup: the parent sets up before it forks
    handler.setFormatter(logging.Formatter("hoststated[%(process)d]: %(role)s: %(message)s"))
    return handler


def syslog_reachable() -> str | None:
    """None when a syslog daemon listens on SYSLOG_PATH, else why not."""
    try:
        _syslog_handler().close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    fmt = _JournalFormatter if stderr_is_journal(sys.stderr) else logging.Formatter
    handler.setFormatter(fmt("%(role)s: %(message)s"))
    return handler


def setup(role: str, debug: bool, verbose: int = 0) -> logging.Logger:
    """Configure the "hoststated" logger for this process (call it while the
    process can still open /dev/log, i.e. before a chroot/privilege drop).
    With no syslog daemon, lines go to stderr: the parent has said so
    before detaching (run()), and kept its stderr for them."""
    global _role
    _role = role
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handler: logging.Handler
    if debug:
        handler = _stderr_handler()
    else:
        try:
            handler = _syslog_handler()
        except OSError:
            handler = _stderr_handler()
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
