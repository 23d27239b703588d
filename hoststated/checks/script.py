"""check script (relayd check_script.c): run `path <host>` and judge its exit.

relayd "expects a positive return value on success and zero on failure", and
hoststated keeps that meaning, unlike the shell's convention:
    exit status > 0  -> the host is UP
    exit status == 0 -> the host is DOWN
so an existing relayd check script keeps working unchanged. Except where the
status says the check itself did not run (relayd counts these as up, which
keeps a dead host in service behind a broken check):
    could not be started, exit 126 -> down, "script not executable"
    not found, exit 127            -> down, "script not found"
    killed by a signal             -> down, "script killed by signal SIGSEGV"
    killed at the timeout          -> down, "script timed out"
126 and 127 are the statuses a shell or env(1) gives a command it could
not execute or find, so a script that does exit with them on purpose is
read the same way.

The runner (checks.runner.run_script) starts the program asynchronously in
its own process group, kills the whole group at the timeout, and never runs
two instances for one host at a time; hce already runs as the unprivileged
user. This module only holds what to run and the verdict."""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

from hoststated.checks.base import Verdict, failed, passed
from hoststated.states import HostError

OUTPUT_CAP = 4096            # bytes of the script's output kept for the detail

EXIT_NOT_EXECUTABLE = 126    # POSIX shell: found but could not be executed
EXIT_NOT_FOUND = 127         # POSIX shell: command not found


@dataclass(frozen=True, slots=True)
class ScriptCheck:
    path: str
    argument: str            # the host as written in the config
    # migrate (issue 14): ldirectord's external check: exit 0 is up, and the
    # arguments are the virtual address and port, the real address and port
    convention: str = "relayd"
    ld_args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        if self.convention == "ldirectord":
            return [self.path, *self.ld_args]
        return [self.path, self.argument]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"{num}"


def _exec_failure(e: OSError | None, tail: str) -> Verdict:
    """The program could not be started at all (execve failed)."""
    code = getattr(e, "errno", None)
    if code == errno.ENOENT:
        # execve says ENOENT for a missing #! interpreter too: tell them apart,
        # or the operator looks for a file that is there
        path = getattr(e, "filename", None)
        if path and os.path.lexists(path):
            return failed(HostError.SCRIPT_FAIL, f"script not found: its #! interpreter is missing{tail}")
        return failed(HostError.SCRIPT_FAIL, f"script not found{tail}")
    if code in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR):
        return failed(HostError.SCRIPT_FAIL, f"script not executable{tail}")
    why = f": {os.strerror(code)}" if code else (f": {e}" if e else "")
    return failed(HostError.SCRIPT_FAIL, f"script could not run{why}{tail}")


def verdict(returncode: int | None, *, timed_out: bool = False, output: bytes = b"",
            exec_error: OSError | None = None, convention: str = "relayd") -> Verdict:
    """The check's verdict from how the script ended (returncode < 0: killed
    by that signal, as asyncio reports it; None: could not be started, with
    exec_error the reason)."""
    said = output.strip().decode("utf-8", "replace").splitlines()
    tail = f": {said[-1][:80]}" if said else ""
    if timed_out:
        return failed(HostError.SCRIPT_FAIL, f"script timed out{tail}")
    if returncode is None:
        return _exec_failure(exec_error, tail)
    if returncode < 0:
        return failed(HostError.SCRIPT_FAIL,
                      f"script killed by signal {_signal_name(-returncode)}{tail}")
    if returncode == EXIT_NOT_FOUND:
        return failed(HostError.SCRIPT_FAIL, f"script not found (exit 127){tail}")
    if returncode == EXIT_NOT_EXECUTABLE:
        return failed(HostError.SCRIPT_FAIL, f"script not executable (exit 126){tail}")
    if convention == "ldirectord":        # the shell's: 0 = success
        if returncode == 0:
            return passed(HostError.SCRIPT_OK, f"exit 0{tail}")
        return failed(HostError.SCRIPT_FAIL, f"exit {returncode}{tail}")
    if returncode > 0:                    # relayd: positive = success
        return passed(HostError.SCRIPT_OK, f"exit {returncode}{tail}")
    return failed(HostError.SCRIPT_FAIL, f"exit 0{tail}")
