"""Text (relayctl's columns) and JSON renderings of the daemon's replies.

The text is printed from the typed rows of hoststated.ipc.messages, built
from the reply (from_wire); a reply that does not fit them raises
MessageError."""

from __future__ import annotations

import json
import time
from typing import Any

from hoststated.ipc.messages import (DaemonInfo, Event, HostRow, RedirectCounters, ShowReply,
                                     Stats)
from hoststated.states import HostStatus

HEADER = "%-4s\t%-8s\t%-24s\t%-7s\tStatus" % ("Id", "Type", "Name", "Avlblty")


def row(id_: int, type_: str, name: str, avail: str, status: str) -> str:
    return "%-4u\t%-8s\t%-24s\t%-7s\t%s" % (id_, type_, name, avail, status)


def host_lines(h: HostRow, detail: bool) -> list[str]:
    name = str(h.name)
    if h.parent:
        name += " parent %d" % h.parent         # relayctl's inherited-state hosts
    av = h.availability
    status = str(h.status) + (" (drain)" if h.drain else "")      # issue 13
    if h.drain and h.drain_reason:                                  # issue 14
        status = status[:-1] + ": " + h.drain_reason + ")"
    lines = [row(h.id, "host", name, "" if av is None else "%.2f%%" % av, status)]
    if detail and h.check_cnt:
        extra = "\t%8s\ttotal: %lu/%lu checks" % ("", h.up_cnt, h.check_cnt)
        if h.retry_cnt:
            extra += ", %d retries" % h.retry_cnt
        if h.down_error:
            extra += ", error: %s" % h.down_error
            if h.detail:
                extra += ": %s" % h.detail
        lines.append(extra)
    if detail and h.last_change:
        lines.append(history_line(h))
    return lines


# --- runtime weights and state history (issue 13) ---

def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def history_line(h: HostRow, now: float | None = None) -> str:
    """Under a host in show hosts: its weight now, and how long it has been
    in its state (since when, after how many changes)."""
    now = time.time() if now is None else now
    weight = "weight %d" % h.weight + (", draining" if h.drain else "")
    return "\t%8s\t%s, %s for %s since %s, %d changes" % (
        "", weight, h.status, _duration(max(0.0, now - h.last_change)),
        _when(h.last_change), h.transitions)


def daemon_line(d: DaemonInfo) -> str:
    """show summary's last line: what runs, since when, the last reload."""
    s = "hoststated %s, pid %d, up %s" % (d.version, d.pid, _duration(d.uptime))
    if d.monitors:
        s += ", %d monitor%s" % (d.monitors, "" if d.monitors == 1 else "s")
    if d.reload_ok is None:
        return s + ", no reload yet"
    s += ", last reload %s %s" % (_when(d.last_reload), "ok" if d.reload_ok else "failed")
    if not d.reload_ok and d.reload_message:
        s += ": " + d.reload_message.splitlines()[0]
    return s


def relay_lines(r) -> list[str]:
    """relayctl's figures under a relay (show relays): sessions now are ours."""
    pad = "\t%8s\t" % ""
    return [pad + "total: %d sessions, %d now" % (r.total, r.sessions),
            pad + "last: %d/60s %d/h %d/d sessions" % (r.last_min, r.last_hour, r.last_day),
            pad + "average: %d/60s %d/h %d/d sessions" % (r.avg_min, r.avg_hour, r.avg_day)]


def router_lines(r) -> list[str]:
    """relayctl's lines under a router (show routers): rtable, rtlabel, one
    per route; then ours: the gateways up and the next hops in use."""
    pad = "\t%8s\t" % ""
    out = []
    if r.rtable:
        out.append(pad + "rtable: %d" % r.rtable)
    if r.rtlabel:
        out.append(pad + "rtlabel: %s" % r.rtlabel)
    out += [pad + "route: %s" % route for route in r.routes]
    out.append(pad + "gateways: %d/%d up, next hops: %s" % (
        r.up, r.gateways, ", ".join(r.nexthops) if r.nexthops else "none (no route)"))
    return out


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:                      # issue 13: a host's time in state may be days
        return "%dd %02d:%02d:%02d" % (s // 86400, s // 3600 % 24, s // 60 % 60, s % 60)
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


# --- kernel counters (issue 13 item 2) ---------------------------------------

def redirect_counter_lines(k: RedirectCounters) -> list[str]:
    """relayctl's figures under a redirect (show redirects), from the
    kernel's counters: connections ("sessions", as relayctl says) in total,
    in the last interval, hour and day, their averages, the most in one
    interval; IPVS adds active and inactive connections, packets, bytes."""
    pad = "\t%8s\t" % ""
    iv = "%ds" % k.interval
    total = "total: %d sessions" % k.connections
    if k.active is not None:
        total += ", %d active, %d inactive" % (k.active, k.inactive or 0)
    out = [pad + total,
           pad + "last: %d/%s %d/h %d/d sessions" % (k.last, iv, k.last_hour, k.last_day),
           pad + "average: %d/%s %d/h %d/d sessions, max: %d/%s" % (
               k.average, iv, k.average_hour, k.average_day, k.max, iv)]
    if k.bytes_in is not None:
        out.append(pad + "traffic: %d packets, %d bytes in; %d packets, %d bytes out" % (
            k.packets_in or 0, k.bytes_in, k.packets_out or 0, k.bytes_out or 0))
    return out


def host_connections(h: HostRow) -> str:
    """The Conns column of a host: connections the kernel sent it (and
    IPVS's active/inactive now); empty before pfe's first count."""
    k = h.kernel
    if k is None:
        return ""
    if k.active is None:
        return str(k.connections)
    return "%d (%d/%d)" % (k.connections, k.active, k.inactive or 0)


def with_connections(reply: ShowReply, lines: list[str]) -> tuple[str, list[str]]:
    """show hosts: the header and lines with the Conns column after Status
    when the kernel counts any host (a column at the end: the relayctl
    columns keep their place)."""
    hosts = {h.id: h for h in reply.hosts or ()}
    if not any(h.kernel is not None for h in hosts.values()):
        return HEADER, lines
    out = []
    for line in lines:
        f = line.split("\t", 2)
        h = hosts.get(int(f[0])) if len(f) == 3 and f[1].strip() == "host" \
            and f[0].strip().isdigit() else None
        out.append(line + "\t" + host_connections(h) if h is not None else line)
    return HEADER + "\tConns", out


def stats_line(stats: Stats) -> str:
    def fmt(k: str, v: Any) -> str:
        if isinstance(v, float):
            return f"{k} {v:.1f}"
        return f"{k} {v}"
    return "scheduler: " + ", ".join(fmt(k.replace("_", " "), v) for k, v in stats.items())


def worker_line(w: Any) -> str:
    """issue 17: a check worker in show summary."""
    return (f"worker {w.index}: pid {w.pid}, {w.hosts} hosts, {w.probes} probes, "
            f"{w.checks_per_s:.1f} checks/s, lag p50 {w.lag_p50_ms:.1f} ms, "
            f"p99 {w.lag_p99_ms:.1f} ms")


def text(command: tuple[str, ...], data: Any) -> str:
    """The relayctl-style printout of one reply."""
    match command:
        case ("show", what):
            reply = ShowReply.from_wire(data)
            lines = [HEADER]
            if what in ("summary", "redirects"):
                for r in reply.redirects or ():
                    lines.append(row(r.id, "redirect", r.name, "", r.status))
                    if what == "redirects" and r.kernel is not None:
                        lines += redirect_counter_lines(r.kernel)
            if what in ("summary", "hosts"):
                hosts = tables_with_hosts(reply, detail=(what == "hosts"))
                if what == "hosts":
                    lines[0], hosts = with_connections(reply, hosts)
                lines += hosts
            if what == "tables":
                lines += [row(t.id, "table", t.name, "", t.status) for t in reply.tables or ()]
            if what in ("summary", "relays"):
                for r in reply.relays or ():
                    lines.append(row(r.id, "relay", r.name, "", r.status))
                    if what == "relays":
                        lines += relay_lines(r)
            if what in ("summary", "routers"):
                for r in reply.routers or ():
                    lines.append(row(r.id, "router", r.name, "", r.status))
                    if what == "routers":
                        lines += router_lines(r)
            if what == "sessions":
                return "\n".join(session_lines(s) for s in reply.sessions or ())
            if what == "summary" and reply.stats is not None and reply.stats.items():
                lines.append(stats_line(reply.stats))
            if what == "summary":
                lines += [worker_line(w) for w in reply.workers or ()]     # issue 17
            if what == "summary" and reply.daemon is not None:
                lines.append(daemon_line(reply.daemon))        # issue 13: the last line
            return "\n".join(lines)
        case ("host", ("weight" | "drain" | "undrain")) | ("table", ("drain" | "undrain")):
            # issue 13: says which hosts, and how many when a name matched several
            if isinstance(data, dict) and isinstance(data.get("message"), str):
                return data["message"]
            return "command succeeded"
        case ("reload",) | ("load",) | ("poll",) | ("stop",) | ("log", _) | \
                (("host" | "table" | "redirect"), _):
            return "command succeeded"
    return json.dumps(data)


def event_text(wire: dict) -> str:
    ev = Event.from_wire(wire)
    # the daemon's time of the change (issue 13), else ours
    t = ev.time or time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + ".%03d" % (t % 1 * 1000)
    r = ev.row
    if isinstance(r, HostRow):
        change = f"{ev.previous} -> {r.status}" if ev.previous else str(r.status)
        s = f"{stamp} host {r.id} {r.name} ({r.table}): {change}"
        if r.status == HostStatus.DOWN and r.down_error:
            s += f", error: {r.down_error}" + (f": {r.detail}" if r.detail else "")
        elif ev.reason:
            s += f", {ev.reason}"
        return s
    return f"{stamp} {ev.kind} id: {r.id} name: {r.name} status: {r.status}"


def as_json(data: Any) -> str:
    # one compact line: the C encoder (indent= would take the pure-Python
    # one, 10x slower on 10,000 hosts); pipe through jq to read it
    return json.dumps(data, separators=(",", ":"), default=str)
