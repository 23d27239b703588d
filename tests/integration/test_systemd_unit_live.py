"""The daemon started the way etc/hoststated.service starts it.

PID 1 here is not systemd, so the unit's own settings are read from the file
and emulated: its CapabilityBoundingSet and NoNewPrivileges with setpriv(1),
LimitNOFILE with setrlimit, User= if it sets one; stderr as the journal
stream (JOURNAL_STREAM names it), NOTIFY_SOCKET for Type=notify and
WATCHDOG_USEC for WatchdogSec (a datagram socket the test reads), and the
users of etc/hoststated.sysusers made by systemd-sysusers into a copy of
/etc/passwd and /etc/group bind-mounted in the daemon's own mount namespace
(the machine's files are not touched). The daemon runs in a network
namespace with a real backend and engine nftables. The ExecStartPre and
ExecReload command lines are run as written, with this checkout's paths.
(The rest of the sandbox - ProtectSystem and friends - is systemd's alone.)
"""

from __future__ import annotations

import configparser
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import (PYTHON, ROOT, WEB_CONFIG, Daemon, nft_table, proc_status,  # noqa: E402
                 wait_for)
from conftest import root_ok  # noqa: E402

UNIT = ROOT / "etc" / "hoststated.service"
SYSUSERS = ROOT / "etc" / "hoststated.sysusers"
BINDIR = Path(PYTHON).parent

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok() or not os.path.exists("/usr/sbin/nft")
                                 or not shutil.which("setpriv")
                                 or not shutil.which("systemd-sysusers")
                                 or not shutil.which("unshare"),
                                 reason="needs root, nft, setpriv, unshare, systemd-sysusers")]

UP, DOWN = "198.51.100.11", "198.51.100.12"
# from line 1: a test reads the line of the check
CONFIG = WEB_CONFIG.lstrip("\n").replace('socket "{socket}"',
                                         'socket "{socket}" group "hoststated"')
BROKEN = CONFIG.replace('check http "/" code 200', 'check http "/" code')


def unit() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def command(line: str, socket_path: str | None = None) -> list[str]:
    """A unit's command line with this checkout's programs (and the test's
    control socket for hoststatectl)."""
    argv = line.split()
    prog = argv[0]
    assert prog.startswith("/usr/local/bin/"), line
    argv[0] = str(BINDIR / Path(prog).name)
    if argv[0].endswith("hoststatectl") and socket_path:
        argv[1:1] = ["-s", socket_path]
    return argv


def setpriv(s: configparser.SectionProxy, drop: set[str] = frozenset()) -> list[str]:
    """setpriv with the unit's bounding set (less `drop`), no_new_privs and user."""
    caps = [c for c in s["CapabilityBoundingSet"].split() if c not in drop]
    argv = ["setpriv", "--bounding-set=-all," +
            ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)]
    if s.get("NoNewPrivileges") == "yes":
        argv.append("--no-new-privs")
    if "User" in s:
        argv += [f"--reuid={s['User']}", f"--regid={s.get('Group', s['User'])}", "--init-groups"]
    return argv


def users(tmp: Path) -> Path:
    """/etc/passwd and /etc/group as this machine's plus what
    etc/hoststated.sysusers creates."""
    root = tmp / "sysroot"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        src = Path("/etc") / f
        (root / "etc" / f).write_text(src.read_text() if src.exists() else "")
    r = subprocess.run(["systemd-sysusers", f"--root={root}", "-"], input=SYSUSERS.read_text(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return root / "etc"


def entry(etc: Path, db: str, name: str) -> list[str]:
    for line in (etc / db).read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return f
    raise AssertionError(f"{name} not in {db}")


def nofile_limit(s: configparser.SectionProxy) -> int:
    """The unit's LimitNOFILE, or as much of it as this machine lets us give
    (systemd raises the hard limit; a container may not let us)."""
    return min(int(s["LimitNOFILE"]), resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def with_users(ns: str, etc: Path, argv: list[str]) -> list[str]:
    """argv in ns, in a mount namespace of its own where /etc/passwd and
    /etc/group are the sysusers copies; every program execs the next."""
    inner = " ".join([f"mount --bind {etc}/passwd /etc/passwd &&",
                      f"mount --bind {etc}/group /etc/group &&", 'exec "$@"'])
    return ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
            "sh", "-c", inner, "sh", *argv]


class UnitDaemon(Daemon):
    """hoststated as the unit's ExecStart runs it, under the unit's settings."""

    def __init__(self, lab, ns: str, conf: Path, socket_path: str, etc: Path,
                 notify: str, drop: set[str] = frozenset()):
        self.etc, self.notify, self.drop = etc, notify, drop
        super().__init__(lab, ns, conf, socket_path)

    def command(self) -> tuple[list[str], dict[str, str], dict]:
        s = unit()
        st = os.fstat(self._logf.fileno())
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": self.notify,
               "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
               "WATCHDOG_USEC": str(int(s["WatchdogSec"].removesuffix("s")) * 1000000)}
        nofile = nofile_limit(s)
        argv = with_users(self.ns, self.etc, [*setpriv(s, self.drop), *command(
            s["ExecStart"].replace("/etc/hoststated.conf", str(self.conf)))])

        def limits():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        return argv, env, {"cwd": "/", "preexec_fn": limits}


def notify_socket(lab) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(lab.tmp / "notify.sock"))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def notifications(sock: socket.socket, until: bytes, d: Daemon) -> list[tuple[int, bytes]]:
    """(sender pid, datagram) up to the one holding `until`; fails at once
    if the daemon exits first."""
    got = []
    sock.settimeout(0.2)
    for _ in range(150):
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            if d.proc.poll() is not None:
                raise AssertionError(f"exited with {d.proc.returncode} before {until!r}: "
                                     f"{d.read_log()}") from None
            continue
        pid = next(struct.unpack("iII", d)[0] for lvl, typ, d in anc
                   if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS)
        got.append((pid, data))
        if until in data.split(b"\n"):
            return got
    raise AssertionError(f"no {until!r} (got {got}): {d.read_log()}")


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n") if "=" in line)


def states(sent: list[tuple[int, bytes]]) -> list[dict[str, str]]:
    return [fields(data) for _, data in sent]


def setup_lab(lab):
    lb, be = lab.netns("lb"), lab.netns("be")
    lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24"])
    lab.http(be, UP, 80)
    sock = str(lab.tmp / "unit.sock")
    conf = lab.write("unit.conf", CONFIG.format(socket=sock))
    return lb, sock, conf, users(lab.tmp)


def test_the_unit_starts_the_daemon(lab):
    lb, sock, conf, etc = setup_lab(lab)
    s = unit()
    # ExecStartPre, under the same settings
    pre = subprocess.run(with_users(lb, etc, [*setpriv(s), *command(
                             s["ExecStartPre"].replace("/etc/hoststated.conf", str(conf)))]),
                         capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert pre.returncode == 0 and "configuration OK" in pre.stderr, pre.stderr
    notify = notify_socket(lab)
    d = UnitDaemon(lab, lb, conf, sock, etc, str(lab.tmp / "notify.sock"))
    # Type=notify: READY=1, and with NotifyAccess=main only the main
    # process may send it
    sent = notifications(notify, b"READY=1", d)
    assert s["NotifyAccess"] == "main"
    assert {pid for pid, _ in sent} == {d.pid}, (sent, d.read_log())
    # with the counts of the first round: the backend that answers is up
    assert states(sent)[-1] == {"READY": "1", "STATUS": "1 of 2 hosts up, generation 1"}, sent
    # WATCHDOG=1, again and again while both children answer the heartbeat
    for _ in range(3):
        sent += notifications(notify, b"WATCHDOG=1", d)
    assert {pid for pid, _ in sent} == {d.pid}, sent
    roles = d.roles()
    assert set(roles) == {"hce", "pfe"}, d.read_log()
    # the children end as the sysusers user, with their documented sets
    uid, gid = entry(etc, "passwd", "_hoststated")[2:4]
    for role, pid in roles.items():
        st = proc_status(pid)
        assert st["Uid"].split() == [uid] * 4 and st["Gid"].split() == [gid] * 4
        assert st["Groups"].split() == [gid] and st["NoNewPrivs"] == "1"
    assert int(proc_status(roles["pfe"])["CapBnd"], 16) == 1 << 12
    assert int(proc_status(roles["hce"])["CapBnd"], 16) == 0
    # the descriptors the unit gives, in hce too
    with open(f"/proc/{roles['hce']}/limits") as f:
        limit = next(line for line in f if line.startswith("Max open files")).split()[3:5]
    assert int(s["LimitNOFILE"]) >= 65536 and limit == [str(nofile_limit(s))] * 2
    # the control socket belongs to the sysusers group (CAP_CHOWN in the set)
    assert os.stat(sock).st_gid == int(entry(etc, "group", "hoststated")[2])
    wait_for(lambda: d.host(UP)["status"] == "up" and d.host(DOWN)["status"] == "down",
             what="first checks")
    wait_for(lambda: UP in nft_table(lb), what="the up host in the nft table")
    assert DOWN not in nft_table(lb)

    # ExecReload: a refused config fails the reload, and the old one runs on
    reload = command(s["ExecReload"], sock)
    conf.write_text(BROKEN.format(socket=sock))
    r = subprocess.run(reload, capture_output=True, text=True, timeout=60, cwd="/",
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0, r.stdout
    assert f"{conf}:8:" in r.stderr, r.stderr
    assert d.proc.poll() is None and d.host(UP)["status"] == "up" and UP in nft_table(lb)
    # the unit was "reloading" (RELOADING=1 with the monotonic clock) and
    # is ready again, its STATUS saying the reload was refused
    sent = states(notifications(notify, b"READY=1", d))
    reloading = next(f for f in sent if "RELOADING" in f)
    assert reloading["RELOADING"] == "1" and reloading["MONOTONIC_USEC"].isdigit(), sent
    assert sent[-1]["STATUS"] == "1 of 2 hosts up, generation 1; the last reload was refused"
    conf.write_text(CONFIG.replace("198.51.100.12 }", "198.51.100.12, 198.51.100.13 }")
                    .format(socket=sock))
    r = subprocess.run(reload, capture_output=True, text=True, timeout=60, cwd="/",
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    wait_for(lambda: any(h["name"] == "198.51.100.13" for h in d.json("show", "hosts")["hosts"]),
             what="the reloaded config")
    sent = states(notifications(notify, b"STATUS=1 of 3 hosts up, generation 2", d))
    assert [f for f in sent if "RELOADING" in f or "READY" in f][-2:] == [
        {"RELOADING": "1", "MONOTONIC_USEC": next(f["MONOTONIC_USEC"] for f in sent
                                                   if "RELOADING" in f)},
        {"READY": "1"}], sent

    # the journal sees a priority on every line, from every role
    d.proc.send_signal(signal.SIGTERM)
    sent = notifications(notify, b"STOPPING=1", d)
    notify.close()
    assert {pid for pid, _ in sent} == {d.pid}, sent
    assert d.proc.wait(15) == 0
    lines = d.read_log().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert {line[3:].split(":")[0] for line in lines} >= {"parent", "hce", "pfe"}
    assert any(line.startswith("<3>") for line in lines)        # the refused reload


def test_the_old_bounding_set_did_not(lab):
    """Without CAP_SETPCAP (the unit before this test) both children die at
    the privilege drop: what this test is here to catch."""
    lb, sock, conf, etc = setup_lab(lab)
    ns = notify_socket(lab)
    try:
        d = UnitDaemon(lab, lb, conf, sock, etc, str(lab.tmp / "notify.sock"),
                       drop={"CAP_SETPCAP"})
        status = d.proc.wait(30)
    finally:
        ns.close()
    log = d.read_log()
    assert status == 1
    # the line names the user since the drop says whom it runs as
    uid = entry(etc, "passwd", "_hoststated")[2]
    assert (f"<3>pfe: fatal: cannot drop privileges to _hoststated (uid {uid}): "
            "prctl(24): Operation not permitted") in log.splitlines(), log
    assert nft_table(lb) == ""


def test_watchdog_stops_when_a_child_does(lab):
    """WATCHDOG=1 only while both children answer: a SIGSTOPped pfe gets at
    most the one beat already under way, then the parent's heartbeat stops
    the daemon with its line (and systemd would restart it)."""
    lb, sock, conf, etc = setup_lab(lab)
    notify = notify_socket(lab)
    try:
        d = UnitDaemon(lab, lb, conf, sock, etc, str(lab.tmp / "notify.sock"))
        notifications(notify, b"READY=1", d)
        for _ in range(2):
            notifications(notify, b"WATCHDOG=1", d)
        os.kill(d.roles()["pfe"], signal.SIGSTOP)
        sent = notifications(notify, b"STOPPING=1", d)
    finally:
        notify.close()
    beats = [data for _, data in sent if data == b"WATCHDOG=1"]
    assert len(beats) <= 1, sent
    assert d.proc.wait(30) == 1
    log = d.read_log()
    assert re.search(r"^<3>parent: pfe did not answer for \d+\.\d s: stopping$", log, re.M), log
    assert UP in nft_table(lb)                  # dying is not stopping
