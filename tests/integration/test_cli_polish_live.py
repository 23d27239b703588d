"""Issue 13's CLI polish on the real daemon (root, a namespace, engine none,
1,500 hosts, a relay with two processes):

- every process named: comm (top, ps -o comm) and command line (ps,
  systemctl status), read from /proc;
- `hoststatectl show hosts | head -1` ends quietly;
- `echo 'show hosts' | socat - UNIX-CONNECT:...` answers in hoststatectl's
  text; the restricted socket refuses in text too;
- errors under --json as one JSON object on stdout.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, Lab, cmdline, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok(), reason="needs root and iproute2")]

# 6 tables of 250 hosts on nets with no route from the namespace: every check
# fails at once, and `show hosts` prints two lines a host, far more than a pipe holds
NETS = ("203.0.113", "192.0.2")
TABLES = 6


def config() -> str:
    lines = ['socket "{socket}"', 'socket restricted "{socket}.ro"', "engine none",
             "interval 10", "timeout 500", "prefork 2"]
    for t in range(TABLES):
        net = NETS[t % 2]
        hosts = ", ".join(f"{net}.{i}" for i in range(1, 251))
        lines.append(f"table <t{t}> {{{{ {hosts} }}}}")
    lines += ['relay "r" {{', "\tlisten on 198.51.100.1 port 8080",
              "\tforward to <t0> port 80 check tcp", "}}"]
    for t in range(1, TABLES):
        lines += [f'redirect "w{t}" {{{{', f"\tlisten on 198.51.100.1 port {80 + t}",
                  f"\tforward to <t{t}> port 80 check tcp", "}}"]
    return "\n".join(lines) + "\n"


def counts_out(text: str) -> str:
    # the check counts and the time in a state move on between two looks
    text = re.sub(r"total: \d+/\d+ checks", "total: N/N checks", text)
    return re.sub(r" for \d\d:\d\d:\d\d since ", " for T since ", text)


@pytest.fixture(scope="module")
def daemon():
    with Lab("polish") as lab:
        ns = lab.netns("lb")
        lab.addr(ns, "lo", "198.51.100.1/32")
        d = lab.daemon(ns, config())
        d.wait_for(lambda: all(h["check_cnt"] > 0 for h in d.json("show", "hosts")["hosts"]),
                   timeout=60, what="a first check of every host")
        yield d


def test_processes_are_named(daemon):
    roles = daemon.roles()
    assert set(roles) == {"hce", "pfe", "relay"}
    comm = lambda pid: Path(f"/proc/{pid}/comm").read_text().rstrip("\n")  # noqa: E731
    assert comm(roles["hce"]) == "hoststated: hce"
    assert comm(roles["pfe"]) == "hoststated: pfe"
    assert comm(daemon.pid) == "hoststated"
    relays = daemon.role_pids("relay")
    assert sorted(comm(p) for p in relays) == ["hoststated: r1", "hoststated: r2"]
    # the command line ps and systemctl status show; --role stays readable
    assert cmdline(roles["hce"])[:3] == ["hoststated: hce", "--role", "hce"]
    assert sorted(cmdline(p)[0] for p in relays) == ["hoststated: relay 1",
                                                     "hoststated: relay 2"]
    assert cmdline(daemon.pid) == ["hoststated: parent", "-d", "-f", str(daemon.conf)]
    r = subprocess.run(["ps", "-o", "args=", "-p", str(roles["pfe"])], capture_output=True,
                       text=True, check=True)
    assert r.stdout.startswith("hoststated: pfe --role pfe --ipc-fd ")


def ctl_shell(daemon, tail: str) -> subprocess.CompletedProcess:
    return subprocess.run(f"{PYTHON} -m hoststatectl -s {daemon.socket} {tail}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_closed_pipe_is_quiet(daemon):
    r = ctl_shell(daemon, "show hosts | head -1; echo \"status ${PIPESTATUS[0]}\"")
    assert r.stderr == ""
    assert r.stdout.splitlines() == ["Id  \tType    \tName                    \tAvlblty\tStatus",
                                     "status 1"]


def test_command_line_on_the_socket(daemon):
    full = daemon.ctl("show", "hosts").stdout
    assert full.count("\thost    \t") == TABLES * 250
    r = subprocess.run(f"echo 'show hosts' | socat -t 30 - UNIX-CONNECT:{daemon.socket}",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    assert counts_out(r.stdout) == counts_out(full) + "\n"
    # several lines, prefixes as hoststatectl takes them, an error in text
    r = subprocess.run(["socat", "-t", "30", "-", f"UNIX-CONNECT:{daemon.socket}"],
                       input="show red\nho dis 10.9.9.9\nshow tables\n", capture_output=True,
                       text=True, timeout=120)
    replies = r.stdout.split("\n\n")
    assert replies[0] == daemon.ctl("show", "redirects").stdout.rstrip("\n")
    assert replies[1].startswith("command failed: ") and "10.9.9.9" in replies[1]
    assert counts_out(replies[2]) == counts_out(daemon.ctl("show", "tables").stdout.rstrip("\n"))
    # the restricted socket: show yes, poll no
    r = subprocess.run(["socat", "-t", "30", "-", f"UNIX-CONNECT:{daemon.socket}.ro"],
                       input="poll\nshow redirects\n", capture_output=True, text=True,
                       timeout=120)
    first, second = r.stdout.split("\n\n")[:2]
    assert first == "command failed: poll: not allowed on the restricted socket"
    assert second.startswith("Id  \tType")


def test_json_errors(daemon):
    r = ctl_shell(daemon, "--json host disable 10.9.9.9")
    assert r.returncode == 1 and r.stderr == ""
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "not-found" and err["status"] == 1 and "10.9.9.9" in err["message"]
    r = ctl_shell(daemon, f"--json -s {daemon.socket}.ro poll")
    assert r.returncode == 4 and json.loads(r.stdout)["error"]["code"] == "forbidden"
