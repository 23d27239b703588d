"""A small LALR driver over Lark's parse table that calls the transformer at each reduce.

Lark's own `parse()` builds a Tree for every rule (with positions) and a
Transformer then walks it again; for a 10,000-line config that was most of
the time spent checking it.  This driver reads the same table (built by Lark
from grammar/hoststated.lark, see conf.grammar) and, at each reduce, shapes
the children as Lark would (`_rule` inlined, `?rule` with one child
collapsed, anonymous and `_`-terminals filtered out) and calls the
transformer's method for the rule directly, with a meta holding the token
span.  tests/unit/test_conf_lalr.py checks it against Lark's parse + transform.

Why not Lark's own inline transformer (`Lark(..., transformer=T)`), which
also skips the tree: it refuses callbacks that take the rule's position
(`v_args(meta=True)`), and every diagnostic here needs that position for
its `file:line:col`.  The driver reads Lark's table classes
(lark.parsers.lalr_analysis), so pyproject.toml pins Lark to the minor
versions the tests have run against.
"""

from __future__ import annotations

from typing import Any, Callable

from lark import Lark
from lark.parsers.lalr_analysis import Shift

END = "$END"

# how a rule's value is made
_INLINE, _EXPAND1, _PLAIN, _WRAPPED, _DEFAULT = range(5)


class Meta:
    """What the transformer reads of a rule's place: its token span."""
    __slots__ = ("start_pos", "end_pos")
    empty = False

    def __init__(self, start_pos: int, end_pos: int):
        self.start_pos = start_pos
        self.end_pos = end_pos


class SyntaxErrorAt(Exception):
    """No action for the token at `index` (the end: kind is END)."""

    def __init__(self, index: int, kind: str, expected: set[str]):
        super().__init__(index, kind, expected)
        self.index = index
        self.kind = kind
        self.expected = expected


class _Rule:
    __slots__ = ("name", "size", "origin", "include", "inline", "expand1")

    def __init__(self, name: str, size: int, origin: str, include, inline: bool,
                 expand1: bool):
        self.name = name              # the transformer method: alias or rule name
        self.size = size
        self.origin = origin
        self.include = include        # (index, expand) of the kept children; None: all
        self.inline = inline          # a _rule: the parent takes its children
        self.expand1 = expand1        # a ?rule: one child is passed up as it is

    @classmethod
    def from_lark(cls, rule) -> _Rule:
        exp = rule.expansion
        keep_all = rule.options.keep_all_tokens
        include = [(i, not s.is_term and s.name.startswith("_"))
                   for i, s in enumerate(exp)
                   if keep_all or not (s.is_term and s.filter_out)]
        if len(include) == len(exp) and not any(e for _, e in include):
            include = None
        return cls(str(rule.alias or rule.options.template_source or rule.origin.name),
                   len(exp), str(rule.origin.name), None if include is None else tuple(include),
                   rule.origin.name.startswith("_"),
                   bool(rule.options.expand1) and not rule.alias)

    def as_data(self) -> tuple:
        return (self.name, self.size, self.origin, self.include, self.inline, self.expand1)


class Tables:
    """Lark's LALR table re-encoded: a shift is the new state (>= 0), a reduce ~rule.

    as_data() is plain dicts, tuples and strings, so that it can be written
    out (grammar/lalr_tables.py, as JSON) and read back without Lark.
    """

    def __init__(self, start: int, end: int, states: dict[int, dict[str, int]],
                 rules: list[_Rule], kept: frozenset[str]):
        self.start = start
        self.end = end
        self.states = states
        self.rules = rules
        self.kept = kept              # terminals whose values some rule keeps

    @classmethod
    def from_lark(cls, lark: Lark) -> Tables:
        conf = lark.parse_interactive().parser_state.parse_conf
        rules: list[_Rule] = []
        index: dict[Any, int] = {}
        states: dict[int, dict[str, int]] = {}
        kept: set[str] = set()
        for state, actions in sorted(conf.states.items()):
            row = {}
            for sym, (action, arg) in sorted(actions.items()):
                if action is Shift:
                    row[str(sym)] = arg
                    continue
                if arg not in index:
                    if not arg.expansion:
                        raise ValueError(f"empty rule {arg}: not supported by conf.lalr")
                    index[arg] = len(rules)
                    rules.append(_Rule.from_lark(arg))
                    keep_all = arg.options.keep_all_tokens
                    kept.update(str(s.name) for s in arg.expansion
                                if s.is_term and (keep_all or not s.filter_out))
                row[str(sym)] = ~index[arg]
            states[state] = row
        return cls(conf.start_state, conf.end_state, states, rules, frozenset(kept))

    def as_data(self) -> dict:
        return {"start": self.start, "end": self.end, "states": self.states,
                "rules": [r.as_data() for r in self.rules], "kept": sorted(self.kept)}

    @classmethod
    def from_data(cls, d: dict) -> Tables:
        # JSON gives lists for tuples and strings for the states
        rules = [_Rule(name, size, origin, None if inc is None else tuple(map(tuple, inc)),
                       inline, expand1)
                 for name, size, origin, inc, inline, expand1 in d["rules"]]
        states = {int(k): v for k, v in d["states"].items()}
        return cls(d["start"], d["end"], states, rules, frozenset(d["kept"]))


class Driver:
    """Parses token kinds with `tables`, building values with `transformer`."""

    def __init__(self, tables: Tables, transformer: Any):
        self.t = tables
        self.default = transformer.__default__
        calls = []
        for r in tables.rules:
            f = None if r.inline else getattr(transformer, r.name, None)
            if r.inline:
                how = _INLINE
            elif r.expand1:
                how = _EXPAND1
            elif f is None:
                how = _DEFAULT
            elif getattr(f, "visit_wrapper", None) is not None:
                how = _WRAPPED
            else:
                how = _PLAIN
            calls.append((r.size, r.origin, r.include, how, f, r.name))
        self.calls = calls

    def parse(self, kinds: list[str], value: Callable[[int, str], Any], base: int = 0) -> Any:
        """kinds[i] is the terminal of token base+i; value(base+i, kind) its value
        when kept.  Metas and errors count tokens from 0 at base."""
        states = self.t.states
        end = self.t.end
        kept = self.t.kept
        calls = self.calls
        default = self.default
        stack = [self.t.start]
        values: list = []
        starts: list[int] = []
        ends: list[int] = []
        n = len(kinds)
        i = 0
        while True:
            kind = kinds[i] if i < n else END
            while True:
                act = states[stack[-1]].get(kind)
                if act is None:
                    expected = {s for s in states[stack[-1]] if s.isupper()}
                    raise SyntaxErrorAt(base + i, kind, expected)
                if act >= 0:
                    stack.append(act)
                    values.append(value(base + i, kind) if kind in kept else None)
                    starts.append(base + i)
                    ends.append(base + i + 1)
                    break
                size, origin, include, how, f, name = calls[~act]
                v = values[-size:]
                s = starts[-size]
                e = ends[-1]
                del stack[-size:], values[-size:], starts[-size:], ends[-size:]
                if include is None:
                    children = v
                else:
                    # an inlined _rule's value is a fresh list that only this
                    # reduction holds: take it over instead of copying it, so a
                    # left-recursive list (`(host _sep*)*`) is linear, not
                    # quadratic (160,000 hosts: 42 s before)
                    children = None
                    for k, expand in include:
                        if expand:
                            if children is None:
                                children = v[k]
                            else:
                                children += v[k]
                        elif children is None:
                            children = [v[k]]
                        else:
                            children.append(v[k])
                    if children is None:
                        children = []
                if how == _INLINE:
                    res = children
                elif how == _PLAIN:
                    res = f(children)
                elif how == _WRAPPED:
                    res = f.visit_wrapper(f, name, children, Meta(s, e))
                elif how == _EXPAND1 and len(children) == 1:
                    res = children[0]
                elif f is not None:      # an expand1 rule with its own method
                    res = f.visit_wrapper(f, name, children, Meta(s, e)) \
                        if getattr(f, "visit_wrapper", None) is not None else f(children)
                else:
                    res = default(name, children, Meta(s, e))
                goto = states[stack[-1]][origin]
                stack.append(goto)
                values.append(res)
                starts.append(s)
                ends.append(e)
                if kind == END and goto == end:
                    return res
            i += 1
