"""The whole daemon with `engine nftables`: pfe, holding only CAP_NET_ADMIN,
really writes the kernel; a host's health change reaches the nftables map;
SIGTERM removes the table (cleanstop), `cleanstop no` leaves it; the
systemd readiness notification; daemonized mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoststated import log  # noqa: E402
from lab import PYTHON, ROOT, alive, proc_status, run, wait_dropped, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402
from test_daemon import CONFIG, DOWN, UP, make_lab  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok() or not os.path.exists("/usr/sbin/nft"),
                                 reason="needs root and nft")]

NFT_CONFIG = CONFIG.replace("engine none", "engine nftables")


def nft_table(ns: str) -> str:
    r = run("nft", "list", "table", "inet", "hoststated", ns=ns, check=False)
    return r.stdout if r.returncode == 0 else ""


def test_pfe_writes_the_kernel_and_cleans_up(lab):
    d = make_lab(lab, NFT_CONFIG)
    pfe = d.roles()["pfe"]
    st = wait_dropped(pfe)
    assert int(st["CapEff"], 16) == 1 << 12
    wait_for(lambda: UP in nft_table(d.ns), what="the up host in the nft table")
    assert DOWN not in nft_table(d.ns)
    # a health change reaches the kernel at once
    assert d.ctl("host", "disable", UP).returncode == 0
    wait_for(lambda: UP not in nft_table(d.ns), what="disabled host out of the map")
    assert d.ctl("host", "enable", UP).returncode == 0
    wait_for(lambda: UP in nft_table(d.ns), what="host back in the map")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert nft_table(d.ns) == ""


def test_cleanstop_no_leaves_the_table(lab):
    d = make_lab(lab, NFT_CONFIG.replace("engine nftables", "engine nftables\ncleanstop no"))
    wait_for(lambda: UP in nft_table(d.ns), what="the up host in the nft table")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert UP in nft_table(d.ns)


def test_systemd_ready_notification(lab):
    lb, be = lab.netns("lb"), lab.netns("be")
    lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24"])
    lab.http(be, UP, 80)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(lab.tmp / "notify.sock")
    notify.bind(path)
    notify.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = path
    try:
        d = lab.daemon(lb, CONFIG, wait=False)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        msg = notify.recv(4096)
    finally:
        notify.close()
    # READY=1 first, with the first round's counts as STATUS=
    ready, status = msg.split(b"\n")
    assert ready == b"READY=1" and status.startswith(b"STATUS=") and b"hosts up" in status, msg
    # by then the first round of checks is done
    assert d.host(UP)["check_cnt"] >= 1 and d.host(DOWN)["check_cnt"] >= 1


def test_daemonized(lab):
    lb = lab.netns("lb")
    sock = str(lab.tmp / "bg.sock")
    conf = lab.write("bg.conf", CONFIG.format(socket=sock))
    # stderr on a file: with no syslog daemon the detached daemon keeps it
    # for its log (a pipe would stay open), and says so first
    err = lab.tmp / "bg.stderr"
    with open(err, "w") as f:
        r = subprocess.run(["ip", "netns", "exec", lb, PYTHON, "-m", "hoststated", "-f", str(conf)],
                           stdout=subprocess.PIPE, stderr=f, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0 and r.stdout == ""
    if log.syslog_reachable() is None:
        assert err.read_text() == ""
    else:
        assert err.read_text().startswith("parent: no syslog daemon on /dev/log ("), err.read_text()
    ctl = [PYTHON, "-m", "hoststatectl", "-s", sock]
    wait_for(lambda: subprocess.run([*ctl, "show", "summary"], capture_output=True,
                                    cwd=ROOT).returncode == 0, what="daemonized hoststated")
    # find the detached parent by its socket's owner: the one whose children have roles
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    parents = []
    for pid in pids:
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if str(conf).encode() in argv:
            parents.append(pid)
    assert len(parents) == 1
    (parent,) = parents
    assert proc_status(parent)["PPid"] == "1" or int(proc_status(parent)["PPid"]) != os.getpid()
    try:
        assert subprocess.run([*ctl, "stop"], capture_output=True, cwd=ROOT).returncode == 0
        wait_for(lambda: not alive(parent), 15, what="daemon to stop")
    finally:
        if alive(parent):
            os.kill(parent, signal.SIGKILL)
