"""From tokens to statements: split, old spellings, one LALR parse per statement.

conf.lexer makes the tokens (with includes and macros done); this module
splits them into top-level statements, refuses old relayd/hoststated
spellings with the modern one, parses each statement with the grammar in
grammar/hoststated.lark (so one bad statement does not hide the next) and
turns each parse tree into plain values (`_Tree`: Stmt and Opt, with their
places).  What they mean is conf.build's job (`Builder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lark import Token, Transformer, v_args

from hoststated.conf import grammar, lalr
from hoststated.conf.errors import Reporter
from hoststated.conf.lexer import NL, NUMBER, STRING, Tok, describe, name, quote

Where = tuple[str, int, int]


# --- values the tree walk produces ------------------------------------------------

class Num(int):
    """A NUMBER token's value that still knows its token index."""
    start_pos: int = 0


@dataclass
class Opt:
    key: str
    value: Any
    where: Where


@dataclass
class Stmt:
    kind: str
    where: Where
    name: Any = None
    opts: list = field(default_factory=list)
    extra: Any = None


class _Tree(Transformer):
    """Parse tree -> Opt/Stmt values; token places come from `self.where`."""

    def __init__(self, where: Callable[[Any], Where], render: Callable[[Any], str]):
        super().__init__()
        self.w = where
        self.render = render

    def NUMBER(self, tok):
        n = Num(tok.value)
        n.start_pos = tok.start_pos
        return n

    # values
    @v_args(meta=True)
    def name(self, meta, c):
        return c[0] if c else self.kw(meta)

    def string(self, c):
        return c[0]

    def value(self, c):
        return c[0]

    def port_value(self, c):
        return c[0]

    def port_http(self, c):
        return "http"

    @v_args(meta=True)
    def yesno(self, meta, c):
        return c[0] if c else self.kw(meta)

    @v_args(meta=True)
    def mode_name(self, meta, c):
        return c[0] if c else self.kw(meta)

    @v_args(meta=True)
    def check_kind(self, meta, c):
        return c[0] if c else self.kw(meta)

    @v_args(meta=True)
    def proto_type(self, meta, c):
        return c[0] if c else self.kw(meta)

    def send_data(self, c):
        return c[0] if c else None

    def table_ref(self, c):
        return c[0]

    # globals
    @v_args(meta=True)
    def g_interval(self, meta, c):
        return Opt("interval", c[0], self.w(meta))

    @v_args(meta=True)
    def g_timeout(self, meta, c):
        return Opt("timeout", c[0], self.w(meta))

    @v_args(meta=True)
    def g_prefork(self, meta, c):
        return Opt("prefork", c[0], self.w(meta))

    @v_args(meta=True)
    def g_log_state(self, meta, c):
        return Opt("log_state_changes", True, self.w(meta))

    @v_args(meta=True)
    def g_log_checks(self, meta, c):
        return Opt("log_host_checks", True, self.w(meta))

    @v_args(meta=True)
    def g_log_connection(self, meta, c):
        return Opt("log_connection", "all", self.w(meta))

    @v_args(meta=True)
    def g_log_connection_errors(self, meta, c):
        return Opt("log_connection", "errors", self.w(meta))

    @v_args(meta=True)
    def g_socket(self, meta, c):
        return Opt("socket", (c[0], c[1] if len(c) > 1 else None), self.w(meta))

    @v_args(meta=True)
    def g_socket_restricted(self, meta, c):
        return Opt("restricted_socket", c[0], self.w(meta))

    @v_args(meta=True)
    def g_agentx(self, meta, c):
        return Opt("agentx", dict(c), self.w(meta))

    def agentx_context(self, c):
        return ("context", str(c[0]))

    def agentx_path(self, c):
        return ("path", str(c[0]))

    @v_args(meta=True)
    def g_user(self, meta, c):
        return Opt("user", c[0], self.w(meta))

    @v_args(meta=True)
    def g_engine(self, meta, c):
        return Opt("engine", c[0], self.w(meta))

    @v_args(meta=True)
    def g_cleanstop(self, meta, c):
        return Opt("cleanstop", c[0], self.w(meta))

    @v_args(meta=True)
    def g_max_checks(self, meta, c):
        return Opt("max_checks", c[0], self.w(meta))

    @v_args(meta=True)
    def g_check_workers(self, meta, c):
        return Opt("check_workers", c[0], self.w(meta))

    @v_args(meta=True)
    def g_metrics(self, meta, c):
        return Opt("metrics", (c[0], c[1] if len(c) > 1 else None), self.w(meta))

    # issue 14: notifications, maintenance files, autoreload
    @v_args(meta=True)
    def g_notify(self, meta, c):
        return Opt("notify", (c[0], list(c[1:])), self.w(meta))

    @v_args(meta=True)
    def g_alert_mail(self, meta, c):
        return Opt("alert_mail", (c[0], list(c[1:])), self.w(meta))

    @v_args(meta=True)
    def g_maintenance(self, meta, c):
        return Opt("maintenance_dir", c[0], self.w(meta))

    @v_args(meta=True)
    def g_autoreload(self, meta, c):
        return Opt("autoreload", c[0] if c else None, self.w(meta))

    @v_args(meta=True)
    def g_log_state_file(self, meta, c):     # migrate (issue 14): monitorfile
        return Opt("state_file", c[0], self.w(meta))

    @v_args(meta=True)
    def event_filter(self, meta, c):
        return c[0] if c else self.kw(meta)

    @v_args(meta=True)
    def n_on(self, meta, c):
        return Opt("on", str(c[0]), self.w(meta))

    @v_args(meta=True)
    def n_timeout(self, meta, c):
        return Opt("timeout", c[0], self.w(meta))

    @v_args(meta=True)
    def a_from(self, meta, c):
        return Opt("from", str(c[0]), self.w(meta))

    @v_args(meta=True)
    def a_via(self, meta, c):
        return Opt("via", (str(c[0]), c[1] if len(c) > 1 else None), self.w(meta))

    @v_args(meta=True)
    def a_every(self, meta, c):
        return Opt("every", c[0], self.w(meta))

    a_on = n_on

    # tables
    @v_args(meta=True)
    def table_def(self, meta, c):
        name, *parts = c
        disabled = any(p == "disable" for p in parts)
        hosts = [h for p in parts if isinstance(p, list) for h in p]
        brace = [p for p in parts if isinstance(p, list)]
        return Stmt("table", self.w(meta), name, hosts,
                    extra={"disabled": disabled, "blocks": len(brace)})

    def table_name(self, c):
        return c[0]

    def table_disable(self, c):
        return "disable"

    def table_hosts(self, c):
        return list(c)

    @v_args(meta=True)
    def host(self, meta, c):
        return Stmt("host", self.w(meta), c[0], list(c[1:]))

    def _opt(key):
        @v_args(meta=True)
        def f(self, meta, c):
            return Opt(key, c[0] if c else True, self.w(meta))
        return f

    h_retry = _opt("retry")
    h_parent = _opt("parent")
    h_priority = _opt("priority")
    h_ip_ttl = _opt("ip_ttl")
    h_weight = _opt("weight")
    h_max_connections = _opt("max_connections")
    h_min_connections = _opt("min_connections")
    # migrate (issue 14)
    h_port = _opt("port")
    h_no_check = _opt("no_check")

    t_port = _opt("port")
    t_timeout = _opt("timeout")
    t_interval = _opt("interval")
    t_demote = _opt("demote")
    t_retry = _opt("retry")
    t_rise = _opt("rise")
    t_fall = _opt("fall")
    t_fast_interval = _opt("fast_interval")
    t_down_interval = _opt("down_interval")
    t_interface = _opt("interface")
    t_inet = _opt("inet")
    t_inet6 = _opt("inet6")
    t_proxy_protocol = _opt("proxy_protocol")
    # migrate (issue 14)
    t_check_port = _opt("check_port")
    t_check_source = _opt("check_source")
    t_connect_timeout = _opt("connect_timeout")
    t_connect_checks = _opt("connect_checks")

    @v_args(meta=True)
    def t_mode(self, meta, c):
        return Opt("mode", (c[0], c[1] if len(c) > 1 else None), self.w(meta))

    def table_opt(self, c):
        return c[0]

    # checks
    @v_args(meta=True)
    def check_generic(self, meta, c):
        kind = c[0]
        arg = None
        opts = []
        for x in c[1:]:
            if isinstance(x, Opt):
                opts.append(x)
            else:
                arg = x
        return Opt("check", ("generic", kind, arg, opts), self.w(meta))

    @v_args(meta=True)
    def check_send(self, meta, c):
        return Opt("check", ("send", c[0], c[1], list(c[2:])), self.w(meta))

    @v_args(meta=True)
    def check_binary(self, meta, c):
        return Opt("check", ("binary", c[0], c[1], list(c[2:])), self.w(meta))

    @v_args(meta=True)
    def check_script(self, meta, c):
        return Opt("check", ("script", c[0], None, []), self.w(meta))

    @v_args(meta=True)
    def check_script_ld(self, meta, c):      # migrate (issue 14)
        return Opt("check", ("script", c[0], "ldirectord", []), self.w(meta))

    c_host = _opt("host")
    c_code = _opt("code")
    c_digest = _opt("digest")
    c_body = _opt("body")
    c_method = _opt("method")
    c_type = _opt("type")
    c_expect = _opt("expect")
    c_tcp = _opt("tcp")
    c_tls = _opt("tls")
    c_verify = _opt("verify")
    c_ca = _opt("ca")
    c_helo = _opt("helo")
    c_starttls = _opt("starttls")
    c_user = _opt("user")
    c_password = _opt("password")
    c_database = _opt("database")
    c_query = _opt("query")
    c_bind = _opt("bind")
    c_base = _opt("base")
    c_filter = _opt("filter")
    c_secret = _opt("secret")
    c_nas_identifier = _opt("nas-identifier")

    # passive failure detection (issue 15): Opt("passive", [(word, value, where)])
    @v_args(meta=True)
    def t_passive(self, meta, c):
        return Opt("passive", list(c), self.w(meta))

    @v_args(meta=True)
    def pv_resets(self, meta, c):
        return ("resets", True, self.w(meta))

    @v_args(meta=True)
    def pv_unreachables(self, meta, c):
        return ("unreachables", True, self.w(meta))

    @v_args(meta=True)
    def pv_errors(self, meta, c):
        return ("errors", True, self.w(meta))

    @v_args(meta=True)
    def pv_limit(self, meta, c):
        return ("limit", (c[0], c[1] if len(c) > 1 else None), self.w(meta))

    @v_args(meta=True)
    def pv_action(self, meta, c):
        return ("action", c[0], self.w(meta))

    def pa_down(self, c):
        return "down"

    def pa_fast(self, c):
        return "fast"

    def pa_fail(self, c):
        return "fail"

    # redirects
    @v_args(meta=True)
    def redirect(self, meta, c):
        return Stmt("redirect", self.w(meta), c[0], list(c[1:]))

    @v_args(meta=True)
    def r_listen(self, meta, c):
        d = {"address": c[0], "proto": None, "port": None, "interface": None}
        for x in c[1:]:
            if isinstance(x, tuple):
                d[x[0]] = x[1]
            else:
                d["port"] = x
        return Opt("listen", d, self.w(meta))

    @v_args(meta=True)
    def listen_proto(self, meta, c):
        return ("proto", c[0] if c else self.kw(meta))

    def listen_iface(self, c):
        return ("interface", c[0])

    @v_args(meta=True)
    def r_listen_fwmark(self, meta, c):
        return Opt("listen_fwmark", c[0], self.w(meta))

    @v_args(meta=True)
    def r_forward(self, meta, c):
        return Opt("forward", ("nat", c[0], list(c[1:])), self.w(meta))

    @v_args(meta=True)
    def r_route(self, meta, c):
        return Opt("forward", ("route", c[0], list(c[1:])), self.w(meta))

    @v_args(meta=True)
    def r_tunnel(self, meta, c):
        return Opt("forward", ("tunnel", c[0], list(c[1:])), self.w(meta))

    @v_args(meta=True)
    def r_sticky(self, meta, c):
        return Opt("sticky", list(c), self.w(meta))

    s_timeout = _opt("timeout")
    s_netmask = _opt("netmask")
    r_match_pftag = _opt("match_pftag")
    r_pftag = _opt("pftag")
    r_session_timeout = _opt("session_timeout")
    r_disable = _opt("disable")
    r_quiescent = _opt("quiescent")
    r_one_packet = _opt("one_packet")
    r_engine = _opt("engine")
    r_notify = g_notify                  # issue 14
    r_alert_mail = g_alert_mail

    @v_args(meta=True)
    def r_no_quiescent(self, meta, c):
        return Opt("quiescent", False, self.w(meta))

    # relays
    @v_args(meta=True)
    def relay(self, meta, c):
        return Stmt("relay", self.w(meta), c[0], list(c[1:]))

    @v_args(meta=True)
    def l_listen(self, meta, c):
        addr = c[0]
        port = None
        tls = False
        for x in c[1:]:
            if x == "tls" and not isinstance(x, Token):
                tls = True
            else:
                port = x
        return Opt("listen", {"address": addr, "port": port, "tls": tls}, self.w(meta))

    def ll_tls(self, c):
        return "tls"

    def with_tls(self, c):
        return "with_tls"

    @v_args(meta=True)
    def l_forward(self, meta, c):
        return self._relay_forward(meta, c, False)

    @v_args(meta=True)
    def l_transparent_forward(self, meta, c):
        return self._relay_forward(meta, c, True)

    def _relay_forward(self, meta, c, transparent):
        tls = False
        if c and c[0] == "with_tls" and not isinstance(c[0], Token):
            tls = True
            c = c[1:]
        target, opts = c[0], list(c[1:])
        return Opt("forward", {"target": target, "opts": opts, "tls": tls,
                               "transparent": transparent}, self.w(meta))

    def target_table(self, c):
        return ("table", c[0])

    def target_address(self, c):
        return ("address", c[0])

    def target_destination(self, c):
        return ("destination", None)

    def target_nat_lookup(self, c):
        return ("nat_lookup", None)

    l_protocol = _opt("protocol")
    l_session_timeout = _opt("session_timeout")
    l_disable = _opt("disable")

    # protocols
    @v_args(meta=True)
    def protocol(self, meta, c):
        ptype = None
        if len(c) == 3 or (len(c) == 2 and not isinstance(c[1], list)):
            ptype, name, *body = c
        else:
            name, *body = c
        opts = body[0] if body else []
        return Stmt("protocol", self.w(meta), name, opts, extra=ptype)

    def proto_body(self, c):
        return list(c)

    @v_args(meta=True)
    def p_tcp(self, meta, c):
        return Opt("tcp", [x for x in c], self.w(meta))

    @v_args(meta=True)
    def p_tls(self, meta, c):
        return Opt("tls", [x for x in c], self.w(meta))

    @v_args(meta=True)
    def p_http(self, meta, c):
        return Opt("http", [x for x in c], self.w(meta))

    @v_args(meta=True)
    def p_return_error(self, meta, c):
        return Opt("return_error", c[0] if c else None, self.w(meta))

    @v_args(meta=True)
    def p_rule(self, meta, c):
        return Opt("rule", c[0], self.w(meta))

    @v_args(meta=True)
    def tf(self, meta, c):
        return Opt("flag", self.render(meta), self.w(meta))

    xf = tf
    hf = tf

    @v_args(meta=True)
    def rule(self, meta, c):
        tables = [x for x in c if isinstance(x, tuple) and x[0] == "table"]
        # the words as the lexer gave them (value, was a string): conf.build
        # types the rule from these, not from the text
        return {"text": self.render(meta), "tables": tables, "words": self.words(meta)}

    @v_args(meta=True)
    def rule_opt(self, meta, c):
        if len(c) == 1 and isinstance(c[0], Token) and c[0].type == STRING \
                and self.render_prev(c[0]) == "<":
            return ("table", c[0], self.w(meta))
        return ("opt", None)

    # routers
    @v_args(meta=True)
    def router(self, meta, c):
        return Stmt("router", self.w(meta), c[0], list(c[1:]))

    rt_route = _opt("route")
    rt_rtable = _opt("rtable")
    rt_rtlabel = _opt("rtlabel")
    rt_disable = _opt("disable")

    @v_args(meta=True)
    def rt_forward(self, meta, c):
        return Opt("forward", ("nat", c[0], list(c[1:])), self.w(meta))

    def render_prev(self, tok) -> str:
        raise NotImplementedError

    def words(self, meta) -> list[tuple[str, bool]]:
        raise NotImplementedError


# --- statements: split, check old spellings, parse ----------------------------

OLD_SPELLINGS = {
    "ssl": "'ssl' is no longer a keyword: use 'tls' "
           "(listen on ... tls, forward with tls, check tls, tls { ... })",
    "updates": "'log updates' is no longer supported: use 'log state changes'",
    "service": "'service' blocks are now spelled 'redirect': redirect NAME "
               "{ listen on ADDRESS port P; forward to <table> check ... }",
    "virtual": "'virtual ip' is no longer supported: use 'listen on ADDRESS port P' "
               "in a redirect",
    "real": "'real port' is no longer supported: use 'forward to <table> port P'",
    "cache": "'session cache' was removed: use 'tls session tickets' or "
             "'tls no session tickets'",
    "snmp": "'snmp' was removed: use 'agentx' (global option)",
}


_SPLIT = frozenset({"{", "}", NL})

# the token kinds _old() looks at
_OLD_TRIGGERS = frozenset({"ssl", "updates", "all", "service", "virtual", "real", "cache",
                           "snmp", "tag"})


class Parser:
    def __init__(self, toks: list[Tok], report: Reporter, tables: lalr.Tables | None = None):
        self.toks = toks
        self.report = report
        self.names = grammar.terminal_names()
        # token kind -> terminal; a kind not here is an old word (or include)
        self.terminal = {STRING: STRING, NUMBER: NUMBER, NL: "_NL", **self.names}
        self.driver = lalr.Driver(tables or grammar.tables(), self.transformer())

    def transformer(self) -> _Tree:
        """The tree builder, reading this parser's tokens."""
        tr = _Tree(self.where_meta, self.render)
        tr.render_prev = self.render_prev
        tr.words = self.words
        tr.kw = self.kw
        return tr

    def where(self, x) -> Where:
        if isinstance(x, Token):
            return self.toks[x.start_pos].where
        if x is None:
            return ("<unknown>", 1, 1)
        if getattr(x, "empty", True) is False or hasattr(x, "start_pos"):
            return self.toks[x.start_pos].where
        return ("<unknown>", 1, 1)

    def render(self, meta) -> str:
        return render_tokens(self.toks[meta.start_pos:meta.end_pos])

    def words(self, meta) -> list[tuple[str, bool]]:
        """The tokens in meta as (text, is a string)."""
        return [(str(t.value), t.kind == STRING)
                for t in self.toks[meta.start_pos:meta.end_pos] if t.kind != NL]

    def statements(self) -> list[Stmt | Opt]:
        out = []
        toks = self.toks
        n = len(toks)
        # only braces and line ends split statements: walk those alone
        marks = [x for x, t in enumerate(toks) if t.kind in _SPLIT]
        nmarks = len(marks)
        mi = 0
        i = 0
        while i < n:
            depth = 0
            j = n
            opened: list[int] = []
            while mi < nmarks:
                x = marks[mi]
                mi += 1
                k = toks[x].kind
                if k == "{":
                    depth += 1
                    opened.append(x)
                elif k == "}":
                    depth -= 1
                    if opened:
                        opened.pop()
                    if depth < 0:
                        self.report.error(toks[x].where, "unexpected '}' with no "
                                                         "block open")
                        depth = 0
                elif depth == 0:            # a line end outside any block
                    j = x
                    break
            if depth > 0:
                self.report.error(toks[opened[0]].where if opened else toks[i].where,
                                  "missing '}': this block is not closed")
            elif j > i:
                res = self.parse_statement(i, j)
                if res is not None:
                    out.append(res)
            i = j + 1
        return out

    def _old(self, i: int, j: int) -> bool:
        """Old hoststated/relayd spellings: one clear message, skip the statement."""
        toks = self.toks
        if not (toks[i].kind == "table" and i + 1 < j and toks[i + 1].kind == STRING) \
                and _OLD_TRIGGERS.isdisjoint([t.kind for t in toks[i:j]]):
            return False            # (the common case, in C: a long table is fast)
        found = False
        first = toks[i].kind
        for x in range(i, j):
            t = toks[x]
            k = t.kind
            prev = toks[x - 1].kind if x > i else NL
            nxt = toks[x + 1].kind if x + 1 < j else NL
            msg = None
            if k == "ssl":
                msg = OLD_SPELLINGS["ssl"]
            elif k == "updates" and prev == "log":
                msg = OLD_SPELLINGS["updates"]
            elif k == "all" and prev == "log":
                msg = "'log all' is no longer supported: use 'log host checks'"
            elif k == "service" and x == i:
                msg = OLD_SPELLINGS["service"]
            elif k == "virtual" and prev in (NL, "{"):
                msg = OLD_SPELLINGS["virtual"]
            elif k == "real" and nxt == "port":
                msg = OLD_SPELLINGS["real"]
            elif k == "cache" and prev == "session":
                msg = OLD_SPELLINGS["cache"]
            elif k == "snmp" and x == i:
                msg = OLD_SPELLINGS["snmp"]
            elif k == "tag" and first == "redirect" and prev in (NL, "{"):
                msg = "'tag' in a redirect is now spelled 'pftag NAME' " \
                      "('match pftag NAME' to only tag)"
            elif k == "table" and x == i and nxt == STRING:
                msg = ("table names are written in angle brackets: "
                       f"table <{toks[x + 1].value}> {{ hosts }}; checks go on "
                       "'forward to <table> check ...'")
            if msg:
                self.report.error(t.where, msg)
                found = True
                if k in ("service", "table"):
                    break
        return found

    def parse_statement(self, i: int, j: int):
        if self._old(i, j):
            return None
        if self.toks[i].kind == "table":
            simple = self._plain_table(i, j)
            if simple is not None:
                return simple
        toks = self.toks
        terminal = self.terminal
        kinds = []
        for x in range(i, j):
            k = toks[x].kind
            typ = terminal.get(k)
            if typ is None:
                if k == "include":
                    self.report.error(toks[x].where, "include: the file name must be "
                                                     "in quotes")
                    return None
                typ = STRING     # an old word used as a plain string
            kinds.append(typ)
        try:
            return self.driver.parse(kinds, self._value, i)
        except lalr.SyntaxErrorAt as e:
            self._syntax_error(None if e.kind == lalr.END else e.index,
                               e.expected, i, j)
            return None

    def _plain_table(self, i: int, j: int) -> Stmt | None:
        """`table <name> [disable] { host, host ... }` with hosts that are bare
        words: the Stmt the grammar's table_def makes, without the driver.

        Tables are the one place a config holds long lists (a table of
        160,000 hosts is ~300,000 tokens, five reductions a host); anything
        else in the statement (a host option, a keyword) goes to the driver.
        tests/unit/test_conf_lalr.py checks both give the same."""
        t = self.toks
        if j - i < 6 or t[i + 1].kind != "<" or t[i + 2].kind != STRING \
                or t[i + 3].kind != ">":
            return None
        hosts: list[Stmt] = []
        value = self._value
        disabled = False
        blocks = 0
        k = i + 4
        while k < j:
            kind = t[k].kind
            if kind == "disable":
                disabled = True
                k += 1
                continue
            if kind != "{":
                return None
            blocks += 1
            k += 1
            while k < j:
                tok = t[k]
                kind = tok.kind
                if kind == STRING:
                    hosts.append(Stmt("host", tok.where, value(k, STRING), []))
                elif kind == "}":
                    break
                elif kind != NL and kind != ",":
                    return None
                k += 1
            if k >= j:
                return None
            k += 1
        if not blocks:
            return None
        return Stmt("table", t[i].where, value(i + 2, STRING), hosts,
                    extra={"disabled": disabled, "blocks": blocks})

    def _value(self, x: int, typ: str):
        """The value of token x for the transformer (as Lark's Token, or a Num)."""
        t = self.toks[x]
        if typ == NUMBER:
            n = Num(t.value)
            n.start_pos = x
            return n
        return Token(typ, t.value, start_pos=x, end_pos=x + 1,
                     line=t.where[1], column=t.where[2])

    def where_meta(self, x) -> Where:
        if x is None:
            return ("<unknown>", 1, 1)
        return self.toks[x.start_pos].where

    def kw(self, meta) -> str:
        return str(self.toks[meta.start_pos].value)

    def render_prev(self, tok) -> str:
        p = tok.start_pos - 1
        return str(self.toks[p].kind) if p >= 0 else ""

    def _syntax_error(self, at: int | None, expected: set[str], i: int, j: int) -> None:
        """No way on at token `at` (None: at the end) of the statement toks[i:j]."""
        if at is None:
            bad = self.toks[j] if j < len(self.toks) else self.toks[j - 1]
            where = self.toks[j - 1].where if j > i else bad.where
            what = "end of line"
            where = (where[0], where[1], where[2] + len(self.toks[j - 1].text or "x"))
        else:
            bad = self.toks[at]
            where = bad.where
            what = describe(bad)
        expected = _expected(expected, self.names)
        prefix = "syntax error"
        first = self.toks[i]
        if first.kind == STRING and not first.quoted and (
                j == i + 1 or self.toks[i + 1].kind != "protocol"):
            # a bare word at the start of a statement: not a keyword we know
            self.report.error(first.where, f"unknown keyword '{first.value}'; expected "
                              + _join(TOP_LEVEL))
            return
        if bad.kind == STRING and not bad.quoted and at is not None \
                and any(x.startswith("'") for x in expected) \
                and not any(x in ("a string", "a number") for x in expected):
            prefix = f"unknown keyword '{bad.value}'"
            what = None
        elif bad.kind not in (STRING, NUMBER, NL) and at is not None:
            prefix = f"unexpected keyword '{bad.value}'" if bad.kind[:1].isalpha() \
                else f"unexpected '{bad.value}'"
            what = None
        prev = self.toks[(j if at is None else at) - 1]
        if what is not None and expected and set(expected) <= {"a number", "a string"} \
                and prev.kind not in (STRING, NUMBER, NL) and prev.kind[:1].isalpha() \
                and (at is None or at > i):
            # the value of a keyword is missing: name the keyword ('code' 200)
            self.report.error(where, f"'{prev.value}' needs {' or '.join(expected)}: "
                                     f"unexpected {what}")
            return
        msg = prefix if what is None else f"{prefix}: unexpected {what}"
        if expected:
            msg += "; expected " + _join(expected)
        self.report.error(where, msg)


TOP_LEVEL = ["'agentx'", "'check workers'", "'cleanstop'", "'engine'", "'include'", "'interval'", "'log'",
             "'max checks'", "'prefork'", "'protocol'", "'redirect'", "'relay'",
             "'router'", "'socket'", "'table'", "'timeout'", "'user'", "a macro (name = \"value\")"]


def _expected(names: set[str], terminals: dict[str, str]) -> list[str]:
    back = {v: k for k, v in terminals.items()}
    out = []
    if "STRING" in names:
        # issue 14's words that are also names: "a string" says them
        names = {n for n in names if back.get(n) not in grammar.NAME_WORDS}
    for n in names:
        if n == "STRING":
            out.append("a string")
        elif n == "NUMBER":
            out.append("a number")
        elif n == "_NL":
            out.append("end of line")
        elif n in back:
            out.append(f"'{back[n]}'")
    return sorted(set(out), key=lambda s: (not s.startswith("'"), s))


def _join(items: list[str]) -> str:
    if len(items) > 12:
        items = items[:12] + ["..."]
    if len(items) == 1:
        return items[0]
    return "one of " + ", ".join(items)


def render_tokens(toks: list[Tok]) -> str:
    """Tokens as text that lexes back to the same tokens: strings quoted
    (lexer.quote), a table `<t>` as printconf writes it, `a, b` tight."""
    out: list[str] = []
    prev = ""
    for t in toks:
        if t.kind == NL:
            continue
        if out and prev != "<" and t.kind not in (">", ","):
            out.append(" ")
        if t.kind == STRING:
            out.append(name(t.value, grammar.keywords()) if prev == "<" else quote(t.value))
        else:
            out.append(str(t.value))
        prev = t.kind
    return "".join(out)
