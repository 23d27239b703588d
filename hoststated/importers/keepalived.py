"""keepalived.conf -> hoststated.conf (keepalived.conf(5), its checker part).

Statements are `keyword args...` a line, `{ ... }` blocks, `!` and `#`
comments. virtual_server (address and port, `fwmark N` or `group NAME`)
and its real_servers become a table and a redirect; the real servers'
checkers the table's check. VRRP (vrrp_instance, vrrp_sync_group,
vrrp_script, ...) stays keepalived's: see the note in the output."""

from __future__ import annotations

from dataclasses import dataclass, field

from hoststated.conf.lexer import quote as q
from hoststated.importers.common import (table_port, NOTIFY, SCHEDULERS, UNWEIGHTED, Imported, ImportFailed,
                                  Notes, Real, Virtual, alert_mail, expand_range, host_ok,
                                  is_ip, mail_ok, port_of, program_ok, render)

METHODS = {"nat": "nat", "dr": "route", "tun": "tunnel"}
VRRP = ("vrrp_instance", "vrrp_sync_group", "vrrp_script", "vrrp_track_process",
        "vrrp_track_file", "track_file", "track_process", "bfd_instance")
VRRP_NOTE = ("VRRP is left to keepalived: keep these blocks (and no virtual_server) in "
             "keepalived.conf so that keepalived moves the virtual addresses, and run "
             "hoststated on each director for the checks and the kernel tables")
CHECKERS = ("HTTP_GET", "SSL_GET", "TCP_CHECK", "SMTP_CHECK", "MISC_CHECK", "DNS_CHECK",
            "PING_CHECK", "UDP_CHECK", "FILE_CHECK", "BFD_CHECK")


@dataclass
class Node:
    line: int
    words: list[str]
    children: list["Node"] | None = None      # None: no block
    raw: str = ""

    @property
    def key(self) -> str:
        return self.words[0] if self.words else ""

    def args(self) -> list[str]:
        return self.words[1:]

    def find(self, key: str) -> "Node | None":
        for c in self.children or ():
            if c.key == key:
                return c
        return None


@dataclass
class _Tok:
    text: str
    line: int
    quoted: bool = False


def tokens(text: str) -> tuple[list[_Tok], list[str]]:
    out: list[_Tok] = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        i, L = 0, len(line)
        while i < L:
            c = line[i]
            if c in " \t\r\f\v":
                i += 1
            elif c in "!#":
                break
            elif c in "{}":
                out.append(_Tok(c, n))
                i += 1
            elif c == '"':
                j = line.find('"', i + 1)
                if j < 0:
                    raise ImportFailed("", n, "a quoted string that does not end on its line")
                out.append(_Tok(line[i + 1:j], n, True))
                i = j + 1
            else:
                j = i
                while j < L and line[j] not in ' \t\r\f\v{}"!#':
                    j += 1
                out.append(_Tok(line[i:j], n))
                i = j
        out.append(_Tok("\n", n))
    return out, lines


def parse(text: str, file: str) -> list[Node]:
    try:
        toks, lines = tokens(text)
    except ImportFailed as e:
        raise ImportFailed(file, e.line, e.message) from None
    pos = 0

    def block(opened: int | None) -> list[Node]:
        nonlocal pos
        nodes: list[Node] = []
        words: list[str] = []
        start = 0
        while pos < len(toks):
            t = toks[pos]
            pos += 1
            if t.text == "\n" and not t.quoted:
                if words:
                    nodes.append(Node(start, words, None, lines[start - 1]))
                words = []
            elif t.text == "{" and not t.quoted:
                node = Node(start or t.line, words, None, lines[(start or t.line) - 1])
                node.children = block(t.line)
                nodes.append(node)
                words = []
            elif t.text == "}" and not t.quoted:
                if words:
                    nodes.append(Node(start, words, None, lines[start - 1]))
                if opened is None:
                    raise ImportFailed(file, t.line, "'}' closes no block")
                return nodes
            else:
                if not words:
                    start = t.line
                words.append(t.text)
        if opened is not None:
            raise ImportFailed(file, len(lines) or 1, f"unexpected end of file: the block "
                                                     f"opened at line {opened} is not closed")
        if words:
            nodes.append(Node(start, words, None, lines[start - 1]))
        return nodes

    return block(None)


def convert(text: str, file: str) -> Imported:
    notes = Notes(file)
    nodes = parse(text, file)
    head: list[str] = []
    tail: list[str] = []
    groups = {n.args()[0]: n for n in nodes
              if n.key == "virtual_server_group" and n.args() and n.children is not None}
    virtuals: list[Virtual] = []
    vrrp_said = False
    for n in nodes:
        if n.key == "global_defs":
            head += _global_defs(n, notes)
        elif n.key in VRRP or n.key.startswith("vrrp_"):
            head.append(notes.at(n.line, n.raw, VRRP_NOTE if not vrrp_said
                                 else "VRRP: left to keepalived (see above)"))
            vrrp_said = True
        elif n.key == "virtual_server_group":
            continue
        elif n.key == "virtual_server" and n.children is not None:
            v = _virtual(n, groups, notes)
            if isinstance(v, Virtual):
                virtuals.append(v)
            else:
                tail += v
        elif n.key == "include":
            head.append(notes.at(n.line, n.raw, "import the included file on its own"))
        else:
            head.append(notes.at(n.line, n.raw, "no equivalent; skipped"))
    return Imported(render(file, "keepalived", head, {}, virtuals, tail), notes.notes,
                    len(virtuals))


def _global_defs(n: Node, notes: Notes) -> list[str]:
    out = []
    to: list[str] = []
    sender = host = port = None
    email = None
    for c in n.children or ():
        if c.key == "notification_email":
            email = c
            addrs = [w for ch in c.children or () for w in ch.words] + c.args()
            bad = [a for a in addrs if not mail_ok(a)]
            to += [a for a in addrs if mail_ok(a)]
            # keepalived mails as its smtp_alert* options say (VRRP's changes
            # too, left to it); hoststated every host and redirect event
            out.append(notes.at(c.line, c.raw + " " + " ".join(addrs),
                                "alert mail to these: keepalived mails the changes its "
                                "smtp_alert options choose (VRRP's too), hoststated every "
                                "host and redirect change"
                                + (f"; not a mail address, left out: {', '.join(bad)}"
                                   if bad else "")))
        elif c.key == "notification_email_from":
            a = c.args()
            if len(a) == 1 and mail_ok(a[0]):
                sender = a[0]
            else:
                out.append(notes.at(c.line, c.raw, "not a mail address; "
                                                   "hoststated@HOSTNAME used"))
        elif c.key == "smtp_server":
            a = c.args()
            p = port_of(a[1]) if len(a) == 2 and a[1].isdigit() else None
            if a and len(a) <= 2 and host_ok(a[0]) and (len(a) == 1 or p is not None):
                host, port = a[0], p
            else:
                out.append(notes.at(c.line, c.raw, "not an address or host name [port]; "
                                                   "localhost port 25 used"))
        elif c.key == "smtp_connect_timeout":
            out.append(notes.at(c.line, c.raw, "no equivalent: hoststated waits 30 s for each "
                                               "step of the SMTP exchange"))
        elif c.key == "smtp_alert":
            out.append(notes.at(c.line, c.raw, "hoststated mails every host and redirect "
                                               "change when an alert mail is configured"))
        elif c.key.startswith("vrrp_"):
            out.append(notes.at(c.line, c.raw, "VRRP: left to keepalived"))
        else:
            out.append(notes.at(c.line, c.raw, "no equivalent; skipped"))
    if to:
        out.append(alert_mail(to, sender, host, port))
    elif email is not None or sender or host:
        out.append(f"# {notes.file}:{n.line}: no notification_email address: no alert mail")
    return out


def _num(node: Node | None) -> int | None:
    if node is None or not node.args():
        return None
    a = node.args()[0]
    return int(a) if a.isdigit() else None


def _virtual(n: Node, groups, notes: Notes) -> Virtual | list[str]:
    where = f"{notes.file}:{n.line}"
    v = Virtual(where=where, name=" ".join(n.args()))
    args = n.args()
    proto_node = n.find("protocol")
    proto = (proto_node.args()[0].lower() if proto_node and proto_node.args() else "tcp")
    if proto not in ("tcp", "udp"):
        v.comments.append(notes.at(proto_node.line, proto_node.raw,
                                   "hoststated forwards tcp and udp; tcp used"))
        proto = "tcp"
    vport = None
    if len(args) == 2 and args[0] == "fwmark" and args[1].isdigit():
        v.fwmark = int(args[1])
    elif len(args) == 2 and args[0] == "group":
        g = groups.get(args[1])
        if g is None:
            v.comments.append(notes.at(n.line, n.raw, "no such virtual_server_group; "
                                                      "skipped"))
            return v.comments
        for e in g.children or ():
            w = e.words
            if len(w) == 2 and w[0] == "fwmark" and w[1].isdigit():
                if v.fwmark is None:
                    v.fwmark = int(w[1])
                else:
                    v.comments.append(notes.at(e.line, e.raw, "a second firewall mark: "
                                                              "one per redirect; left out"))
                continue
            port = port_of(w[1]) if len(w) == 2 else None
            addrs = None
            if port is not None and is_ip(w[0]):
                addrs = [w[0]]
            elif port is not None and "-" in w[0]:
                first, _, last = w[0].partition("-")
                addrs = expand_range(first, last)
            if not addrs:
                v.comments.append(notes.at(e.line, e.raw, "not an address and port this "
                                                          "importer reads; left out"))
                continue
            vport = vport or port
            v.listens += [(a, proto, port) for a in addrs]
    elif len(args) == 2 and is_ip(args[0]) and port_of(args[1]) is not None:
        vport = port_of(args[1])
        v.listens.append((args[0], proto, vport))
    else:
        v.comments.append(notes.at(n.line, n.raw, "not an address and port, fwmark or "
                                                  "group this importer reads; skipped"))
        return v.comments
    if not v.listens and v.fwmark is None:
        v.comments.append(notes.at(n.line, n.raw, "no virtual address left; skipped"))
        return v.comments
    sched = "wlc"                     # what IPVS takes when none is given
    kind = "nat"
    reals: list[Node] = []
    for c in n.children or ():
        k = c.key
        a = c.args()
        if k == "real_server":
            reals.append(c)
        elif k in ("lb_algo", "lvs_sched"):
            if a and a[0].lower() in SCHEDULERS:
                sched = a[0].lower()
            else:
                v.comments.append(notes.at(c.line, c.raw, "not an IPVS scheduler; wlc used"))
        elif k in ("lb_kind", "lvs_method"):
            if a and a[0].lower() in METHODS:
                kind = METHODS[a[0].lower()]
            else:
                v.comments.append(notes.at(c.line, c.raw, "unknown method; NAT used"))
        elif k == "delay_loop":
            if _num(c):
                v.interval = _num(c)
        elif k == "persistence_timeout":
            if _num(c):
                v.sticky = _num(c)
            elif _num(c) != 0:
                v.comments.append(notes.at(c.line, c.raw, "not a number; no persistence"))
        elif k == "persistence_granularity":
            v.netmask = a[0] if a else None
        elif k == "protocol":
            pass
        elif k == "sorry_server":
            if len(a) >= 1 and is_ip(a[0]):
                sport = port_of(a[1]) if len(a) > 1 else None
                v.fallback = [Real(a[0], sport)]
                v._sorry = (c, sport)          # its port is checked below
            else:
                v.comments.append(notes.at(c.line, c.raw, "not an address; left out"))
        elif k == "ops":
            if proto == "udp":
                v.one_packet = True
            else:
                v.comments.append(notes.at(c.line, c.raw, "one-packet is for udp; left out"))
        elif k == "virtualhost":
            v._vhost = a[0] if a else None
        elif k in ("quorum_up", "quorum_down"):
            # keepalived: run when the up real servers' weights reach (fall
            # below) quorum; a notify command runs at every host event too
            v.comments.append(notes.at(c.line, c.raw,
                                       "not carried over: keepalived runs it when the up real "
                                       "servers' weights reach (quorum_down: fall below) the "
                                       "quorum; a notify command in this redirect runs at "
                                       "every host, table and redirect change: with the "
                                       "default quorum 1, a wrapper that acts only when "
                                       f"HOSTSTATED_EVENT is redirect does the same ({NOTIFY})"))
        else:
            v.comments.append(notes.at(c.line, c.raw, "no equivalent; skipped"))
    v.mode = SCHEDULERS[sched]
    v.method = kind
    if v.netmask and v.sticky is None:
        v.netmask = None
    checks: list[tuple[str, list[str], int | None, int | None, Node]] = []
    inhibit = []
    seen = set()
    for r in reals:
        a = r.args()
        port = port_of(a[1]) if len(a) > 1 else vport
        if not a or not is_ip(a[0]) or (len(a) > 1 and port is None):
            v.comments.append(notes.at(r.line, r.raw, "not an address and port; skipped"))
            continue
        if (a[0], port) in seen:
            v.comments.append(notes.at(r.line, r.raw, "the same real server twice; kept "
                                                      "once"))
            continue
        seen.add((a[0], port))
        real = Real(a[0], port)
        inhibit.append(r.find("inhibit_on_failure") is not None)
        found = None
        for c in r.children or ():
            if c.key == "weight":
                w = _num(c)
                if w is not None:
                    real.weight = w
            elif c.key in CHECKERS:
                if found is None:
                    found = _checker(c, v, notes, proto)
                    if found is None:
                        real.checked = False
                else:
                    v.comments.append(notes.at(c.line, c.raw, "a second checker: hoststated "
                                                              "checks a host one way; the "
                                                              "first is used"))
            elif c.key in ("notify_up", "notify_down"):
                _notify(c, v, notes)
            elif c.key == "inhibit_on_failure":
                pass
            else:
                v.comments.append(notes.at(c.line, c.raw, "no equivalent; skipped"))
        if found is None:
            real.checked = False             # keepalived: no checker, always up
        else:
            checks.append(found + (r,))
            real.retry = found[3] or 0
        v.reals.append(real)
    if not v.reals:
        v.comments.append(notes.at(n.line, n.raw, "no real server; skipped"))
        return v.comments
    # inhibit_on_failure: weight 0 instead of removal (hoststated's quiescent)
    v.quiescent = all(inhibit)
    if any(inhibit) and not all(inhibit):
        v.comments.append(f"# {where}: inhibit_on_failure on some real servers only: "
                          "hoststated's quiescent is per redirect; left off")
    if checks:
        check, opts, timeout, _, _node = checks[0]
        v.check, v.check_opts = check, opts
        v.timeout = timeout
        for other in checks[1:]:
            if other[:3] != checks[0][:3]:
                v.comments.append(notes.at(other[4].line, other[4].raw,
                                           "this real server's checker differs from the "
                                           "first's: hoststated checks a table one way; "
                                           "the first's is used"))
    else:
        v.check = "check none"
        for r in v.reals:
            r.checked = True                 # the table's check none says it
    _ports(v, vport, notes)
    sorry = getattr(v, "_sorry", None)
    if sorry is not None:
        node, sport = sorry
        if sport is not None and v.port is not None and sport != v.port:
            v.comments.append(notes.at(node.line, node.raw,
                                       f"the sorry server's port differs from the real "
                                       f"servers' {v.port}: hoststated's backup table uses "
                                       "one port; left out"))
            v.fallback = []
        else:
            for f in v.fallback:
                f.port = None
    if v.mode in UNWEIGHTED and any(r.weight != 1 for r in v.reals):
        v.comments.append(f"# {where}: weights left out: IPVS {sched} ignores them")
    return v


def _notify(c: Node, v: Virtual, notes: Notes) -> None:
    """A real server's notify_up/notify_down: its redirect's `notify command
    on up|down` (once per command), which runs at every such event of the
    redirect's hosts, tables and of the redirect itself."""
    a = c.args()
    on = "up" if c.key == "notify_up" else "down"
    why = program_ok(a[0]) if a else "no command"
    if why is not None:
        v.comments.append(notes.at(c.line, c.raw, f"{why}; left out ({NOTIFY})"))
        return
    line = f"notify command {q(a[0])} on {on}"
    if line not in v.alerts:
        v.alerts.append(line)
    v.comments.append(notes.at(c.line, c.raw,
                               f"notify command on {on} in the redirect: keepalived runs it "
                               f"for this real server only, hoststated for every host of the "
                               f"redirect (and its tables and itself), as its unprivileged "
                               f"user, with the kind, name, old and new state and the reason "
                               f"as arguments: let it look at HOSTSTATED_HOST"
                               + ("; the user and group given are not used" if len(a) > 1
                                  else "")))


def _ports(v: Virtual, vport, notes: Notes) -> None:
    for r in table_port(v):
        v.comments.append(f"# {v.where}: real {r.address} port {r.port}: direct "
                          f"routing and tunnels keep the port; {v.port} used")
        notes.notes.append(f"{v.where}: real {r.address} port {r.port}: port {v.port} "
                           "used")


def _checker(c: Node, v: Virtual, notes: Notes, proto: str):
    """(check, options, timeout ms, retry, ...) of one checker block; None
    for a checker that says nothing about the host (kept as not checked)."""
    opts: list[str] = []
    timeout = None
    retry = None
    port = None
    path = None
    digest = None
    code = None
    extra_urls = 0
    misc = None
    helo = None
    for s in c.children or ():
        a = s.args()
        if s.key == "connect_timeout" and _num(s):
            timeout = _num(s) * 1000
        elif s.key in ("retry", "nb_get_retry") and _num(s) is not None:
            retry = _num(s)
        elif s.key == "connect_port" and a and port_of(a[0]):
            port = port_of(a[0])
        elif s.key == "bindto" and a and is_ip(a[0]):
            opts.append(f"check source {q(a[0])}")
        elif s.key == "url":
            if path is not None:
                extra_urls += 1
                v.comments.append(notes.at(s.line, s.raw, "a second url: hoststated checks "
                                                          "one; the first is used"))
                continue
            for u in s.children or ():
                ua = u.args()
                if u.key == "path" and ua:
                    path = ua[0]
                elif u.key == "digest" and ua:
                    digest = ua[0]
                elif u.key == "status_code" and ua:
                    if ua[0].isdigit():
                        code = int(ua[0])
                    else:
                        v.comments.append(notes.at(u.line, u.raw, "a range of codes: "
                                                                  "hoststated takes one; "
                                                                  "200 used"))
                        code = 200
                else:
                    v.comments.append(notes.at(u.line, u.raw, "no equivalent; skipped"))
        elif s.key == "misc_path" and a:
            misc = a[0]
        elif s.key in ("helo_name",) and a:
            helo = a[0]
        elif s.key in ("delay_before_retry", "misc_timeout", "misc_dynamic", "warmup"):
            v.comments.append(notes.at(s.line, s.raw, "no equivalent; skipped"))
        else:
            v.comments.append(notes.at(s.line, s.raw, "no equivalent; skipped"))
    if port is not None:
        opts.insert(0, f"check port {port}")
    k = c.key
    if k in ("HTTP_GET", "SSL_GET"):
        kind = "http" if k == "HTTP_GET" else "https"
        s = f"check {kind} {q(path or '/')}"
        vhost = getattr(v, "_vhost", None)
        if vhost:
            s += f" host {q(vhost)}"
        if digest and len(digest) == 32:
            if code is not None and code != 200:
                v.comments.append(f"# {notes.file}:{c.line}: status_code {code} and a "
                                  "digest: hoststated checks the digest")
            s += f" method GET digest {q(digest.lower())}"
        else:
            s += f" code {code or 200}"
        return s, opts, timeout, retry
    if k == "TCP_CHECK":
        if proto == "udp":
            v.comments.append(notes.at(c.line, c.raw, "TCP_CHECK of a udp service: "
                                                      "check tcp kept"))
        return "check tcp", opts, timeout, retry
    if k == "SMTP_CHECK":
        return "check smtp" + (f" helo {q(helo)}" if helo else ""), opts, timeout, retry
    if k == "MISC_CHECK" and misc:
        v.comments.append(notes.at(c.line, c.raw, "MISC_CHECK: exit 0 is up, as "
                                                  "keepalived; the script gets ldirectord's "
                                                  "four arguments, not its own"))
        return f"check script {q(misc.split()[0])} ldirectord", [], timeout, retry
    if k == "PING_CHECK":
        return "check icmp", [], timeout, retry
    if k == "DNS_CHECK":
        return "check dns \".\"" + (" tcp" if proto == "tcp" else ""), \
            [o for o in opts if not o.startswith("check source")], timeout, retry
    v.comments.append(notes.at(c.line, c.raw, "no equivalent checker: the host is not "
                                              "checked (taken as up)"))
    return None
