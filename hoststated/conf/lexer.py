"""Tokens of a hoststated.conf, as relayd's yylex(): macros, include, `\\` lines.

The lexer reads no files itself: it is given the text of the top file and a
`read(path) -> (text, name)` callable for includes (conf.load provides it).

What it reproduces from relayd's parse.y:
- a backslash before a newline joins the lines, everywhere (also inside
  quotes and comments: a comment ending in `\\` swallows the next line);
- `#` starts a comment up to the end of the line;
- quoted strings ('...' or "...") may span lines (the newline is dropped),
  `\\"` and `\\ ` are escapes, any other backslash is kept (quote() is
  the inverse); not relayd's: a bare word ending in a backslash is
  refused, as no quoting could write it back;
- a bare word is a keyword if the grammar knows it, else a STRING; digits
  followed by a space, `)`, `,`, `/`, `}`, `=` or the end are a NUMBER;
- `$name` outside quotes is replaced by the macro's value, which is lexed
  again (so `x="<a>"` then `$x` gives `<`, `a`, `>`); no expansion inside quotes;
- `name = "value"` at the top level defines a macro (a `-D` define wins);
- `include "file"` splices the file's tokens in place, at any depth.

Every token carries its place (file, line, col); tokens from a macro carry
the place of the `$name`, tokens from an include the place in that file.

Input is bytes from a stranger: conf.load decodes it with surrogateescape,
and a byte that is not UTF-8 is an error at its place (in a string too:
such a string would crash whoever encodes it later).  At most MAX_TOKENS
tokens are made, so a few kilobytes of macros cannot become gigabytes: the
error names the macro whose expansion passed the limit.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Callable

from hoststated.conf.errors import Reporter

# token kinds besides keywords and punctuation
STRING = "STRING"
NUMBER = "NUMBER"
NL = "_NL"

Where = tuple[str, int, int]

# a 10,000-line config is ~60,000 tokens, one table of 160,000 hosts ~320,000
MAX_TOKENS = 1_000_000
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


class TooLarge(Exception):
    """The token budget is spent: lexing stops (the error is reported)."""


@dataclass(slots=True)
class Tok:
    kind: str          # STRING, NUMBER, _NL, a keyword or a punctuation char
    value: object      # str for strings/keywords, int for numbers
    where: Where
    quoted: bool = False
    text: str = ""     # as written (for keyword-vs-string messages)


_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<quote>["'])
  | (?P<macro>\$[A-Za-z0-9_]*)
  | (?P<number>-?[0-9]+)(?=[\s),/}=]|\Z)
  | (?P<word>[A-Za-z0-9:_][!-~]*)
  | (?P<punct>[{}<>=,/!()\-])
  | (?P<other>.)
""", re.X | re.S)

# characters that end a bare word, as relayd's allowed_in_string()
_WORD_END = re.compile(r"[(){}<>!=#,\"']")

# the main loop's pattern: blanks before a token are part of its match (one
# match a token), and a word stops where relayd's does (no search after)
_WORD_CHARS = "".join(re.escape(chr(c)) for c in range(0x21, 0x7F)
                      if chr(c) not in "(){}<>!=#,\"'")
_BARE = re.compile("[A-Za-z0-9:_][" + _WORD_CHARS + "]*")
_MAIN = re.compile(r"""[ \t\r\f\v]*+(?:
    (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<quote>["'])
  | (?P<macro>\$[A-Za-z0-9_]*)
  | (?P<number>-?[0-9]+)(?=[\s),/}=]|\Z)
  | (?P<word>[A-Za-z0-9:_][""" + _WORD_CHARS + r"""]*)
  | (?P<punct>[{}<>=,/!()\-])
  | (?P<other>.))""", re.X | re.S)


class Source:
    """One file's text with the `\\`-newlines removed and a map back."""

    def __init__(self, text: str, name: str):
        self.name = name
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        cut: list[int] = []          # offsets (in the joined text) where a join was
        parts: list[str] = []
        last = 0
        removed = 0
        for m in re.finditer(r"\\\n", text):
            parts.append(text[last:m.start()])
            cut.append(m.start() - removed)
            removed += 2
            last = m.end()
        parts.append(text[last:])
        self.text = "".join(parts)
        self._cut = cut

    def where(self, offset: int) -> Where:
        orig = offset + 2 * bisect.bisect_right(self._cut, offset)
        line = bisect.bisect_right(self.line_starts, orig)
        return (self.name, line, orig - self.line_starts[line - 1] + 1)


def _unquote(body: str, q: str) -> str:
    out = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "\n":
            i += 1
            continue
        if c == "\\" and i + 1 < n and body[i + 1] in (q, " ", "\t"):
            out.append(body[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def quote(s: str) -> str:
    """s in double quotes as the lexer reads it back (the inverse of
    _unquote).  The lexer drops a backslash before a quote, a space or a
    tab, so `"` is written `\\"` and a space or tab after a backslash gets
    one too.  No string ends in a backslash (`\\"` would not close): the
    lexer refuses a word that does."""
    s = str(s)
    out = []
    prev = ""
    for c in s:
        if c == '"' or (prev == "\\" and c in " \t"):
            out.append("\\")
        out.append(c)
        prev = c
    return '"' + "".join(out) + '"'


def name(s: str, keywords: frozenset[str]) -> str:
    """s bare where it reads back as the same string (a word that is no
    keyword and no number: `<web>`), else quote(s) (`<"web farm">`)."""
    s = str(s)
    if _BARE.fullmatch(s) and s not in keywords and not s.lstrip("-").isdigit():
        return s
    return quote(s)


class Lexer:
    """Turns a config (and what it includes) into a list of Tok."""

    def __init__(self, keywords: frozenset[str], reporter: Reporter,
                 read: Callable[[str, str], tuple[str, str]] | None = None,
                 defines: dict[str, str] | None = None):
        self.keywords = keywords
        self.report = reporter
        self.read = read
        self.defines = dict(defines or {})
        self.macros: dict[str, str] = dict(self.defines)
        self.macro_where: dict[str, Where] = {}
        self.used_macros: set[str] = set()
        self.out: list[Tok] = []
        self.depth = 0
        self.stmt_start = 0
        self.stack: list[str] = []
        self.files: list[str] = []     # every file read, in order
        self.budget = MAX_TOKENS
        self._macro_items: dict[str, list[tuple]] = {}

    # -- entry points -------------------------------------------------------

    def lex(self, text: str, name: str, ident: str | None = None) -> list[Tok]:
        top = not self.stack
        self.stack.append(ident or name)
        self.files.append(name)
        try:
            self._lex_source(Source(text, name))
        except TooLarge:
            if not top:
                raise
            del self.out[self.stmt_start:]     # the statement cut short
        finally:
            self.stack.pop()
        return self.out

    # -- internals ------------------------------------------------------------

    def _spent(self, where: Where, macro: str | None = None) -> None:
        what = f"macro '{macro}': its expansions make" if macro else "the configuration has"
        self.report.error(where, f"{what} more than {MAX_TOKENS:,} tokens; "
                                 "stopped reading here")
        raise TooLarge

    def _backslash_end(self, word: str, where: Where) -> None:
        # relayd takes `x\\` for a word, but no quoting writes it back (`"x\\"`
        # does not close), so -nv could not print it; mostly it is a line
        # join spoilt by a blank after the backslash
        self.report.error(where, f"'{word}': a word may not end in a backslash "
                                 "(to join lines, end the line with it)")

    def _emit(self, tok: Tok) -> None:
        out = self.out
        if len(out) > self.budget:
            self._spent(tok.where)
        if tok.kind == NL:
            if self.depth == 0:
                self._end_statement(tok)
                return
            if out and out[-1].kind == NL:
                return
        elif tok.kind == "{":
            self.depth += 1
        elif tok.kind == "}":
            self.depth = max(0, self.depth - 1)
        out.append(tok)

    def _end_statement(self, nl: Tok) -> None:
        out = self.out
        stmt = out[self.stmt_start:]
        if len(stmt) >= 2 and stmt[1].kind == "=" and stmt[0].kind in (STRING,):
            self._define(stmt)
            del out[self.stmt_start:]
            return
        if stmt:
            out.append(nl)
        self.stmt_start = len(out)

    def _define(self, stmt: list[Tok]) -> None:
        name_tok = stmt[0]
        name = str(name_tok.value)
        if len(stmt) == 2:
            self.report.error(stmt[1].where, f"macro {name}: missing value")
            return
        val = stmt[2]
        if len(stmt) > 3:
            self.report.error(stmt[3].where,
                              f"macro {name}: unexpected {describe(stmt[3])} after the value")
            return
        if val.kind == NUMBER:
            self.report.error(val.where, f"macro {name}: the value must be a string, "
                                         f"quote it: {name} = \"{val.value}\"")
            return
        if val.kind != STRING and not val.text:
            self.report.error(val.where, f"macro {name}: the value must be a string, "
                                         f"not {describe(val)}")
            return
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            self.report.error(name_tok.where, f"invalid macro name: {name!r} "
                              "(letters, digits and _ only)")
            return
        if name in self.defines:
            return                      # -D wins over the file
        self.macros[name] = str(val.value) if val.kind == STRING else val.text
        self._macro_items.pop(name, None)
        self.macro_where[name] = name_tok.where

    def _lex_source(self, src: Source) -> None:
        text = src.text
        pos = 0
        n = len(text)
        match = _MAIN.match
        pending_include: Tok | None = None
        # the place of a token, without two bisects each: token starts only
        # grow, so the line index only moves forward (files with `\`-joined
        # lines take Source.where)
        name = src.name
        starts = src.line_starts
        nstarts = len(starts)
        li = 0
        joined = bool(src._cut)
        keywords = self.keywords
        out = self.out
        while pos < n:
            m = match(text, pos)
            if m is None:               # blanks to the end
                break
            kind = m.lastgroup
            start = m.start(kind)
            pos = m.end()
            if kind == "punct" and not joined and pending_include is None:
                c = m.group("punct")
                if c != "{" and c != "}":       # (braces count the depth: _emit)
                    while li + 1 < nstarts and starts[li + 1] <= start:
                        li += 1
                    if len(out) > self.budget:
                        self._spent((name, li + 1, start - starts[li] + 1))
                    out.append(Tok(c, c, (name, li + 1, start - starts[li] + 1), False, c))
                    continue
            if kind == "word" and not joined and pending_include is None:
                # the common token, inline: a bare word (keyword or string)
                while li + 1 < nstarts and starts[li + 1] <= start:
                    li += 1
                word = m.group("word")
                if word == "include":
                    pending_include = Tok("include", word, (name, li + 1, start - starts[li] + 1),
                                          text=word)
                    continue
                if len(out) > self.budget:
                    self._spent((name, li + 1, start - starts[li] + 1))
                if word[-1] == "\\":
                    self._backslash_end(word, (name, li + 1, start - starts[li] + 1))
                out.append(Tok(word if word in keywords else STRING, word,
                               (name, li + 1, start - starts[li] + 1), False, word))
                continue
            if kind == "comment":
                continue
            if kind == "nl":
                if pending_include is not None:
                    self.report.error(pending_include.where,
                                      "include: missing file name in quotes")
                    pending_include = None
                self._emit(Tok(NL, "\n", src.where(start)))
                continue
            if kind == "quote":
                q = m.group("quote")
                end = _find_quote_end(text, pos, q)
                if end < 0:
                    self.report.error(src.where(start),
                                      "unterminated quoted string")
                    pos = n
                    continue
                value = _unquote(text[pos:end], q)
                where = src.where(start)
                bad = None if value.isascii() else _NOT_UTF8.search(text, pos, end)
                pos = end + 1
                if "\0" in value:
                    self.report.error(where, "binary data (NUL byte) in a string")
                    continue
                if bad is not None:
                    self.report.error(src.where(bad.start()), _not_utf8(bad.group(), "string"))
                    # go on with a stand-in, so the rest is still checked
                    value = _NOT_UTF8.sub("\ufffd", value)
                tok = Tok(STRING, value, where, quoted=True, text=text[start:pos])
                if pending_include is not None:
                    self._include(pending_include, tok)
                    pending_include = None
                    continue
                self._emit(tok)
                continue
            where = src.where(start)
            if pending_include is not None:
                self.report.error(pending_include.where,
                                  "include: the file name must be in quotes")
                pending_include = None
            if kind == "macro":
                self._expand(m.group("macro")[1:], where)
            elif kind == "number":
                self._emit(Tok(NUMBER, int(m.group("number")), where, text=m.group()))
            elif kind == "word":
                word = m.group("word")
                if word == "include":
                    pending_include = Tok("include", word, where, text=word)
                elif word in self.keywords:
                    self._emit(Tok(word, word, where, text=word))
                else:
                    if word[-1] == "\\":
                        self._backslash_end(word, where)
                    self._emit(Tok(STRING, word, where, text=word))
            elif kind == "punct":
                c = m.group("punct")
                self._emit(Tok(c, c, where, text=c))
            else:
                c = m.group("other")
                self.report.error(where, _bad_char(c))
                # skip the rest of a run of garbage so one blob is one error
                while pos < n and not text[pos].isspace() and text[pos].isprintable() is False:
                    pos += 1
        if pending_include is not None:
            self.report.error(pending_include.where, "include: missing file name in quotes")
        # every file ends its last statement
        self._emit(Tok(NL, "\n", src.where(n)))

    def _expand(self, name: str, where: Where) -> None:
        if not name:
            self.report.error(where, "'$' without a macro name")
            return
        if name not in self.macros:
            self.report.error(where, f"macro '{name}' not defined")
            return
        self.used_macros.add(name)
        items = self._macro_items.get(name)
        if items is None:
            items = self._macro_items[name] = self._lex_value(name, self.macros[name])
        if len(self.out) + len(items) > self.budget:
            self._spent(where, name)
        emit = self._emit
        for kind, value, quoted, text in items:
            if kind is None:                   # an error in the value, at each use
                self.report.error(where, value)
            else:
                emit(Tok(kind, value, where, quoted, text))

    def _lex_value(self, name: str, value: str) -> list[tuple]:
        """A macro's value as (kind, value, quoted, text) items, once per
        macro: relayd pushes the value back and lexes it again, without
        expanding macros inside it.  An item of kind None is an error."""
        if not value.isascii() and (bad := _NOT_UTF8.search(value)):    # a -D value
            return [(None, f"macro '{name}': " + _not_utf8(bad.group(), "value"), False, "")]
        out: list[tuple] = []
        pos = 0
        n = len(value)
        while pos < n:
            m = _TOKEN.match(value, pos)
            kind = m.lastgroup
            start = pos
            pos = m.end()
            if kind in ("ws", "comment"):
                continue
            if kind == "nl":
                out.append((NL, "\n", False, ""))
            elif kind == "quote":
                end = _find_quote_end(value, pos, m.group("quote"))
                if end < 0:
                    out.append((None, f"macro '{name}': unterminated quoted string",
                                False, ""))
                    break
                out.append((STRING, _unquote(value[pos:end], m.group("quote")), True,
                            value[start:end + 1]))
                pos = end + 1
            elif kind == "number":
                out.append((NUMBER, int(m.group("number")), False, m.group()))
            elif kind == "word":
                word = m.group("word")
                cut = _WORD_END.search(word)
                if cut:
                    word = word[:cut.start()]
                    pos = start + len(word)
                kind2 = word if word in self.keywords and word != "include" else STRING
                out.append((kind2, word, False, word))
            elif kind == "punct":
                c = m.group("punct")
                out.append((c, c, False, c))
            else:
                out.append((None, f"macro '{name}': " + _bad_char(m.group()), False, ""))
        return out

    def _include(self, inc: Tok, name: Tok) -> None:
        path = str(name.value)
        if self.read is None:
            self.report.error(inc.where, f"include \"{path}\": includes are not "
                                         "read here")
            return
        parent = self.stack[-1]
        try:
            text, shown, ident = self.read(path, parent)
        except OSError as e:
            reason = e.strerror or str(e)
            self.report.error(name.where, f"failed to include file {path}: {reason}")
            return
        except UnicodeError:
            self.report.error(name.where, f"failed to include file {path}: binary data")
            return
        if ident in self.stack:
            self.report.error(name.where, f"include loop: {path} includes itself "
                                          "(through " + " -> ".join(self.stack) + ")")
            return
        if len(self.stack) > 16:
            self.report.error(name.where, f"include \"{path}\": includes nested too deep")
            return
        # an included file ends its statements itself; keep the block depth
        self.lex(text, shown, ident)


def _find_quote_end(text: str, pos: int, q: str) -> int:
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            # relayd: a backslash escapes the quote, a space or a tab;
            # before anything else it is kept and the next char is read as usual
            pos += 2 if pos + 1 < n and text[pos + 1] in (q, " ", "\t") else 1
            continue
        if c == q:
            return pos
        pos += 1
    return -1


def _not_utf8(c: str, what: str) -> str:
    return (f"byte 0x{ord(c) - 0xDC00:02x} in a {what} is not UTF-8 "
            "(hoststated.conf is read as UTF-8)")


def _bad_char(c: str) -> str:
    if c == "\0":
        return "binary data (NUL byte): this is not a configuration file"
    if "\udc80" <= c <= "\udcff":
        return "binary data (not UTF-8): this is not a configuration file"
    if not c.isprintable():
        return f"unexpected control character {c!r}"
    return f"unexpected character {c!r} (quote strings that contain it)"


def describe(tok: Tok) -> str:
    if tok.kind == NL:
        return "end of line"
    if tok.kind == STRING:
        return f"string \"{tok.value}\"" if tok.quoted else f"'{tok.value}'"
    if tok.kind == NUMBER:
        return f"number {tok.value}"
    return f"'{tok.value}'"
