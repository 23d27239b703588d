"""hoststatectl's manners and the socket's command lines, against the real
ControlServer on a real Unix socket (the daemon's own tests:
tests/integration/test_cli_polish_live.py):

- errors under --json are one JSON object on stdout, with the code and the
  exit status, nothing on stderr;
- output into a pipe closed early ends quietly (no traceback);
- a command line on the socket is answered in hoststatectl's text, one
  renderer for both (hoststatectl.output).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hoststated.control import ControlServer
from hoststated.ipc.messages import CommandError, ErrorCode
from hoststatectl import output

ROOT = Path(__file__).resolve().parents[2]
N_HOSTS = 20000            # ~1.4 MB of text: far more than a pipe holds

HOSTS = {
    "tables": [{"id": 1, "name": "web:80", "status": f"active ({N_HOSTS} hosts)",
                "up": N_HOSTS, "disabled": False}],
    "hosts": [{"id": i, "name": f"10.0.{i // 250}.{i % 250 + 1}", "table": "web:80",
               "status": "up", "error": "", "detail": "", "check_cnt": 3, "up_cnt": 3,
               "retry_cnt": 0} for i in range(1, N_HOSTS + 1)],
}


async def answer(cmd):
    if cmd.words == ("show", "hosts"):
        return HOSTS
    if cmd.words == ("poll",):
        return None
    raise CommandError(ErrorCode.NOT_FOUND, f"{cmd.arg}: no such host")


_STATE: dict = {}


def served_state():
    return _STATE["server"]


def served_loop():
    return _STATE["loop"]


@pytest.fixture
def served(tmp_path):
    """A ControlServer on tmp_path/ctl.sock, in a thread of its own."""
    path = str(tmp_path / "ctl.sock")
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    box = {}

    async def start():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        box["server"] = ControlServer(sock, answer)
        await box["server"].start()
        ready.set()

    def run():
        loop.run_until_complete(start())
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30)
    _STATE.update(server=box["server"], loop=loop)
    yield path
    loop.call_soon_threadsafe(box["server"].close)
    loop.call_soon_threadsafe(loop.stop)
    t.join(30)


def ctl(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoststatectl", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, **kw)


def test_json_errors_on_stdout(served, tmp_path):
    r = ctl("--json", "-s", served, "host", "disable", "10.9.9.9")
    assert (r.returncode, r.stderr) == (1, "")
    assert json.loads(r.stdout) == {"error": {"code": "not-found", "message":
                                              "10.9.9.9: no such host", "status": 1}}
    r = ctl("--json", "-s", served, "frob")
    assert (r.returncode, r.stderr) == (2, "")
    assert json.loads(r.stdout)["error"] == {"code": "unknown-command", "status": 2,
                                             "message": "unknown command: frob"}
    r = ctl("--json", "-s", str(tmp_path / "none.sock"), "show", "hosts")
    assert (r.returncode, r.stderr) == (1, "")
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "connect" and "No such file or directory" in err["message"]
    # without --json: the line on stderr, as before
    r = ctl("-s", served, "host", "disable", "10.9.9.9")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "command failed: 10.9.9.9: no such host\n")


@pytest.mark.parametrize("json_out", [False, True])
def test_closed_pipe_is_quiet(served, json_out):
    flag = "--json " if json_out else ""
    r = subprocess.run(f"{sys.executable} -m hoststatectl {flag}-s {served} show hosts | head -c 20;"
                       " st=${PIPESTATUS[0]}; echo; echo \"status $st\"", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.stderr == ""                       # no traceback, no "Exception ignored"
    assert r.stdout.splitlines()[-1] == "status 1"
    # and when the whole output is read, it is all there
    r = ctl("-s", served, "show", "hosts")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 + 2 * N_HOSTS   # a host and its totals


def test_text_lines_on_the_socket(served):
    s = socket.socket(socket.AF_UNIX)
    s.connect(served)
    s.sendall(b"show hosts\r\npoll\n\nhost disable 10.9.9.9\nfrob\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    s.close()
    text = data.decode()
    hosts = output.text(("show", "hosts"), HOSTS)
    # what hoststatectl prints, each reply ended by an empty line
    assert text == (hosts + "\n\n" + "command succeeded\n\n"
                    + "command failed: 10.9.9.9: no such host\n\n"
                    + "command failed: unknown command: frob\n\n")
    # the same text as hoststatectl's own
    assert ctl("-s", served, "show", "hosts").stdout == hosts + "\n"


def test_socat_command_line(served):
    if not os.path.exists("/usr/bin/socat"):
        pytest.skip("socat is not installed")
    r = subprocess.run(["socat", "-", f"UNIX-CONNECT:{served}"], input="poll\n",
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "command succeeded\n\n")
    # socat leaves 0.5 s after its input ends for the rest of the answer
    # (-t); 20,000 hosts take longer to print: the page says to give it -t
    r = subprocess.run(["socat", "-t", "60", "-", f"UNIX-CONNECT:{served}"],
                       input="show hos\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == output.text(("show", "hosts"), HOSTS) + "\n\n"


def test_monitor_lines_on_the_socket(served):
    """After `monitor`, each event is one line of hoststatectl's monitor text."""
    import re
    import time
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(served)
    s.sendall(b"monitor\n")
    server = served_state()
    deadline = time.monotonic() + 60
    while not any(c.events is not None for c in list(server.clients)):
        assert time.monotonic() < deadline, "the server never saw the monitor request"
        time.sleep(0.05)
    ev = {"event": "host", "data": dict(HOSTS["hosts"][0], status="down", error="tcp connect failed")}
    served_loop().call_soon_threadsafe(server.broadcast, ev)
    f = s.makefile("rb")
    line = f.readline().decode()
    s.close()
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{3})? ")
    assert stamp.sub("", line) == stamp.sub("", output.event_text(ev)) + "\n"
    assert "10.0.0.2" in line and "down" in line
