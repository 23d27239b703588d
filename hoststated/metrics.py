"""The Prometheus exposition of hoststated's state: text format 0.0.4.

Pure: a Snapshot in (hce's rows and figures of one moment), text out; no
socket, no event loop. hce serves it on `metrics listen on` (control.
MetricsServer); hoststated(8) METRICS lists the series.

Choices, documented in hoststated(8):
- a host's state is `hoststated_host_up` (1 up, 0 otherwise) and, for the
  four states, one `hoststated_host_state{state="..."} 1` series with the
  current state as its label (a state change replaces the series; a query
  `hoststated_host_state{state="disabled"}` finds the disabled hosts);
  unknown and disabled are never counted as down;
- tables, redirects and relays likewise: a `_state` series whose `state`
  label is the status word of `show` (a table's "active (3 hosts)" is
  `active`; a redirect on its backup table is `backup`);
- counters are hce's own since it started (a host's check counts since it
  was added; kept across reloads for unchanged hosts): a restart resets
  them, which Prometheus' rate() expects.

Per host, the numeric series come from HOST_SERIES (one row per HostRow
field): a field added to HostRow (time of the last change, transitions) is
exported by adding its row there. The kernel's counters are pfe's, read
every 10 s: they come on the rows (HostRow.kernel, RedirectRow.kernel) and
are exported only where pfe counted (nftables counts connections; IPVS also
active and inactive connections, packets and bytes).
"""

from __future__ import annotations

import math
import operator
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from hoststated import __version__
from hoststated.ipc.messages import (HostRow, RedirectRow, RelayRow, RouterRow, Stats,
                                     TableRow)
from hoststated.states import HostError, HostStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "hoststated_"


# --- the text format -------------------------------------------------------

def escape_label(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote
    and newline escaped (nothing else is)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped (quotes are not)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def labels(**kv: Any) -> str:
    """`a="x",b="y"` (without the braces), values escaped, in the given order."""
    return ",".join(f'{k}="{escape_label(str(v))}"' for k, v in kv.items())


def number(v: float | int | bool) -> str:
    """A sample value: integers as integers, floats as repr (Go's ParseFloat
    reads it), the non-finite as the format spells them."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {kind}\n")


def family(out: list[str], name: str, kind: str, help_text: str,
           samples: Iterable[tuple[str, float | int]]) -> None:
    """One metric family: its HELP and TYPE, then a line per (labels, value)
    (labels as labels() makes them; "" for none)."""
    header(out, name, kind, help_text)
    for lab, v in samples:
        out.append(f"{name}{{{lab}}} {number(v)}\n" if lab else f"{name} {number(v)}\n")


# --- what is exported ------------------------------------------------------

@dataclass(slots=True)
class Daemon:
    """hce's own figures."""
    generation: int = 1
    start_time: float = 0.0                 # wall clock, s
    stats: Stats = field(default_factory=Stats)
    # checks done since hce started, by the check result word (HostError's
    # value); local errors are not checks (stats.local_errors)
    results: dict[str, int] = field(default_factory=dict)
    reloads_ok: int = 0
    reloads_failed: int = 0
    last_reload: float = 0.0                # wall clock of the last reload's end, 0: none
    last_reload_ok: bool = True
    version: str = __version__
    # issue 15: passive detection's counters (passive.Stats' fields), None: no passive table
    passive: dict[str, int] | None = None
    # issue 17: the check workers (ipc.messages.WorkerRow), none: hce checks
    workers: list = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    daemon: Daemon
    hosts: list[HostRow] = field(default_factory=list)
    tables: list[TableRow] = field(default_factory=list)
    redirects: list[RedirectRow] = field(default_factory=list)
    relays: list[RelayRow] = field(default_factory=list)
    # relay name -> [(table name, hosts up)] of the tables it forwards to
    relay_tables: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    routers: list[RouterRow] = field(default_factory=list)     # issue 16
    # issue 15: host id -> passive events counted against it
    passive_hosts: dict[int, int] = field(default_factory=dict)


# Per host, the numeric series: (HostRow attribute, metric name, type, help,
# which hosts have the series: None for all, else a predicate, the value's
# format: "" for an int; a float gets a fixed precision, which is written
# twice as fast as its shortest repr). A field added to HostRow is exported
# by one more row.
_checked: Callable[[HostRow], bool] = lambda h: h.check_cnt > 0
HOST_SERIES: list[tuple[str, str, str, str, Callable[[HostRow], bool] | None, str]] = [
    ("check_cnt", "hoststated_host_checks_total", "counter",
     "Checks of the host that counted (local errors excepted).", None, ""),
    ("failures", "hoststated_host_check_failures_total", "counter",
     "Checks of the host that failed.", None, ""),
    ("latency_s", "hoststated_host_last_check_latency_seconds", "gauge",
     "Time the host's last check took.", _checked, ".6f"),
    ("last_check", "hoststated_host_last_check_timestamp_seconds", "gauge",
     "When the host's last check ended (Unix time).", lambda h: h.last_check > 0, ".3f"),
    ("last_change", "hoststated_host_last_change_timestamp_seconds", "gauge",
     "When the host's state last changed, or it was first seen (Unix time).",
     lambda h: h.last_change > 0, ".3f"),
    ("transitions", "hoststated_host_transitions_total", "counter",
     "Changes of the host's state since it was first seen.", None, ""),
    ("effective_weight", "hoststated_host_weight", "gauge",
     "The host's weight in effect: the config's or host weight's, 0 while drained.",
     None, ""),
    ("drained", "hoststated_host_drained", "gauge",
     "1 while the host is drained (host drain), else 0.", None, ""),
    # the kernel's, as a destination of its redirects' services (pfe's reads)
    ("k_connections", "hoststated_host_connections_total", "counter",
     "Connections the kernel sent to the host (nftables, IPVS).",
     lambda h: h.kernel is not None, ""),
    ("k_active", "hoststated_host_active_connections", "gauge",
     "The host's established connections now (IPVS).", lambda h: _has(h, "active"), ""),
    ("k_inactive", "hoststated_host_inactive_connections", "gauge",
     "The host's other connections now (IPVS).", lambda h: _has(h, "inactive"), ""),
    ("k_packets_in", "hoststated_host_packets_in_total", "counter",
     "Packets from clients to the host (IPVS).", lambda h: _has(h, "packets_in"), ""),
    ("k_packets_out", "hoststated_host_packets_out_total", "counter",
     "Packets from the host to clients (IPVS).", lambda h: _has(h, "packets_out"), ""),
    ("k_bytes_in", "hoststated_host_bytes_in_total", "counter",
     "Bytes from clients to the host (IPVS).", lambda h: _has(h, "bytes_in"), ""),
    ("k_bytes_out", "hoststated_host_bytes_out_total", "counter",
     "Bytes from the host to clients (IPVS).", lambda h: _has(h, "bytes_out"), ""),
]

# derived attributes HOST_SERIES may name, beside HostRow's own fields
_DERIVED: dict[str, Callable[[HostRow], float | int]] = {
    "failures": lambda h: max(0, h.check_cnt - h.up_cnt),
    "latency_s": lambda h: h.latency_ms / 1000.0,
    "drained": lambda h: int(h.drain),
    **{f"k_{k}": operator.attrgetter(f"kernel.{k}")
       for k in ("connections", "active", "inactive", "packets_in", "packets_out",
                 "bytes_in", "bytes_out")},
}


def _has(h: HostRow, counter: str) -> bool:
    return h.kernel is not None and getattr(h.kernel, counter) is not None


# per redirect, the kernel's counters summed over its services (RedirectRow.
# kernel): (RedirectCounters attribute, name, type, help)
REDIRECT_KERNEL: list[tuple[str, str, str, str]] = [
    ("connections", "hoststated_redirect_connections_total", "counter",
     "Connections the kernel sent to the redirect's hosts (nftables, IPVS)."),
    ("last", "hoststated_redirect_connections_last_interval", "gauge",
     "Connections in pfe's last read interval (relayctl's last)."),
    ("max", "hoststated_redirect_connections_max_interval", "gauge",
     "The most connections in one read interval (relayctl's max)."),
    ("active", "hoststated_redirect_active_connections", "gauge",
     "The redirect's established connections now (IPVS)."),
    ("inactive", "hoststated_redirect_inactive_connections", "gauge",
     "The redirect's other connections now (IPVS)."),
    ("packets_in", "hoststated_redirect_packets_in_total", "counter",
     "Packets from clients to the redirect (IPVS)."),
    ("packets_out", "hoststated_redirect_packets_out_total", "counter",
     "Packets from the redirect's hosts to clients (IPVS)."),
    ("bytes_in", "hoststated_redirect_bytes_in_total", "counter",
     "Bytes from clients to the redirect (IPVS)."),
    ("bytes_out", "hoststated_redirect_bytes_out_total", "counter",
     "Bytes from the redirect's hosts to clients (IPVS)."),
]


# the end of a host's line in the label-valued families, by value
_UP_TAIL = {s: f"}} {1 if s is HostStatus.UP else 0}\n" for s in HostStatus}
_STATE_TAIL = {s: f',state="{s.value}"}} 1\n' for s in HostStatus}
_RESULT_TAIL = {e: f',result="{escape_label(e.value)}"}} 1\n' for e in HostError}


def table_word(row: TableRow) -> str:
    """`show tables`' status, one word: active, empty or disabled."""
    return row.status.split(" ", 1)[0]


def redirect_word(row: RedirectRow) -> str:
    """`show redirects`' status, one word: active, backup, down, disabled."""
    return "backup" if "backup" in row.status else row.status


class Renderer:
    """Renders snapshots; keeps the label text of each host between scrapes
    (10,000 hosts: the labels are most of the work, and rarely change)."""

    def __init__(self) -> None:
        self._host_labels: dict[int, tuple[str, str, str]] = {}

    def _labels_of(self, h: HostRow) -> str:
        got = self._host_labels.get(h.id)
        if got is None or got[0] != h.name or got[1] != h.table:
            got = (h.name, h.table, labels(table=h.table, host=h.name, id=h.id))
            self._host_labels[h.id] = got
        return got[2]

    def render(self, snap: Snapshot) -> str:
        out: list[str] = []
        for _ in self.steps(snap, out):
            pass
        return "".join(out)

    def steps(self, snap: Snapshot, out: list[str]) -> Iterator[None]:
        """render(), a family at a time: the text goes to `out`, and each
        pause between families is a point where hce's event loop may run
        the checks (10,000 hosts: a family is some 10 ms)."""
        self._daemon(out, snap.daemon)
        yield
        yield from self._hosts(out, snap.hosts)
        self._passive(out, snap)
        self._tables(out, snap.tables)
        self._redirects(out, snap.redirects, {t.name: t.up for t in snap.tables})
        self._relays(out, snap.relays, snap.relay_tables)
        self._routers(out, snap.routers)
        if len(self._host_labels) > 2 * len(snap.hosts) + 64:
            self._host_labels = {}          # hosts gone with a reload

    @staticmethod
    def _daemon(out: list[str], d: Daemon) -> None:
        py = sys.version_info
        family(out, "hoststated_build_info", "gauge",
               "The running hoststated: its version (value 1).",
               [(labels(version=d.version, python=f"{py.major}.{py.minor}.{py.micro}"), 1)])
        family(out, "hoststated_start_time_seconds", "gauge",
               "When the check engine (hce) started (Unix time).", [("", d.start_time)])
        family(out, "hoststated_config_generation", "gauge",
               "The running configuration's generation: 1 at start, one more per reload "
               "that took.", [("", d.generation)])
        family(out, "hoststated_reloads_total", "counter",
               "Reloads since the start, by result (failed: the running config was kept).",
               [(labels(result="ok"), d.reloads_ok), (labels(result="failed"), d.reloads_failed)])
        if d.last_reload:
            family(out, "hoststated_last_reload_timestamp_seconds", "gauge",
                   "When the last reload ended (Unix time).", [("", d.last_reload)])
            family(out, "hoststated_last_reload_success", "gauge",
                   "1 if the last reload took, 0 if it failed.", [("", d.last_reload_ok)])
        s = d.stats
        ms = lambda v: (v or 0.0) / 1000.0      # noqa: E731
        family(out, "hoststated_scheduler_lag_seconds", "gauge",
               "Delay between a check's due time and its start, over the recent checks.",
               [(labels(stat="p50"), ms(s.lag_p50_ms)), (labels(stat="p99"), ms(s.lag_p99_ms)),
                (labels(stat="max"), ms(s.lag_max_ms))])
        family(out, "hoststated_check_latency_seconds", "gauge",
               "Time a check takes, over the recent checks.",
               [(labels(stat="p50"), ms(s.latency_p50_ms)),
                (labels(stat="p99"), ms(s.latency_p99_ms))])
        family(out, "hoststated_checks_in_flight", "gauge", "Checks running now.",
               [("", s.checks_in_flight or 0)])
        family(out, "hoststated_checks_waiting", "gauge",
               "Checks due but held back by 'max checks'.", [("", s.checks_waiting or 0)])
        family(out, "hoststated_checks_total", "counter",
               "Checks done (one per distinct check, however many hosts share it), by result.",
               [(labels(result=r), n) for r, n in sorted(d.results.items())])
        family(out, "hoststated_check_interval_timeouts_total", "counter",
               "Checks still running at their next turn (longer than the interval).",
               [("", s.interval_timeouts or 0)])
        family(out, "hoststated_check_local_errors_total", "counter",
               "Checks not counted for a limit of this daemon (no descriptor, no memory); "
               "the hosts kept their state.", [("", s.local_errors or 0)])
        family(out, "hoststated_probes", "gauge",
               "Distinct checks (hosts that share address, port and check count once).",
               [("", s.probes or 0)])
        family(out, "hoststated_hosts", "gauge", "Hosts in the tables.", [("", s.hosts or 0)])
        if d.workers:
            family(out, "hoststated_check_worker_checks_total", "counter",
                   "Checks done by each check worker (check workers).",
                   [(labels(worker=str(w.index)), w.checks_done) for w in d.workers])
            family(out, "hoststated_check_worker_hosts", "gauge",
                   "Hosts each check worker checks.",
                   [(labels(worker=str(w.index)), w.hosts) for w in d.workers])
            family(out, "hoststated_check_worker_lag_seconds", "gauge",
                   "Each check worker's scheduler lag, over its recent checks.",
                   [(labels(worker=str(w.index), stat=st), v / 1000.0) for w in d.workers
                    for st, v in (("p50", w.lag_p50_ms), ("p99", w.lag_p99_ms))])

    def _hosts(self, out: list[str], hosts: list[HostRow]) -> Iterator[None]:
        # the hot loop at 10,000 hosts: each line is one f-string of the
        # host's cached labels and a value (HOST_SERIES' format)
        labs = [self._labels_of(h) for h in hosts]
        header(out, "hoststated_host_up", "gauge",
               "1 if the host is up; 0 if down, unknown (not checked yet) or disabled.")
        out += [f"hoststated_host_up{{{lab}{_UP_TAIL[h.status]}" for lab, h in zip(labs, hosts)]
        yield
        header(out, "hoststated_host_state", "gauge",
               "The host's state, as the state label (up, down, unknown, disabled); value 1.")
        out += [f"hoststated_host_state{{{lab}{_STATE_TAIL[h.status]}"
                for lab, h in zip(labs, hosts)]
        yield
        none = HostError.NONE
        header(out, "hoststated_host_last_check_result", "gauge",
               "The result word of the host's last check (relayctl's), as the result label; "
               "value 1. Hosts not checked yet have none.")
        out += [f"hoststated_host_last_check_result{{{lab}{_RESULT_TAIL[h.error]}"
                for lab, h in zip(labs, hosts) if h.error is not none]
        yield
        for attr, name, kind, help_text, which, fmt in HOST_SERIES:
            get = _DERIVED.get(attr) or operator.attrgetter(attr)
            header(out, name, kind, help_text)
            out += [f"{name}{{{lab}}} {get(h):{fmt}}\n" for lab, h in zip(labs, hosts)
                    if which is None or which(h)]
            yield

    # --- passive failure detection (issue 15) ---
    PASSIVE_SERIES = (
        ("packets", "hoststated_passive_packets_total",
         "Packets the kernel's passive rules logged (NFLOG) that hce read."),
        ("events", "hoststated_passive_events_total",
         "Passive events (resets, unreachables, relay errors) counted against a host."),
        ("unattributed", "hoststated_passive_unattributed_total",
         "Logged packets or events that counted against no host."),
        ("dropped", "hoststated_passive_dropped_total",
         "Passive events dropped over hce's rate limit."),
        ("overruns", "hoststated_passive_overruns_total",
         "Overruns of the NFLOG socket (events lost)."),
        ("decisions", "hoststated_passive_decisions_total",
         "Passive windows that filled (the table's action was taken)."),
    )

    def _passive(self, out: list[str], snap: Snapshot) -> None:
        p = snap.daemon.passive
        if p is None:
            return
        for key, name, help_text in self.PASSIVE_SERIES:
            family(out, name, "counter", help_text, [("", p.get(key, 0))])
        counts = snap.passive_hosts
        family(out, "hoststated_host_passive_events_total", "counter",
               "Passive events counted against the host.",
               [(self._labels_of(h), counts.get(h.id, 0)) for h in snap.hosts
                if h.id in counts])

    @staticmethod
    def _tables(out: list[str], tables: list[TableRow]) -> None:
        labs = [labels(table=t.name, id=t.id) for t in tables]
        family(out, "hoststated_table_hosts_up", "gauge", "Hosts up in the table.",
               [(lab, t.up) for lab, t in zip(labs, tables)])
        family(out, "hoststated_table_hosts", "gauge", "Hosts in the table.",
               [(lab, t.hosts) for lab, t in zip(labs, tables)])
        family(out, "hoststated_table_state", "gauge",
               "The table's state, as the state label (active, empty, disabled); value 1.",
               [(f'{lab},state="{table_word(t)}"', 1) for lab, t in zip(labs, tables)])

    @staticmethod
    def _redirects(out: list[str], redirects: list[RedirectRow], ups: dict[str, int]) -> None:
        labs = [labels(redirect=r.name, id=r.id) for r in redirects]
        family(out, "hoststated_redirect_state", "gauge",
               "The redirect's state, as the state label (active, backup: using its backup "
               "table, down, disabled); value 1.",
               [(f'{lab},state="{redirect_word(r)}"', 1) for lab, r in zip(labs, redirects)])
        family(out, "hoststated_redirect_hosts_up", "gauge",
               "Hosts up in the redirect's tables (role forward, and backup if it has one).",
               [(labels(redirect=r.name, table=t, role=role), ups.get(t, 0))
                for r in redirects
                for t, role in ((r.table, "forward"), (r.backup, "backup")) if t])
        for attr, name, kind, help_text in REDIRECT_KERNEL:
            family(out, name, kind, help_text,
                   [(lab, v) for lab, r in zip(labs, redirects)
                    if r.kernel is not None and (v := getattr(r.kernel, attr)) is not None])

    @staticmethod
    def _routers(out: list[str], routers: list[RouterRow]) -> None:
        _router_families(out, routers)

    def _relays(self, out: list[str], relays: list[RelayRow],
                tables: dict[str, list[tuple[str, int]]]) -> None:
        labs = [labels(relay=r.name, id=r.id) for r in relays]
        family(out, "hoststated_relay_state", "gauge",
               "The relay's state, as the state label (active, disabled, not running: no "
               "relay process has reported it yet); value 1.",
               [(f'{lab},state="{escape_label(r.status)}"', 1) for lab, r in zip(labs, relays)])
        family(out, "hoststated_relay_sessions", "gauge", "The relay's sessions now.",
               [(lab, r.sessions) for lab, r in zip(labs, relays)])
        family(out, "hoststated_relay_sessions_total", "counter",
               "The relay's sessions since the start.",
               [(lab, r.total) for lab, r in zip(labs, relays)])
        family(out, "hoststated_relay_session_errors_total", "counter",
               "The relay's sessions that ended with an error.",
               [(lab, r.errors) for lab, r in zip(labs, relays)])
        family(out, "hoststated_relay_processes", "gauge",
               "Relay processes that reported the relay.",
               [(lab, r.processes) for lab, r in zip(labs, relays)])
        family(out, "hoststated_relay_hosts_up", "gauge",
               "Hosts up in each table the relay forwards to (a table without a check: "
               "its hosts, taken as up).",
               [(labels(relay=r.name, table=t), up) for r in relays
                for t, up in tables.get(r.name, ())])


def _router_families(out: list[str], routers: list[RouterRow]) -> None:
    """issue 16: a router's state, its gateways (up of all) and the next
    hops its routes go through now; none with no router."""
    if not routers:
        return
    labs = [labels(router=r.name, id=r.id) for r in routers]
    family(out, "hoststated_router_state", "gauge",
           "The router's state, as the state label (active, disabled); value 1.",
           [(f'{lab},state="{escape_label(r.status)}"', 1) for lab, r in zip(labs, routers)])
    family(out, "hoststated_router_gateways", "gauge", "The router's gateways (its table's hosts).",
           [(lab, r.gateways) for lab, r in zip(labs, routers)])
    family(out, "hoststated_router_gateways_up", "gauge", "The router's gateways up.",
           [(lab, r.up) for lab, r in zip(labs, routers)])
    family(out, "hoststated_router_nexthops", "gauge",
           "The next hops the router's routes go through now (0: no route written).",
           [(lab, len(r.nexthops)) for lab, r in zip(labs, routers)])
    family(out, "hoststated_router_routes", "gauge", "The prefixes the router routes.",
           [(lab, len(r.routes)) for lab, r in zip(labs, routers)])


def render(snap: Snapshot, renderer: Renderer | None = None) -> str:
    """The exposition of snap (a fresh Renderer unless one is given)."""
    return (renderer or Renderer()).render(snap)
