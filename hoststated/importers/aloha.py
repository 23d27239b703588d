"""An ALOHA LVS director configuration -> hoststated.conf (HAProxy ALOHA
"Layer 4 (LVS) reference").

    director <name> <ip>[:<port>] [TCP|UDP]
        balance <algorithm>
        mode gateway|nat|tunnel
        check [interval S] [timeout S] [port P] [source IP] [rise N] [fall N] [inhibit]
        option persistence [timeout S] [netmask M]
        option httpcheck [uri] [statuscode] [vhost] | tcpcheck | icmpcheck | arpcheck [if]
        option onepacket
        server <name> <ip>[:<port>] [weight N] [check] [sorry]

A director's statements are the indented lines after it; `#` comments.
Servers written without `check` are not checked (hoststated's `no check`);
a director whose servers are checked and that names no check option is
checked with ICMP echo, as ALOHA does."""

from __future__ import annotations

from hoststated.conf.lexer import quote as q
from hoststated.importers.common import (table_port, Imported, ImportFailed, Notes, Real, Virtual, is_ip,
                                  port_of, render)

BALANCE = {
    "roundrobin": "weighted-roundrobin",     # ALOHA's roundrobin honours weights
    "leastconn": "weighted-least-connections",
    "source": "source-hash", "dest": "destination-hash",
    "shortexpdelay": "shortest-expected-delay", "shortestexpected": "shortest-expected-delay",
    "neverqueue": "never-queue", "fo": "weighted-failover", "ovh": "weighted-overflow",
    "ovf": "weighted-overflow", "mh": "maglev-hash", "twos": "weighted-two-choices",
}
MODES = {"gateway": "route", "nat": "nat", "tunnel": "tunnel"}


def convert(text: str, file: str) -> Imported:
    notes = Notes(file)
    head: list[str] = []
    tail: list[str] = []
    directors: list[tuple[int, str, list[tuple[int, list[str], str]]]] = []
    current = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        words = line.split()
        if not raw[:1].isspace():
            if words[0] == "director":
                current = (n, raw, [])
                directors.append(current)
            else:
                current = None
                head.append(notes.at(n, raw, "not an LVS director statement; skipped"))
            continue
        if current is None:
            raise ImportFailed(file, n, f"an indented line outside a director: "
                                        f"{raw.strip()[:60]!r}")
        current[2].append((n, words, raw))
    virtuals = []
    for n, raw, body in directors:
        v = _director(file, n, raw, body, notes)
        if isinstance(v, Virtual):
            virtuals.append(v)
        else:
            tail += v
    return Imported(render(file, "aloha", head, {}, virtuals, tail), notes.notes,
                    len(virtuals))


def _addr_port(s: str) -> tuple[str, int | None, bool]:
    """ip[:port]; the flag says the port was written but is not one."""
    if s.startswith("["):
        addr, _, rest = s[1:].partition("]")
        p = rest[1:] if rest.startswith(":") else None
    elif s.count(":") == 1:
        addr, _, p = s.partition(":")
    else:
        addr, p = s, None
    port = port_of(p) if p else None
    return addr, port, bool(p) and port is None


def _director(file, n, raw, body, notes: Notes) -> Virtual | list[str]:
    words = raw.split("#", 1)[0].split()
    v = Virtual(where=f"{file}:{n}", name=words[1] if len(words) > 1 else f"director{n}")
    v.method, v.mode = "route", "weighted-least-connections"   # ALOHA's defaults
    v.quiescent = False                       # removed when down, unless `check ... inhibit`
    if len(words) < 3:
        v.comments.append(notes.at(n, raw, "a director with no address (steered by a "
                                           "flow): write `listen on fwmark N` by hand; "
                                           "skipped"))
        return v.comments
    addr, vport, bad = _addr_port(words[2])
    proto = words[3].lower() if len(words) > 3 else "tcp"
    if not is_ip(addr) or bad or proto not in ("tcp", "udp"):
        v.comments.append(notes.at(n, raw, "not an address[:port] [TCP|UDP]; skipped"))
        return v.comments
    if vport is None:
        v.comments.append(notes.at(n, raw, "no port: ALOHA takes every port; hoststated "
                                           "listens on one (or a range): skipped"))
        return v.comments
    v.listens.append((addr, proto, vport))
    interval, timeout = 10, None
    check_kind = None
    servers = []
    for ln, w, line in body:
        k = w[0]
        if k == "balance":
            algo = " ".join(w[1:]).lower()
            if algo == "leastconn localitybased":
                v.mode = "locality-least-connections"
            elif algo == "leastconn localitybased replication":
                v.mode = "locality-least-connections-replicated"
            elif algo in BALANCE:
                v.mode = BALANCE[algo]
            elif algo == "srcdst":
                v.mode = "source-hash"
                v.comments.append(notes.at(ln, line, "IPVS has no source+destination hash; "
                                                     "source-hash used"))
            else:
                v.comments.append(notes.at(ln, line, "unknown balance; leastconn used"))
        elif k == "mode":
            if len(w) > 1 and w[1].lower() in MODES:
                v.method = MODES[w[1].lower()]
            else:
                v.comments.append(notes.at(ln, line, "unknown mode; gateway used"))
        elif k == "check":
            i = 1
            while i < len(w):
                key = w[i].lower()
                val = w[i + 1] if i + 1 < len(w) else ""
                if key == "inhibit":
                    i += 1
                    continue                 # weight 0 instead of removal: quiescent
                if key == "interval" and val.isdigit() and int(val) > 0:
                    interval = int(val)
                elif key == "timeout" and val.isdigit() and int(val) > 0:
                    timeout = int(val) * 1000
                elif key == "port" and port_of(val):
                    v.check_opts.append(f"check port {port_of(val)}")
                elif key == "source" and is_ip(val):
                    v.check_opts.append(f"check source {q(val)}")
                elif key in ("rise", "fall") and val.isdigit() and int(val) >= 1:
                    v._risefall = getattr(v, "_risefall", []) + [f"{key} {int(val)}"]
                else:
                    v.comments.append(notes.at(ln, line, f"check {key} {val}: not "
                                                         "understood; left out"))
                i += 2
            v.quiescent = "inhibit" in [x.lower() for x in w]
        elif k == "option":
            what = w[1].lower() if len(w) > 1 else ""
            if what == "persistence":
                v.sticky = 300
                rest = w[2:]
                for j in range(0, len(rest) - 1, 2):
                    if rest[j] == "timeout" and rest[j + 1].isdigit():
                        v.sticky = int(rest[j + 1])
                    elif rest[j] == "netmask":
                        v.netmask = rest[j + 1]
            elif what == "httpcheck":
                check_kind = _httpcheck(w[2:])
            elif what == "tcpcheck":
                check_kind = "check tcp"
            elif what == "icmpcheck":
                check_kind = "check icmp"
            elif what == "arpcheck":
                check_kind = "check arp"
                if len(w) > 2:
                    v.comments.append(notes.at(ln, line, f"check arp asks from the interface "
                                                         f"the kernel routes each server "
                                                         f"through, not a named one ({w[2]})"))
            elif what == "onepacket":
                if proto == "udp":
                    v.one_packet = True
                else:
                    v.comments.append(notes.at(ln, line, "one-packet is for udp; left out"))
            else:
                v.comments.append(notes.at(ln, line, "unknown option; skipped"))
        elif k == "server":
            servers.append((ln, w, line))
        else:
            v.comments.append(notes.at(ln, line, "unknown director statement; skipped"))
    v.interval = interval
    # ALOHA's default timeout: half the interval
    v.timeout = timeout if timeout is not None else interval * 500
    sorry: list[Real] = []
    any_checked = False
    for ln, w, line in servers:
        if len(w) < 3:
            v.comments.append(notes.at(ln, line, "a server with no address; skipped"))
            continue
        addr, port, bad = _addr_port(w[2])
        if not is_ip(addr) or bad:
            v.comments.append(notes.at(ln, line, "not an ip[:port]; skipped"))
            continue
        r = Real(addr, port or vport)
        flags = [x.lower() for x in w[3:]]
        i = 0
        while i < len(flags):
            f = flags[i]
            if f == "weight" and i + 1 < len(flags) and flags[i + 1].isdigit():
                r.weight = int(flags[i + 1])
                i += 2
                continue
            if f not in ("check", "sorry"):
                v.comments.append(notes.at(ln, line, f"server option {f}: not understood; "
                                                     "left out"))
            i += 1
        r.checked = "check" in flags
        any_checked |= r.checked
        (sorry if "sorry" in flags else v.reals).append(r)
    if not v.reals:
        v.comments.append(notes.at(n, raw, "no server; skipped"))
        return v.comments
    if any_checked:
        v.check = check_kind or "check icmp"
    else:
        v.check = "check none"
        v.check_opts = []
        for r in v.reals:
            r.checked = True
    if v.check in ("check icmp", "check none", "check arp"):
        v.check_opts = [o for o in v.check_opts if not o.startswith(("check port",
                                                                     "check source"))]
    for rf in getattr(v, "_risefall", []):
        v.check_opts.append(rf)
    for r in table_port(v):
        v.comments.append(f"# {v.where}: server {r.address} port {r.port}: gateway and "
                          f"tunnel keep the port; {v.port} used")
    if sorry:
        s = sorry[0]
        if s.port not in (None, v.port):
            v.comments.append(f"# {v.where}: sorry server {s.address}: on another port; "
                              "left out (the backup table uses the same port)")
        else:
            s.port = None
            v.fallback = [s]
            if s.checked:
                v.fallback_check = v.check + "".join(
                    " " + o for o in v.check_opts if not o.startswith(("rise", "fall")))
            else:
                s.checked = True
        for s2 in sorry[1:]:
            v.fallback.append(Real(s2.address))
    return v


def _httpcheck(args: list[str]) -> str:
    uri, code, vhost = "/", 200, None
    positional = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("uri", "statuscode", "vhost") and i + 1 < len(args):
            if a == "uri":
                uri = args[i + 1]
            elif a == "statuscode" and args[i + 1].isdigit():
                code = int(args[i + 1])
            elif a == "vhost":
                vhost = args[i + 1]
            i += 2
            continue
        positional.append(a)
        i += 1
    if positional:
        uri = positional[0]
    if len(positional) > 1 and positional[1].isdigit():
        code = int(positional[1])
    if len(positional) > 2:
        vhost = positional[2]
    s = f"check http {q(uri if uri.startswith('/') else '/' + uri)}"
    if vhost:
        s += f" host {q(vhost)}"
    return s + f" method GET code {code}"
