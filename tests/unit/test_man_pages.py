"""The man pages: every keyword of the configuration language is in
hoststated.conf(5), every option of both programs in its page, and each page
renders with `man -l` (and passes mandoc's lint) without a warning."""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hoststated import cli
from hoststated.conf import model as m
from hoststated.conf.build import ENGINES, SERVICE_OPTS
from hoststatectl import main as ctl_main

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = ["hoststated.8", "hoststatectl.8", "hoststated.conf.5"]
# macros whose arguments are words of the language
KEYWORD_MACROS = {"Cm", "Ic", "Li", "Fl"}


def grammar_keywords() -> set[str]:
    text = re.sub(r"//.*", "", (ROOT / "grammar" / "hoststated.lark").read_text())
    return {w for w in re.findall(r'"([^"]+)"', text) if re.fullmatch(r"[a-z][a-z0-9.-]*", w)}


def marked_up_words(page: str) -> set[str]:
    """Words given to Cm/Ic/Li/Fl in an mdoc page, as mdoc parses them: a
    macro's arguments run until the next macro name on the line."""
    words = set()
    for line in (MAN / page).read_text().splitlines():
        if not line.startswith("."):
            continue
        keyword = False
        for tok in line[1:].split():
            if re.fullmatch(r"[A-Z][a-z]|[A-Z][a-z][a-z]?", tok) and tok not in ("A", "I"):
                keyword = tok in KEYWORD_MACROS
                continue
            if keyword:
                words.update(w for w in re.split(r"[|,;]", tok.strip(".")) if w)
    return words


def test_grammar_keywords_are_found():
    kws = grammar_keywords()
    # the extraction itself: a sample of each family must be there
    assert {"redirect", "relay", "table", "check", "sticky-address", "weight",
            "engine", "websockets", "minttl"} <= kws
    assert len(kws) > 100


def test_every_grammar_keyword_in_conf_page():
    missing = sorted(grammar_keywords() - marked_up_words("hoststated.conf.5"))
    assert not missing, f"hoststated.conf.5 lacks: {missing}"


def test_every_value_word_in_conf_page():
    """Words the parser knows that the grammar takes as strings: check kinds
    and their options, modes, engines."""
    words = set(SERVICE_OPTS) | {o for opts in SERVICE_OPTS.values() for o in opts}
    words |= set(m.RelaydMode.__args__) | set(m.IpvsMode.__args__) | ENGINES
    words |= {"icmp", "tcp", "tls", "http", "https", "send", "binary", "script"}
    missing = sorted(words - marked_up_words("hoststated.conf.5"))
    assert not missing, f"hoststated.conf.5 lacks: {missing}"


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o.lstrip("-") for a in parser._actions if a.help != argparse.SUPPRESS
            for o in a.option_strings if o not in ("-h", "--help")}


@pytest.mark.parametrize("page,parser", [
    ("hoststated.8", cli.parser),
    ("hoststatectl.8", ctl_main.arg_parser),
])
def test_every_option_documented(page, parser):
    documented = set()
    for line in (MAN / page).read_text().splitlines():
        for m_ in re.finditer(r"\bFl (\S+)", line):
            flag = m_.group(1)
            # `Fl dnv` in a SYNOPSIS is three single-letter flags
            if flag.startswith("-"):
                documented.add(flag.lstrip("-"))
            else:
                documented.add(flag)
                documented.update(flag)
    missing = {o for o in options(parser()) if o not in documented}
    assert not missing, f"{page} lacks options {sorted(missing)}"


@pytest.mark.parametrize("page", PAGES)
def test_man_renders_without_warnings(page):
    if not shutil.which("man"):
        pytest.skip("man is not installed (./run setup installs man-db)")
    r = subprocess.run(["man", "--warnings", "-l", str(MAN / page)], capture_output=True,
                       text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin",
                                       "MAN_KEEP_FORMATTING": "0", "LANG": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    text = re.sub(r".\x08", "", r.stdout)          # overstrike bold and underline
    assert "DESCRIPTION" in text and ".Nm" not in text, text[:500]


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint(page):
    if not shutil.which("mandoc"):
        pytest.skip("mandoc is not installed (./run setup installs it)")
    r = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", str(MAN / page)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout and not r.stderr, r.stdout + r.stderr


def test_conf_page_examples_load():
    """The configurations in hoststated.conf(5)'s EXAMPLES are ones that run:
    nothing in them is refused by -n (e.g. sticky-address under nftables)."""
    from hoststated.conf.load import load_text
    text = (MAN / "hoststated.conf.5").read_text().split(".Sh EXAMPLES", 1)[1]
    blocks = re.findall(r"\.Bd -literal[^\n]*\n(.*?)\n\.Ed", text, re.S)
    configs = [b.replace("\\e", "\\") for b in blocks if "redirect" in b]
    assert len(configs) >= 2
    for conf in configs:
        load_text(conf + "\n", "example.conf", lookup=False)
