"""ldirectord.cf -> hoststated.conf (ldirectord(8) CONFIGURATION).

`key = value` lines; a `virtual=` line opens a virtual service and the
indented lines after it are its options; the others are global. Values may
be quoted. What ldirectord does by default is written out: scheduler wrr,
checktype negotiate, the service chosen by the port, the forwarding method
gate, quiescent yes."""

from __future__ import annotations

import re

from hoststated.importers.common import (table_port, NOTIFY, SCHEDULERS, UNWEIGHTED, Imported, ImportFailed,
                                  Notes, Real, Virtual, alert_mail, expand_range, host_ok,
                                  is_ip, mail_ok, port_of, program_ok, render)
from hoststated.conf.lexer import quote as q

METHODS = {"gate": "route", "masq": "nat", "ipip": "tunnel"}
# ldirectord: the service a negotiate check speaks when none is given
PORT_SERVICE = {21: "ftp", 25: "smtp", 53: "dns", 80: "http", 110: "pop", 119: "nntp",
                143: "imap", 389: "ldap", 443: "https", 587: "submission", 993: "imaps",
                995: "pops", 636: "ldaps", 3306: "mysql", 5432: "pgsql", 5060: "sip",
                1812: "radius"}
# options with no kernel or check meaning here, and why
IGNORED = {
    "logfile": "hoststated logs to syslog (or stderr with -d)",
    "supervised": "run hoststated -d under a supervisor (systemd: Type=notify)",
    "fork": "hoststated runs every check in one event loop",
    "execute": "one hoststated per configuration file: -f FILE",
    "readdquiescent": "hoststated always puts back what was removed by hand",
    "comment": "a comment",
    "servicename": "the redirect's name",
    "checkcount": "use fall N or retry N on the hosts",
    "cleanstop": None,            # handled below
}
# issue 14: ldirectord's notification keys; the mail ones (a virtual's over
# the global ones), the global-only ones
MAIL_KEYS = ("emailalert", "emailalertfrom", "smtp", "emailalertfreq", "emailalertstatus")
GLOBAL_ONLY = ("autoreload", "callback", "maintenancedir")
NOTIFY_KEYS = set(MAIL_KEYS) | set(GLOBAL_ONLY) | {"fallbackcommand", "monitorfile"}
# ldirectord(8): `fallbackcommand` runs (as root) with `start` when every real
# server is down and `stop` when one is back: `notify command ... on fallback`
# in the redirect (a virtual's own over the global one, as ldirectord)
FALLBACKCOMMAND = (f"ldirectord runs it as root; hoststated runs it as its user, with start "
                   f"when no real server is up and stop when one is back ({NOTIFY})")
# ldirectord(8): `monitorfile` logs the result of every check to a file;
# hoststated's `log state file` (global) a line per host state change
MONITORFILE = ("ldirectord logs every check's result to this file; `log state file` appends "
               "a line per host state change (every check: `log host checks`, to syslog)")
MONITORFILE_VIRTUAL = ("hoststated has one `log state file`, global: a virtual's own file "
                       "is left out (every check: `log host checks`, to syslog)")
_LINE = re.compile(r"^(\s*)([A-Za-z0-9_:.]+)\s*=\s*(.*?)\s*$")


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def convert(text: str, file: str) -> Imported:
    notes = Notes(file)
    head: list[str] = []
    glob: dict[str, tuple[int, str]] = {}
    graw: dict[str, tuple[int, str, str]] = {}          # the same with its line's text
    blocks: list[tuple[int, str, list[tuple[int, str, str, str]]]] = []
    current = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0] if not raw.lstrip().startswith(("request", "receive")) \
            else raw
        if raw.lstrip().startswith("#") or not line.strip():
            continue
        if re.fullmatch(r"\s*\[[^\]]*\]\s*", line):
            # Config::Ldirectord's INI sections (not ldirectord's own syntax)
            head.append(notes.at(n, raw, "an INI section header, not ldirectord syntax; "
                                         "skipped"))
            continue
        m = _LINE.match(line)
        if m is None:
            raise ImportFailed(file, n, f"not an ldirectord line (want key=value): "
                                        f"{raw.strip()[:60]!r}")
        indent, key, value = m.group(1), m.group(2).lower(), m.group(3)
        if key in ("virtual", "virtual6"):
            current = (n, value, [])
            blocks.append(current)
            continue
        if current is not None and indent:
            current[2].append((n, key, value, raw))
        else:
            current = None
            if ":" in key or key.startswith("eth"):
                head.append(notes.at(n, raw, "an interface address line, not ldirectord "
                                             "syntax; the virtual addresses are left to "
                                             "whatever brings them up"))
                continue
            glob[key] = (n, value)
            graw[key] = (n, value, raw)
            head_note = _global(key, value, n, raw, notes)
            if head_note:
                head.append(head_note)
    g_interval = _int(glob, "checkinterval", 10)
    g_ctimeout = _int(glob, "connecttimeout", None) or _int(glob, "checktimeout", None)
    g_ntimeout = _int(glob, "negotiatetimeout", None) or _int(glob, "checktimeout", None)
    g_quiescent = _unquote(glob.get("quiescent", (0, "yes"))[1]).lower() != "no"
    g_fail = _int(glob, "failurecount", 1)
    tail: list[str] = []
    if "cleanstop" in glob:
        v = _unquote(glob["cleanstop"][1]).lower()
        tail.append(f"cleanstop {'no' if v == 'no' else 'yes'}")
    head += _global_notify(graw, notes)
    virtuals = []
    for n, value, opts in blocks:
        v = _virtual(file, n, value, opts, notes, g_ctimeout, g_ntimeout, g_quiescent,
                     g_fail, glob, graw)
        if isinstance(v, Virtual):
            virtuals.append(v)
        else:                       # skipped: its comments say why
            tail += v
    globals_ = {"interval": g_interval}
    return Imported(render(file, "ldirectord", head, globals_, virtuals, tail),
                    notes.notes, len(virtuals))


def _int(glob, key, default):
    if key not in glob:
        return default
    v = _unquote(glob[key][1])
    return int(v) if v.isdigit() else default


def _global(key: str, value: str, n: int, raw: str, notes: Notes) -> str | None:
    if key in ("checkinterval", "checktimeout", "connecttimeout", "negotiatetimeout",
               "quiescent", "failurecount", "cleanstop", "fallback"):
        return None                 # used below (fallback: as each virtual's default)
    if key in NOTIFY_KEYS:
        return None                 # _global_notify
    if key in IGNORED:
        return notes.at(n, raw, f"no equivalent: {IGNORED[key]}")
    return notes.at(n, raw, "unknown ldirectord option; skipped")


# --- notifications (issue 14) -------------------------------------------------

def _global_notify(g: dict[str, tuple[int, str, str]], notes: Notes) -> list[str]:
    """The global alert mail, maintenance directory and autoreload; the
    comments where they differ from ldirectord's."""
    out: list[str] = []
    mail = _mail(g, set(MAIL_KEYS), notes, out)
    if mail is not None:
        out.append(mail)
    if "maintenancedir" in g:
        ln, val, raw = g["maintenancedir"]
        d = _unquote(val)
        if d.startswith("/") and not d.endswith("\\"):
            out.append(f"maintenance directory {q(d)}")
        else:
            out.append(notes.at(ln, raw, "not an absolute path, as `maintenance directory` "
                                         "wants; left out"))
    auto = "autoreload" in g and _unquote(g["autoreload"][1]).lower() == "yes"
    line = "autoreload" if auto else None
    if "callback" in g:
        ln, val, raw = g["callback"]
        cmd = _unquote(val)
        why = program_ok(cmd)
        if not auto:
            out.append(notes.at(ln, raw, "ldirectord calls it only with autoreload=yes; "
                                         "left out"))
        elif why is not None:
            out.append(notes.at(ln, raw, f"{why}; left out"))
        else:
            line += f" callback {q(cmd)}"
            out.append(notes.at(ln, raw, "ldirectord runs it as root when it sees the change, "
                                         "before the reload; hoststated runs the callback as "
                                         "its user after a reload that succeeded, with the "
                                         "configuration file as its last argument"))
    if line is not None:
        out.append(line)
    if "fallbackcommand" in g:
        ln, val, raw = g["fallbackcommand"]
        why = program_ok(_unquote(val))
        out.append(notes.at(ln, raw, f"{why}; left out" if why is not None else
                            "in each redirect without one of its own, `on fallback`; "
                            + FALLBACKCOMMAND))
    if "monitorfile" in g:
        ln, val, raw = g["monitorfile"]
        path = _unquote(val)
        if path.startswith("/") and not path.endswith("\\"):
            out.append(notes.at(ln, raw, MONITORFILE))
            out.append(f"log state file {q(path)}")
        else:
            out.append(notes.at(ln, raw, "not an absolute path, as `log state file` wants; "
                                         "left out"))
    return out


def _virtual_notify(v: Virtual, o: dict[str, tuple[int, str, str]],
                    g: dict[str, tuple[int, str, str]], notes: Notes) -> None:
    """A virtual's own emailalert* (its redirect's alert mail, in place of
    the global one: the virtual's keys over the global ones, as ldirectord)."""
    own = {k for k in MAIL_KEYS if k in o}
    if own:
        keys = {**{k: g[k] for k in MAIL_KEYS if k in g}, **{k: o[k] for k in own}}
        mail = _mail(keys, own, notes, v.comments)
        if mail is not None:
            v.alerts.append(mail)
        elif _mail(g, set(), notes, []) is not None:
            # a redirect cannot turn the global alert mail off
            v.comments.append(f"# {v.where}: no alert mail of its own: the global one mails "
                              "this redirect's changes too")
    # the virtual's fallbackcommand, else the global one (told once, at its line)
    fb = o.get("fallbackcommand") or g.get("fallbackcommand")
    if fb is not None:
        ln, val, raw = fb
        cmd = _unquote(val)
        why = program_ok(cmd)
        if why is not None:
            v.comments.append(notes.at(ln, raw, f"{why}; left out"))
        else:
            v.alerts.append(f"notify command {q(cmd)} on fallback")
            if "fallbackcommand" in o:   # the global one's note is at its line
                v.comments.append(notes.at(ln, raw, FALLBACKCOMMAND))
    for key in o:
        ln, _, raw = o[key]
        if key in GLOBAL_ONLY:
            v.comments.append(notes.at(ln, raw, "a global option in ldirectord; left out"))
        elif key == "monitorfile":
            v.comments.append(notes.at(ln, raw, MONITORFILE_VIRTUAL))


def _mail(keys: dict[str, tuple[int, str, str]], own: set[str], notes: Notes,
          out: list[str]) -> str | None:
    """`alert mail` from ldirectord's email keys (key -> line, value, text),
    or None; a comment in out for each line of own that differs."""
    def note(k: str, why: str) -> None:
        if k in own and k in keys:
            out.append(notes.at(keys[k][0], keys[k][2], why))

    if "emailalert" not in keys:
        for k in MAIL_KEYS:
            note(k, "without an emailalert (here or, for a virtual, the global one) nothing "
                    "is mailed; left out")
        return None
    to = [a.strip() for a in _unquote(keys["emailalert"][1]).split(",") if a.strip()]
    good = [a for a in to if mail_ok(a)]
    if len(good) < len(to):
        note("emailalert", "not a mail address: " + ", ".join(a for a in to if a not in good)
             + "; left out")
    if not good:
        for k in MAIL_KEYS:
            if k != "emailalert":
                note(k, "no mail address: nothing is mailed; left out")
        return None
    sender = host = None
    every = 0
    if "emailalertfrom" in keys:
        a = _unquote(keys["emailalertfrom"][1])
        if mail_ok(a):
            sender = a
        else:
            note("emailalertfrom", "not a mail address; hoststated@HOSTNAME used")
    if "smtp" in keys:
        h = _unquote(keys["smtp"][1])
        if host_ok(h):
            host = h
        else:
            note("smtp", "not an address or a host name; localhost used")
    if "emailalertfreq" in keys:
        f = _unquote(keys["emailalertfreq"][1])
        if f.isdigit() and int(f) <= 2**31 - 1:
            every = int(f)
        else:
            note("emailalertfreq", "not a number of seconds; mailed once")
    if "emailalertstatus" in keys:
        st = set(re.split(r"[\s,]+", _unquote(keys["emailalertstatus"][1]).lower())) - {""}
        if "none" in st or not st & {"all", "running"}:
            for k in MAIL_KEYS:
                note(k, "emailalertstatus has neither all nor running: hoststated mails only "
                        "while it runs; no alert mail")
            return None
        note("emailalertstatus", "ldirectord's statuses are its phases (starting, running, "
                                 "stopping, reloading); hoststated mails the host and redirect "
                                 "changes while it runs, as running: `on all`")
    return alert_mail(good, sender, host, None, every)


def _addr_port(s: str) -> tuple[str, str | None]:
    s = s.strip()
    if s.startswith("["):                       # [v6]:port
        addr, _, rest = s[1:].partition("]")
        return addr, rest[1:] if rest.startswith(":") else None
    if s.count(":") == 1:
        a, _, p = s.partition(":")
        return a, p
    return s, None


def _virtual(file, n, value, opts, notes: Notes, g_ct, g_nt, g_quiescent, g_fail,
             glob, graw) -> Virtual | list[str]:
    where = f"{file}:{n}"
    v = Virtual(where=where, name="")
    vaddr, vport_s = _addr_port(_unquote(value))
    o: dict[str, tuple[int, str, str]] = {}
    reals: list[tuple[int, str, str]] = []
    for ln, key, val, raw in opts:
        if key in ("real", "real6"):
            reals.append((ln, val, raw))
        elif key in o and key not in ("request", "receive"):
            v.comments.append(notes.at(ln, raw, f"{key} given twice; the first is used"))
        else:
            o.setdefault(key, (ln, val, raw))
            if key in ("request", "receive") and o[key][0] != ln:
                v.comments.append(notes.at(ln, raw, f"{key} given twice; the first is used"))

    def opt(key, default=None):
        return _unquote(o[key][1]) if key in o else default

    proto = (opt("protocol") or "tcp").lower()
    if vport_s is None and vaddr.isdigit():         # virtual = firewall mark
        v.fwmark = int(vaddr)
        proto = "fwm"
        vport = None
    else:
        vport = port_of(vport_s or "")
        if vport is None or not is_ip(vaddr):
            v.comments.append(notes.at(n, f"virtual={value}", "not an address:port this "
                                                             "importer can read (a host or "
                                                             "service name to look up?); "
                                                             "virtual skipped"))
            return v.comments
        if proto == "fwm":
            proto = "tcp"
        if proto not in ("tcp", "udp"):
            v.comments.append(notes.at(o["protocol"][0], o["protocol"][2],
                                       "unknown protocol; tcp used"))
            proto = "tcp"
        v.listens.append((vaddr, proto, vport))
    v.name = opt("servicename") or (f"{vaddr}:{vport}" + ("/udp" if proto == "udp" else "")
                                    if v.fwmark is None else f"fwmark {v.fwmark}")
    # scheduler, persistence, quiescence
    sched = (opt("scheduler") or "wrr").lower()
    if sched not in SCHEDULERS:
        v.comments.append(notes.at(o["scheduler"][0], o["scheduler"][2],
                                   "unknown IPVS scheduler; wrr used"))
        sched = "wrr"
    v.mode = SCHEDULERS[sched]
    if "persistent" in o:
        p = opt("persistent")
        if p.isdigit() and int(p) > 0:
            v.sticky = int(p)
        else:
            v.comments.append(notes.at(o["persistent"][0], o["persistent"][2],
                                       "not a number of seconds; no persistence"))
    if "netmask" in o:
        if v.sticky is not None:
            v.netmask = opt("netmask")
        else:
            v.comments.append(notes.at(o["netmask"][0], o["netmask"][2],
                                       "netmask without persistent: nothing to group"))
    q_ = opt("quiescent")
    v.quiescent = g_quiescent if q_ is None else q_.lower() != "no"
    if (opt("ops") or "no").lower() == "yes":
        if proto == "udp":
            v.one_packet = True
        else:
            v.comments.append(notes.at(o["ops"][0], o["ops"][2],
                                       "one-packet scheduling is for udp; left out"))
    _virtual_notify(v, o, graw, notes)
    for key in o:
        if key in NOTIFY_KEYS:
            pass
        elif key in IGNORED and key not in ("servicename",):
            v.comments.append(notes.at(o[key][0], o[key][2],
                                       f"no equivalent: {IGNORED[key] or 'global only'}"))
    # real servers
    methods = []
    seen = set()
    for ln, val, raw in reals:
        for r, method in _reals(ln, val, raw, vport, notes, v):
            if (r.address, r.port) in seen:
                v.comments.append(notes.at(ln, raw, "the same real server twice; kept once"))
                continue
            seen.add((r.address, r.port))
            v.reals.append(r)
            methods.append((method, ln, raw))
    if not v.reals:
        v.comments.append(notes.at(n, f"virtual={value}", "no real server; virtual skipped"))
        return v.comments
    v.method = methods[0][0]
    for method, ln, raw in methods[1:]:
        if method != v.method:
            v.comments.append(notes.at(ln, raw, f"forwarding {method} differs from the "
                                                f"first real's ({v.method}): hoststated "
                                                "forwards a table one way; the first's used"))
    _ports(v, vport, notes, reals)
    # fallback (the virtual's, else the global one)
    fb = o.get("fallback") or (glob.get("fallback") + ("",) if "fallback" in glob else None)
    if fb is not None:
        _fallback(v, fb[0], _unquote(fb[1]), fb[2] or f"fallback={fb[1]}", vport, notes)
    _check(v, o, vport, proto, notes, g_ct, g_nt)
    fail = _int({k: (x[0], x[1]) for k, x in o.items()}, "failurecount", g_fail)
    if fail > 1:
        for r in v.reals:
            r.retry = fail - 1
    if v.mode in UNWEIGHTED:
        for ln, val, raw in reals:
            if any(r.weight != 1 for r in v.reals):
                v.comments.append(notes.at(ln, raw, f"weight left out: IPVS {sched} "
                                                    "ignores weights"))
                break
    return v


def _reals(ln, val, raw, vport, notes: Notes, v: Virtual):
    """real=ip[:port] [gate|masq|ipip] [weight] ["request", "receive"]"""
    words = _unquote(val).split()
    if not words:
        v.comments.append(notes.at(ln, raw, "an empty real server; skipped"))
        return []
    addr_s, port_s = _addr_port(words[0])
    method = "route"
    weight = 1
    rest = words[1:]
    if rest and rest[0].lower() in METHODS:
        method = METHODS[rest.pop(0).lower()]
    if rest and rest[0].isdigit():
        weight = int(rest.pop(0))
    if rest:
        v.comments.append(notes.at(ln, raw, "a check request/receive per real server: "
                                            "hoststated checks a table one way; the "
                                            "virtual's check is used"))
    port = port_of(port_s) if port_s else vport
    if port_s and port is None:
        v.comments.append(notes.at(ln, raw, "not a port this importer knows; skipped"))
        return []
    if "->" in addr_s:
        first, _, last = addr_s.partition("->")
        addrs = expand_range(first, last)
        if addrs is None:
            v.comments.append(notes.at(ln, raw, "not a range of at most 256 addresses; "
                                                "skipped"))
            return []
    elif is_ip(addr_s):
        addrs = [addr_s]
    else:
        v.comments.append(notes.at(ln, raw, "a host name: write its address (the importer "
                                            "does not look names up); skipped"))
        return []
    return [(Real(a, port, weight), method) for a in addrs]


def _ports(v: Virtual, vport, notes: Notes, reals) -> None:
    """The table's port: the first real's; a real on another port keeps its
    own (NAT), or the virtual's where the kernel cannot map ports."""
    for r in table_port(v):
        notes.notes.append(f"{v.where}: real {r.address}:{r.port}: {v.method} to "
                           f"keeps the virtual port; port {v.port} used")
        v.comments.append(f"# {v.where}: real {r.address}:{r.port}: direct routing "
                          f"and tunnels keep the port; {v.port} used")
    if v.fwmark is not None and v.port is None:
        v.port = None


def _fallback(v: Virtual, ln, val, raw, vport, notes: Notes) -> None:
    words = val.split()
    if not words:
        return
    addr, port_s = _addr_port(words[0])
    port = port_of(port_s) if port_s else vport
    if not is_ip(addr):
        v.comments.append(notes.at(ln, raw, "a fallback host name: write its address; "
                                            "left out"))
        return
    if port is not None and v.port is not None and port != v.port:
        v.comments.append(notes.at(ln, raw, f"the fallback's port {port} differs from the "
                                            f"real servers' {v.port}: hoststated's backup "
                                            "table uses the same port; left out"))
        return
    if len(words) > 1 and words[1].lower() in METHODS and METHODS[words[1].lower()] != v.method:
        v.comments.append(notes.at(ln, raw, "the fallback's forwarding method differs: "
                                            "the real servers' is used"))
    v.fallback = [Real(addr)]


SIMPLE = {"ftp", "smtp", "submission", "pop", "pops", "imap", "imaps", "nntp", "ldap",
          "ldaps", "sip", "http", "https"}


def _check(v: Virtual, o, vport, proto, notes: Notes, g_ct, g_nt) -> None:
    def opt(key, default=None):
        return _unquote(o[key][1]) if key in o else default

    def note(key, why):
        if key in o:
            v.comments.append(notes.at(o[key][0], o[key][2], why))
        else:                       # a default of the virtual's: named at its line
            line = int(v.where.rsplit(":", 1)[1])
            v.comments.append(notes.at(line, f"virtual {v.name} ({key} by default)", why))

    ctype = (opt("checktype") or "negotiate").lower()
    ct = opt("connecttimeout") or opt("checktimeout")
    nt = opt("negotiatetimeout") or opt("checktimeout")
    ct = int(ct) if ct and ct.isdigit() else g_ct
    nt = int(nt) if nt and nt.isdigit() else g_nt
    if "checkinterval" in o:
        ci = opt("checkinterval")
        if ci.isdigit() and int(ci) > 0:
            v.interval = int(ci)
    if "checkport" in o:
        cp = port_of(opt("checkport"))
        if cp is None:
            note("checkport", "not a port; left out")
        elif cp != (v.port or vport):
            v.check_opts.append(f"check port {cp}")
    connects = 0
    if ctype.isdigit():
        connects = int(ctype)
        ctype = "negotiate"
    if ctype == "connect":
        v.check = "check tcp" if proto != "udp" else "check icmp"
        if proto == "udp":
            note("checktype", "a connect check of a udp service: ldirectord pings; check "
                              "icmp")
            v.check_opts = []
        v.timeout = ct * 1000 if ct else None
        return
    if ctype == "ping":
        v.check, v.check_opts = "check icmp", []
        v.timeout = ct * 1000 if ct else None
        return
    if ctype in ("on", "off"):
        v.check, v.check_opts = "check none" + (" off" if ctype == "off" else ""), []
        return
    if ctype in ("external", "external-perl"):
        cmd = opt("checkcommand") or "/bin/true"
        if ctype == "external-perl":
            note("checktype", "external-perl: the script is run as a program, not "
                              "evaluated by Perl")
        if " " in cmd:
            note("checkcommand", "a command with arguments: hoststated runs one program "
                                 "with the four arguments; only the program is kept")
            cmd = cmd.split()[0]
        v.check, v.check_opts = f"check script {q(cmd)} ldirectord", []
        v.timeout = nt * 1000 if nt else None
        return
    if ctype != "negotiate":
        note("checktype", "unknown checktype; negotiate used")
    v.timeout = nt * 1000 if nt else None
    if ct and nt and ct < nt:
        v.check_opts.append(f"connect timeout {ct * 1000}")
    service = (opt("service") or PORT_SERVICE.get(vport or 0, "none")).lower()
    request, receive = opt("request"), opt("receive")
    user, password = opt("login"), opt("passwd")
    check = _service_check(service, request, receive, user, password, opt, proto, note, o)
    if check is None:
        v.check = "check icmp" if proto == "udp" else "check tcp"
        v.check_opts = [x for x in v.check_opts
                        if proto != "udp" and not x.startswith("connect timeout")]
        connects = 0
    else:
        v.check = check
        if check.startswith("check none"):
            v.check_opts, connects = [], 0
        if check.split()[1] in ("mysql", "pgsql", "ldap", "ldaps"):
            v.check_opts = [x for x in v.check_opts if not x.startswith("connect timeout")]
    if connects:
        v.check_opts.append(f"connect checks {connects}")


def _service_check(service, request, receive, user, password, opt, proto, note, o):
    if service == "none":
        return "check none"
    creds = ""
    if user is not None and password is not None:
        creds = f" user {q(user)} password {q(password)}"
    if service in ("http", "https"):
        path = request or "/"
        if path.startswith(("http://", "https://")):
            note("request", "an absolute URL: hoststated checks each real server's own "
                            "address; its path is used")
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        if not path.startswith("/"):
            path = "/" + path
        s = f"check {service} {q(path)}"
        if opt("virtualhost"):
            s += f" host {q(opt('virtualhost'))}"
        method = (opt("httpmethod") or "GET").upper()
        if receive:
            try:
                re.compile(receive)
            except re.error:
                receive = re.escape(receive)
            return s + f" method GET body {q(receive)}"
        return s + f" method {method if method in ('GET', 'HEAD') else 'GET'} code 200"
    if service == "http_proxy":
        return f"check http-proxy {q(request or 'http://localhost/')}"
    if service in ("ftp", "pop", "pops", "imap", "imaps"):
        return f"check {service}{creds}"
    if service in ("smtp", "submission", "nntp"):
        return f"check {service}"
    if service in ("ldap", "ldaps"):
        s = f"check {service}"
        if user is not None and password is not None:
            s += f" bind {q(user)} password {q(password)}"
        return s
    if service == "sip":
        return "check sip" + (" tcp" if proto == "tcp" else "")
    if service == "dns":
        s = f"check dns {q(request or '.')}"
        if receive:
            s += f" expect {q(receive.replace(chr(92), ''))}"
        return s + (" tcp" if proto == "tcp" else "")
    if service in ("mysql", "pgsql"):
        if user is None:
            note("service", f"{service} without login: checked with a connect")
            return None
        s = f"check {service} user {q(user)}"
        if password is not None:
            s += f" password {q(password)}"
        if opt("database"):
            s += f" database {q(opt('database'))}"
        if request:
            s += f" query {q(request)}"
        return s
    if service == "radius":
        if not (opt("secret") and user and password):
            note("service", "radius needs secret, login and passwd: checked with a ping")
            return None
        return f"check radius secret {q(opt('secret'))} user {q(user)} password {q(password)}"
    if service == "simpletcp":
        if request is None or receive is None:
            note("service", "simpletcp needs request and receive: checked with a connect")
            return None
        send = request.replace("\\n", "\n")
        if re.fullmatch(r"[^.*+?\[\](){}|^$\\]*", receive):
            return f"check send {q(send)} expect {q('*' + receive + '*')}"
        note("receive", "a regular expression: hoststated's expect is a shell glob; "
                        "written as a glob of its literal text")
        lit = re.sub(r"[.*+?\[\](){}|^$\\]", "*", receive)
        return f"check send {q(send)} expect {q('*' + lit + '*')}"
    key = "service" if "service" in o else "checktype" if "checktype" in o else None
    if key:
        note(key, f"no {service} check in hoststated: checked with "
                  f"{'a ping' if proto == 'udp' else 'a connect'}")
    return None
