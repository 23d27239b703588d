"""hoststated.log in real processes: the priority of every line under the
journal (JOURNAL_STREAM names stderr), to a syslog socket, and what happens
when no syslog daemon listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EMIT = r"""
import sys
from hoststated import log
if len(sys.argv) > 2:
    log.SYSLOG_PATH = sys.argv[2]
log.setup("hce", debug=sys.argv[1] == "debug", verbose=1)
L = log.get("hce")
L.debug("a debug line")
L.info("host 198.51.100.12 (web:80) up")
L.warning("a warning")
L.error("an error")
L.critical("a critical one")
try:
    1 / 0
except ZeroDivisionError:
    L.error("with a trace", exc_info=True)
"""


def emit(tmp_path: Path, mode: str, journal: str | None = None, *args: str) -> list[str]:
    """Run EMIT with stderr on a file; journal: "same" puts that file's
    device:inode in JOURNAL_STREAM, "other" another file's."""
    err = tmp_path / "stderr"
    other = tmp_path / "other"
    other.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(ROOT)
    with open(err, "w") as f:
        if journal:
            st = os.fstat(f.fileno()) if journal == "same" else os.stat(other)
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        r = subprocess.run([sys.executable, "-c", EMIT, mode, *args], stderr=f,
                           stdout=subprocess.PIPE, env=env, timeout=30)
    assert r.returncode == 0
    return err.read_text().splitlines()


def test_journal_stream_gets_sd_daemon_prefixes(tmp_path):
    lines = emit(tmp_path, "debug", "same")
    assert lines[:6] == ["<7>hce: a debug line",
                         "<6>hce: host 198.51.100.12 (web:80) up",
                         "<4>hce: a warning",
                         "<3>hce: an error",
                         "<2>hce: a critical one",
                         "<3>hce: with a trace"]
    # journald reads each line as a record: a traceback keeps its priority
    trace = lines[6:]
    assert trace[0] == "<3>Traceback (most recent call last):"
    assert trace[-1] == "<3>ZeroDivisionError: division by zero"
    assert all(line.startswith("<3>") for line in trace)


def test_no_prefix_when_stderr_is_not_the_journal(tmp_path):
    # JOURNAL_STREAM inherited, but stderr redirected elsewhere
    for journal in ("other", None):
        lines = emit(tmp_path, "debug", journal)
        assert lines[:4] == ["hce: a debug line", "hce: host 198.51.100.12 (web:80) up",
                             "hce: a warning", "hce: an error"]
        assert not any(line.startswith("<") for line in lines)


def test_syslog_priority_per_level(tmp_path):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        srv.settimeout(10)
        lines = emit(tmp_path, "syslog", "same", path)
        got = []
        while len(got) < 6:
            got.append(srv.recv(65536).decode())
    assert lines == []                       # nothing on stderr, journal or not
    pid = got[0].split("[", 1)[1].split("]", 1)[0]
    # facility daemon (3): <3*8 + priority>
    assert got[:5] == [f"<31>hoststated[{pid}]: hce: a debug line\0",
                       f"<30>hoststated[{pid}]: hce: host 198.51.100.12 (web:80) up\0",
                       f"<28>hoststated[{pid}]: hce: a warning\0",
                       f"<27>hoststated[{pid}]: hce: an error\0",
                       f"<26>hoststated[{pid}]: hce: a critical one\0"]
    assert got[5].startswith(f"<27>hoststated[{pid}]: hce: with a trace\nTraceback")


def test_no_syslog_daemon_falls_back_to_stderr(tmp_path):
    from hoststated import log
    missing = str(tmp_path / "no-dev-log")
    stale = tmp_path / "stale.sock"              # a socket file nobody listens on
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(stale))
    s.close()
    old = log.SYSLOG_PATH
    try:
        log.SYSLOG_PATH = missing
        assert log.syslog_reachable() == "No such file or directory"
        log.SYSLOG_PATH = str(stale)
        assert log.syslog_reachable() == "Connection refused"
        log.SYSLOG_PATH = str(tmp_path / "alive.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
            srv.bind(log.SYSLOG_PATH)
            assert log.syslog_reachable() is None
    finally:
        log.SYSLOG_PATH = old
    # the lines go to stderr instead of nowhere, with their priorities under
    # the journal
    for journal, err, info in (("same", "<3>", "<6>"), (None, "", "")):
        lines = emit(tmp_path, "syslog", journal, missing)
        assert f"{err}hce: an error" in lines
        assert f"{info}hce: host 198.51.100.12 (web:80) up" in lines
