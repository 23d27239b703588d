"""The process lifecycle under faults, with the real daemon in namespaces.

- Fail-stop: no raw ICMP socket for icmp checks is fatal at start; the
  daemon started from a copy of its source under a mode-0700
  directory (the interpreter here also lives under /root, mode 0700) still
  checks hosts (http, dns: the idna codec; mysql: the thread pool) and
  writes nftables, because every module is imported before the privilege
  drop; a child that cannot start stops the daemon with one clear line.
- Dying is not stopping: kill -9 of hce, pfe or the parent leaves the
  nftables table and its map in place, and the restart adopts it under
  traffic with no failed request; only a deliberate stop cleans.
- Reloads are never lost: a SIGHUP storm ends with the last edit running;
  `load` of a FIFO is refused at once; a reload stuck in a read does not
  hold up the stop.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import (PYTHON, ROOT, WEB_BACKENDS, WEB_CONFIG, Daemon,  # noqa: E402
                 WebTraffic, alive, nft_backends, run, wait_for, web_director)
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok() or not shutil.which("nft"),
                                 reason="needs root and nft")]

B1, B2 = WEB_BACKENDS
DNS = "198.51.100.53"
DB = "198.51.100.33"            # nothing listens: the mysql check fails in its thread


def _run_as() -> str:
    """How the children name the user they run as: the daemon's own (./run
    setup makes it), never a shared one such as nobody."""
    try:
        return f"_hoststated (uid {pwd.getpwnam('_hoststated').pw_uid})"
    except KeyError:
        return "_hoststated (missing: ./run setup makes it)"


RUN_AS = _run_as()

CONFIG = WEB_CONFIG

def rows(d: Daemon) -> dict[tuple[str, str], dict]:
    # a host row's table reads "name:port"
    return {(h["table"].split(":")[0], h["name"]): h for h in d.json("show", "hosts")["hosts"]}


def hosts_up(d: Daemon, names=(B1, B2), table="web") -> bool:
    got = rows(d)
    return all(got.get((table, n), {}).get("status") == "up" for n in names)


@pytest.fixture
def private_copy():
    """hoststated/ and grammar/ copied under a mode-0700 directory."""
    top = Path(tempfile.mkdtemp(prefix="hs-private-"))
    try:
        os.chmod(top, 0o700)
        src = top / "checkout"
        for part in ("hoststated", "grammar"):
            shutil.copytree(ROOT / part, src / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        yield src
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- fail-stop --------------------------------------------------------------

def test_daemon_from_a_0700_directory_checks_and_writes_the_kernel(lab, private_copy):
    if not shutil.which("dnsmasq"):
        pytest.skip("dnsmasq not installed")
    assert stat.S_IMODE(os.stat(private_copy.parent).st_mode) == 0o700
    c, lb, b, _ = web_director(lab, DNS, DB)
    (lab.tmp / "empty.conf").write_text("")
    lab.spawn("dnsmasq", "--keep-in-foreground", f"--conf-file={lab.tmp}/empty.conf",
              f"--listen-address={DNS}", "--bind-interfaces", "--no-resolv", "--no-hosts",
              "--user=root", f"--pid-file={lab.tmp}/dnsmasq.pid",
              "--host-record=www.example.test,192.0.2.10", ns=b)
    config = CONFIG.format(socket=lab.tmp / "private.sock") + f"""
table <dns> {{ {DNS} }}
table <db> {{ {DB} }}
redirect "dns" {{
	listen on 203.0.113.53 udp port 53
	forward to <dns> check dns "www.example.test" type A expect "192.0.2.10"
}}
redirect "db" {{
	listen on 203.0.113.33 port 3306
	forward to <db> check mysql user "probe"
}}
"""
    conf = lab.write("private.conf", config)
    d = Daemon(lab, lb, conf, str(lab.tmp / "private.sock"), src=private_copy)
    d.wait_ready()
    wait_for(lambda: hosts_up(d) and hosts_up(d, (DNS,), "dns"), 20,
             what=f"http and dns hosts up (log: {d.read_log()})")
    wait_for(lambda: nft_backends(lb) == {B1, B2}, 10, what="both backends in the nftables map")
    # the mysql check ran in the thread pool: it fails for the network's
    # reason (nothing listens), not for want of a module after the drop
    db = wait_for(lambda: (r := rows(d)[("db", DB)])["status"] == "down" and r, 20,
                  what="the mysql host checked")
    text = json.dumps(db) + d.read_log()
    for bad in ("No module named", "unknown encoding", "cannot load", "Traceback"):
        assert bad not in text, text
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0, d.read_log()


# every other check kind, each against a host where nothing answers: each
# must run its conversation (or library) from the 0700 copy after the drop
# and fail for the network's reason, never for a module it could not load
KINDS = {
    "tcp": "check tcp", "tls": "check tls", "https": 'check https "/" code 200',
    "send": 'check send "PING" expect "PONG*"', "binary": 'check binary send "00" expect "00"',
    "icmp": "check icmp", "arp": "check arp",
    "smtp": 'check smtp helo "lb.example.test" starttls', "submission": "check submission",
    "ftp": 'check ftp user "anonymous" password "lb@example.test"',
    "imap": 'check imap user "probe" password "p" starttls', "imaps": "check imaps",
    "pop": "check pop", "pops": "check pops", "nntp": "check nntp",
    "ldap": 'check ldap bind "cn=probe,dc=example,dc=test" password "p"', "ldaps": "check ldaps",
    "pgsql": 'check pgsql user "probe" database "app"',
    "radius": 'check radius secret "s3cret" user "probe" password "p"',
    "sip": 'check sip "sip:probe@example.test"',
    "proxy": 'check http-proxy "http://www.example.test/" code 200',
    "redis": 'check redis expect "PONG"',
}


# workers 2 (issue 17): the check workers preload the same, and open their
# own raw ICMP and ARP sockets (the parent's, before the drop)
@pytest.mark.parametrize("workers", [1, 2])
def test_every_check_kind_runs_from_a_0700_directory(lab, private_copy, workers):
    c, lb, b, _ = web_director(lab, DNS, DB)
    config = CONFIG.format(socket=lab.tmp / "kinds.sock")
    config = config.replace("engine nftables", f"engine nftables\ncheck workers {workers}")
    assert f"check workers {workers}" in config
    for i, (name, check) in enumerate(KINDS.items()):
        proto = " udp" if name in ("radius", "sip") else ""
        config += (f"table <k{name}> {{ {DB} }}\n"
                   f"redirect \"{name}\" {{\n\tlisten on 203.0.113.{60 + i}{proto} port 9000\n"
                   f"\tforward to <k{name}> {check}\n}}\n")
    conf = lab.write("kinds.conf", config)
    d = Daemon(lab, lb, conf, str(lab.tmp / "kinds.sock"), src=private_copy)
    d.wait_ready()
    wait_for(lambda: all((r := rows(d).get((f"k{n}", DB))) and r["check_cnt"] >= 2
                         for n in KINDS), 40,
             what=f"every kind checked twice (log: {d.read_log()[-2000:]})")
    got = rows(d)
    for name in KINDS:
        row = got[(f"k{name}", DB)]
        # DB answers ping and ARP in this lab (the icmp and arp checks ran);
        # no port of it listens
        assert row["status"] == ("up" if name in ("icmp", "arp") else "down"), (name, row)
        text = json.dumps(row)
        for bad in ("No module named", "unknown encoding", "cannot load", "cannot make check"):
            assert bad not in text, (name, text)
    log = d.read_log()
    for bad in ("No module named", "unknown encoding", "Traceback", "fatal"):
        assert bad not in log, log
    assert len(d.role_pids("worker")) == (workers if workers > 1 else 0)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0, d.read_log()


def test_a_child_that_cannot_start_stops_the_daemon(lab):
    # engine ipvs where the kernel has no IPVS: pfe cannot start
    if os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has IPVS")
    lb = lab.netns("lb")
    conf = lab.write("ipvs.conf", CONFIG.replace("engine nftables", "engine ipvs")
                     .format(socket=lab.tmp / "ipvs.sock"))
    d = Daemon(lab, lb, conf, str(lab.tmp / "ipvs.sock"))
    assert d.proc.wait(30) == 1
    log = d.read_log()
    lines = [ln for ln in log.splitlines() if ln.startswith("pfe: fatal")]
    assert len(lines) == 1, log
    # the cause is the IPVS adapter's word (no IPVS here)
    assert lines[0].startswith(f"pfe: fatal: running as {RUN_AS}: "), log
    assert "Traceback" not in log, log
    assert "lost child: pfe exited with status 1" in log, log
    assert not os.path.exists(d.socket)


def test_a_child_whose_code_is_broken_stops_the_daemon(lab, private_copy):
    lb = lab.netns("lb")
    # a check module hce imports before its drop, broken in the copy
    (private_copy / "hoststated/checks/redis.py").write_text("this is not python\n")
    conf = lab.write("broken.conf", CONFIG.format(socket=lab.tmp / "broken.sock"))
    d = Daemon(lab, lb, conf, str(lab.tmp / "broken.sock"), src=private_copy)
    assert d.proc.wait(30) == 1
    log = d.read_log()
    lines = [ln for ln in log.splitlines() if ln.startswith("hce: fatal")]
    assert len(lines) == 1, log
    assert RUN_AS in lines[0] and "hoststated.checks.redis" in lines[0], log
    assert "Traceback" not in log, log
    assert "lost child: hce" in log, log


UNREADABLE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from hoststated import proc
os.setgroups([]); os.setgid(65534); os.setuid(65534)
print(proc.unreadable_path())
"""


def test_unreadable_path_names_the_0700_directory(private_copy):
    # what the message of an import after the drop points at
    out = run(PYTHON, "-c", UNREADABLE, str(private_copy)).stdout.strip()
    assert out == str(private_copy.parent), out


# --- dying is not stopping -----------------------------------------------

@pytest.mark.parametrize("victim", ["hce", "pfe", "parent"])
def test_kill_9_leaves_the_kernel_and_the_restart_adopts_it(lab, victim):
    c, lb, b, _ = web_director(lab, DNS, DB)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: hosts_up(d), 20, what="hosts up")
    wait_for(lambda: nft_backends(lb) == {B1, B2}, 10, what="both backends in the map")
    traffic = WebTraffic(lab, c)
    traffic.wait_flowing()                  # its client started (a loaded box is slow)
    time.sleep(1.0)                       # traffic flows before the fault
    roles = d.roles()
    pid = d.pid if victim == "parent" else roles[victim]
    os.kill(pid, signal.SIGKILL)
    # the whole daemon goes (fail-stop), the kernel stays
    wait_for(lambda: not any(alive(x) for x in (d.pid, *roles.values())), 15,
             what="every hoststated process gone")
    assert nft_backends(lb) == {B1, B2}
    assert d.stop() == (-signal.SIGKILL if victim == "parent" else 1)
    assert "kernel objects left in place for the restart to adopt" in d.read_log(), \
        d.read_log()
    # the restart (as Restart=on-failure would) adopts what it finds
    d2 = lab.daemon(lb, CONFIG, name="restart.conf")
    wait_for(lambda: hosts_up(d2), 20, what="hosts up after the restart")
    time.sleep(0.5)                       # traffic flows after the restart too
    r = traffic.finish()
    assert r["ok"] > 0 and r["failed"] == 0, r
    assert nft_backends(lb) == {B1, B2}
    # a deliberate stop with the default cleanstop yes removes the table
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(15) == 0
    assert nft_backends(lb) is None
    assert "kernel objects removed" in d2.read_log()


def test_sigterm_to_the_whole_unit_is_a_deliberate_stop(lab):
    # systemd's default KillMode signals every process of the unit at once:
    # pfe's own SIGTERM is no order, the parent's SHUTDOWN is, so it cleans
    c, lb, b, _ = web_director(lab, DNS, DB)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: hosts_up(d) and nft_backends(lb) == {B1, B2}, 20, what="hosts up in the map")
    roles = d.roles()
    for pid in (roles["pfe"], roles["hce"], d.pid):
        os.kill(pid, signal.SIGTERM)
    assert d.proc.wait(15) == 0, d.read_log()
    assert nft_backends(lb) is None, d.read_log()
    assert "kernel objects removed" in d.read_log()


def test_planned_restart_with_cleanstop_no_drops_nothing(lab):
    c, lb, b, _ = web_director(lab, DNS, DB)
    config = CONFIG.replace("engine nftables", "engine nftables\ncleanstop no")
    d = lab.daemon(lb, config)
    wait_for(lambda: hosts_up(d) and nft_backends(lb) == {B1, B2}, 20, what="hosts up in the map")
    traffic = WebTraffic(lab, c)
    traffic.wait_flowing()                  # its client started (a loaded box is slow)
    time.sleep(1.0)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert nft_backends(lb) == {B1, B2}
    d2 = lab.daemon(lb, config, name="restart.conf")
    wait_for(lambda: hosts_up(d2), 20, what="hosts up after the restart")
    r = traffic.finish()
    assert r["ok"] > 0 and r["failed"] == 0, r


# --- reloads never lost -------------------------------------------------------

def test_sighup_storm_ends_with_the_last_edit(lab):
    c, lb, b, _ = web_director(lab, DNS, DB)
    d = lab.daemon(lb, CONFIG)
    wait_for(lambda: hosts_up(d) and nft_backends(lb) == {B1, B2}, 20, what="hosts up in the map")
    for i in range(20):
        if i == 19:                        # the edit, before the last SIGHUP
            d.conf.write_text(CONFIG.replace("198.51.100.11, 198.51.100.12", B1)
                              .format(socket=d.socket))
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(0.002)
    wait_for(lambda: nft_backends(lb) == {B1}, 20, what=f"the edit in the kernel ({d.read_log()})")
    assert [h["name"] for h in d.json("show", "hosts")["hosts"]] == [B1]
    log = d.read_log()
    assert "queued" in log, log             # the storm did overlap a running reload
    assert "reload failed" not in log, log
    # nothing else was left to do: the queue drained on the edited config
    gens = [int(ln.rsplit("generation ", 1)[1].rstrip(")"))
            for ln in log.splitlines() if ln.startswith("parent: configuration reloaded")]
    assert gens and gens == sorted(gens), log
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_load_of_a_fifo_is_refused_and_reloads_go_on(lab):
    lb = lab.netns("lb")
    d = lab.daemon(lb, CONFIG.replace("engine nftables", "engine none"))
    fifo = lab.tmp / "fifo"
    os.mkfifo(fifo)
    r = d.ctl("load", str(fifo), timeout=20)
    assert r.returncode != 0
    assert "not a regular file" in r.stdout + r.stderr, (r.stdout, r.stderr)
    r = d.ctl("reload", timeout=20)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "configuration reloaded" in d.read_log()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_a_reload_stuck_in_a_read_does_not_hold_the_stop(lab):
    lb = lab.netns("lb")
    config = CONFIG.replace("engine nftables", "engine none")
    d = lab.daemon(lb, config)
    fifo = lab.tmp / "include.fifo"
    os.mkfifo(fifo)
    # an include of a FIFO: the loader may refuse it, or block on it in its
    # thread; either way the daemon still stops when told
    d.conf.write_text(config.format(socket=d.socket) + f'include "{fifo}"\n')
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: "reloading" in d.read_log(), 10, what="the SIGHUP's reload")
    r = subprocess.Popen([PYTHON, "-m", "hoststatectl", "-s", d.socket, "reload"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_for(lambda: "queued" in d.read_log() or "reload failed" in d.read_log(), 20,
             what="the second reload queued behind the stuck one (or the FIFO refused)")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0, d.read_log()
    r.wait(70)


def test_no_raw_icmp_socket_with_icmp_checks_is_fatal_at_start(lab):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv not installed")
    lb = lab.netns("lb")
    conf = lab.write("icmp.conf", CONFIG.replace('check http "/" code 200', "check icmp")
                     .format(socket=lab.tmp / "icmp.sock"))
    # root without CAP_NET_RAW (as a unit whose bounding set lacks it)
    r = subprocess.run(["ip", "netns", "exec", lb, "setpriv", "--bounding-set=-net_raw",
                        PYTHON, "-m", "hoststated", "-d", "-f", str(conf)],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == ["hoststated: raw ICMP socket for the icmp checks: Operation not permitted"], \
        r.stderr
    assert not os.path.exists(lab.tmp / "icmp.sock")
