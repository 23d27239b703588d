"""Text (relayctl's columns) and JSON renderings of the daemon's replies."""

from __future__ import annotations

import json
import time
from typing import Any

HEADER = "%-4s\t%-8s\t%-24s\t%-7s\tStatus" % ("Id", "Type", "Name", "Avlblty")


def row(id_: int, type_: str, name: str, avail: str, status: str) -> str:
    return "%-4u\t%-8s\t%-24s\t%-7s\t%s" % (id_, type_, name, avail, status)


def availability(h: dict) -> str:
    if not h.get("check_cnt"):
        return ""
    return "%.2f%%" % (100.0 * h["up_cnt"] / h["check_cnt"])


def host_lines(h: dict, detail: bool) -> list[str]:
    name = str(h["name"])
    if h.get("parent"):
        name += " parent %d" % h["parent"]      # relayctl's inherited-state hosts
    lines = [row(h["id"], "host", name, availability(h), h["status"])]
    if detail and h.get("check_cnt"):
        extra = "\t%8s\ttotal: %lu/%lu checks" % ("", h["up_cnt"], h["check_cnt"])
        if h.get("retry_cnt"):
            extra += ", %d retries" % h["retry_cnt"]
        if h["status"] == "down" and h.get("error"):
            extra += ", error: %s" % h["error"]
            if h.get("detail"):
                extra += ": %s" % h["detail"]
        lines.append(extra)
    return lines


def tables_with_hosts(data: dict, detail: bool) -> list[str]:
    lines = []
    hosts = data.get("hosts", [])
    for t in data.get("tables", []):
        lines.append(row(t["id"], "table", t["name"], "", t["status"]))
        if t["status"] == "disabled":
            continue                    # relayd omits a disabled object's children
        for h in hosts:
            if h["table"] == t["name"]:
                lines.extend(host_lines(h, detail))
    return lines


def stats_line(stats: dict) -> str:
    def fmt(k: str, v: Any) -> str:
        if isinstance(v, float):
            return f"{k} {v:.1f}"
        return f"{k} {v}"
    return "scheduler: " + ", ".join(fmt(k.replace("_", " "), v) for k, v in stats.items())


def text(command: tuple[str, ...], data: Any) -> str:
    """The relayctl-style printout of one reply."""
    match command:
        case ("show", what):
            lines = [HEADER]
            if what in ("summary", "redirects"):
                lines += [row(r["id"], "redirect", r["name"], "", r["status"])
                          for r in data.get("redirects", [])]
            if what in ("summary", "hosts"):
                lines += tables_with_hosts(data, detail=(what == "hosts"))
            if what == "tables":
                lines += [row(t["id"], "table", t["name"], "", t["status"])
                          for t in data.get("tables", [])]
            if what in ("summary", "relays"):
                lines += [row(r["id"], "relay", r["name"], "", r["status"])
                          for r in data.get("relays", [])]
            if what == "summary" and data.get("stats"):
                lines.append(stats_line(data["stats"]))
            return "\n".join(lines)
        case ("reload",) | ("load",) | ("poll",) | ("stop",) | ("log", _) | \
                (("host" | "table" | "redirect"), _):
            return "command succeeded"
    return json.dumps(data)


def event_text(ev: dict) -> str:
    d = ev.get("data", {})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if ev.get("event") == "host":
        s = f"{stamp} host {d.get('id')} {d.get('name')} ({d.get('table')}): {d.get('status')}"
        if d.get("status") == "down" and d.get("error"):
            s += f", error: {d['error']}" + (f": {d['detail']}" if d.get("detail") else "")
        return s
    return f"{stamp} {ev.get('event')} " + " ".join(f"{k}: {v}" for k, v in d.items())


def as_json(data: Any) -> str:
    # one compact line: the C encoder (indent= would take the pure-Python
    # one, 10x slower on 10,000 hosts); pipe through jq to read it
    return json.dumps(data, separators=(",", ":"), default=str)
