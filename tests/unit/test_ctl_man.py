"""hoststatectl.8 documents every command of the command table and every
error code (rendering: test_man_pages.py)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hoststated.ipc.messages import COMMANDS, ErrorCode

MAN = Path(__file__).resolve().parents[2] / "man"


def documented_commands() -> set[tuple[str, ...]]:
    out = set()
    for line in (MAN / "hoststatectl.8").read_text().splitlines():
        m = re.match(r"\.It Ic (.+)", line)
        if m:
            words = m.group(1).split()
            # what follows Ar is the arguments (`host weight Ar id | name weight`)
            words = words[:words.index("Ar")] if "Ar" in words else words
            out.add(tuple(w for w in words if w not in ("Ar", "|")
                          and not w.startswith(("id", "name", "file"))))
    return out


def test_every_command_documented_and_nothing_else():
    assert documented_commands() == {w for w, _ in COMMANDS}


def test_every_error_code_documented():
    text = (MAN / "hoststatectl.8").read_text()
    for code in ErrorCode:
        assert f".Li {code.value}" in text, code
