"""check script with real programs: how a script ends decides the verdict,
relayd's way (a positive status is up, 0 is down), except where the status
says the check itself never ran: then the host is down and the detail says
why (a missing script must not keep a dead host in service)."""

from __future__ import annotations

import asyncio
import os

import pytest

from hoststated.checks import make_check
from hoststated.checks.base import Target
from hoststated.checks.runner import run_check
from hoststated.conf import model
from hoststated.states import HostError

ADDRESS = "198.51.100.12"       # only passed to the script as its argument


def run(path: str, timeout: float = 5.0):
    t = Target(ADDRESS, None, name=ADDRESS)
    return asyncio.run(run_check(make_check(model.CheckScript(path=path), t), t, timeout))


def script(tmp_path, body: str, name: str = "check.sh", mode: int = 0o755) -> str:
    p = tmp_path / name
    p.write_text(body)
    p.chmod(mode)
    return str(p)


def test_positive_status_is_up_zero_is_down(tmp_path):
    for status in (1, 2, 125, 128, 255):
        v = run(script(tmp_path, f'#!/bin/sh\necho "ok $1"\nexit {status}\n'))
        assert v.ok and v.error == HostError.SCRIPT_OK
        assert v.detail == f"exit {status}: ok {ADDRESS}"
    v = run(script(tmp_path, "#!/bin/sh\necho 'db unreachable'\nexit 0\n"))
    assert not v.ok and v.error == HostError.SCRIPT_FAIL and v.detail == "exit 0: db unreachable"


def test_missing_script_is_down(tmp_path):
    v = run(str(tmp_path / "no-such-check"))
    assert not v.ok and v.error == HostError.SCRIPT_FAIL and v.detail == "script not found"


def test_missing_interpreter_is_named(tmp_path):
    v = run(script(tmp_path, "#!/nonexistent/interpreter\nexit 1\n"))
    assert not v.ok and v.detail == "script not found: its #! interpreter is missing"


def test_not_executable_is_down(tmp_path):
    # no x bit: execve refuses even root
    v = run(script(tmp_path, "#!/bin/sh\nexit 1\n", mode=0o644))
    assert not v.ok and v.error == HostError.SCRIPT_FAIL and v.detail == "script not executable"
    d = tmp_path / "adir"
    d.mkdir()
    v = run(str(d))
    assert not v.ok and v.detail == "script not executable"


def test_status_127_command_not_found_is_down(tmp_path):
    # the script runs, but a command it needs is missing: sh exits 127,
    # which relayd would count as up
    v = run(script(tmp_path, "#!/bin/sh\nhoststated-no-such-command \"$1\"\n"))
    assert not v.ok and v.error == HostError.SCRIPT_FAIL
    assert v.detail.startswith("script not found (exit 127): ")
    assert "check.sh: 2: " in v.detail          # the shell's own line follows


def test_status_126_not_executable_is_down(tmp_path):
    data = script(tmp_path, "plain data\n", name="data", mode=0o644)
    v = run(script(tmp_path, f"#!/bin/sh\n{data}\n"))
    assert not v.ok and v.error == HostError.SCRIPT_FAIL
    assert v.detail.startswith("script not executable (exit 126): ")
    assert "check.sh: 2: " in v.detail


@pytest.mark.parametrize("sig", ["SEGV", "TERM", "KILL"])
def test_death_by_signal_is_down(tmp_path, sig):
    v = run(script(tmp_path, f"#!/bin/sh\nkill -{sig} $$\nexit 1\n"))
    assert not v.ok and v.error == HostError.SCRIPT_FAIL
    assert v.detail == f"script killed by signal SIG{sig}"


def test_timeout_is_down(tmp_path):
    v = run(script(tmp_path, "#!/bin/sh\necho started\nexec sleep 30\n"), timeout=0.3)
    assert not v.ok and v.error == HostError.SCRIPT_FAIL
    assert v.detail == "script timed out: started"


def test_script_sees_the_host_and_no_stdin(tmp_path):
    out = tmp_path / "seen"
    v = run(script(tmp_path, f'#!/bin/sh\necho "$#:$1" > {out}\nread x && exit 0\nexit 3\n'))
    assert v.ok and v.detail == "exit 3"           # stdin is /dev/null: read fails
    assert out.read_text() == f"1:{ADDRESS}\n"
    assert os.access(out, os.R_OK)
