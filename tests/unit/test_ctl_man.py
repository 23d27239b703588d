"""hoststatectl.8 documents every command of the command table, and both
pages render without warnings."""

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
            out.add(tuple(w for w in m.group(1).split() if w not in ("Ar", "|")
                          and not w.startswith(("id", "name", "file"))))
    return out


def test_every_command_documented_and_nothing_else():
    assert documented_commands() == {w for w, _ in COMMANDS}


def test_every_error_code_documented():
    text = (MAN / "hoststatectl.8").read_text()
    for code in ErrorCode:
        assert f".Li {code.value}" in text, code


@pytest.mark.parametrize("page", ["hoststatectl.8", "hoststated.8"])
def test_renders_cleanly(page):
    if not shutil.which("mandoc") and not shutil.which("groff"):
        pytest.skip("no mandoc or groff")
    if shutil.which("mandoc"):
        r = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", str(MAN / page)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        r = subprocess.run(["groff", "-mandoc", "-Tutf8", "-P-cbou", "-ww", str(MAN / page)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr, r.stderr
        assert "SYNOPSIS" in r.stdout
