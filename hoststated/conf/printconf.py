"""The canonical text of a Config, for `hoststated -nv`.

Parsing the printout gives the same Config again (but for the places in
the file), and printing that gives the same text.  Every value is spelled
out, including defaults, so the printout shows what the daemon will do.
Check passwords are printed: this is the configuration itself; nothing
else in hoststated ever prints them.  The password of a protocol's TLS
inspection CA key (`tls { ca key "/k" password "..." }`) is not: it opens
the key that signs certificates for any name, and relayd never prints it
either (its -vv protocol dump shows the TLS flags, not tlscapass).  It is
printed as REDACTED; the model keeps it, so the printout of a config with
one loads to the same Config but for that password.
"""

from __future__ import annotations

import re

from hoststated.conf import grammar, model as m
from hoststated.conf.lexer import name, quote as q

REDACTED = '"********"'
# `ca key VALUE password VALUE` as conf.parse renders it: each value a
# quoted string (lexer.quote's escapes included) or a bare number
_WORD = r'(?:"(?:[^"\\]|\\[" \t]?)*"|\S+)'
_CA_PASSWORD = re.compile(rf"^(ca key {_WORD} password ){_WORD}$")


def _table(tname: str) -> str:
    return f"<{name(tname, grammar.name_keywords())}>"


def _secret(s) -> str:
    return q(s.get_secret_value())


def print_global(g: m.Global, relays: bool = False) -> list[str]:
    out = [f"interval {g.interval}", f"timeout {g.timeout}"]
    if relays:                  # a relay option, refused in a config without relays
        out.append(f"prefork {g.prefork}")
    if g.log_state_changes:
        out.append("log state changes")
    if g.log_host_checks:
        out.append("log host checks")
    if g.log_connection == "all":
        out.append("log connection")
    elif g.log_connection == "errors":
        out.append("log connection errors")
    sock = f"socket {q(g.socket)}"
    if g.socket_group:
        sock += f" group {q(g.socket_group)}"
    out.append(sock)
    if g.restricted_socket:
        out.append(f"socket restricted {q(g.restricted_socket)}")
    if g.agentx is not None:
        s = "agentx"
        if g.agentx.context is not None:
            s += f" context {q(g.agentx.context)}"
        if g.agentx.path is not None:
            s += f" path {q(g.agentx.path)}"
        out.append(s)
    out.append(f"user {q(g.user)}")
    out.append(f"engine {g.engine}")
    out.append(f"cleanstop {'yes' if g.cleanstop else 'no'}")
    out.append(f"max checks {g.max_checks}")
    if g.check_workers is not None:
        out.append(f"check workers {g.check_workers}")
    if g.metrics is not None:
        out.append(f"metrics listen on {q(g.metrics.address)} port {g.metrics.port}")
    out.extend(print_notify(g))
    return out


def print_alerts(notify: tuple[m.NotifyCommand, ...], a: m.AlertMail | None) -> list[str]:
    out = [f"notify command {q(n.command)} on {n.on} timeout {n.timeout}" for n in notify]
    if a is not None:
        s = f"alert mail to {q(', '.join(a.to))}"
        if a.sender is not None:
            s += f" from {q(a.sender)}"
        out.append(s + f" via {q(a.host)} port {a.port} every {a.every} on {a.on}")
    return out


def print_notify(g: m.Global) -> list[str]:
    """issue 14: notify commands, alert mail, maintenance directory, autoreload."""
    out = print_alerts(g.notify, g.alert_mail)
    if g.maintenance_dir is not None:
        out.append(f"maintenance directory {q(g.maintenance_dir)}")
    if g.autoreload is not None:
        out.append("autoreload" + (f" callback {q(g.autoreload.callback)}"
                                   if g.autoreload.callback is not None else ""))
    if g.state_file is not None:            # migrate (issue 14): monitorfile
        out.append(f"log state file {q(g.state_file)}")
    return out


def print_host(h: m.HostSpec) -> str:
    s = q(h.name)
    if h.retry:
        s += f" retry {h.retry}"
    if h.parent is not None:
        s += f" parent {h.parent}"
    if h.priority is not None:
        s += f" priority {h.priority}"
    if h.ip_ttl is not None:
        s += f" ip ttl {h.ip_ttl}"
    if h.weight != 1:
        s += f" weight {h.weight}"
    if h.max_connections is not None:
        s += f" max-connections {h.max_connections}"
    if h.min_connections is not None:
        s += f" min-connections {h.min_connections}"
    if h.port is not None:                     # migrate (issue 14)
        s += f" port {h.port}"
    if not h.checked:
        s += " no check"
    return s


def print_template(t: m.TableTemplate) -> list[str]:
    head = f"table {_table(t.name)}" + (" disable" if t.disabled else "") + " {"
    return [head] + ["\t" + print_host(h) for h in t.hosts] + ["}"]


def print_check(c) -> str:
    k = c.kind
    if k in ("icmp", "tcp", "arp"):    # arp: migrate (issue 14)
        return f"check {k}"
    if k == "tls":
        s = "check tls"
        if c.verify:
            s += " verify"
            if c.ca_file:
                s += f" ca {q(c.ca_file)}"
        return s
    if k in ("http", "https"):
        s = f"check {k} {q(c.path)}"
        if c.host is not None:
            s += f" host {q(c.host)}"
        if c.method is not None:
            s += f" method {c.method}"
        if c.code is not None:
            s += f" code {c.code}"
        if c.digest is not None:
            s += f" digest {q(c.digest)}"
        if c.body is not None:
            s += f" body {q(c.body)}"
        return s
    if k in ("send", "binary"):
        s = "check binary send " if k == "binary" else "check send "
        s += "nothing" if c.send is None else q(c.send)
        s += f" expect {q(c.expect)}"
        if c.tls:
            s += " tls"
        return s
    if k == "script":
        return f"check script {q(c.path)}" + (" ldirectord" if c.convention == "ldirectord"
                                               else "")
    if k == "none":                            # migrate (issue 14)
        return "check none" + (" off" if c.state == "off" else "")   # `on` is a keyword
    # protocol checks
    s = f"check {k}"
    if c.kind == "dns":
        s += f" {q(c.query)}"
        if c.qtype:
            s += f" type {c.qtype}"
    if c.kind in ("sip", "http-proxy") and c.uri is not None:
        s += f" {q(c.uri)}"
    if c.helo is not None:
        s += f" helo {q(c.helo)}"
    if c.bind_dn is not None:
        s += f" bind {q(c.bind_dn)}"
    if c.secret is not None:
        s += f" secret {_secret(c.secret)}"
    if c.user is not None:
        s += f" user {q(c.user)}"
    if c.password is not None:
        s += f" password {_secret(c.password)}"
    if c.nas_identifier is not None:
        s += f" nas-identifier {q(c.nas_identifier)}"
    if c.database is not None:
        s += f" database {q(c.database)}"
    if c.sql is not None:
        s += f" query {q(c.sql)}"
    if c.base is not None:
        s += f" base {q(c.base)}"
    if c.filter is not None:
        s += f" filter {q(c.filter)}"
    if c.code is not None:
        s += f" code {c.code}"
    if c.expect is not None:
        s += f" expect {q(c.expect)}"
    if c.starttls:
        s += " starttls"
    if c.transport == "tcp":
        s += " tcp"
    return s


def print_options(o: m.CheckOptions) -> str:
    s = ""
    if o.interval is not None:
        s += f" interval {o.interval}"
    if o.timeout is not None:
        s += f" timeout {o.timeout}"
    if o.rise != 1:
        s += f" rise {o.rise}"
    if o.fall is not None:
        s += f" fall {o.fall}"
    if o.fast_interval is not None:
        s += f" fast interval {_num(o.fast_interval)}"
    if o.down_interval is not None:
        s += f" down interval {_num(o.down_interval)}"
    if o.demote is not None:
        s += f" demote {q(o.demote)}"
    # migrate (issue 14)
    if o.check_port is not None:
        s += f" check port {o.check_port}"
    if o.source is not None:
        s += f" check source {q(o.source)}"
    if o.connect_timeout is not None:
        s += f" connect timeout {o.connect_timeout}"
    if o.connect_checks:
        s += f" connect checks {o.connect_checks}"
    if o.passive is not None:
        s += print_passive(o.passive)
    return s


def print_passive(p: m.Passive) -> str:
    """` passive ...` (issue 15): the events only when not all, the limit and
    action only when not the defaults."""
    s = " passive"
    events = [e for e in m.PASSIVE_EVENTS if getattr(p, e)]
    if len(events) != len(m.PASSIVE_EVENTS):
        s += "".join(f" {e}" for e in events)
    if p.limit != m.PASSIVE_LIMIT or p.window != m.PASSIVE_WINDOW:
        s += f" limit {p.limit}"
        if p.window != m.PASSIVE_WINDOW:
            s += f" in {p.window}"
    if p.action != "down":
        s += f" action {p.action}"
    return s


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def print_use(config: m.Config, verb: str, table_name: str, port, mode=None,
              mode_key=None, extra: str = "") -> str:
    t = config.table(table_name)
    tmpl = t.template if t is not None else table_name.split(":")[0]
    for rt in config.relay_tables:
        if rt.name == table_name:
            tmpl = rt.template
    s = f"{verb} {_table(tmpl)}"
    if port is not None:
        s += f" port {port}"
    if mode is not None:
        s += f" mode {mode}"
        if mode_key is not None:
            s += f" {q(mode_key)}"
    if t is not None:
        s += " " + print_check(t.check) + print_options(t.options)
    return s + extra


def _forwards_first(forwards) -> bool:
    """A `forward to` with no port takes the port of a listen line above it
    (relayd's tableport), so one that had none was above every listen line:
    print the forward lines first then, each with its port if it has one."""
    return any(f is not None and f.table is not None and f.port is None for f in forwards)


def print_redirect(config: m.Config, r: m.Redirect) -> list[str]:
    out = [f"redirect {q(r.name)} {{"]
    listens = []
    for li in r.listen:
        if li.fwmark is not None:
            listens.append(f"\tlisten on fwmark {li.fwmark}")
            continue
        s = f"\tlisten on {q(li.address)} {li.protocol} port {li.port}"
        if li.port_end is not None:
            s = s + f":{li.port_end}"
            s = s.replace(f"port {li.port}:{li.port_end}", f"port \"{li.port}:{li.port_end}\"")
        if li.interface:
            s += f" interface {q(li.interface)}"
        listens.append(s)
    forwards = []
    for f in (r.forward, r.backup):
        if f is None:
            continue
        verb = {"nat": "forward to", "route": "route to", "tunnel": "tunnel to"}[f.method]
        extra = f" interface {q(f.interface)}" if f.interface else ""
        forwards.append("\t" + print_use(config, verb, f.table, f.port, f.mode, f.mode_key,
                                         extra))
    first = _forwards_first((r.forward, r.backup))
    out += forwards + listens if first else listens + forwards
    if r.sticky is not None:
        # the defaults unwritten: pf takes sticky-address without options
        s = "\tsticky-address"
        if r.sticky.timeout != m.Sticky().timeout or r.sticky.netmask:
            s += f" timeout {r.sticky.timeout}"
        if r.sticky.netmask:
            s += f" netmask {q(r.sticky.netmask)}"
        out.append(s)
    if r.session_timeout != m.SESSION_TIMEOUT:     # pf only: unwritten when default
        out.append(f"\tsession timeout {r.session_timeout}")
    if r.pftag:
        out.append(f"\t{'match ' if r.match_pftag else ''}pftag {q(r.pftag)}")
    if r.engine:
        out.append(f"\tengine {r.engine}")
    out.append("\tquiescent" if r.quiescent else "\tno quiescent")
    if r.one_packet:
        out.append("\tone-packet")
    if r.disabled:
        out.append("\tdisable")
    out.extend(f"\t{line}" for line in print_alerts(r.notify, r.alert_mail))   # issue 14
    return out + ["}"]


def print_relay(config: m.Config, r: m.Relay) -> list[str]:
    out = [f"relay {q(r.name)} {{"]
    listens = [f"\tlisten on {q(li.address)} port {li.port}" + (" tls" if li.tls else "")
               for li in r.listen]
    first = _forwards_first(r.forward)
    if not first:
        out += listens
    if r.protocol:
        out.append(f"\tprotocol {q(r.protocol)}")
    for f in r.forward:
        verb = ("transparent " if f.transparent else "") + "forward" + \
               (" with tls" if f.tls else "") + " to"
        if f.table is not None:
            s = print_use(config, verb, f.table, f.port, f.mode, f.mode_key)
            if f.retry is not None:
                s += f" retry {f.retry}"
            if f.proxy_protocol is not None:
                s += f" proxy-protocol v{f.proxy_protocol}"
        else:
            if f.address is not None:
                s = f"{verb} {q(f.address)}"
            elif f.destination:
                s = f"{verb} destination"
            else:
                s = f"{verb} nat lookup"
            if f.port is not None:
                s += f" port {f.port}"
            if f.retry is not None:
                s += f" retry {f.retry}"
            if f.inet:
                fam, _, prefix = f.inet.partition(" ")
                s += f" {fam} {q(prefix)}"
            if f.proxy_protocol is not None:
                s += f" proxy-protocol v{f.proxy_protocol}"
        out.append("\t" + s)
    if first:
        out += listens
    out.append(f"\tsession timeout {r.session_timeout}")
    if r.disabled:
        out.append("\tdisable")
    return out + ["}"]


def print_protocol(p: m.Protocol) -> list[str]:
    out = [f"{p.type} protocol {q(p.name)} {{"]
    tls = tuple(_CA_PASSWORD.sub(lambda mt: mt.group(1) + REDACTED, f) for f in p.tls)
    for key, flags in (("tcp", p.tcp), ("tls", tls), ("http", p.http)):
        if flags:
            out.append(f"\t{key} {{ " + ", ".join(flags) + " }")
    if p.return_error:
        out.append("\treturn error" + (f" style {q(p.style)}" if p.style else ""))
    for r in p.rules:
        out.append("\t" + print_rule(r))
    return out + ["}"]


def print_rule(r: m.Rule) -> str:
    """A filter rule in canonical form: relayd's order (action, direction,
    quick, family, method, the keys by type, forward, tag, tagged, label);
    conf.build reads it back to the same Rule."""
    out = [r.action, r.direction]
    if r.quick:
        out.append("quick")
    if r.af:
        out.append(r.af)
    if r.method:
        out.append(f"method {q(r.method)}")
    for k in r.keys:
        out.append(print_rule_key(k))
    if r.forward is not None:
        out.append(f"forward to {_table(r.forward)}")
    if r.tag is not None:
        out.append(f"tag {q(r.tag)}")
    if r.untag:
        out.append("no tag")
    if r.tagged is not None:
        out.append(f"tagged {q(r.tagged)}")
    if r.label is not None:
        out.append(f"label {q(r.label)}")
    if r.unlabel:
        out.append("no label")
    return " ".join(out)


def print_rule_key(k: m.RuleKey) -> str:
    out = [k.type]
    if k.option == "strip":
        out.append(f"strip {k.strip}")
    elif k.option is not None:
        out.append(k.option)
    if k.digest is not None:
        out.append("digest")
    if k.key is not None:
        out.append(q(k.key))
    if k.file is not None:
        out.append(f"file {q(k.file)}")
    if k.value is not None:
        out.append(f"value {q(k.value)}")
    return " ".join(out)


def print_router(config: m.Config, r: m.Router) -> list[str]:
    out = [f"router {q(r.name)} {{"]
    for rt in r.routes:
        out.append(f"\troute {q(rt)}")
    if r.forward is not None:
        out.append("\t" + print_use(config, "forward to", r.forward.table, r.forward.port))
    if r.rtable is not None:
        out.append(f"\trtable {r.rtable}")
    if r.rtlabel is not None:
        out.append(f"\trtlabel {q(r.rtlabel)}")
    if r.disabled:
        out.append("\tdisable")
    return out + ["}"]


def print_config(config: m.Config) -> str:
    out = print_global(config.global_, relays=bool(config.relays))
    for t in config.templates:
        out.append("")
        out += print_template(t)
    for p in config.protocols:
        out.append("")
        out += print_protocol(p)
    by = {f"redirect:{r.name}": r for r in config.redirects}
    by.update({f"relay:{r.name}": r for r in config.relays})
    by.update({f"router:{r.name}": r for r in config.routers})
    order = list(config.order) + [k for k in by if k not in config.order]
    for key in order:
        obj = by.get(key)
        if obj is None:
            continue
        out.append("")
        if isinstance(obj, m.Redirect):
            out += print_redirect(config, obj)
        elif isinstance(obj, m.Relay):
            out += print_relay(config, obj)
        else:
            out += print_router(config, obj)
    return "\n".join(out) + "\n"
