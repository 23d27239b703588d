"""check script (relayd check_script.c): run `path <host>` and judge its exit.

relayd "expects a positive return value on success and zero on failure", and
hoststated keeps that meaning, unlike the shell's convention:
    exit status > 0  -> the host is UP
    exit status == 0 -> the host is DOWN
so an existing relayd check script keeps working unchanged. Killed by a
signal or by the timeout: down.

The runner (checks.runner.run_script) starts the program asynchronously in
its own process group, kills the whole group at the timeout, and never runs
two instances for one host at a time; hce already runs as the unprivileged
user. This module only holds what to run and the pure verdict."""

from __future__ import annotations

from dataclasses import dataclass

from hoststated.checks.base import Verdict, failed, passed
from hoststated.states import HostError

OUTPUT_CAP = 4096            # bytes of the script's output kept for the detail


@dataclass(frozen=True, slots=True)
class ScriptCheck:
    path: str
    argument: str            # the host as written in the config

    def argv(self) -> list[str]:
        return [self.path, self.argument]


def verdict(returncode: int | None, *, timed_out: bool = False, output: bytes = b"") -> Verdict:
    """The check's verdict from how the script ended (returncode < 0: killed
    by that signal, as asyncio reports it; None: could not be started)."""
    said = output.strip().decode("utf-8", "replace").splitlines()
    tail = f": {said[-1][:80]}" if said else ""
    if timed_out:
        return failed(HostError.SCRIPT_FAIL, f"killed at the timeout{tail}")
    if returncode is None:
        return failed(HostError.SCRIPT_FAIL, f"could not run{tail}")
    if returncode < 0:
        return failed(HostError.SCRIPT_FAIL, f"killed by signal {-returncode}{tail}")
    if returncode > 0:                    # relayd: positive = success
        return passed(HostError.SCRIPT_OK, f"exit {returncode}{tail}")
    return failed(HostError.SCRIPT_FAIL, f"exit 0{tail}")
