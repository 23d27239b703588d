"""The man pages say what their source says: no line that roff takes for a
control line by accident (a text line starting with ' or .), every
literal display (.Dl) rendered word for word, the words that were lost once
(hoststatectl(8): "No such file" came out as "such file", `No` being an mdoc
macro), and groff's own warnings, all of them (-ww), empty.
(mandoc -T lint and man --warnings: test_man_pages.py.)"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = ["hoststated.8", "hoststatectl.8", "hoststated.conf.5"]
ESCAPES = {r"\(dq": '"', r"\(aq": "'", r"\e": "\\", r"\&": "", r"\-": "-", r"\(ba": "|"}


def rendered(page: str) -> str:
    if not shutil.which("man"):
        pytest.skip("man is not installed (./run setup installs man-db)")
    r = subprocess.run(["man", "-l", str(MAN / page)], capture_output=True, text=True,
                       env={"MANWIDTH": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                            "MAN_KEEP_FORMATTING": "0"}, check=True)
    return re.sub(r".\x08", "", r.stdout)          # overstrike bold and underline


def unescape(text: str) -> str:
    for esc, char in ESCAPES.items():
        text = text.replace(esc, char)
    return text


@pytest.mark.parametrize("page", PAGES)
def test_no_accidental_control_lines(page):
    bad = [f"{page}:{n}: {line}" for n, line in
           enumerate((MAN / page).read_text().splitlines(), 1)
           if line.startswith("'")]
    assert not bad, "a text line starting with ' is a roff control line; write \\&' :\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("page", PAGES)
def test_literal_displays_render_word_for_word(page):
    out = " ".join(rendered(page).split())
    displays = [unescape(line[4:]) for line in (MAN / page).read_text().splitlines()
                if line.startswith(".Dl ")]
    missing = [d for d in displays if " ".join(d.split()) not in out]
    assert not missing, missing


def test_hoststatectl_examples_and_errors_render():
    out = " ".join(rendered("hoststatectl.8").split())
    assert "echo 'show hosts' | socat - UNIX-CONNECT:/run/hoststated.sock" in out
    assert "echo '{\"cmd\": \"show hosts\"}' | socat - UNIX-CONNECT:/run/hoststated.sock" in out
    assert "connect /run/hoststated.sock: No such file or directory" in out


@pytest.mark.parametrize("page", PAGES)
def test_groff_all_warnings(page):
    if not shutil.which("groff"):
        pytest.skip("groff is not installed (./run setup installs groff-base)")
    r = subprocess.run(["groff", "-mandoc", "-ww", "-z", "-Tutf8", str(MAN / page)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
