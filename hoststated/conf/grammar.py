"""The LALR parser built from grammar/hoststated.lark (shipped as hoststated.grammar)."""

from __future__ import annotations

import functools
from importlib import resources

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


@functools.cache
def parser() -> Lark:
    text = resources.files("hoststated.grammar").joinpath("hoststated.lark").read_text()
    return Lark(text, parser="lalr", lexer=_TokenFeed, propagate_positions=True,
                maybe_placeholders=False)


@functools.cache
def tables() -> lalr.Tables:
    return lalr.Tables(parser())


@functools.cache
def terminal_names() -> dict[str, str]:
    """Keyword or punctuation text -> Lark terminal name."""
    names = {}
    for t in parser().terminals:
        if isinstance(t.pattern, PatternStr):
            names[t.pattern.value] = t.name
    return names


@functools.cache
def keywords() -> frozenset[str]:
    words = {w for w in terminal_names() if w[:1].isalnum()}
    return frozenset(words | OLD_WORDS)
