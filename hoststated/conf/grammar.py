"""The LALR parser built from grammar/hoststated.lark.

The grammar's source lives at the top of the tree, in grammar/; the wheel
ships the same directory as the package hoststated.grammar. grammar_dir()
finds it either way, so a plain checkout (no `pip install -e`) loads configs
as an installed daemon does.

Its table is generated into grammar/lalr_tables.py (`python -m
hoststated.conf.grammar grammar/lalr_tables.py` after editing the grammar);
when that file does not match the grammar, Lark builds the table at start.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import sys
from importlib import resources
from pathlib import Path

from lark import Lark
from lark.lexer import Lexer, PatternStr

from hoststated.conf import lalr

# words that are no longer keywords of relayd: the lexer still recognises
# them so conf.parse can name the modern spelling
OLD_WORDS = frozenset({"ssl", "updates", "service", "real", "cache", "virtual",
                       "snmp", "include", "all"})


class _TokenFeed(Lexer):
    """Lark's lexer slot: the tokens are made by conf.lexer, pass them on."""

    def __init__(self, lexer_conf):
        pass

    def lex(self, data, parser_state=None):
        return iter(data)


GRAMMAR = "hoststated.lark"
TABLES_MODULE = "lalr_tables.py"


@functools.cache
def grammar_dir() -> Path:
    """Where hoststated.lark is: the installed package hoststated.grammar
    (the wheel), else grammar/ beside the package (a checkout)."""
    if importlib.util.find_spec("hoststated.grammar") is not None:
        installed = Path(str(resources.files("hoststated.grammar")))
        if (installed / GRAMMAR).is_file():
            return installed
    return Path(__file__).resolve().parents[2] / "grammar"


def _grammar_text() -> str:
    return (grammar_dir() / GRAMMAR).read_text()


@functools.cache
def parser() -> Lark:
    return Lark(_grammar_text(), parser="lalr", lexer=_TokenFeed, propagate_positions=True,
                maybe_placeholders=False)


@functools.cache
def _shipped():
    """grammar/lalr_tables.py when it was made from this grammar, else None.

    Building the LALR table with Lark takes longer than checking a small
    config; like yacc's output the table is generated once and shipped.
    """
    path = grammar_dir() / TABLES_MODULE
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("hoststated.grammar.lalr_tables", path)
    lalr_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lalr_tables)
    digest = hashlib.sha256(_grammar_text().encode()).hexdigest()
    return lalr_tables if lalr_tables.GRAMMAR_SHA256 == digest else None


@functools.cache
def tables() -> lalr.Tables:
    shipped = _shipped()
    if shipped is not None:
        return lalr.Tables.from_data(shipped.TABLES)
    return lalr.Tables.from_lark(parser())


def _terminal_names(lark: Lark) -> dict[str, str]:
    return {t.pattern.value: t.name for t in lark.terminals
            if isinstance(t.pattern, PatternStr)}


@functools.cache
def terminal_names() -> dict[str, str]:
    """Keyword or punctuation text -> Lark terminal name."""
    shipped = _shipped()
    if shipped is not None:
        return dict(shipped.TERMINALS)
    return _terminal_names(parser())


def generate() -> str:
    """The text of grammar/lalr_tables.py for the grammar as it is.

    The table is a JSON string, one state a line: compiling or loading it
    is much cheaper than a dict display of the same size (no bytecode for it).
    """
    lark = parser()
    data = lalr.Tables.from_lark(lark).as_data()
    states = ",\n".join(f"{json.dumps(str(k))}: {json.dumps(v)}"
                         for k, v in data["states"].items())
    rules = ",\n".join(json.dumps(r) for r in data["rules"])
    table = (f'{{"start": {data["start"]}, "end": {data["end"]}, '
             f'"kept": {json.dumps(data["kept"])},\n"rules": [\n{rules}],\n'
             f'"states": {{\n{states}}}}}')
    json.loads(table)
    return (f"# Generated from hoststated.lark by `python -m hoststated.conf.grammar "
            f"grammar/lalr_tables.py`:\n# do not edit. conf.grammar uses it only while "
            f"GRAMMAR_SHA256 matches the grammar.\n"
            f"import json\n\n"
            f"GRAMMAR_SHA256 = {hashlib.sha256(_grammar_text().encode()).hexdigest()!r}\n"
            f"TERMINALS = {_terminal_names(lark)!r}\n"
            f"TABLES = json.loads(r\"\"\"\n{table}\n\"\"\")\n")


@functools.cache
def keywords() -> frozenset[str]:
    words = {w for w in terminal_names() if w[:1].isalnum()}
    return frozenset(words | OLD_WORDS)


# issue 14's words that the grammar also takes as a name (`table <mail>`):
# printed bare where a name goes
NAME_WORDS = frozenset({"notify", "command", "alert", "mail", "from", "via", "every",
                        "maintenance", "directory", "autoreload", "callback"})


@functools.cache
def name_keywords() -> frozenset[str]:
    """The keywords a name must be quoted to be: all but NAME_WORDS."""
    return keywords() - NAME_WORDS


if __name__ == "__main__":
    # python -m hoststated.conf.grammar grammar/lalr_tables.py
    with open(sys.argv[1], "w") as f:
        f.write(generate())
