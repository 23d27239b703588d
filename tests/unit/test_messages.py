"""ipc.messages: the schema; every daemon message round-trips, and anything
off-schema is refused (which the processes treat as fatal)."""

import pytest

from hoststated.ipc import codec, messages
from hoststated.ipc.messages import (CommandError, ErrorCode, Message, MessageError, MsgType,
                                     from_wire, parse_command)
from hoststated.states import HostStatus

SAMPLES = {
    MsgType.INIT: messages.Init(config={"global": {}}, generation=1, uid=65534, gid=65534,
                                debug=True, peer_fd=5, control_fd=6, icmp_fds=[7, 8]),
    MsgType.RECONFIGURE: messages.Reconfigure(config={}, generation=2,
                                              listen=["192.0.2.1 80"], tls={"www": {}}),
    MsgType.SHUTDOWN: messages.Empty(),
    MsgType.LOG_VERBOSE: messages.LogVerbose(True),
    MsgType.PING: messages.Seq(7),
    MsgType.PONG: messages.Seq(7),
    MsgType.HOST_COUNTS: messages.HostCounts(2, 3, 5),
    MsgType.RELOAD_RESULT: messages.ReloadResult(3, False, "x.conf:3:1: syntax error"),
    MsgType.PFE_READY: messages.Empty(),
    MsgType.RECONFIGURED: messages.Generation(2),
    MsgType.HCE_READY: messages.Empty(),
    MsgType.CTL_RELOAD: messages.CtlReload(4, "/etc/other.conf"),
    MsgType.CTL_STOP: messages.Empty(),
    MsgType.CTL_LOG: messages.LogVerbose(False),
    MsgType.HOST_STATUS: messages.HostStatusBatch(1, {1: HostStatus.UP, 2: HostStatus.DOWN}),
    MsgType.REDIRECT_STATE: messages.RedirectState(1, ["www"]),
    MsgType.HOST_WEIGHTS: messages.HostWeights(1, {1: 3, 2: 0}),
    MsgType.RELAY_READY: messages.Empty(),
    MsgType.RELAY_STATS: messages.RelayStats(1, 2, 4242, {1: [3, 100, 2]}),
    MsgType.SESSIONS_QUERY: messages.Seq(9),
    MsgType.PASSIVE_EVENTS: messages.PassiveEvents(2, {1: ["reset", "error"], 3: ["unreachable"]}),
    MsgType.SESSIONS_REPLY: messages.SessionsReply(9, 4242, [messages.SessionRow(
        id=1, relay=1, relay_name="www", pid=4242, client="192.0.2.2", client_port=50000,
        backend="198.51.100.11", backend_port=80, age=1.5, idle=0.25, tag="SLOW")]),
    MsgType.KERNEL_COUNTERS: messages.KernelCounters(3, 10.0, [messages.ServiceCounters(
        "www", "tcp 203.0.113.10:80", "ipvs", 7, 70, 60, 7000, 60000, 2, 5,
        [messages.DestCounters("198.51.100.11", 7, 70, 60, 7000, 60000, 2, 5)])]),
    # issue 17: the check workers
    MsgType.WORKER_READY: messages.Empty(),
    MsgType.HOST_CHANGES: messages.HostChanges(2, messages.pack_rows(
        [messages.HostRow(3, "192.0.2.3", "web", HostStatus.DOWN, detail="refused")])),
    MsgType.WORKER_REPORT: messages.WorkerReport(
        2, 1, 4242, messages.pack_rows([messages.HostRow(3, "192.0.2.3", "web")]),
        messages.Stats(lag_p50_ms=0.5, checks_done=10, hosts=1), {"none": 9, "tcp connect failed": 1},
        full=True),
    MsgType.WORKER_COMMAND: messages.WorkerCommand("passive", host=3, word="down",
                                                   detail="3 resets", seq=5),
    MsgType.WORKER_DONE: messages.Seq(5),
}


def test_every_type_has_a_sample():
    assert set(SAMPLES) == set(MsgType) == set(messages.PAYLOADS)


@pytest.mark.parametrize("mtype", list(MsgType))
def test_roundtrip_through_codec(mtype):
    msg = Message(mtype, SAMPLES[mtype])
    (frame,) = codec.Decoder().feed(codec.encode(msg.to_wire()))
    assert from_wire(frame) == msg


@pytest.mark.parametrize("mtype", list(MsgType))
def test_to_wire_is_what_asdict_made(mtype):
    """to_wire converts only the fields that hold rows; the wire form is
    the one dataclasses.asdict gave (a deep copy) before."""
    import dataclasses
    assert Message(mtype, SAMPLES[mtype]).to_wire() == [int(mtype),
                                                         dataclasses.asdict(SAMPLES[mtype])]


def test_to_wire_does_not_copy_plain_data():
    """INIT's config (the whole config, 10,000 hosts) goes out as it is:
    copying it for every child was most of the parent's start-up."""
    init = SAMPLES[MsgType.INIT]
    body = Message(MsgType.INIT, init).to_wire()[1]
    assert body["config"] is init.config and body["icmp_fds"] is init.icmp_fds
    reply = SAMPLES[MsgType.SESSIONS_REPLY]
    rows = Message(MsgType.SESSIONS_REPLY, reply).to_wire()[1]["sessions"]
    assert type(rows[0]) is dict and rows[0]["tag"] == "SLOW"


def test_payload_must_match_type():
    with pytest.raises(TypeError):
        Message(MsgType.SHUTDOWN, messages.LogVerbose(True))


@pytest.mark.parametrize("wire, why", [
    ("hello", "pair"),
    ([1], "pair"),
    ([999, {}], "unknown message type 999"),
    (["1", {}], "not an integer"),
    ([True, {}], "not an integer"),
    ([int(MsgType.LOG_VERBOSE), []], "not a map"),
    ([int(MsgType.LOG_VERBOSE), {}], "missing field 'verbose'"),
    ([int(MsgType.LOG_VERBOSE), {"verbose": 1}], "bad value"),
    ([int(MsgType.LOG_VERBOSE), {"verbose": True, "x": 1}], "unknown field 'x'"),
    ([int(MsgType.HOST_STATUS), {"generation": 1, "statuses": {"1": "up"}}], "bad value"),
    ([int(MsgType.HOST_STATUS), {"generation": 1, "statuses": {1: 2}}], "bad value"),
    ([int(MsgType.HOST_STATUS), {"generation": 1, "statuses": {1: "sideways"}}], "bad value"),
    ([int(MsgType.HOST_STATUS), {"generation": 1, "statuses": {1: True}}], "bad value"),
    ([int(MsgType.HOST_STATUS), {"generation": 1, "statuses": {1: ["up"]}}], "bad value"),
    ([int(MsgType.REDIRECT_STATE), {"generation": 1, "disabled": "www"}], "bad value"),
    ([int(MsgType.CTL_RELOAD), {"request": 1, "path": 3}], "bad value"),
    ([int(MsgType.INIT), {"config": {}, "generation": 1, "uid": 0, "gid": 0,
                          "icmp_fds": [3, "4"]}], "bad value"),
])
def test_off_schema_refused(wire, why):
    with pytest.raises(MessageError, match=why):
        from_wire(wire)


def test_enum_fields_arrive_as_members():
    # the wire carries "up"; pfe receives HostStatus.UP, not a str
    batch = from_wire([int(MsgType.HOST_STATUS),
                       {"generation": 1, "statuses": {1: "up", 2: "disabled"}}]).payload
    assert batch.statuses == {1: HostStatus.UP, 2: HostStatus.DISABLED}
    assert all(type(v) is HostStatus for v in batch.statuses.values())
    # a member sent as such (in-process) passes too, and goes out as a plain string
    batch = messages.HostStatusBatch(1, {3: HostStatus.DOWN})
    wire = Message(MsgType.HOST_STATUS, batch).to_wire()
    (frame,) = codec.Decoder().feed(codec.encode(wire))
    assert frame == [int(MsgType.HOST_STATUS), {"generation": 1, "statuses": {3: "down"},
                                                "decided_ns": 0}]
    assert type(frame[1]["statuses"][3]) is str


def test_optional_field_may_be_none_or_absent():
    assert from_wire([int(MsgType.CTL_RELOAD), {"request": 1}]).payload.path is None
    assert from_wire([int(MsgType.CTL_RELOAD), {"request": 1, "path": None}]).payload.path is None


# --- control requests ------------------------------------------------------

@pytest.mark.parametrize("text, words, arg", [
    ("show summary", ("show", "summary"), None),
    ("show sum", ("show", "summary"), None),
    ("sh ho", ("show", "hosts"), None),
    ("host disable 3", ("host", "disable"), "3"),
    ("ho dis 10.0.0.1", ("host", "disable"), "10.0.0.1"),
    ("table enable web:80", ("table", "enable"), "web:80"),
    ("redirect dis www", ("redirect", "disable"), "www"),
    ("poll", ("poll",), None),
    ("rel", ("reload",), None),
    ("load /etc/x.conf", ("load",), "/etc/x.conf"),
    ("mon", ("monitor",), None),
    ("log verbose", ("log", "verbose"), None),
    ("log b", ("log", "brief"), None),
    ("stop", ("stop",), None),
])
def test_parse_command(text, words, arg):
    cmd = messages.parse_command(text)
    assert (cmd.words, cmd.arg) == (words, arg)


@pytest.mark.parametrize("text, code, why", [
    ("", ErrorCode.UNKNOWN_COMMAND, "empty"),
    ("frobnicate", ErrorCode.UNKNOWN_COMMAND, "unknown command: frobnicate"),
    ("show", ErrorCode.UNKNOWN_COMMAND, "expected one of"),
    ("show r", ErrorCode.AMBIGUOUS, "redirects, relays"),
    ("re", ErrorCode.AMBIGUOUS, "redirect, reload"),
    ("lo", ErrorCode.AMBIGUOUS, "load, log"),
    ("host disable", ErrorCode.BAD_ARGUMENT, "needs one argument"),
    ("host disable 1 2", ErrorCode.BAD_ARGUMENT, "needs one argument"),
    ("poll now", ErrorCode.BAD_ARGUMENT, "unexpected argument now"),
    ("show hosts x", ErrorCode.BAD_ARGUMENT, "unexpected argument"),
])
def test_parse_command_errors(text, code, why):
    with pytest.raises(CommandError, match=why) as e:
        messages.parse_command(text)
    assert e.value.code == code


@pytest.mark.parametrize("req, code", [
    ("show hosts", ErrorCode.BAD_REQUEST),
    ({"command": "show hosts"}, ErrorCode.BAD_REQUEST),
    ({"cmd": 3}, ErrorCode.BAD_REQUEST),
    ({"cmd": "poll", "v": 2}, ErrorCode.VERSION),
    ({"cmd": "poll", "v": "1"}, ErrorCode.VERSION),
    ({"cmd": "poll", "x": 1}, ErrorCode.BAD_REQUEST),
    ({"cmd": "poll " * 1000}, ErrorCode.BAD_REQUEST),
])
def test_check_request_errors(req, code):
    with pytest.raises(CommandError) as e:
        messages.check_request(req)
    assert e.value.code == code


def test_check_request_versioned_and_not():
    assert messages.check_request({"cmd": "poll"}).words == ("poll",)
    assert messages.check_request(messages.request("show sum")).words == ("show", "summary")


def test_replies():
    assert messages.reply_ok([1]) == {"ok": True, "data": [1]}
    assert messages.reply_error(ErrorCode.NOT_FOUND, "no host 9") == {
        "ok": False, "error": {"code": "not-found", "message": "no host 9"}}


def test_every_error_code_has_an_exit_status():
    assert set(messages.EXIT_STATUS) == set(ErrorCode)


# --- reply rows ------------------------------------------------------------

def full_host_row():
    from hoststated.states import HostError
    return messages.HostRow(id=7, name="web1", table="web:80", status=HostStatus.DOWN,
                            error=HostError.HTTP_CODE_FAIL, detail="got 302", last_check=1.5,
                            latency_ms=2.5, check_cnt=9, up_cnt=8, retry_cnt=1,
                            address="192.0.2.7", port=80, table_id=3, parent=2,
                            weight=3, drain=True, last_change=1.25, transitions=4,
                            previous=HostStatus.UP, kernel=messages.DestCounters("192.0.2.7", 12),
                            drain_reason="maintenance file")


def test_host_row_copy_is_equal_and_separate():
    # (was hce_state.HostReport, which also kept availability as a field)
    import dataclasses
    r = full_host_row()
    c = r.copy()
    assert c == r and c is not r
    # every field is copied: a field added later must be added to copy() too
    assert len(dataclasses.fields(messages.HostRow)) == 22   # 22: issue 14's drain_reason
    for f in dataclasses.fields(messages.HostRow):
        assert getattr(c, f.name) == getattr(r, f.name) is not None
    c.detail = "changed"
    assert r.detail == "got 302"


def test_host_row_wire_keeps_the_field_names_and_round_trips():
    r = full_host_row()
    wire = r.to_wire()
    assert wire == {"id": 7, "name": "web1", "table": "web:80", "table_id": 3,
                    "address": "192.0.2.7", "port": 80, "parent": 2, "status": "down",
                    "error": "http code mismatch", "result": "http code mismatch",
                    "detail": "got 302", "last_check": 1.5, "latency_ms": 2.5,
                    "check_cnt": 9, "up_cnt": 8, "retry_cnt": 1, "availability": 88.89,
                    "weight": 3, "drain": True, "last_change": 1.25, "transitions": 4,
                    "previous": "up",
                    "kernel": {"address": "192.0.2.7", "connections": 12, "packets_in": None,
                               "packets_out": None, "bytes_in": None, "bytes_out": None,
                               "active": None, "inactive": None},
                    "drain_reason": "maintenance file"}
    assert all(type(wire[k]) is str for k in ("status", "error", "result"))
    (frame,) = codec.Decoder().feed(codec.encode(wire))
    back = messages.HostRow.from_wire(frame)
    assert back == r and type(back.status) is HostStatus


def test_host_row_error_only_while_down():
    from hoststated.states import HostError
    up = messages.HostRow(1, "a", "t", HostStatus.UP, HostError.HTTP_CODE_OK, check_cnt=4,
                          up_cnt=1)
    assert up.down_error == "" and up.to_wire()["error"] == ""
    assert up.to_wire()["result"] == "http code ok"
    assert up.availability == 25.0
    assert messages.HostRow(2, "b", "t").availability is None
    assert messages.HostRow(2, "b", "t").to_wire()["availability"] is None
    # a reply without "result" (an older daemon, a hand-made row) still
    # says in "error" why a host is down
    down = messages.HostRow.from_wire({"id": 2, "name": "b", "table": "t", "status": "down",
                                       "error": "tcp connect timeout"})
    assert down.error == HostError.TCP_CONNECT_TIMEOUT and down.down_error == "tcp connect timeout"


@pytest.mark.parametrize("wire, why", [
    ({"id": 1, "name": "a", "table": "t", "status": "sideways"}, "'status' has a bad value"),
    ({"id": "1", "name": "a", "table": "t"}, "'id' has a bad value"),
    ({"name": "a", "table": "t"}, "missing field 'id'"),
    ({"id": 1, "name": "a", "table": "t", "result": "exploded"}, "'error' has a bad value"),
    ({"id": 1, "name": "a", "table": "t", "detail": 5}, "'detail' has a bad value"),
    ({"id": 1, "name": "a", "table": "t", "port": True}, "'port' has a bad value"),
    ({"id": 1, "name": "a", "table": "t", "status": ["up"]}, "'status' has a bad value"),
    ([1, "a"], "not a map"),
])
def test_host_row_off_schema_refused(wire, why):
    with pytest.raises(MessageError, match=why):
        messages.HostRow.from_wire(wire)


def test_status_words():
    # the one table vocabulary, relayctl's
    assert messages.table_status(2, False) == "active (2 hosts)"
    assert messages.table_status(0, False) == "empty"
    assert messages.table_status(3, True) == "disabled"
    assert messages.redirect_status(False, True, True) == "active"
    assert messages.redirect_status(False, False, True) == "active (using backup table)"
    assert messages.redirect_status(False, False, False) == "down"
    assert messages.redirect_status(True, True, True) == "disabled"
    assert messages.relay_status(False, running=False) == "not running"
    assert messages.relay_status(False, running=True) == "active"
    assert messages.relay_status(True, running=False) == "disabled"


def test_show_reply_round_trips_with_only_its_parts():
    reply = messages.ShowReply(
        tables=[messages.TableRow(1, "web:80", "active (1 hosts)", up=1, hosts=2, check="http",
                                  port=80)],
        hosts=[full_host_row()],
        redirects=[messages.RedirectRow(1, "www", "active", table="web:80", backup="sorry:80")],
        relays=[messages.RelayRow(1, "tls", "not running")],
        stats=messages.Stats(lag_p50_ms=1.5, checks_done=7), generation=3)
    wire = reply.to_wire()
    assert list(wire) == ["redirects", "tables", "hosts", "relays", "stats", "generation"]
    assert wire["stats"] == {"lag_p50_ms": 1.5, "checks_done": 7}
    assert wire["tables"][0] == {"id": 1, "name": "web:80", "status": "active (1 hosts)",
                                 "up": 1, "hosts": 2, "check": "http", "port": 80,
                                 "disabled": False}
    (frame,) = codec.Decoder().feed(codec.encode(wire))
    assert messages.ShowReply.from_wire(frame) == reply
    assert list(messages.ShowReply(tables=[]).to_wire()) == ["tables"]
    with pytest.raises(MessageError, match="table: field 'up' has a bad value"):
        messages.ShowReply.from_wire({"tables": [{"id": 1, "name": "x", "status": "empty",
                                                  "up": "1"}]})


def test_event_wire():
    ev = messages.Event("host", full_host_row())
    wire = ev.to_wire()
    assert wire["event"] == "host" and wire["data"] == full_host_row().to_wire()
    assert messages.Event.from_wire(wire) == ev
    red = messages.Event("redirect", messages.RedirectRow(2, "www", "disabled", table="web:80"))
    assert messages.Event.from_wire(red.to_wire()) == red
    with pytest.raises(MessageError, match="unknown event 'dance'"):
        messages.Event.from_wire({"event": "dance", "data": {}})


@pytest.mark.parametrize("words, message", [
    ([":"], 'unknown command: ":"'),           # fuzz_control's find: "unknown command: :"
    (["--"], 'unknown command: "--"'),
    (["show", "hosts", "\x1b[2J"], 'show hosts: unexpected argument "\\u001b[2J"'),
    (["frobnicate"], "unknown command: frobnicate"),
])
def test_a_word_that_reads_as_none_is_quoted(words, message):
    with pytest.raises(CommandError) as e:
        parse_command(words)
    assert e.value.message == message
