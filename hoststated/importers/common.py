"""What the importers share: the model of a virtual service, the notes,
the printer of the hoststated.conf, input decoding.

Importers: an ldirectord.cf, a keepalived.conf or an ALOHA LVS
configuration as the equivalent hoststated.conf (issue 14).

Each importer is sans-IO: `convert(text, filename) -> Imported`, the text
of a hoststated.conf and the notes about what had no equivalent. Every such
line of the original becomes a comment in the output that names it
(`# file:line: ...`), so nothing is dropped without a word. What cannot be
read at all (binary input, a block that never closes, a line that is no
statement of the format) raises ImportFailed with the place, which the CLI
prints as `file:line: message` (exit 1).

The shared model (Virtual, Real) and its printer live here; the formats'
parsers in ldirectord.py, keepalived.py and aloha.py."""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from dataclasses import dataclass, field, replace

from hoststated.conf.lexer import quote as q
from hoststated.conf.ports import SERVICES

FORMATS = ("ldirectord", "keepalived", "aloha")
NOTIFY = "see hoststated.conf(5) NOTIFICATIONS"

# IPVS scheduler -> hoststated mode (conf.model.IPVS_SCHEDULER the other way)
SCHEDULERS = {
    "rr": "roundrobin", "wrr": "weighted-roundrobin", "lc": "least-connections",
    "wlc": "weighted-least-connections", "lblc": "locality-least-connections",
    "lblcr": "locality-least-connections-replicated", "dh": "destination-hash",
    "sh": "source-hash", "sed": "shortest-expected-delay", "nq": "never-queue",
    "fo": "weighted-failover", "ovf": "weighted-overflow", "mh": "maglev-hash",
    "twos": "weighted-two-choices",
}
# modes whose IPVS scheduler ignores weights (conf.engines.IPVS_UNWEIGHTED)
UNWEIGHTED = {"roundrobin", "least-connections", "destination-hash"}
RANGE_MAX = 256


class ImportFailed(Exception):
    """Input that is not the format at all: `file:line: message`."""

    def __init__(self, file: str, line: int, message: str):
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclass
class Imported:
    text: str                              # the hoststated.conf
    notes: list[str]                       # `file:line: what had no equivalent`
    virtuals: int = 0                      # redirects written


@dataclass
class Real:
    address: str
    port: int | None = None
    weight: int = 1
    checked: bool = True                   # False: `no check` (taken as up)
    retry: int = 0


@dataclass
class Virtual:
    where: str                             # "file:line" of the virtual service
    name: str
    listens: list[tuple[str, str, int]] = field(default_factory=list)  # (addr, proto, port)
    fwmark: int | None = None
    reals: list[Real] = field(default_factory=list)
    fallback: list[Real] = field(default_factory=list)
    fallback_check: str = "check none"     # ldirectord's fallback is not checked
    method: str = "route"                  # route (DR), nat, tunnel
    mode: str = "weighted-roundrobin"
    port: int | None = None                # the hosts' port (None: the listen port)
    check: str = "check tcp"
    check_opts: list[str] = field(default_factory=list)
    interval: int | None = None            # s
    timeout: int | None = None             # ms
    sticky: int | None = None              # s
    netmask: str | None = None
    quiescent: bool = True
    one_packet: bool = False
    comments: list[str] = field(default_factory=list)
    # issue 14: the redirect's own `notify command` and `alert mail` lines
    alerts: list[str] = field(default_factory=list)


def table_port(v: Virtual) -> list[Real]:
    """The table's port is the first real's: a real on it gets no port of its
    own, and a real on another keeps its own under NAT. Returns the reals on
    another port that direct routing or a tunnel cannot map (the kernel keeps
    the virtual port): each importer says so in its source's words, and they
    take the table's port."""
    first = v.reals[0].port
    v.port = first
    kept = []
    for r in v.reals:
        if r.port == first:
            r.port = None
        elif v.method != "nat":
            kept.append(replace(r))            # as it was, its own port shown
            r.port = None
    return kept


class Notes:
    """The comments of one import, each naming the original line."""

    def __init__(self, file: str):
        self.file = file
        self.notes: list[str] = []

    def at(self, line: int, text: str, why: str) -> str:
        note = f"{self.file}:{line}: {text.strip()}: {why}"
        self.notes.append(note)
        return "# " + note.replace("\n", " ")


def decode(data: bytes | str, file: str) -> str:
    """The text of a config file; binary input is refused at its line."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ImportFailed(file, line, "not a text file (invalid UTF-8)") from None
    nul = text.find("\0")
    if nul >= 0:
        raise ImportFailed(file, text.count("\n", 0, nul) + 1, "not a text file (NUL byte)")
    for i, ch in enumerate(text):
        if ord(ch) < 32 and ch not in "\t\n\r\f\v":
            raise ImportFailed(file, text.count("\n", 0, i) + 1,
                               f"not a text file (control character {ord(ch):#04x})")
    return text


def is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def port_of(s: str) -> int | None:
    """A port number or a service name hoststated knows without lookups."""
    s = s.strip()
    if s.isdigit():
        n = int(s)
        return n if 0 < n <= 65535 else None
    return SERVICES.get(s.lower())


def expand_range(first: str, last: str) -> list[str] | None:
    """Addresses first..last (last may be the final number only, as
    keepalived's 192.0.2.3-10); None if not a range of at most RANGE_MAX."""
    try:
        a = ipaddress.ip_address(first)
        if "." not in last and ":" not in last and a.version == 4:
            last = ".".join(first.split(".")[:3] + [last])
        b = ipaddress.ip_address(last)
    except ValueError:
        return None
    if a.version != b.version or int(b) < int(a) or int(b) - int(a) >= RANGE_MAX:
        return None
    return [str(ipaddress.ip_address(i)) for i in range(int(a), int(b) + 1)]


# --- notifications (issue 14) -------------------------------------------------
# What conf/build.py accepts in `alert mail` and `notify command`, so that an
# input it would refuse becomes a comment instead of an output that does not
# load (the importers may not import conf.build: tests/unit/test_imports.py).

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def mail_ok(a: str) -> bool:
    """An address `alert mail` takes (build.Builder.mail_address)."""
    return (bool(a) and not any(c.isspace() or c in "<>,;\"()" for c in a)
            and a.count("@") <= 1 and not a.endswith("\\"))   # a quoted word may not end so


def host_ok(s: str) -> bool:
    """An SMTP relay `alert mail via` takes: an address or a host name."""
    if is_ip(s):
        return True
    s = s[:-1] if s.endswith(".") else s
    return 0 < len(s) <= 253 and all(_LABEL.fullmatch(label) for label in s.split("."))


def program_ok(cmd: str) -> str | None:
    """None if `notify command` and `autoreload callback` take cmd (words
    split as a shell would, the first an absolute path), else why not."""
    try:
        words = shlex.split(cmd)
    except ValueError as e:
        return f"not a command hoststated can split ({e})"
    if not words:
        return "an empty command"
    if not words[0].startswith("/"):
        return "the program is not an absolute path (hoststated runs it without a shell " \
               "or a search path)"
    if cmd.endswith("\\"):
        return "a command ending in a backslash"
    return None


def alert_mail(to: list[str], sender: str | None = None, host: str | None = None,
               port: int | None = None, every: int = 0) -> str:
    s = f"alert mail to {q(', '.join(to))}"
    if sender is not None:
        s += f" from {q(sender)}"
    if host is not None:
        s += f" via {q(host)}" + (f" port {port}" if port is not None else "")
    if every:
        s += f" every {every}"
    return s


def _name(s: str) -> str:
    # quoted in the output: anything printable will do
    return re.sub(r"[\x00-\x1f\x7f]", " ", s).strip()[:60] or "v"


# --- the printer --------------------------------------------------------------

VERB = {"nat": "forward to", "route": "route to", "tunnel": "tunnel to"}


def render(source: str, fmt: str, head: list[str], globals_: dict, virtuals: list[Virtual],
           tail: list[str]) -> str:
    """The hoststated.conf: a header, the global options, then per virtual
    service its comments, its table(s) and its redirect."""
    interval = globals_.get("interval") or 10
    used = [v.interval or interval for v in virtuals]
    g_interval = math.gcd(*used) if used else interval
    # a check timeout must stay below the interval it runs in
    timeouts = [v.timeout for v in virtuals if v.timeout]
    g_timeout = globals_.get("timeout") or (min(timeouts) if timeouts else 200)
    out = [f"# imported from {source} by `hoststated import {fmt}`",
           "# check it with `hoststated -n -f FILE`; the comments name what has no "
           "equivalent", ""]
    out += head
    if g_timeout >= g_interval * 1000:
        out.append(f"# {source}: a check timeout of {g_timeout} ms is not below the "
                   f"interval of {g_interval} s, as hoststated's must be: "
                   f"{g_interval * 1000 - 1} ms used")
        g_timeout = g_interval * 1000 - 1
    out += [f"interval {g_interval}", f"timeout {g_timeout}",
            # the kernel the original drives: IPVS
            "engine ipvs", ""]
    names: set[str] = set()
    tables: set[str] = set()
    for i, v in enumerate(virtuals, 1):
        name = _name(v.name)
        base, n = name, 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        names.add(name)
        tname = f"v{i}"
        tables.add(tname)
        out.append(f"# {v.where}: {v.name}")
        out += v.comments
        out += _table(tname, v.reals, v.mode)
        if v.fallback:
            out += _table(f"{tname}-fallback", v.fallback, v.mode)
        out.append(f"redirect {q(name)} {{")
        if v.fwmark is not None:
            out.append(f"\tlisten on fwmark {v.fwmark}")
        for addr, proto, port in v.listens:
            out.append(f"\tlisten on {q(addr)} {proto} port {port}")
        use = f"\t{VERB[v.method]} <{tname}>"
        port = v.port
        if port is not None:
            use += f" port {port}"
        use += f" mode {v.mode} {v.check}"
        timeout = v.timeout
        v_interval = v.interval or g_interval
        if v.interval and v.interval != g_interval:
            use += f" interval {v.interval}"
        if timeout is not None:
            if timeout >= v_interval * 1000:
                out.insert(len(out) - 1, f"# {v.where}: the check timeout {timeout} ms is "
                                         f"not below the interval of {v_interval} s: "
                                         f"{v_interval * 1000 - 1} ms used")
                timeout = v_interval * 1000 - 1
            if timeout != g_timeout:
                use += f" timeout {timeout}"
        for o in v.check_opts:
            if o.startswith("connect timeout "):
                ct = min(int(o.split()[2]), timeout or g_timeout)
                o = f"connect timeout {ct}"
            use += f" {o}"
        out.append(use)
        if v.fallback:
            fb = f"\t{VERB[v.method]} <{tname}-fallback>"
            if port is not None:
                fb += f" port {port}"
            out.append(fb + f" mode {v.mode} {v.fallback_check}")
        if v.sticky is not None:
            s = f"\tsticky-address timeout {v.sticky}"
            if v.netmask:
                s += f" netmask {q(v.netmask)}"
            out.append(s)
        out.append("\tquiescent" if v.quiescent else "\tno quiescent")
        if v.one_packet:
            out.append("\tone-packet")
        out += [f"\t{a}" for a in v.alerts]
        out += ["}", ""]
    out += tail
    return "\n".join(out).rstrip("\n") + "\n"


def _table(name: str, reals: list[Real], mode: str) -> list[str]:
    lines = [f"table <{name}> {{"]
    for r in reals:
        s = "\t" + q(r.address)
        if r.retry:
            s += f" retry {r.retry}"
        if r.weight != 1 and mode not in UNWEIGHTED:
            s += f" weight {r.weight}"
        if r.port is not None:
            s += f" port {r.port}"
        if not r.checked:
            s += " no check"
        lines.append(s)
    return lines + ["}"]
