"""Issue 13, items 3 and 4, the pure parts: `host weight|drain|undrain` and
`table drain|undrain` parsing and weight validation, the runtime weights'
keeper (hce_weights) and its reload carry-over, the kernel's and the relays'
use of the weights, the state-history bookkeeping (hce_state, the
scheduler's reports), and what hoststatectl prints of it all."""

import socket
import threading

import pytest

from hoststated.conf.load import load_text
from hoststated.hce_sched import CheckEngine
from hoststated.hce_show import Answers
from hoststated.hce_state import note_change, time_in_state
from hoststated.hce_weights import Overrides
from hoststated.ipc import codec, messages
from hoststated.ipc.messages import (READ_ONLY, CommandError, DaemonInfo, ErrorCode, Event,
                                     HostRow, ShowReply, check_weight, parse_command)
from hoststated.kernel import NoneBackend, Reconciler
from hoststated.kernel.desired import desired
from hoststated.kernel.service import ServiceKey
from hoststated.relay_select import Pool, Target
from hoststated.states import HostError, HostStatus as S
from hoststatectl import output, parser
from hoststatectl.main import main

# 198.51.100.11 is in two tables: a name lookup finds both
CONF = """
table <web> { 198.51.100.11, 198.51.100.12 weight 2, 198.51.100.13 }
table <api> { 198.51.100.11, 198.51.100.14 }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check tcp
}
redirect "api" {
	listen on 203.0.113.11 port 80
	forward to <api> port 80 check tcp
}
"""
KEY = ServiceKey(4, "tcp", "203.0.113.10", 80)


def cfg(text=CONF):
    return load_text(text, lookup=False, runnable=False)


def host(config, table, name):
    return next(h for h in config.hosts() if h.table == table and h.name == name)


# --- parsing and validation -------------------------------------------------

def test_commands_parse_with_prefixes_and_two_arguments():
    c = parse_command("ho we 198.51.100.11 3")
    assert (c.words, c.arg, c.value, c.line) == (("host", "weight"), "198.51.100.11", "3",
                                                 "host weight 198.51.100.11 3")
    assert parse_command("host dr 4").words == ("host", "drain")
    assert parse_command("host un 4").line == "host undrain 4"
    assert parse_command("table drain web").words == ("table", "drain")
    assert parse_command("table undr web").words == ("table", "undrain")
    # `host d` is now host disable or host drain
    with pytest.raises(CommandError) as e:
        parse_command("host d 4")
    assert e.value.code == ErrorCode.AMBIGUOUS and "disable, drain" in e.value.message


@pytest.mark.parametrize("line, why", [
    ("host weight 3", "needs 2 arguments (id|name weight)"),
    ("host weight 3 4 5", "needs 2 arguments"),
    ("host drain", "needs one argument"),
    ("host weight 3 65536", "from 0 to 65535, not 65536"),
    ("host weight 3 -1", "not -1"),
    ("host weight 3 1.5", "not 1.5"),
    ("host weight 3 \u0663", "not \u0663"),          # a digit, but not an ASCII one
    ("host weight 3 " + "9" * 100, "(100 characters)"),
])
def test_bad_arguments_are_refused_with_a_clear_error(line, why):
    with pytest.raises(CommandError) as e:
        parse_command(line)
    assert e.value.code == ErrorCode.BAD_ARGUMENT and why in e.value.message


def test_weight_range_is_the_configs():
    assert check_weight("0") == 0 and check_weight("65535") == 65535
    # the config takes the same range (conf/build.py)
    assert host(cfg(CONF.replace("weight 2", "weight 65535")), "web:80", "198.51.100.12").weight \
        == messages.MAX_WEIGHT


def test_restricted_socket_refuses_them_and_usage_lists_them():
    new = {("host", "weight"), ("host", "drain"), ("host", "undrain"), ("table", "drain"),
           ("table", "undrain")}
    assert new <= {w for w, _ in messages.COMMANDS} and not new & READ_ONLY
    assert "host weight <id|name> <weight>" in parser.usage_lines()


def test_cli_refuses_a_bad_weight_before_connecting(capsys):
    assert main(["-s", "/nonexistent/x.sock", "host", "weight", "1", "x"]) == 2
    assert "the weight is a number from 0 to 65535, not x" in capsys.readouterr().err


# --- the keeper and the lookups ---------------------------------------------

def test_weight_drain_undrain_and_what_goes_to_the_kernel():
    c = cfg()
    o = Overrides(c)
    h11, h12 = host(c, "web:80", "198.51.100.11"), host(c, "web:80", "198.51.100.12")
    o.set_weight([h11], 3)
    assert o.effective() == {h11.id: 3} and o.shown() == {h11.id: (3, False)}
    o.set_drain([h12], True)
    assert o.effective() == {h11.id: 3, h12.id: 0}
    assert o.weight(h12.id) == 2 and o.drained(h12.id)
    o.set_drain([h12], False)                 # undrain: its weight again
    assert o.effective() == {h11.id: 3} and h12.id not in o.shown()
    o.set_weight([h11], 1)                    # its config's weight: no override left
    assert o.effective() == {} and o.shown() == {}
    o.set_weight([h12], 0)                    # weight 0 is allowed, and is not a drain
    assert o.effective() == {h12.id: 0} and o.shown() == {h12.id: (0, False)}


def test_name_lookups_find_every_host_of_that_name():
    c = cfg()
    a = Answers(c, 1, lambda: [], lambda: None)
    found = a.find_hosts("198.51.100.11")
    assert [(h.table, h.name) for h in found] == [("web:80", "198.51.100.11"),
                                                  ("api:80", "198.51.100.11")]
    assert [h.id for h in a.find_hosts(str(found[1].id))] == [found[1].id]
    with pytest.raises(CommandError) as e:
        a.find_hosts("198.51.100.99")
    assert e.value.code == ErrorCode.NOT_FOUND and messages.EXIT_STATUS[e.value.code] == 1
    tables, hosts = a.find_table_hosts("web")
    assert [t.name for t in tables] == ["web:80"] and len(hosts) == 3
    with pytest.raises(CommandError):
        a.find_table_hosts("nosuch")


def test_reload_carries_weights_and_drains_by_table_name_address_port():
    c = cfg()
    o = Overrides(c)
    h11, h12 = host(c, "web:80", "198.51.100.11"), host(c, "web:80", "198.51.100.12")
    h14 = host(c, "api:80", "198.51.100.14")
    o.set_weight([h11], 3)
    o.set_drain([h12], True)
    o.set_drain([h14], True)
    # a new host first (ids shift), 198.51.100.14 gone
    new = cfg(CONF.replace("<web> { ", "<web> { 198.51.100.10, ")
              .replace(", 198.51.100.14 }", " }"))
    dropped = o.reconfigure(new)
    n11, n12 = host(new, "web:80", "198.51.100.11"), host(new, "web:80", "198.51.100.12")
    assert n11.id != h11.id
    assert o.effective() == {n11.id: 3, n12.id: 0}
    assert dropped == ["host 198.51.100.14 (api:80): gone after the reload, "
                       "its runtime drain with it"]
    # the config now gives .11 a weight of its own: the file is the newer word
    newer = cfg(CONF.replace("198.51.100.11, 198.51.100.12", "198.51.100.11 weight 5, "
                             "198.51.100.12"))
    dropped = o.reconfigure(newer)
    assert dropped == ["host 198.51.100.11 (web:80): runtime weight 3 dropped, "
                       "the config's weight is now 5"]
    m12 = host(newer, "web:80", "198.51.100.12")
    assert o.effective() == {m12.id: 0}          # the drain stays


# --- the kernel and the relays ----------------------------------------------

def dests(state):
    return {(d.address, d.weight) for d in state[KEY].destinations}


def test_desired_uses_runtime_weights_and_a_drained_host_stays_at_weight_0():
    c = cfg(CONF.replace("engine", ""))
    ids = {h.name: h.id for h in c.hosts() if h.table == "web:80"}
    up = {i: S.UP for i in ids.values()}
    st = desired(c, up)["nftables"]
    assert dests(st) == {("198.51.100.11", 1), ("198.51.100.12", 2), ("198.51.100.13", 1)}
    # weight 3 for .11, .12 drained; a drained host is still a destination
    # (weight 0: established connections kept), with quiescent off too
    c2 = c.model_copy(update={"redirects": tuple(r.model_copy(update={"quiescent": False})
                                                 for r in c.redirects)})
    from hoststated.kernel.desired import redirect_services
    (svc,) = redirect_services(c2, c2.redirects[0], up,
                               weights={ids["198.51.100.11"]: 3, ids["198.51.100.12"]: 0})
    assert {(d.address, d.weight) for d in svc.destinations} == {
        ("198.51.100.11", 3), ("198.51.100.12", 0), ("198.51.100.13", 1)}


def test_reconciler_applies_weights_and_carries_them_over_a_reload():
    c = cfg()
    be = NoneBackend()
    rec = Reconciler(c, be)
    rec.start()
    web = {h.name: h.id for h in c.hosts() if h.table == "web:80"}
    rec.update({i: S.UP for i in web.values()})
    batches = be.batches
    assert rec.set_weights({web["198.51.100.13"]: 0}) != []
    assert ("198.51.100.13", 0) in dests(be.state)
    assert rec.set_weights({web["198.51.100.13"]: 0}) == [] and be.batches == batches + 1
    new = cfg(CONF.replace("<web> { ", "<web> { 198.51.100.10, "))
    rec.reconfigure(new)
    n13 = host(new, "web:80", "198.51.100.13").id
    assert rec.weights() == {n13: 0} and ("198.51.100.13", 0) in dests(be.state)
    rec.set_weights({})
    assert ("198.51.100.13", 1) in dests(be.state)


def test_relay_pool_weights_3_to_1_and_a_drained_host_gets_no_session():
    pool = Pool(targets=[Target(1, "198.51.100.11", 80), Target(2, "198.51.100.12", 80)],
                up={0, 1})
    pool.set_weight(0, 3)
    picks = [pool.pick()[0].address for _ in range(40)]
    assert picks.count("198.51.100.11") == 30 and picks.count("198.51.100.12") == 10
    pool.set_weight(1, 0)
    assert {pool.pick()[0].address for _ in range(10)} == {"198.51.100.11"}
    pool.set_weight(0, 0)
    assert pool.pick() == []


# --- state history ----------------------------------------------------------

def test_note_change_counts_and_remembers():
    r = HostRow(1, "a", "t", last_change=100.0)
    assert not note_change(r, S.UNKNOWN, 150.0) and r.transitions == 0
    r.status = S.UP
    assert note_change(r, S.UNKNOWN, 150.0)
    assert (r.previous, r.last_change, r.transitions) == (S.UNKNOWN, 150.0, 1)
    r.status = S.DOWN
    note_change(r, S.UP, 160.5)
    assert (r.previous, r.last_change, r.transitions) == (S.UP, 160.5, 2)
    assert time_in_state(r.last_change, 170.5) == 10.0
    assert time_in_state(0.0, 170.5) is None


def test_scheduler_reports_history_weights_and_keeps_them_over_a_reload():
    c = cfg()
    seen = []
    eng = CheckEngine(c, seen.append)
    hid = host(c, "web:80", "198.51.100.12").id
    row = next(r for r in eng.hosts() if r.id == hid)
    assert row.last_change > 0 and row.transitions == 0 and row.weight == 2
    eng.set_host_enabled(hid, False)
    (ev,) = seen
    assert (ev.status, ev.previous, ev.transitions) == (S.DISABLED, S.UNKNOWN, 1)
    eng.set_host_enabled(hid, True)
    assert (seen[-1].status, seen[-1].previous, seen[-1].transitions) == (S.UNKNOWN,
                                                                          S.DISABLED, 2)
    eng.set_weights({hid: (5, True)})
    row = next(r for r in eng.hosts() if r.id == hid)
    assert (row.weight, row.drain, row.effective_weight) == (5, True, 0)
    eng.reconfigure(cfg())                     # same hosts: history kept, weights the config's
    row = next(r for r in eng.hosts() if r.id == hid)
    assert row.transitions == 2 and (row.weight, row.drain) == (2, False)


# --- the wire and hoststatectl's text ---------------------------------------

def test_event_wire_has_time_previous_and_reason():
    row = HostRow(2, "198.51.100.12", "web:80", S.DOWN, HostError.TCP_CONNECT_FAIL,
                  "connection refused", last_change=1764612000.25, transitions=3,
                  previous=S.UP)
    wire = Event("host", row, row.last_change, "up", row.reason).to_wire()
    assert {k: wire[k] for k in ("event", "time", "previous", "status", "reason")} == {
        "event": "host", "time": 1764612000.25, "previous": "up", "status": "down",
        "reason": "tcp connect failed: connection refused"}
    (frame,) = codec.Decoder().feed(codec.encode(wire))
    back = Event.from_wire(frame)
    assert back.row == row and (back.time, back.previous) == (1764612000.25, "up")
    text = output.event_text(wire)
    assert text.endswith(".250 host 2 198.51.100.12 (web:80): up -> down, "
                         "error: tcp connect failed: connection refused"), text
    up = Event("host", HostRow(2, "x", "t", S.UP, HostError.TCP_CONNECT_OK), 5.0, "down",
               "tcp connect ok")
    assert output.event_text(up.to_wire()).endswith(": down -> up, tcp connect ok")
    with pytest.raises(messages.MessageError):
        Event.from_wire(dict(wire, time="now"))


def test_show_hosts_history_line_and_drain_status():
    h = HostRow(4, "198.51.100.13", "web:80", S.UP, check_cnt=10, up_cnt=10, weight=3,
                drain=True, last_change=1000.0, transitions=2, previous=S.UNKNOWN)
    lines = output.host_lines(h, True)
    assert lines[0].endswith("\tup (drain)") and len(lines) == 3
    assert lines[2].startswith("\t        \tweight 3, draining, up for ")
    assert output.history_line(h, now=1065.0) == (
        "\t        \tweight 3, draining, up for 00:01:05 since %s, 2 changes"
        % output._when(1000.0))
    assert "up for 1d 01:01:01 since" in output.history_line(h, now=1000.0 + 90061)
    # a row without history (an older daemon) prints no such line
    assert len(output.host_lines(HostRow(4, "x", "t", S.UP, check_cnt=1, up_cnt=1), True)) == 2


def test_summary_daemon_line_and_action_messages():
    d = DaemonInfo("0.1.0", 812, 1.0, 7869.5, last_reload=1000.0, reload_ok=False,
                   reload_message="/etc/h.conf:3:1: syntax error\nmore", reloads=2,
                   reload_failures=1)
    data = ShowReply(tables=[], hosts=[], daemon=d).to_wire()
    assert ShowReply.from_wire(data).daemon == d
    last = output.text(("show", "summary"), data).split("\n")[-1]
    assert last == ("hoststated 0.1.0, pid 812, up 02:11:09, last reload %s failed: "
                     "/etc/h.conf:3:1: syntax error" % output._when(1000.0))
    assert output.daemon_line(DaemonInfo("0.1.0", 1, 1.0, 5.0)).endswith("no reload yet")
    assert output.daemon_line(DaemonInfo("0.1.0", 1, 1.0, 5.0, monitors=2)) == \
        "hoststated 0.1.0, pid 1, up 00:00:05, 2 monitors, no reload yet"
    msg = "2 hosts drained: 1 198.51.100.11 (web:80), 4 198.51.100.11 (api:80)"
    assert output.text(("host", "drain"), {"message": msg, "hosts": []}) == msg
    assert output.text(("table", "undrain"), None) == "command succeeded"


# --- monitor: exits non-zero when the daemon goes away ------------------------

def test_monitor_exits_1_with_one_line_when_the_daemon_goes_away(tmp_path, capsys):
    path = str(tmp_path / "ctl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    row = HostRow(1, "198.51.100.11", "web:80", S.UP, HostError.TCP_CONNECT_OK)

    def daemon():
        c, _ = srv.accept()
        codec.Decoder().feed(c.recv(4096))
        c.sendall(codec.encode(messages.reply_ok()))
        c.sendall(codec.encode(Event("host", row, 2.0, "unknown", "tcp connect ok").to_wire()))
        c.close()                             # the daemon goes away
    t = threading.Thread(target=daemon)
    t.start()
    try:
        assert main(["-s", path, "monitor"]) == 1
    finally:
        t.join(10)
        srv.close()
    out, err = capsys.readouterr()
    assert out.endswith("host 1 198.51.100.11 (web:80): unknown -> up, tcp connect ok\n")
    assert err == f"hoststatectl: monitor: {path}: the daemon closed the connection\n"


def test_reconnect_is_taken_after_the_command_too(capsys):
    # no daemon: the first connection's error is reported, with either order
    for argv in (["--reconnect", "monitor"], ["monitor", "--reconnect"]):
        assert main(["-s", "/nonexistent/x.sock", *argv]) == 1
        assert capsys.readouterr().err == \
            "hoststatectl: connect /nonexistent/x.sock: No such file or directory\n"
