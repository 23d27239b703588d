"""A protocol's filter rules, compiled: one program per direction (relayd's
relay_test, relay_match_actions and relay_apply_actions in relay_http.c).

Pure and sans-IO: a message head goes in (a Head: method, path, query and the
header lines, as bytes), the head comes out changed and a Result tells the
verdict, the table, the tag and label, what `hash` fed and what `log` named.

    req, resp = compile_rules(protocol.rules)      # once per protocol; None: no rules
    res = req.run(head, env, tag=None)             # each request head
    res = resp.run(head, env, tag=res.tag)         # its response's head

relayd's order: every rule is tested in turn, skipped when its direction,
address family, method or `tagged` does not fit or one of its keys does not
match; a matching `match` rule's actions, table, tag and label take effect
at once (a later rule sees its tag); a matching `pass` or `block` rule is the
verdict so far (the last one wins; `quick` ends the evaluation there) and its
own actions, table, tag and label are applied after the others.  A `block`
verdict still applies the actions (so `log` names what was refused).

Keys (relayd's matching, fnmatch globs: `*` also matches `/`):
- header: the name a glob without regard to case; the value a glob (here
  without regard to case too: Host and media types are case-blind);
  append/set need no header to be there.
- cookie: Cookie (Set-Cookie in responses): a cookie by name (without regard to
  case, no glob) with its value a glob without regard to case.
- path: a glob on the path (case counts); with `value`, a glob on the query
  without regard to case.  strip N drops N leading directories.
- query: a glob on a parameter's name and on its value (case counts).
- url: host and path, exact but for case, tried as relayd does
  (relay_lookup_url): the host and up to 4 of its parent domains, each with
  the path and query, the path, and up to 4 leading directories of the path;
  `digest`: the SHA-1 or MD5 of those strings.  No Host header: the key
  passes without an action (relayd).
A key left out is "*".  `file` keys: any key of the file matches.
hoststated differs from relayd where relayd's result is plainly not meant:
`path append` appends the value (relayd appends the key), cookie actions act on
the named cookie (relayd on the whole Cookie header), `header remove` drops
every line of the name matched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from fnmatch import translate

from hoststated.conf.model import Rule, RuleKey

MACROS = ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_ADDR", "SERVER_PORT", "SERVER_NAME",
          "TIMEOUT")
LOOKUP_LEVELS = 5          # relayd's RELAY_MAXLOOKUPLEVELS


class Head:
    """What the rules read and change of one message head."""
    __slots__ = ("method", "path", "query", "headers", "changed")

    def __init__(self, method: bytes, path: bytes, query: bytes | None,
                 headers: list[tuple[bytes, bytes]]):
        self.method = method            # b"" for a response
        self.path = path
        self.query = query              # None: no "?"
        self.headers = headers
        self.changed = False            # headers or path rewritten

    def target(self) -> bytes:
        return self.path if self.query is None else self.path + b"?" + self.query


class Result:
    __slots__ = ("block", "table", "tag", "label", "hash", "log")

    def __init__(self, tag: str | None, label: str | None):
        self.block = False
        self.table: str | None = None   # `forward to`: a template's name
        self.tag = tag
        self.label = label
        self.hash: list[bytes] = []     # what `hash` actions fed, in order
        self.log: list[str] = []        # "[name: value]" of `log` actions


def compile_rules(rules: tuple[Rule, ...] | list[Rule]) -> tuple[Program | None,
                                                                Program | None]:
    """The request and the response program (None: no rule of that direction)."""
    req = [r for r in rules if r.direction == "request"]
    resp = [r for r in rules if r.direction == "response"]
    return (Program(req, True) if req else None, Program(resp, False) if resp else None)


# --- globs ------------------------------------------------------------------------

_GLOB_CHARS = re.compile(r"[*?\[]")


def glob(pattern: str | None, fold: bool) -> Callable[[bytes], bool]:
    """fnmatch(3) of a pattern on bytes, compiled once ("*" when None)."""
    if pattern is None or pattern == "*":
        return lambda s: True
    p = pattern.encode()
    if not _GLOB_CHARS.search(pattern):
        if fold:
            p = p.lower()
            return lambda s: s.lower() == p
        return lambda s: s == p
    rx = re.compile(translate(pattern).encode(), re.S | (re.I if fold else 0))
    return lambda s: rx.match(s) is not None


# --- the per-message context ---------------------------------------------------------

class _Ctx:
    """One run: the head and what the tests found in it (parsed once)."""
    __slots__ = ("head", "req", "tag", "label", "table", "_cookies", "_query", "_host",
                 "_names", "added")

    def __init__(self, head: Head, req: bool, tag, label):
        self.head = head
        self.req = req
        self.tag = tag
        self.label = label
        self.table = None
        self._cookies = None
        self._query = None
        self._host = False
        self._names = None
        self.added: set[bytes] | None = None    # names the actions gave lines (lower case)

    def named(self, lname: bytes) -> list[tuple[bytes, bytes]]:
        """The header lines of a lower-case name, in order; for the tests,
        which all run before any action changes the headers."""
        if self._names is None:
            idx: dict[bytes, list] = {}
            for x in self.head.headers:
                ln = x[0].lower()
                if ln in idx:
                    idx[ln].append(x)
                else:
                    idx[ln] = [x]
            self._names = idx
        return self._names.get(lname, ())

    def host(self) -> bytes | None:
        if self._host is False:
            self._host = next((v for n, v in self.head.headers if n.lower() == b"host"), None)
        return self._host

    def cookies(self) -> list[tuple[bytes, bytes]] | None:
        """relay_lookup_cookie's split: None without a Cookie (Set-Cookie) header."""
        if self._cookies is None:
            want = b"cookie" if self.req else b"set-cookie"
            vals = [v for n, v in self.head.headers if n.lower() == want]
            if not vals:
                return None
            out = []
            for v in vals:
                for part in v.split(b";"):
                    part = part.strip(b" ")
                    if not part or part.startswith(b"$") or b"=" not in part:
                        continue
                    k, _, val = part.partition(b"=")
                    out.append((k.strip(b" "), val.strip(b'"')))
            self._cookies = out
        return self._cookies

    def query(self) -> list[tuple[bytes, bytes]]:
        if self._query is None:
            q = self.head.query
            self._query = [tuple(p.split(b"=", 1)) for p in q.split(b"&") if b"=" in p] \
                if q else []
        return self._query


# --- one key: its test and its action ---------------------------------------------------

NOMATCH = None
NOACTION = object()        # the key passes, but there is nothing to act on


class _Key:
    """A RuleKey compiled: test(ctx) gives NOMATCH or what the action acts on
    (None when the key has no option: a pure condition)."""

    def __init__(self, k: RuleKey, action: str):
        self.k = k
        self.type = k.type
        self.opt = k.option
        self.name = (k.key or "").encode()
        self.lname = self.name.lower()
        keys = list(k.file_keys) if k.file is not None else [k.key]
        self.value = k.value
        self.macro = k.value is not None and "$" in k.value
        self.raw_value = (k.value or "").encode()
        t = k.type
        writes = k.option in ("append", "set")
        if t == "header":
            self.names = [glob(x, True) for x in keys]
            self.vglob = glob(None if writes else k.value, True)
            # one literal name (the usual case): compared, not globbed
            self.lit = keys[0].lower().encode() if len(keys) == 1 and keys[0] is not None \
                and not _GLOB_CHARS.search(keys[0]) else None
            self.test = self.t_write if writes else self.t_lit if self.lit is not None \
                else self.t_header
        elif t == "cookie":
            self.cnames = [(x or "").encode().lower() for x in keys]
            self.any_name = any(x is None for x in keys)
            self.vglob = glob(None if writes else k.value, True)
            self.test = self.t_write if writes else self.t_cookie
        elif t == "path":
            self.paths = [glob(x, False) for x in keys]
            self.qglob = glob(k.value, True) if k.option is None and k.value is not None \
                else None
            self.test = self.t_write if k.option == "strip" else self.t_path
        elif t == "query":
            self.qnames = [glob(x, False) for x in keys]
            self.vglob = glob(k.value, False)
            self.test = self.t_query
        else:
            self.urls = {x.lower().encode() for x in keys if x is not None}
            self.any_url = any(x is None for x in keys)
            self.log_globs = [glob(x, True) for x in keys if x is not None] \
                if k.option == "log" and action != "block" else []
            self.test = self.t_url

    # tests ------------------------------------------------------------------------

    def t_write(self, ctx: _Ctx):
        return ()

    def t_lit(self, ctx: _Ctx):
        vg = self.vglob
        for n, v in ctx.named(self.lit):
            if vg(v):
                return (n, v)
        return NOMATCH

    def t_header(self, ctx: _Ctx):
        for n, v in ctx.head.headers:
            if any(g(n) for g in self.names) and self.vglob(v):
                return (n, v)
        return NOMATCH

    def t_cookie(self, ctx: _Ctx):
        cs = ctx.cookies()
        if cs is None:
            return NOMATCH
        for n, v in cs:
            if (self.any_name or n.lower() in self.cnames) and self.vglob(v):
                return (n, v)
        return NOMATCH

    def t_path(self, ctx: _Ctx):
        h = ctx.head
        if not any(g(h.path) for g in self.paths):
            return NOMATCH
        if self.qglob is not None and not self.qglob(h.query or b""):
            return NOMATCH
        return h.path

    def t_query(self, ctx: _Ctx):
        for n, v in ctx.query():
            if any(g(n) for g in self.qnames) and self.vglob(v):
                return (n, v)
        return NOMATCH

    def t_url(self, ctx: _Ctx):
        h = ctx.head
        host = ctx.host()
        if host is None:
            return NOACTION            # relayd: no Host, no lookup, no action
        if self.any_url:
            return _canon_host(host) + h.path
        if self.log_globs and any(g(h.path) for g in self.log_globs):
            return _canon_host(host) + h.path      # relayd: a url glob only for logging
        digest = self.k.digest
        for s in url_candidates(host, h.path, h.query):
            if digest is not None:
                s = hashlib.new(digest, s).hexdigest().encode()
            if s.lower() in self.urls:
                return s
        return NOMATCH

    # actions ----------------------------------------------------------------------

    def apply(self, ctx: _Ctx, match, env: dict[str, str], res: Result) -> None:
        opt, t, h = self.opt, self.type, ctx.head
        if t == "path":
            match = h.path              # as an earlier action left it
        if opt == "log":
            res.log.append(self.describe(match))
            return
        if opt == "hash":
            res.hash.append(self.hashed(match))
            return
        if t == "path":
            if opt == "strip":
                h.path = strip_path(h.path, self.k.strip)
            elif opt == "remove":
                h.path = b"/"
            elif opt == "set":
                h.path = self.expand(ctx, env)
            elif opt == "append":
                h.path = h.path + self.expand(ctx, env)
            h.changed = True
            return
        if t == "header":
            if opt == "set" and not ctx.named(self.lname) and (
                    ctx.added is None or self.lname not in ctx.added):
                # no line of the name (the tests' index, and no action added
                # one since): set adds it, nothing to look through
                h.headers.append((self.name, self.expand(ctx, env)))
                h.changed = True
                ctx.added = (ctx.added or set()) | {self.lname}
                return
            if opt in ("append", "set"):
                ctx.added = (ctx.added or set()) | {self.lname}
            _header_action(h, opt, self.name, self.lname, self.names,
                           None if opt == "remove" else self.expand(ctx, env))
            return
        if t == "cookie":
            ctx.added = (ctx.added or set()) | {b"cookie" if ctx.req else b"set-cookie"}
            _cookie_action(h, ctx.req, opt, self.name,
                           None if opt == "remove" else self.expand(ctx, env))
            return

    def describe(self, match) -> str:
        if isinstance(match, tuple) and len(match) == 2:
            n, v = match
            if self.type == "cookie":
                return f"[Cookie: {_s(n)}={_s(v)}]"
            return f"[{_s(n)}: {_s(v)}]"
        if isinstance(match, bytes):
            return f"[{_s(match)}]"
        return f"[{self.type}]"

    def hashed(self, match) -> bytes:
        if isinstance(match, tuple) and len(match) == 2:
            return match[1]
        if isinstance(match, bytes):
            return match
        return b""

    def expand(self, ctx: _Ctx, env: dict[str, str]) -> bytes:
        if not self.macro:
            return self.raw_value
        v = self.value
        if "$HOST" in v:
            host = ctx.host()
            v = v.replace("$HOST", host.decode("latin-1") if host is not None
                          else env.get("SERVER_ADDR", ""))
        for m in MACROS:
            if "$" + m in v and m in env:
                v = v.replace("$" + m, env[m])
        # a macro's value never splits a header
        return v.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")


def _header_action(h: Head, opt: str, name: bytes, lname: bytes, names, value) -> None:
    hs = h.headers
    if opt == "remove":
        # every line of the name(s) the key matches
        if len(names) == 1:
            g = names[0]
            keep = [x for x in hs if not g(x[0])]
        else:
            keep = [x for x in hs if not any(g(x[0]) for g in names)]
        if len(keep) != len(hs):
            h.headers = keep
            h.changed = True
        return
    h.changed = True
    if opt == "append":
        hs.append((name, value))
        return
    # set: the first line of the name gets the value, the others go (or it is added)
    out = []
    found = False
    for x in hs:
        if x[0].lower() == lname:
            if not found:
                out.append((x[0], value))
                found = True
        else:
            out.append(x)
    if not found:
        out.append((name, value))
    h.headers = out


def _cookie_action(h: Head, req: bool, opt: str, name: bytes, value) -> None:
    lname = name.lower()
    h.changed = True
    if not req:
        # a response: one Set-Cookie line per cookie
        def named(v: bytes) -> bool:
            return v.split(b";", 1)[0].split(b"=", 1)[0].strip(b" ").lower() == lname
        hs = h.headers
        if opt == "remove":
            h.headers = [x for x in hs if not (x[0].lower() == b"set-cookie" and named(x[1]))]
            return
        line = (b"Set-Cookie", name + b"=" + value)
        if opt == "set" and any(x[0].lower() == b"set-cookie" and named(x[1]) for x in hs):
            h.headers = [line if x[0].lower() == b"set-cookie" and named(x[1]) else x
                         for x in hs]
        else:
            hs.append(line)
        return
    # a request: the cookies of the Cookie header(s), as one header
    pairs: list[tuple[bytes, bytes]] = []
    first = None
    rest = []
    for i, (n, v) in enumerate(h.headers):
        if n.lower() == b"cookie":
            if first is None:
                first = i
            for part in v.split(b";"):
                part = part.strip(b" ")
                if part:
                    k, _, val = part.partition(b"=")
                    pairs.append((k, val))
        else:
            rest.append((i, (n, v)))
    if opt == "remove":
        pairs = [p for p in pairs if p[0].strip(b" ").lower() != lname]
    elif opt == "set" and any(p[0].strip(b" ").lower() == lname for p in pairs):
        pairs = [(p[0], value) if p[0].strip(b" ").lower() == lname else p for p in pairs]
    else:
        pairs.append((name, value))
    out = [x for _, x in rest]
    if pairs:
        line = (b"Cookie", b"; ".join(k + b"=" + v for k, v in pairs))
        out.insert(first if first is not None else len(out), line)
    h.headers = out


def strip_path(path: bytes, n: int) -> bytes:
    """relayd's server_root_strip: drop n leading directories ("/a/b/c", 1: "/b/c")."""
    p = path
    for _ in range(n):
        i = p.find(b"/", 1)
        if i < 0:
            return b"/" if p else p
        p = p[i:]
    return p


def _canon_host(host: bytes) -> bytes:
    h = host.strip().lower()
    if h.startswith(b"["):
        end = h.find(b"]")
        h = h[:end + 1] if end > 0 else h
    elif h.count(b":") == 1:
        h = h.split(b":", 1)[0]
    h = b".".join(x for x in h.split(b".") if x)
    return h


def url_candidates(host: bytes, path: bytes, query: bytes | None) -> list[bytes]:
    """The strings relay_lookup_url compares, in its order."""
    h = _canon_host(host)
    parts = h.split(b".")
    hosts = [h]
    # and its parent domains of 2 to 5 labels (relayd's RELAY_MAXLOOKUPLEVELS)
    for n in range(min(len(parts) - 1, LOOKUP_LEVELS), 1, -1):
        hosts.append(b".".join(parts[-n:]))
    prefixes = []
    i = 0
    while len(prefixes) < LOOKUP_LEVELS - 1:
        i = path.find(b"/", i)
        if i < 0 or i + 1 >= len(path):
            break
        i += 1
        prefixes.append(path[:i])
    out = []
    for hh in hosts:
        if query is not None:
            out.append(hh + path + b"?" + query)
        out.append(hh + path)
        out.extend(hh + p for p in prefixes if p != path)
    return out


# --- one rule, the program ------------------------------------------------------------

# relayd's relay_test order of the key tests
_TEST_ORDER = {"header": 0, "query": 1, "path": 2, "url": 3, "cookie": 4}


class _Rule:
    __slots__ = ("r", "action", "quick", "af", "method", "tagged", "keys", "table", "tag",
                 "label", "plain")

    def __init__(self, r: Rule):
        self.r = r
        self.action = r.action
        self.quick = r.quick
        self.af = r.af
        self.method = r.method.encode() if r.method else None
        self.tagged = r.tagged
        self.keys = [_Key(k, r.action) for k in sorted(r.keys, key=lambda k: _TEST_ORDER[k.type])]
        self.table = r.forward
        # relayd's rule_tag: a name, "" to untag, None to leave
        self.tag = "" if r.untag else r.tag
        self.label = "" if r.unlabel else r.label
        # no family, method or tagged to test
        self.plain = r.af is None and r.method is None and r.tagged is None

    def instant(self, ctx: _Ctx) -> None:
        if self.table is not None:
            ctx.table = self.table
        if self.tag is not None:
            ctx.tag = self.tag or None
        if self.label is not None:
            ctx.label = self.label or None


class Program:
    """The rules of one direction, compiled (once per protocol)."""

    def __init__(self, rules: list[Rule], request: bool):
        self.request = request
        self.rules = [_Rule(r) for r in rules]
        self.routes = any(r.table is not None for r in self.rules)
        self.by_af = any(r.af is not None for r in self.rules)
        self.hashes = any(k.opt == "hash" for r in self.rules for k in r.keys)
        # a program whose every rule is a `match` with write actions only and no
        # condition: the same actions on every message (no test to run)
        self.static = all(r.action == "match" and r.af is None and r.method is None
                          and r.tagged is None and r.table is None and r.tag is None
                          and r.label is None
                          and all(k.test == k.t_write and k.opt != "strip" for k in r.keys)
                          for r in self.rules)

    def run(self, head: Head, env: dict[str, str], tag: str | None = None,
            label: str | None = None) -> Result:
        ctx = _Ctx(head, self.request, tag, label)
        actions: list[tuple[_Key, object]] = []
        final = None
        final_acts: list = []
        v6 = self.by_af and ":" in env.get("REMOTE_ADDR", "")
        request = self.request
        for r in self.rules:
            if r.plain is False:
                if r.af is not None and (r.af == "inet6") != v6:
                    continue
                if r.method is not None and (not request or head.method != r.method):
                    continue
                if r.tagged is not None and ctx.tag != r.tagged:
                    continue
            acts = []
            for k in r.keys:
                got = k.test(ctx)
                if got is NOMATCH:
                    break
                if k.opt is not None and got is not NOACTION:
                    acts.append((k, got))
            else:
                if r.action == "match":
                    r.instant(ctx)
                    actions.extend(acts)
                    continue
                final, final_acts = r, acts
                if r.quick:
                    break
        res = Result(ctx.tag, ctx.label)
        if final is not None:
            final.instant(ctx)
            actions.extend(final_acts)
            res.block = final.action == "block"
        res.tag, res.label, res.table = ctx.tag, ctx.label, ctx.table
        for k, got in actions:
            k.apply(ctx, got, env, res)
        return res
