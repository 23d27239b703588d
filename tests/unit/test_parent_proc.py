"""The parent's start-up plumbing: the control socket's stale-file rule
(removed only when the connect is refused; a live daemon, a full backlog or
no permission leave it and are fatal), the main socket removed when the
restricted one fails, the open-files limit raised before the children, and
lines printed before logging carry a journal priority."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from hoststated import log, parent, proc

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown of the socket)")


@root
def test_stale_socket_file_is_replaced_with_a_line(tmp_path, caplog):
    path = str(tmp_path / "c.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()                                   # the file stays, nobody listens
    with caplog.at_level(logging.INFO, logger="hoststated"):
        sock = proc.bind_control(path, 0o660, None)
    sock.close()
    assert f"removed stale control socket {path} (no daemon answered)" in caplog.messages


@root
def test_a_listening_daemon_is_not_replaced(tmp_path):
    path = str(tmp_path / "c.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    with pytest.raises(OSError, match="another hoststated is listening"):
        proc.bind_control(path, 0o660, None)
    assert os.path.exists(path)
    s.close()


@root
def test_a_full_backlog_neither_hangs_nor_replaces(tmp_path):
    path = str(tmp_path / "c.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(0)
    held = []
    for _ in range(2):                          # fill the backlog
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        try:
            c.connect(path)
        except BlockingIOError:
            pass
        held.append(c)
    with pytest.raises(OSError, match="backlog is full"):
        proc.bind_control(path, 0o660, None)
    assert os.path.exists(path)
    for c in (*held, s):
        c.close()


PROBE_AS_NOBODY = r"""
import os, sys
from hoststated import proc
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    proc.bind_control(sys.argv[1], 0o660, None)
except OSError as e:
    print(e.strerror or e)
"""


@root
def test_no_permission_is_fatal_and_leaves_the_file():
    top = tempfile.mkdtemp(prefix="hs-perm-")     # pytest's tmp_path is 0700
    try:
        os.chmod(top, 0o755)
        path = os.path.join(top, "c.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        os.chmod(path, 0o600)                   # root's: nobody may not connect
        r = subprocess.run([sys.executable, "-c", PROBE_AS_NOBODY, path], capture_output=True,
                           text=True, cwd=os.path.dirname(os.path.dirname(proc.__file__)))
        assert r.stdout.strip() == f"{path}: Permission denied", (r.stdout, r.stderr)
        assert os.path.exists(path)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@root
def test_the_main_socket_goes_when_the_restricted_one_fails(tmp_path, capsys):
    main = tmp_path / "main.sock"
    conf = tmp_path / "x.conf"
    conf.write_text(f'socket "{main}"\nsocket restricted "{tmp_path}/no/such/dir/r.sock"\n'
                    "engine none\ntable <t> { 198.51.100.11 }\n")
    args = argparse.Namespace(config_file=str(conf), verbose=0, debug=True, defines={},
                              no_lookup=True, check_only=False)
    assert parent.run(args) == 1
    err = capsys.readouterr().err
    assert "hoststated: control socket: " in err and "r.sock" in err, err
    assert not main.exists()


def test_nofile_soft_limit_raised_to_the_hard_one_or_65536():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert proc.raise_nofile() is None
        want = proc.NOFILE_WANTED if hard == resource.RLIM_INFINITY else \
            min(hard, proc.NOFILE_WANTED)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_stderr_lines_carry_a_priority_on_the_journal(tmp_path, monkeypatch):
    out = tmp_path / "err"
    with open(out, "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        log.stderr_line("x.conf:1:1: bad\nx.conf:2:1: worse")
        log.stderr_line("configuration OK", logging.INFO)
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")       # another stream: plain
        log.stderr_line("plain")
    assert out.read_text().splitlines() == ["<3>x.conf:1:1: bad", "<3>x.conf:2:1: worse",
                                            "<6>configuration OK", "plain"]
