"""The whole daemon, as root, in network namespaces with real HTTP backends,
driven with hoststatectl.

    lb 198.51.100.1 ---veth--- 198.51.100.11 (HTTP 200), 198.51.100.12 (nothing), backends
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import Lab, alive, proc_status, wait_dropped, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok(), reason="needs root and iproute2")]

CONFIG = """\
socket "{socket}"
engine none
interval 1
timeout 500
up = "198.51.100.11"
table <web> {{ $up, 198.51.100.12 }}
table <sorry> {{ 198.51.100.13 }}
redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
	forward to <sorry> port 80 check tcp
}}
"""

UP, DOWN = "198.51.100.11", "198.51.100.12"


def make_lab(lab: Lab, config: str = CONFIG):
    lb, be = lab.netns("lb"), lab.netns("be")
    lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24",
                                         "198.51.100.13/24"])
    lab.http(be, UP, 80)
    d = lab.daemon(lb, config)
    # every host checked once (the sorry host too: its first change must not
    # come after, e.g. as a monitor's first event; the first round's order
    # is the scheduler's)
    wait_for(lambda: (lambda st: st.get(UP) == "up" and st.get(DOWN) == "down"
                      and "unknown" not in st.values())(d.statuses()),
             what="first checks")
    return d


@pytest.fixture(scope="module")
def daemon():
    """One daemon for the read-mostly tests of this module."""
    if not root_ok():
        pytest.skip("needs root")
    with Lab(f"dm{os.getpid() % 1000}") as lab:
        yield make_lab(lab)


# --- processes and privileges ---------------------------------------------

def test_roles_and_privileges(daemon):
    roles = daemon.roles()
    assert set(roles) == {"hce", "pfe"}
    parent = proc_status(daemon.pid)
    assert parent["Uid"].split()[0] == "0"
    hce, pfe = wait_dropped(roles["hce"]), wait_dropped(roles["pfe"])
    for st in (hce, pfe):
        assert set(st["Uid"].split()) == {"65534"} or "0" not in st["Uid"].split()
        assert "0" not in st["Gid"].split()
        assert st["NoNewPrivs"] == "1"
    assert int(hce["CapEff"], 16) == int(hce["CapPrm"], 16) == int(hce["CapBnd"], 16) == 0
    assert int(pfe["CapEff"], 16) == int(pfe["CapPrm"], 16) == int(pfe["CapBnd"], 16) == 1 << 12
    # each command line names its role
    for role, pid in roles.items():
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        assert [b"--role", role.encode()] == argv[argv.index(b"--role"):argv.index(b"--role") + 2]


def test_socket_mode(daemon):
    st = os.stat(daemon.socket)
    assert st.st_mode & 0o777 == 0o660 and st.st_uid == 0


# --- show ------------------------------------------------------------------

def test_show_hosts_text(daemon):
    r = daemon.ctl("show", "hosts")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Id  \tType    \tName                    \tAvlblty\tStatus"
    assert lines[1] == "1   \ttable   \tweb:80                  \t       \tactive (1 hosts)"
    up = next(l for l in lines if UP in l)
    assert up.startswith("1   \thost    \t198.51.100.11           \t") and up.endswith("\tup")
    i = lines.index(up)
    assert lines[i + 1].startswith("\t        \ttotal: ")
    down_i = next(i for i, l in enumerate(lines) if DOWN in l)
    assert lines[down_i].endswith("\tdown")
    assert ", error: tcp connect failed" in lines[down_i + 1]


def test_show_hosts_json(daemon):
    hosts = {h["name"]: h for h in daemon.json("show", "hosts")["hosts"]}
    up, down = hosts[UP], hosts[DOWN]
    for h in (up, down):
        assert {"id", "name", "table", "status", "error", "detail", "last_check",
                "latency_ms"} <= set(h)
        assert h["table"] == "web:80"
    assert up["status"] == "up" and up["error"] == "" and up["last_check"] > 0
    assert down["status"] == "down" and down["error"] == "tcp connect failed"


def test_show_summary_and_prefix(daemon):
    full, short = daemon.ctl("show", "summary"), daemon.ctl("sh", "sum")
    assert full.returncode == short.returncode == 0
    lines = short.stdout.splitlines()
    assert lines[1] == "1   \tredirect\twww                     \t       \tactive"
    assert any(l.startswith("scheduler: lag p50 ms") for l in lines)
    assert "lag_p99_ms" in daemon.json("show", "summary")["stats"]


def test_show_redirects_tables_relays(daemon):
    assert daemon.json("show", "redirects")["redirects"][0]["status"] == "active"
    tables = daemon.ctl("show", "tables").stdout.splitlines()
    assert tables[2] == "2   \ttable   \tsorry:80                \t       \tempty"
    assert daemon.json("show", "relays") == {"relays": []}


# --- errors ----------------------------------------------------------------

def test_unknown_and_ambiguous_commands(daemon):
    r = daemon.ctl("frobnicate")
    assert r.returncode != 0 and "unknown command: frobnicate" in r.stderr
    r = daemon.ctl("re")
    assert r.returncode != 0 and "ambiguous" in r.stderr
    r = daemon.ctl("host", "disable", "no-such-host")
    assert r.returncode == 1 and r.stderr == "command failed: no host no-such-host\n"


def test_connect_error_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hoststatectl", "show", "hosts"],
                       capture_output=True, text=True)
    if not os.path.exists("/run/hoststated.sock"):
        assert r.returncode == 1
        assert r.stderr == "hoststatectl: connect /run/hoststated.sock: No such file or directory\n"
    r = subprocess.run([sys.executable, "-m", "hoststatectl", "-s", str(tmp_path / "x.sock"),
                        "poll"], capture_output=True, text=True)
    assert r.stderr == f"hoststatectl: connect {tmp_path / 'x.sock'}: No such file or directory\n"


def _raw(path: str, data: bytes, read: bool = True) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(data)
    out = b""
    if read:
        try:
            while chunk := s.recv(65536):
                out += chunk
                if out.endswith(b"\n") and out.startswith(b"{"):
                    break
        except socket.timeout:
            pass
    s.close()
    return out


def test_bad_input_on_the_socket(daemon):
    path = daemon.socket
    # msgpack garbage: a length far over the limit -> error reply, then closed
    out = _raw(path, b"\xff\xff\xff\xffgarbage")
    assert b"bad-request" in out
    # oversize frame announced
    out = _raw(path, struct.pack(">I", 1 << 20) + b"x" * 100)
    assert b"exceeds the limit" in out
    # a valid frame with a non-request body
    body = b"\x93\x01\x02\x03"                    # msgpack [1, 2, 3]
    out = _raw(path, struct.pack(">I", len(body)) + body)
    assert b"bad-request" in out
    # JSON: a bad line, then an unknown command, then a good one, one connection
    out = _raw(path, b'{nope\n{"cmd": "dance"}\n{"cmd": "show tables", "v": 1}\n', read=False)
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b'{nope\n{"cmd": "dance"}\n{"cmd": "show tables", "v": 1}\n{"cmd":"poll","v":9}\n')
    f = s.makefile("rb")
    replies = [json.loads(f.readline()) for _ in range(4)]
    s.close()
    assert [r["ok"] for r in replies] == [False, False, True, False]
    assert replies[0]["error"]["code"] == "bad-request"
    assert replies[1]["error"] == {"code": "unknown-command", "message": "unknown command: dance"}
    assert replies[2]["data"]["tables"][0]["name"] == "web:80"
    assert replies[3]["error"]["code"] == "version"
    # half-sent frame, then the client vanishes; and a client that vanishes
    # before reading a big reply
    _raw(path, struct.pack(">I", 50) + b"\x81", read=False)
    _raw(path, b'{"cmd": "show summary"}\n', read=False)
    # a JSON line that never ends, over the limit
    out = _raw(path, b"{" + b"x" * (70 << 10))
    assert b"longer than" in out
    # the daemon carries on
    assert daemon.ctl("show", "summary").returncode == 0
    assert all(alive(p) for p in daemon.roles().values()) and len(daemon.roles()) == 2


def test_300_concurrent_clients(daemon):
    n = 300
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(60)
        s.connect(daemon.socket)
        barrier.wait()
        s.sendall(b'{"cmd": "show hosts"}\n')
        results[i] = json.loads(s.makefile("rb").readline())
        s.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r["ok"] for r in results)
    assert {len(r["data"]["hosts"]) for r in results} == {3}


def test_restricted_socket_is_read_only(lab):
    config = CONFIG.replace('socket "{socket}"',
                            'socket "{socket}" group "nogroup"\nsocket restricted "{tmp}/ro.sock"')
    d = make_lab(lab, config)
    ro = str(lab.tmp / "ro.sock")
    st = os.stat(ro)
    assert st.st_mode & 0o777 == 0o666
    assert os.stat(d.socket).st_gid == __import__("grp").getgrnam("nogroup").gr_gid
    assert d.ctl("show", "hosts", socket=ro).returncode == 0
    r = d.ctl("host", "disable", "1", socket=ro)
    assert r.returncode != 0 and "not allowed on the restricted socket" in r.stderr
    r = d.ctl("stop", socket=ro)
    assert r.returncode != 0
    assert d.host(UP)["status"] == "up"


# --- commands that change state -------------------------------------------

def test_disable_enable_and_monitor(lab):
    d = make_lab(lab)
    mon = d.monitor()
    try:
        r = d.ctl("host", "disable", UP)
        assert (r.returncode, r.stdout) == (0, "command succeeded\n")
        assert d.host(UP)["status"] == "disabled"
        # the first event about UP (the sorry table's host may report first)
        ev = next(e for e in map(json.loads, mon.stdout) if e["data"].get("name") == UP)
        assert ev["event"] == "host"
        assert ev["data"]["status"] == "disabled"
        assert d.json("show", "redirects")["redirects"][0]["status"] == "down"
        assert d.ctl("host", "enable", "1").returncode == 0
        wait_for(lambda: d.host(UP)["status"] == "up", what="host back up")
        assert d.ctl("table", "disable", "web:80").returncode == 0
        assert "\tdisabled" in d.ctl("show", "tables").stdout.splitlines()[1]
        assert d.ctl("table", "enable", "web").returncode == 0
        assert d.ctl("redirect", "disable", "www").returncode == 0
        assert d.json("show", "redirects")["redirects"][0]["status"] == "disabled"
        assert d.ctl("redirect", "enable", "1").returncode == 0
        assert d.ctl("poll").stdout == "command succeeded\n"
        assert d.ctl("log", "verbose").returncode == 0
        assert d.ctl("log", "brief").returncode == 0
    finally:
        mon.kill()


def test_reload_good_and_bad(lab):
    d = make_lab(lab)
    mon = d.monitor()
    checks_before = d.host(UP)["check_cnt"]
    # bad: the old config stays, file:line comes back
    d.conf.write_text(CONFIG.format(socket=d.socket).replace("forward to <web>",
                                                             "forward to <nosuch>"))
    r = d.ctl("reload")
    assert r.returncode == 1
    assert r.stderr.startswith(f"command failed: {d.conf}:10:")
    assert d.host(UP)["status"] == "up"
    # good: a new host; the up host stays up (no pass through unknown)
    d.conf.write_text(CONFIG.format(socket=d.socket).replace(
        "198.51.100.12 }", "198.51.100.12, 198.51.100.13 }"))
    r = d.ctl("reload")
    assert r.returncode == 0, r.stderr
    names = [h["name"] for h in d.json("show", "hosts")["hosts"]]
    assert names.count("198.51.100.13") == 2
    up = d.host(UP)
    assert up["status"] == "up" and up["check_cnt"] >= checks_before
    # SIGHUP reloads too
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: d.read_log().count("parent: configuration reloaded from") >= 2,
             what="SIGHUP reload")
    # load FILE
    other = lab.write("other.conf", CONFIG.format(socket=d.socket).replace(
        "198.51.100.12 }", "198.51.100.12 retry 2 }"))
    assert d.ctl("load", str(other)).returncode == 0
    mon.kill()
    events = [json.loads(l) for l in mon.stdout.read().splitlines() if l.strip()]
    assert not [e for e in events if e["data"].get("name") == UP and
                e["data"]["status"] != "up"], events


def test_killed_child_stops_everything(lab):
    d = make_lab(lab)
    roles = d.roles()
    os.kill(roles["hce"], signal.SIGKILL)
    d.proc.wait(15)
    assert d.proc.returncode != 0
    wait_for(lambda: not alive(roles["pfe"]), 10, what="pfe to stop")
    assert "lost child: hce" in d.read_log()
    assert not os.path.exists(d.socket)


def test_killed_parent_takes_children_along(lab):
    d = make_lab(lab)
    roles = d.roles()
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait(5)
    for pid in roles.values():
        wait_for(lambda: not alive(pid), 10, what="child to die with its parent")


def test_sigterm_clean_stop(lab):
    d = make_lab(lab)
    roles = d.roles()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    for pid in roles.values():
        wait_for(lambda: not alive(pid), 5, what="children gone")
    assert not os.path.exists(d.socket)
    assert "pfe: kernel objects removed" in d.read_log()


def test_stop_command(lab):
    d = make_lab(lab)
    assert d.ctl("stop").returncode == 0
    assert d.proc.wait(15) == 0


def test_slow_client_does_not_stall_others(daemon):
    """A client that sends requests and never reads the replies fills its
    socket; the daemon keeps answering everyone else, and hangs up on it."""
    slow = socket.socket(socket.AF_UNIX)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(daemon.socket)
    slow.setblocking(False)
    sent = 0
    try:
        for _ in range(2000):
            slow.send(b'{"cmd": "show summary"}\n')
            sent += 1
    except BlockingIOError:
        pass
    assert sent > 10
    for _ in range(5):
        assert daemon.ctl("show", "tables").returncode == 0
    # the stalled client is dropped after the write timeout
    slow.setblocking(True)
    slow.settimeout(30)
    got = 0
    try:
        while chunk := slow.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, socket.timeout):
        pass
    slow.close()
    assert got > 0
    assert daemon.ctl("show", "hosts").returncode == 0


def test_bad_config_and_busy_socket(lab):
    d = make_lab(lab)
    bad = lab.write("bad.conf", CONFIG.format(socket=d.socket).replace("interval 1",
                                                                       "interval one"))
    r = subprocess.run([sys.executable, "-m", "hoststated", "-d", "-f", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith(f"{bad}:3:"), r.stderr
    assert "Traceback" not in r.stderr
    # a second daemon on the same socket refuses to start, the first carries on
    r = subprocess.run([sys.executable, "-m", "hoststated", "-d", "-f", str(d.conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "another hoststated is listening" in r.stderr
    assert d.ctl("show", "summary").returncode == 0
