"""conf.lalr gives what Lark's own parse then transform gave, values and errors alike.

The reference is the way conf.parse worked before the driver: a Lark Token per
token, Lark's LALR parse into a tree with positions, then the `_Tree`
transformer.  Every statement's value (with token places) and every message
must be the same.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from lark import Token, Tree
from lark.exceptions import UnexpectedToken, VisitError

from hoststated.conf import grammar, lalr
from hoststated.conf.errors import Reporter
from hoststated.conf.lexer import NL, NUMBER, STRING, Lexer
from hoststated.conf.parse import Num, Parser, _Tree

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "bench"))


class LarkParser(Parser):
    """conf.parse's statement parser as it was: Lark's parse, then transform."""

    def parse_statement(self, i, j):
        if self._old(i, j):
            return None
        feed = []
        for x in range(i, j):
            t = self.toks[x]
            k = t.kind
            if k in (STRING, NUMBER):
                typ = k
            elif k == NL:
                typ = "_NL"
            else:
                typ = self.names.get(k)
                if typ is None:
                    if k == "include":
                        self.report.error(t.where, "include: the file name must be in quotes")
                        return None
                    typ = STRING
            feed.append(Token(typ, t.value, start_pos=x, end_pos=x + 1,
                              line=t.where[1], column=t.where[2]))
        try:
            tree = grammar.parser().parse(feed)
        except UnexpectedToken as e:
            at = None if e.token.type == "$END" else e.token.start_pos
            self._syntax_error(at, e.expected, i, j)
            return None
        tr = _Tree(self.where_meta, self.render)
        tr.render_prev = self.render_prev
        tr.words = self.words
        tr.kw = self.kw
        try:
            return tr.transform(tree)
        except VisitError as e:
            raise e.orig_exc from None


def shape(x):
    """x with every type and token place made visible to ==."""
    if isinstance(x, Tree):
        return ("Tree", x.data, shape(x.children), x.meta.start_pos, x.meta.end_pos)
    if isinstance(x, Token):
        return ("Token", x.type, x.value, x.start_pos, x.end_pos, x.line, x.column)
    if isinstance(x, Num):
        return ("Num", int(x), x.start_pos)
    if dataclasses.is_dataclass(x):
        return (type(x).__name__,) + tuple(shape(getattr(x, f.name))
                                           for f in dataclasses.fields(x))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__,) + tuple(shape(y) for y in x)
    if isinstance(x, dict):
        return ("dict",) + tuple((k, shape(v)) for k, v in x.items())
    return (type(x).__name__, x)


class BuiltTablesParser(Parser):
    """conf.parse with the table Lark builds now, not the shipped one."""

    def __init__(self, toks, report):
        super().__init__(toks, report, tables=built_tables())


@functools.cache
def built_tables():
    return lalr.Tables.from_lark(grammar.parser())


def both(text: str):
    """What the driver gives (with the shipped table), and what Lark gives."""
    out = []
    for cls in (Parser, BuiltTablesParser, LarkParser):
        report = Reporter()
        toks = Lexer(grammar.keywords(), report).lex(text, "t.conf")
        try:
            stmts = cls(toks, report).statements()
            res = shape(stmts)
        except Exception as e:             # both must fail alike, if at all
            res = ("raised", type(e).__name__, str(e))
        out.append((res, [str(d) for d in report.errors]))
    assert out[0] == out[1]
    return out[0], out[2]


def test_shipped_table_is_made_from_the_grammar():
    assert grammar._shipped() is not None, \
        "grammar/lalr_tables.py is stale: python -m hoststated.conf.grammar grammar/lalr_tables.py"
    assert grammar.terminal_names() == {t.pattern.value: t.name
                                        for t in grammar.parser().terminals
                                        if hasattr(t.pattern, "value") and t.pattern.type == "str"}


def configs() -> list[Path]:
    return sorted(HERE.glob("corpus/*.conf")) + sorted((ROOT / "etc").glob("*.conf"))


@pytest.mark.parametrize("path", configs(), ids=lambda p: p.name)
def test_same_as_lark(path):
    new, old = both(path.read_text(errors="surrogateescape"))
    assert new == old


def test_same_as_lark_on_the_bench_config():
    import bench_conf
    text = bench_conf.generate(50)
    new, old = both(text)
    assert new == old
    assert not new[1]


ERRORS = [
    "interval\n", "interval x\n", "table <t> {\n", "table <t> { 192.0.2.1 } }\n",
    "redirect r { listen on 192.0.2.1 port 80\n forward to <t> check http }\n",
    "redirect r { forward to <t> port 80 check send \"x\" }\n", "log\n", "log state\n",
    "relay r { listen on 192.0.2.1 port 80 tls tls\n forward with tls to 192.0.2.2 }\n",
    "http protocol p { match request header \"X\" value \"y\" tag t\n tls no x\n }\n",
    "tcp protocol p { tcp { nodelay, sack, backlog 10 }\n return error style x }\n",
    "router r { route 192.0.2.0/24\n forward to <t> port 80 check icmp\n rtable 1 }\n",
    "foo bar\n", "table <t> disable { x } disable\n", "agentx context x path \"/p\"\n",
    "check icmp\n", "redirect r { listen on 192.0.2.1 port http interface eth0 }\n",
]


@pytest.mark.parametrize("text", ERRORS)
def test_same_as_lark_on_odd_statements(text):
    new, old = both(text)
    assert new == old


WORDS = sorted(grammar.terminal_names()) + [
    "<t>", "192.0.2.1", "80", "\"q\"", "x", "\n", "\n", "\n", "include", "ssl", "tag"]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join))
def test_same_as_lark_on_token_soup(text):
    new, old = both(text)
    assert new == old


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([p for p in configs() if p.stat().st_size < 20000]),
       st.integers(0, 10**6), st.sampled_from(WORDS))
def test_same_as_lark_on_mutated_corpus(path, at, word):
    toks = path.read_text(errors="surrogateescape").split(" ")
    toks.insert(at % (len(toks) + 1), word)
    new, old = both(" ".join(toks))
    assert new == old


@pytest.mark.parametrize("text", [
    "table <t> { 192.0.2.1, 192.0.2.2 }\n",
    "table <t> disable { 192.0.2.1\n192.0.2.2\n,, 192.0.2.3 }\n",
    "table <t> { 192.0.2.1 } disable { 192.0.2.2 }\n",
    "table <t> {\n}\n",
    "table <t> { a b c }\n",
    "table <t> { 192.0.2.1 retry 2, 192.0.2.2 }\n",      # an option: the driver's way
    "table <t> { 192.0.2.1, 192.0.2.2\n",                # unclosed
    "table <t> { 192.0.2.1 } 192.0.2.2\n",               # junk after the block
    "table <t>\n",
    'table <t> { "192.0.2.1", weight }\n',               # a keyword as a host
])
def test_plain_tables_same_as_the_grammar(text):
    """Parser._plain_table (the fast way for long host lists) gives what the
    grammar gives, or leaves the statement to the driver."""
    new, old = both(text)
    assert new == old
