"""hoststated.metrics: the exposition of a built state, read back by
prometheus-client's own parser (the reference reader of the text format)."""

from __future__ import annotations

import dataclasses

import pytest

from hoststated import __version__, metrics
from hoststated.ipc.messages import HostRow, RedirectRow, RelayRow, Stats, TableRow
from hoststated.ipc import messages
from hoststated.metrics import Daemon, Snapshot
from hoststated.states import HostError, HostStatus
from prometheus_client import parser   # the test extra: a check, never skipped


UP, DOWN, UNKNOWN, DISABLED = (HostStatus.UP, HostStatus.DOWN, HostStatus.UNKNOWN,
                               HostStatus.DISABLED)


def snapshot() -> Snapshot:
    hosts = [
        HostRow(1, "198.51.100.11", "web", UP, HostError.HTTP_CODE_OK, "", 1700000000.5,
                12.5, 10, 9),
        HostRow(2, "198.51.100.12", "web", DOWN, HostError.TCP_CONNECT_FAIL, "refused",
                1700000001.0, 0.25, 4, 0),
        HostRow(3, "198.51.100.13", "sorry", UNKNOWN),
        HostRow(4, "198.51.100.14", "sorry", DISABLED),
    ]
    tables = [TableRow(1, "web", "active (1 hosts)", up=1, hosts=2, check="http"),
              TableRow(2, "sorry", "disabled", up=0, hosts=2, check="tcp", disabled=True)]
    redirects = [RedirectRow(1, "www", "active", table="web", backup="sorry"),
                 RedirectRow(2, "old", "active (using backup table)", table="sorry"),
                 RedirectRow(3, "off", "disabled", table="web")]
    relays = [RelayRow(1, "proxy", "active", sessions=3, total=120, errors=2, processes=2),
              RelayRow(2, "idle", "not running")]
    stats = Stats(lag_p50_ms=1.5, lag_p99_ms=20.0, latency_p50_ms=3.0, latency_p99_ms=250.0,
                  lag_max_ms=40.0, checks_in_flight=7, checks_waiting=2, checks_done=14,
                  interval_timeouts=1, local_errors=3, probes=4, hosts=4)
    d = Daemon(generation=3, start_time=1699999000.0, stats=stats,
               results={"http code ok": 10, "tcp connect failed": 4},
               reloads_ok=2, reloads_failed=1, last_reload=1700000002.0, last_reload_ok=False)
    return Snapshot(d, hosts, tables, redirects, relays,
                    relay_tables={"proxy": [("web", 1)], "idle": []})


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}, by sample name (a counter's
    samples end in _total)."""
    out: dict[str, dict[tuple, float]] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(series: dict[tuple, float], **want: str) -> float:
    got = [v for k, v in series.items() if set(want.items()) <= set(k)]
    assert len(got) == 1, (want, series)
    return got[0]


def test_every_series_of_a_built_state():
    text = metrics.render(snapshot())
    m = parse(text)
    py = one(m["hoststated_build_info"], version=__version__)
    assert py == 1
    assert m["hoststated_start_time_seconds"][()] == 1699999000.0
    assert m["hoststated_config_generation"][()] == 3
    assert one(m["hoststated_reloads_total"], result="ok") == 2
    assert one(m["hoststated_reloads_total"], result="failed") == 1
    assert m["hoststated_last_reload_timestamp_seconds"][()] == 1700000002.0
    assert m["hoststated_last_reload_success"][()] == 0
    assert one(m["hoststated_scheduler_lag_seconds"], stat="p50") == pytest.approx(0.0015)
    assert one(m["hoststated_scheduler_lag_seconds"], stat="p99") == pytest.approx(0.02)
    assert one(m["hoststated_scheduler_lag_seconds"], stat="max") == pytest.approx(0.04)
    assert one(m["hoststated_check_latency_seconds"], stat="p99") == pytest.approx(0.25)
    assert m["hoststated_checks_in_flight"][()] == 7
    assert m["hoststated_checks_waiting"][()] == 2
    assert one(m["hoststated_checks_total"], result="http code ok") == 10
    assert one(m["hoststated_checks_total"], result="tcp connect failed") == 4
    assert m["hoststated_check_interval_timeouts_total"][()] == 1
    assert m["hoststated_check_local_errors_total"][()] == 3
    assert m["hoststated_probes"][()] == 4 and m["hoststated_hosts"][()] == 4

    up = m["hoststated_host_up"]
    assert len(up) == 4
    assert one(up, host="198.51.100.11", table="web", id="1") == 1
    assert one(up, host="198.51.100.12") == 0
    assert one(up, host="198.51.100.13") == 0 and one(up, host="198.51.100.14") == 0
    state = m["hoststated_host_state"]
    assert {dict(k)["host"]: dict(k)["state"] for k in state} == {
        "198.51.100.11": "up", "198.51.100.12": "down", "198.51.100.13": "unknown",
        "198.51.100.14": "disabled"}
    assert set(state.values()) == {1}
    res = m["hoststated_host_last_check_result"]
    assert {dict(k)["host"]: dict(k)["result"] for k in res} == {
        "198.51.100.11": "http code ok", "198.51.100.12": "tcp connect failed"}
    assert one(m["hoststated_host_checks_total"], host="198.51.100.11") == 10
    assert one(m["hoststated_host_checks_total"], host="198.51.100.13") == 0
    assert one(m["hoststated_host_check_failures_total"], host="198.51.100.11") == 1
    assert one(m["hoststated_host_check_failures_total"], host="198.51.100.12") == 4
    lat = m["hoststated_host_last_check_latency_seconds"]
    assert len(lat) == 2          # the hosts never checked have none
    assert one(lat, host="198.51.100.11") == pytest.approx(0.0125)
    assert one(lat, host="198.51.100.12") == pytest.approx(0.00025)
    assert one(m["hoststated_host_last_check_timestamp_seconds"],
               host="198.51.100.11") == 1700000000.5

    assert one(m["hoststated_table_hosts_up"], table="web") == 1
    assert one(m["hoststated_table_hosts"], table="sorry") == 2
    assert {dict(k)["table"]: dict(k)["state"] for k in m["hoststated_table_state"]} == {
        "web": "active", "sorry": "disabled"}
    assert {dict(k)["redirect"]: dict(k)["state"] for k in m["hoststated_redirect_state"]} == {
        "www": "active", "old": "backup", "off": "disabled"}
    rh = m["hoststated_redirect_hosts_up"]
    assert one(rh, redirect="www", role="forward", table="web") == 1
    assert one(rh, redirect="www", role="backup", table="sorry") == 0
    assert len(rh) == 4
    assert {dict(k)["relay"]: dict(k)["state"] for k in m["hoststated_relay_state"]} == {
        "proxy": "active", "idle": "not running"}
    assert one(m["hoststated_relay_sessions"], relay="proxy") == 3
    assert one(m["hoststated_relay_sessions_total"], relay="proxy") == 120
    assert one(m["hoststated_relay_session_errors_total"], relay="proxy") == 2
    assert one(m["hoststated_relay_processes"], relay="idle") == 0
    assert m["hoststated_relay_hosts_up"] == {(("relay", "proxy"), ("table", "web")): 1}


def test_types_and_help_are_declared_once_per_family():
    text = metrics.render(snapshot())
    types = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    kinds = {f.name: f.type for f in parser.text_string_to_metric_families(text)}
    assert kinds["hoststated_host_checks"] == "counter"      # the parser drops _total
    assert kinds["hoststated_host_up"] == "gauge"
    assert kinds["hoststated_reloads"] == "counter"
    # every family has HELP; text ends with a newline (the format wants one)
    assert text.count("# HELP ") == len(types) and text.endswith("\n")
    assert all(ln.startswith(("#", "hoststated_")) for ln in text.splitlines())


@pytest.mark.parametrize("name", ['a"b', "back\\slash", "new\nline", 'all\\"\n\\n', "é ✓"])
def test_label_values_are_escaped(name):
    snap = snapshot()
    snap.hosts[0].name = name
    snap.tables = [TableRow(1, name, "empty", hosts=1)]
    m = parse(metrics.render(snap))
    got = [dict(k) for k in m["hoststated_host_up"] if dict(k)["id"] == "1"]
    assert got == [{"table": "web", "host": name, "id": "1"}]
    assert [dict(k)["table"] for k in m["hoststated_table_hosts"]] == [name]


def test_escape_functions():
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert metrics.escape_label("plain") == "plain"
    assert metrics.escape_help('say "x"\\\n') == 'say "x"\\\\\\n'
    assert metrics.number(True) == "1" and metrics.number(3) == "3"
    assert metrics.number(0.5) == "0.5" and metrics.number(float("nan")) == "NaN"
    assert metrics.number(float("inf")) == "+Inf" and metrics.number(-float("inf")) == "-Inf"


def test_no_reload_yet_and_an_empty_config():
    snap = Snapshot(Daemon())
    m = parse(metrics.render(snap))
    assert "hoststated_last_reload_success" not in m
    assert one(m["hoststated_reloads_total"], result="ok") == 0
    assert "hoststated_host_up" not in m          # a family without samples
    text = metrics.render(snap)
    assert "# TYPE hoststated_host_up gauge" in text


def test_a_host_renamed_by_a_reload_gets_new_labels():
    r = metrics.Renderer()
    snap = snapshot()
    r.render(snap)
    snap.hosts[0].name = "198.51.100.99"
    m = parse(r.render(snap))
    assert one(m["hoststated_host_up"], id="1") == 1
    assert [dict(k)["host"] for k in m["hoststated_host_up"] if dict(k)["id"] == "1"] == [
        "198.51.100.99"]


def test_kernel_counters_where_pfe_counted_only():
    snap = snapshot()
    base = parse(metrics.render(snap))
    assert not base.get("hoststated_host_connections_total")      # no read yet
    assert not base.get("hoststated_redirect_connections_total")
    # nftables: connections only; IPVS: the rest too
    snap.hosts[0].kernel = messages.DestCounters("198.51.100.11", 30)
    snap.hosts[1].kernel = messages.DestCounters("198.51.100.12", 7, 70, 60, 7000, 60000, 2, 5)
    snap.redirects[0] = dataclasses.replace(snap.redirects[0], kernel=messages.RedirectCounters(
        10.0, connections=37, last=12, max=20, active=2, inactive=5, bytes_in=7000))
    m = parse(metrics.render(snap))
    assert one(m["hoststated_host_connections_total"], id="1") == 30
    assert one(m["hoststated_host_connections_total"], id="2") == 7
    assert one(m["hoststated_host_active_connections"], id="2") == 2
    assert one(m["hoststated_host_bytes_out_total"], id="2") == 60000
    assert not [k for k in m["hoststated_host_active_connections"] if ("id", "1") in k]
    assert one(m["hoststated_redirect_connections_total"], redirect="www") == 37
    assert one(m["hoststated_redirect_connections_last_interval"], redirect="www") == 12
    assert one(m["hoststated_redirect_connections_max_interval"], redirect="www") == 20
    assert one(m["hoststated_redirect_inactive_connections"], redirect="www") == 5
    assert one(m["hoststated_redirect_bytes_in_total"], redirect="www") == 7000
    assert not m.get("hoststated_redirect_packets_in_total")


def test_host_series_rows_name_real_fields():
    row = HostRow(1, "h", "t")
    for attr, name, kind, _help, _which, _fmt in metrics.HOST_SERIES:
        assert attr in metrics._DERIVED or hasattr(row, attr), attr
        assert name.startswith(metrics.PREFIX) and kind in ("counter", "gauge")
        assert (kind == "counter") == name.endswith("_total"), name


def test_hoststated_8_lists_every_series():
    from pathlib import Path
    page = (Path(__file__).resolve().parents[2] / "man" / "hoststated.8").read_text()
    section = page.split(".Sh METRICS", 1)[1].split("\n.Sh ", 1)[0]
    listed = {w.strip(",") for ln in section.splitlines() if ln.startswith(".It Li ")
              for w in ln.split()[2:] if not w.startswith(("Brq", "{")) and w != ","}
    snap = snapshot()
    names = {f.name for f in parser.text_string_to_metric_families(metrics.render(snap))}
    # (the parser names a counter without its _total)
    written = {n.removeprefix(metrics.PREFIX) for n in names}
    missing = {n for n in written if n not in listed and n + "_total" not in listed}
    assert not missing, f"hoststated.8 METRICS lacks {sorted(missing)}"


def test_steps_pause_between_families_and_make_the_same_text():
    snap = snapshot()
    r = metrics.Renderer()
    out: list[str] = []
    pauses = sum(1 for _ in r.steps(snap, out))
    assert pauses >= 1 + 3 + len(metrics.HOST_SERIES)
    assert "".join(out) == metrics.render(snap)


def test_history_weight_and_drain_series():
    snap = snapshot()
    snap.hosts[0].weight, snap.hosts[0].transitions = 5, 3
    snap.hosts[0].last_change = 1700000000.25
    snap.hosts[1].weight, snap.hosts[1].drain = 4, True
    m = parse(metrics.render(snap))
    assert one(m["hoststated_host_weight"], id="1") == 5
    assert one(m["hoststated_host_weight"], id="2") == 0          # drained: 0 in effect
    assert one(m["hoststated_host_drained"], id="2") == 1
    assert one(m["hoststated_host_drained"], id="1") == 0
    assert one(m["hoststated_host_transitions_total"], id="1") == 3
    assert one(m["hoststated_host_last_change_timestamp_seconds"], id="1") == 1700000000.25
    # a host never seen to change has no last-change series
    assert not [k for k in m["hoststated_host_last_change_timestamp_seconds"]
                if ("id", "3") in k]


def test_check_workers_series():
    """issue 17: each check worker's checks, hosts and lag; none without workers."""
    snap = snapshot()
    assert "check_worker" not in metrics.render(snap)
    snap.daemon.workers = [messages.WorkerRow(index=1, pid=10, hosts=6, probes=6,
                                              checks_done=40, lag_p50_ms=1.5, lag_p99_ms=9.0),
                           messages.WorkerRow(index=2, pid=11, hosts=4, probes=4,
                                              checks_done=30, lag_p50_ms=2.0, lag_p99_ms=4.0)]
    m = parse(metrics.render(snap))
    assert one(m["hoststated_check_worker_checks_total"], worker="2") == 30
    assert one(m["hoststated_check_worker_hosts"], worker="1") == 6
    assert one(m["hoststated_check_worker_lag_seconds"], worker="1", stat="p99") == 0.009
