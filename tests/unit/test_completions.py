"""Shell completion (etc/completion/): the committed files are what
tools/completions.py makes from the command table and the options, and
they complete in a real bash (zsh: parsed by zsh itself)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import completions  # noqa: E402

from hoststated.ipc.messages import COMMANDS  # noqa: E402

OUT = ROOT / "etc" / "completion"


def test_committed_files_are_the_generators():
    for name, text in completions.generate().items():
        assert (OUT / name).read_text() == text, \
            f"etc/completion/{name} is stale: run .venv/bin/python tools/completions.py"


def test_every_command_is_in_the_tree():
    t = completions.tree()
    for words, _ in COMMANDS:
        for i, w in enumerate(words):
            assert w in t[" ".join(words[:i])], words


def complete(prog: str, *words: str) -> list[str]:
    """COMPREPLY of the generated bash function for `prog words...` with the
    cursor on the last word."""
    script = (f"source {OUT / (prog + '.bash')}\n"
              f"COMP_WORDS=({prog} {' '.join(repr(w) for w in words)})\n"
              f"COMP_CWORD={len(words)}\n"
              f"_{prog}\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_bash_completes_hoststatectl():
    assert complete("hoststatectl", "") == [
        "show", "host", "table", "redirect", "poll", "reload", "load", "monitor", "log", "stop"]
    assert complete("hoststatectl", "re") == ["redirect", "reload"]
    assert complete("hoststatectl", "show", "h") == ["hosts"]
    assert complete("hoststatectl", "-s", "/run/x.sock", "--json", "host", "") == [
        "disable", "enable", "weight", "drain", "undrain"]
    assert complete("hoststatectl", "host", "d") == ["disable", "drain"]
    assert complete("hoststatectl", "--j") == ["--json"]
    assert complete("hoststatectl", "show", "hosts", "") == []
    # load takes a file, -s a socket: the shell's file names
    assert "pyproject.toml" in complete("hoststatectl", "load", "py")
    assert "pyproject.toml" in complete("hoststatectl", "-s", "py")


def test_bash_completes_hoststated():
    assert complete("hoststated", "--no") == ["--no-lookup"]
    assert {"-d", "-n", "-f", "-D", "--version"} <= set(complete("hoststated", "-"))
    assert "pyproject.toml" in complete("hoststated", "-f", "py")
    assert complete("hoststated", "-D", "") == []


@pytest.mark.parametrize("name", ["_hoststated", "_hoststatectl"])
def test_zsh_parses(name):
    if not shutil.which("zsh"):
        pytest.skip("zsh is not installed (./run setup installs it)")
    r = subprocess.run(["zsh", "-n", str(OUT / name)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
