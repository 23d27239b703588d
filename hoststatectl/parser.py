"""hoststatectl's command table: the daemon's own (hoststated.ipc.messages.
COMMANDS), so the two cannot disagree. Words may be shortened to any
unambiguous prefix, as relayctl's parser.c allows (`show sum`)."""

from __future__ import annotations

import os

from hoststated.ipc.messages import COMMANDS, Command, CommandError, parse_command

__all__ = ["COMMANDS", "Command", "CommandError", "parse", "usage_lines"]


def parse(words: list[str]) -> Command:
    """argv words -> Command; `load FILE` is made absolute, since the daemon
    does not share our working directory."""
    cmd = parse_command(words)
    if cmd.words == ("load",) and cmd.arg is not None:
        cmd = Command(cmd.words, os.path.abspath(cmd.arg))
    return cmd


def usage_lines() -> list[str]:
    return [" ".join([*w, *(f"<{a}>" for a in (arg or "").split())]) for w, arg in COMMANDS]
