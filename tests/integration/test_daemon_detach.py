"""hoststated without -d: it detaches, writes a pid file beside its control
socket once it is the daemon, removes it when it stops, and its log lines go
to syslog, or, with no syslog daemon on /dev/log, to the stderr it was
started with after a line that says so (never nowhere)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoststated import log  # noqa: E402
from lab import PYTHON, ROOT, alive, children_of, cmdline, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402
from test_daemon import CONFIG  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok(), reason="needs root and iproute2")]


def start(lab, name: str):
    lb = lab.netns("lb")
    sock = str(lab.tmp / f"{name}.sock")
    conf = lab.write(f"{name}.conf", CONFIG.format(socket=sock))
    err = lab.tmp / f"{name}.stderr"
    with open(err, "w") as f:
        r = subprocess.run(["ip", "netns", "exec", lb, PYTHON, "-m", "hoststated", "-f", str(conf)],
                           stdout=subprocess.PIPE, stderr=f, text=True, timeout=30, cwd=ROOT)
    return r, sock, err


def test_pid_file_and_log_after_detaching(lab):
    r, sock, err = start(lab, "bg")
    pidfile = Path(sock).with_suffix(".pid")
    # the starter returns only once the pid file names the daemon
    assert r.returncode == 0, err.read_text()
    pid = int(pidfile.read_text())
    try:
        assert alive(pid) and str(lab.tmp / "bg.conf") in cmdline(pid)
        wait_for(lambda: {cmdline(c)[cmdline(c).index("--role") + 1]
                          for c in children_of(pid)} == {"hce", "pfe"}, what="hce and pfe")
        ctl = [PYTHON, "-m", "hoststatectl", "-s", sock]
        wait_for(lambda: subprocess.run([*ctl, "show", "summary"], capture_output=True,
                                        cwd=ROOT).returncode == 0, what="control socket")
        if log.syslog_reachable() is not None:      # logged after the detach
            wait_for(lambda: "parent: startup: first check round done\n" in err.read_text(),
                     what="the first round's line on stderr")
        assert subprocess.run([*ctl, "stop"], capture_output=True, cwd=ROOT).returncode == 0
        wait_for(lambda: not alive(pid), 15, what="daemon to stop")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not pidfile.exists()
    text = err.read_text()
    if log.syslog_reachable() is None:
        assert text == ""                    # all of it went to syslog
    else:
        lines = text.splitlines()
        assert lines[0].startswith("parent: no syslog daemon on /dev/log (")
        assert lines[0].endswith("): logging to stderr")
        assert sum("no syslog daemon" in line for line in lines) == 1     # said once
        # lines logged after the detach, by every role, are there
        assert "parent: startup: first check round done" in lines
        assert "parent: stop requested by hoststatectl" in lines
        assert any(line.startswith("pfe: ") for line in lines)
        assert lines[-1] == "parent: terminating"


def test_pid_file_that_cannot_be_written(lab):
    (lab.tmp / "pf.pid").mkdir()             # where the pid file would go
    try:
        r, sock, err = start(lab, "pf")
        assert r.returncode == 1
        assert f"hoststated: pid file {lab.tmp / 'pf.pid'}: Is a directory" in \
            err.read_text().splitlines()
        assert [p for p in os.listdir(lab.tmp) if p.startswith("pf.pid.")] == []
    finally:
        (lab.tmp / "pf.pid").rmdir()
