"""Issue 14 item 2 end to end: `maintenance directory` with the real daemon
(engine none: pfe logs each weight it would write) in a namespace, real
backends, inotify on a real directory.

- a file `address:port` drains that host, `address` drains it in every
  table; show hosts says why; removing the file undrains;
- a file whose name is no address is logged and ignored;
- the drain is kept across a reload and a restart (it is on disk);
- a directory hce cannot read after its privilege drop: -n says so, the
  start stops with one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, Lab, in_netns, usable  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable(), reason="needs root and ip")]

A, B = "198.51.100.71", "198.51.100.72"

CONFIG = """\
socket "{socket}"
engine none
interval 1
timeout 500
maintenance directory "{tmp}/maint"
table <web> {{ 198.51.100.71, 198.51.100.72 }}
table <other> {{ 198.51.100.72 }}
redirect "www" {{
	listen on 203.0.113.71 port 80
	forward to <web> port 80 check tcp
}}
redirect "other" {{
	listen on 203.0.113.72 port 8080
	forward to <other> port 80 check tcp
}}
"""


@pytest.fixture(scope="module")
def world():
    with Lab(prefix="nt-mnt") as lab:
        ns = lab.netns("d")
        lab.addr(ns, "lo", f"{A}/32", f"{B}/32")
        lab.tmp.chmod(0o755)
        maint = lab.tmp / "maint"
        maint.mkdir()
        maint.chmod(0o755)                 # hce reads it as _hoststated
        for a in (A, B):
            lab.http(ns, a, 80)
        yield lab, ns, maint


def drains(d) -> dict[tuple[str, str], str]:
    """(host, table) -> its drain reason, for the drained hosts."""
    return {(h["name"], h["table"]): h["drain_reason"] or "drain"
            for h in d.json("show hosts")["hosts"] if h["drain"]}


def test_files_drain_and_survive_reload_and_restart(world):
    lab, ns, maint = world
    d = lab.daemon(ns, CONFIG, name="maint.conf")
    try:
        d.wait_statuses({A: "up", B: "up"})
        assert drains(d) == {}
        (maint / f"{A}:80").touch()
        (maint / "not an address!").touch()
        d.wait_for(lambda: drains(d) == {(A, "web:80"): "maintenance file"},
                   what="A drained by its file")
        # pfe's line: it writes the weight after hce (which answers show
        # hosts) has marked the drain, so it may come a moment later
        d.wait_for(lambda: "destination 198.51.100.71:80 weight 0 changed" in d.read_log(),
                   what="pfe writing A's weight 0")
        r = d.ctl("show", "hosts")
        line = next(ln for ln in r.stdout.splitlines() if A in ln)
        assert "up (drain: maintenance file)" in line, r.stdout
        d.wait_for(lambda: "file 'not an address!' is not named address" in d.read_log(),
                   what="the bad name logged")
        # the command cannot lift the file's drain, and says so rather than "undrained"
        r = d.ctl("host", "undrain", A)
        assert r.returncode == 0, r.stderr
        assert f"still drained by a file in maintenance directory {maint}" in r.stdout, r.stdout
        assert drains(d) == {(A, "web:80"): "maintenance file"}
        # a name without a port: every table's host of that address
        (maint / B).touch()
        want = {(A, "web:80"): "maintenance file", (B, "web:80"): "maintenance file",
                (B, "other:80"): "maintenance file"}
        d.wait_for(lambda: drains(d) == want, what="B drained in both tables")
        r = d.ctl("reload")
        assert r.returncode == 0, r.stderr
        assert drains(d) == want
        (maint / B).unlink()
        d.wait_for(lambda: drains(d) == {(A, "web:80"): "maintenance file"},
                   what="B undrained")
        assert d.proc.poll() is None
    finally:
        d.stop()
        lab.daemons.remove(d)
    # a restart: the file is still there, so is the drain
    d = lab.daemon(ns, CONFIG, name="maint2.conf")
    try:
        d.wait_for(lambda: drains(d) == {(A, "web:80"): "maintenance file"},
                   what="A drained after the restart")
    finally:
        d.stop()
        lab.daemons.remove(d)
        (maint / f"{A}:80").unlink()


def test_unreadable_directory_stops_the_start(world):
    lab, ns, maint = world
    locked = lab.tmp / "locked"
    locked.mkdir(mode=0o700)
    locked.chmod(0o700)
    conf = lab.write("locked.conf", CONFIG.replace("{tmp}/maint", str(locked)).format(
        socket=lab.tmp / "locked.sock", tmp=lab.tmp))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([PYTHON, "-m", "hoststated", "-n", "-f", str(conf)], capture_output=True,
                       text=True, env=env, cwd=str(ROOT), timeout=60)
    assert r.returncode == 1
    assert f"maintenance directory {locked}: user _hoststated cannot read it" in r.stderr, \
        r.stderr
    r = subprocess.run(in_netns(ns, PYTHON, "-m", "hoststated", "-d", "-f", str(conf)),
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)
    assert r.returncode != 0
    assert f"maintenance directory {locked}: user _hoststated cannot read it" in r.stderr, \
        r.stderr


def test_directory_behind_a_closed_one_stops_hce(world):
    """The mode bits of the directory allow it, its parent's do not: what
    -n cannot see, hce finds after its drop, and the daemon stops."""
    lab, ns, maint = world
    closed = lab.tmp / "closed"
    (closed / "maint").mkdir(parents=True)
    closed.chmod(0o700)
    (closed / "maint").chmod(0o755)
    conf = lab.write("closed.conf", CONFIG.replace("{tmp}/maint", str(closed / "maint")).format(
        socket=lab.tmp / "closed.sock", tmp=lab.tmp))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(in_netns(ns, PYTHON, "-m", "hoststated", "-d", "-f", str(conf)),
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)
    assert r.returncode != 0
    assert f"hce: fatal: running as _hoststated (uid {_uid()}): maintenance directory " \
           f"{closed}/maint: cannot read it: Permission denied" in r.stderr, r.stderr


def _uid() -> int:
    import pwd
    return pwd.getpwnam("_hoststated").pw_uid
