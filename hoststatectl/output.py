"""Text (relayctl's columns) and JSON renderings of the daemon's replies.

The text is printed from the typed rows of hoststated.ipc.messages, built
from the reply (from_wire); a reply that does not fit them raises
MessageError."""

from __future__ import annotations

import json
import time
from typing import Any

from hoststated.ipc.messages import Event, HostRow, ShowReply, Stats
from hoststated.states import HostStatus

HEADER = "%-4s\t%-8s\t%-24s\t%-7s\tStatus" % ("Id", "Type", "Name", "Avlblty")


def row(id_: int, type_: str, name: str, avail: str, status: str) -> str:
    return "%-4u\t%-8s\t%-24s\t%-7s\t%s" % (id_, type_, name, avail, status)


def host_lines(h: HostRow, detail: bool) -> list[str]:
    name = str(h.name)
    if h.parent:
        name += " parent %d" % h.parent         # relayctl's inherited-state hosts
    av = h.availability
    lines = [row(h.id, "host", name, "" if av is None else "%.2f%%" % av, h.status)]
    if detail and h.check_cnt:
        extra = "\t%8s\ttotal: %lu/%lu checks" % ("", h.up_cnt, h.check_cnt)
        if h.retry_cnt:
            extra += ", %d retries" % h.retry_cnt
        if h.down_error:
            extra += ", error: %s" % h.down_error
            if h.detail:
                extra += ": %s" % h.detail
        lines.append(extra)
    return lines


def relay_lines(r) -> list[str]:
    """relayctl's figures under a relay (show relays): sessions now are ours."""
    pad = "\t%8s\t" % ""
    return [pad + "total: %d sessions, %d now" % (r.total, r.sessions),
            pad + "last: %d/60s %d/h %d/d sessions" % (r.last_min, r.last_hour, r.last_day),
            pad + "average: %d/60s %d/h %d/d sessions" % (r.avg_min, r.avg_hour, r.avg_day)]


def _duration(seconds: float) -> str:
    s = int(seconds)
    return "%02d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60)


def session_lines(s) -> str:
    """relayctl's `show sessions` lines for one session."""
    dst = f"{s.backend}:{s.backend_port}" if s.backend else "(connecting)"
    return (f"session {s.relay}:{s.id} {s.client}:{s.client_port} -> {dst}\t"
            f"{'RUNNING' if s.status == 'running' else s.status.upper()}\n"
            f"\tage {_duration(s.age)}, idle {_duration(s.idle)}, relay {s.relay}, pid {s.pid}"
            # relayctl prints the tag's id (its XXX: "grab tagname"): the name here
            + (f", tag {s.tag}" if s.tag else ""))


def tables_with_hosts(reply: ShowReply, detail: bool) -> list[str]:
    lines = []
    by_table: dict[str, list[HostRow]] = {}
    for h in reply.hosts or ():
        by_table.setdefault(h.table, []).append(h)
    for t in reply.tables or ():
        lines.append(row(t.id, "table", t.name, "", t.status))
        if t.disabled:
            continue                    # relayd omits a disabled object's children
        for h in by_table.get(t.name, ()):
            lines.extend(host_lines(h, detail))
    return lines


def stats_line(stats: Stats) -> str:
    def fmt(k: str, v: Any) -> str:
        if isinstance(v, float):
            return f"{k} {v:.1f}"
        return f"{k} {v}"
    return "scheduler: " + ", ".join(fmt(k.replace("_", " "), v) for k, v in stats.items())


def text(command: tuple[str, ...], data: Any) -> str:
    """The relayctl-style printout of one reply."""
    match command:
        case ("show", what):
            reply = ShowReply.from_wire(data)
            lines = [HEADER]
            if what in ("summary", "redirects"):
                lines += [row(r.id, "redirect", r.name, "", r.status)
                          for r in reply.redirects or ()]
            if what in ("summary", "hosts"):
                lines += tables_with_hosts(reply, detail=(what == "hosts"))
            if what == "tables":
                lines += [row(t.id, "table", t.name, "", t.status) for t in reply.tables or ()]
            if what in ("summary", "relays"):
                for r in reply.relays or ():
                    lines.append(row(r.id, "relay", r.name, "", r.status))
                    if what == "relays":
                        lines += relay_lines(r)
            if what == "sessions":
                return "\n".join(session_lines(s) for s in reply.sessions or ())
            if what == "summary" and reply.stats is not None and reply.stats.items():
                lines.append(stats_line(reply.stats))
            return "\n".join(lines)
        case ("reload",) | ("load",) | ("poll",) | ("stop",) | ("log", _) | \
                (("host" | "table" | "redirect"), _):
            return "command succeeded"
    return json.dumps(data)


def event_text(wire: dict) -> str:
    ev = Event.from_wire(wire)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    r = ev.row
    if isinstance(r, HostRow):
        s = f"{stamp} host {r.id} {r.name} ({r.table}): {r.status}"
        if r.status == HostStatus.DOWN and r.down_error:
            s += f", error: {r.down_error}" + (f": {r.detail}" if r.detail else "")
        return s
    return f"{stamp} {ev.kind} id: {r.id} name: {r.name} status: {r.status}"


def as_json(data: Any) -> str:
    # one compact line: the C encoder (indent= would take the pure-Python
    # one, 10x slower on 10,000 hosts); pipe through jq to read it
    return json.dumps(data, separators=(",", ":"), default=str)
