"""hce_show: hce's control answers, built in memory from a config and host
rows (no socket, no event loop, no scheduler)."""

import pytest

from hoststated.conf.load import load_text
from hoststated.hce_show import SHOW_CACHE, Answers
from hoststated.ipc import codec
from hoststated.ipc.messages import (CommandError, ErrorCode, HostRow, RedirectRow, RelayRow,
                                     ShowReply, Stats, TableRow)
from hoststated.states import HostError, HostStatus as S

# lookups on for localhost; a user this machine has (the default may be missing)
CONF = """
user "nobody"
table <web> { 198.51.100.11, localhost }
table <spare> { 198.51.100.30 }
table <sorry> disable { 198.51.100.20 }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
	forward to <spare> port 80 check tcp
}
redirect "old" {
	listen on 203.0.113.11 port 80
	forward to <sorry> port 80 check tcp
	disable
}
relay "proxy" {
	listen on 203.0.113.12 port 8080
	forward to <web> port 80 check http "/" code 200
}
relay "off" {
	listen on 203.0.113.13 port 8080
	forward to <web> port 80 check http "/" code 200
	disable
}
"""


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Hosts:
    """Stands for the scheduler's hosts(): rows we set, and a count of walks."""

    def __init__(self, config):
        self.rows = {h.id: HostRow(h.id, h.name, t.name, address=h.address, port=t.port,
                                   table_id=t.id,
                                   status=S.DISABLED if t.disabled else S.UNKNOWN)
                     for t in config.tables for h in t.hosts}
        self.walks = 0

    def set(self, host_id, status, error=HostError.NONE, checks=0, ups=0):
        r = self.rows[host_id]
        r.status, r.error, r.check_cnt, r.up_cnt = status, error, checks, ups

    def __call__(self):
        self.walks += 1
        return [r.copy() for r in self.rows.values()]


@pytest.fixture
def setup():
    config = load_text(CONF, lookup=True)       # localhost: /etc/hosts, no DNS
    hosts, clock = Hosts(config), Clock()
    stats = Stats(lag_p50_ms=0.5, checks_done=3)
    answers = Answers(config, 1, hosts, lambda: stats, clock=clock)
    return config, answers, hosts, clock


def by_name(rows):
    return {r.name: r for r in rows}


def test_ids_and_names_of_the_config(setup):
    config, *_ = setup
    # what the tests below rely on
    assert [(t.id, t.name) for t in config.tables] == [(1, "web:80"), (2, "spare:80"),
                                                       (3, "sorry:80")]
    assert [(h.id, h.name, h.address) for h in config.hosts()] == [
        (1, "198.51.100.11", "198.51.100.11"), (2, "localhost", "127.0.0.1"),
        (3, "198.51.100.30", "198.51.100.30"), (4, "198.51.100.20", "198.51.100.20")]


def test_show_tables_status_words(setup):
    _, answers, hosts, _ = setup
    hosts.set(1, S.UP, checks=1, ups=1)
    hosts.set(2, S.UP, checks=1, ups=1)
    hosts.set(3, S.DOWN, HostError.TCP_CONNECT_FAIL, checks=2)
    reply = answers.show("tables")
    assert reply == ShowReply(tables=reply.tables)          # only the tables
    assert reply.tables == [
        TableRow(1, "web:80", "active (2 hosts)", up=2, hosts=2, check="http", port=80),
        TableRow(2, "spare:80", "empty", up=0, hosts=1, check="tcp", port=80),
        TableRow(3, "sorry:80", "disabled", up=0, hosts=1, check="tcp", port=80,
                 disabled=True),
    ]


def test_show_hosts_rows_are_the_schedulers(setup):
    _, answers, hosts, _ = setup
    hosts.set(3, S.DOWN, HostError.TCP_CONNECT_FAIL, checks=4, ups=1)
    reply = answers.show("hosts")
    assert [t.name for t in reply.tables] == ["web:80", "spare:80", "sorry:80"]
    rows = {h.id: h for h in reply.hosts}
    assert rows[3].status == S.DOWN and rows[3].down_error == "tcp connect failed"
    assert rows[3].availability == 25.0
    assert rows[4].status == S.DISABLED and rows[4].table == "sorry:80"
    assert reply.redirects is None and reply.stats is None


def test_redirect_status_with_backup_table(setup):
    _, answers, hosts, _ = setup
    assert by_name(answers.redirects())["www"].status == "down"
    hosts.set(3, S.UP)                                      # only the backup has a host up
    answers.invalidate()
    www = by_name(answers.redirects())["www"]
    assert www == RedirectRow(1, "www", "active (using backup table)", table="web:80",
                              backup="spare:80")
    hosts.set(1, S.UP)
    answers.invalidate()
    assert by_name(answers.redirects())["www"].status == "active"
    # a table disabled at run time counts as no host up
    table = answers.find("table", "web")
    answers.set_enabled("table", table, False)
    assert by_name(answers.tables())["web:80"].status == "disabled"
    assert by_name(answers.redirects())["www"].status == "active (using backup table)"
    answers.set_enabled("table", table, True)
    assert by_name(answers.redirects())["www"].status == "active"


def test_disabled_redirects(setup):
    _, answers, hosts, _ = setup
    hosts.set(1, S.UP)
    assert answers.disabled_redirects == {"old"}            # from the config
    assert by_name(answers.redirects())["old"].status == "disabled"
    www = answers.find("redirect", "www")
    answers.set_enabled("redirect", www, False)
    assert answers.disabled_redirects == {"old", "www"}
    assert answers.redirect(www) == RedirectRow(1, "www", "disabled", table="web:80",
                                                backup="spare:80")
    answers.set_enabled("redirect", answers.find("redirect", "2"), True)
    assert by_name(answers.redirects())["old"].status == "down"   # its table is disabled


def test_relays_are_not_running_until_a_relay_process_reports(setup):
    _, answers, *_ = setup
    rows = answers.show("relays").relays
    assert [(r.id, r.name, r.status, r.processes) for r in rows] == [
        (1, "proxy", "not running", 0), (2, "off", "disabled", 0)]


def test_relay_figures_sum_the_processes_and_count_by_interval():
    from hoststated.hce_show import RelayFigures
    from hoststated.ipc.messages import RelayStats
    now = [1000.0]
    figures = RelayFigures(clock=lambda: now[0])
    relay = load_text(CONF, lookup=False).relays[0]
    names = {1: "proxy"}
    figures.update(RelayStats(1, 1, 101, {1: [2, 10, 1]}), names)
    figures.update(RelayStats(1, 2, 102, {1: [1, 5, 0]}), names)
    row = figures.row(relay)
    assert (row.status, row.sessions, row.total, row.errors, row.processes) == \
        ("active", 3, 15, 1, 2)
    assert row.last_min == 15                   # all of it within the first minute
    # two minutes on, 6 more sessions in process 1 within the last minute
    now[0] += 90
    figures.update(RelayStats(1, 1, 101, {1: [0, 10, 1]}), names)
    now[0] += 30
    figures.update(RelayStats(1, 1, 101, {1: [0, 16, 1]}), names)
    row = figures.row(relay)
    assert row.total == 21 and row.sessions == 1
    assert row.last_min == 6 and row.last_hour == 21
    assert row.avg_min == 10                    # 21 sessions over two whole minutes


def test_summary_has_every_part(setup):
    _, answers, hosts, _ = setup
    reply = answers.show("summary")
    assert [r.name for r in reply.redirects] == ["www", "old"]
    assert len(reply.tables) == 3 and len(reply.hosts) == 4 and len(reply.relays) == 2
    assert reply.stats == Stats(lag_p50_ms=0.5, checks_done=3) and reply.generation == 1
    assert answers.show("redirects") == ShowReply(redirects=reply.redirects)
    with pytest.raises(CommandError) as e:
        answers.show("sessions")                # hce asks the relay processes itself
    assert e.value.code == ErrorCode.UNKNOWN_COMMAND


@pytest.mark.parametrize("kind, arg, want", [
    ("host", "2", 2),                       # by id
    ("host", "localhost", 2),               # by name
    ("host", "127.0.0.1", 2),               # by address
    ("host", "198.51.100.30", 3),
    ("table", "3", 3),
    ("table", "spare:80", 2),               # by name
    ("table", "web", 1),                    # by its template's name
    ("redirect", "old", 2),
    ("redirect", "1", 1),
])
def test_find(setup, kind, arg, want):
    _, answers, *_ = setup
    assert answers.find(kind, arg).id == want


@pytest.mark.parametrize("kind, arg", [("host", "9"), ("host", "web"), ("table", "www"),
                                       ("redirect", "proxy"), ("table", "")])
def test_find_nothing(setup, kind, arg):
    _, answers, *_ = setup
    with pytest.raises(CommandError) as e:
        answers.find(kind, arg)
    assert e.value.code == ErrorCode.NOT_FOUND and e.value.message == f"no {kind} {arg}"


def test_host_listing_cached_for_a_second(setup):
    _, answers, hosts, clock = setup
    answers.show("hosts")
    answers.show("summary")
    answers.show_wire("hosts")
    assert hosts.walks == 1
    hosts.set(1, S.UP)
    assert by_name(answers.show("hosts").hosts)["198.51.100.11"].status == S.UNKNOWN
    clock.now += SHOW_CACHE + 0.01
    assert by_name(answers.show("hosts").hosts)["198.51.100.11"].status == S.UP
    assert hosts.walks == 2
    # an enable/disable recomputes tables and redirects from the same hosts
    answers.set_enabled("redirect", answers.find("redirect", "www"), False)
    assert by_name(answers.redirects())["www"].status == "disabled" and hosts.walks == 2
    answers.invalidate()                    # what hce does on any other command
    answers.show("tables")
    assert hosts.walks == 3


def test_show_wire_is_the_typed_reply_on_the_wire(setup):
    _, answers, hosts, _ = setup
    hosts.set(3, S.DOWN, HostError.TCP_CONNECT_FAIL, checks=2)
    for what in ("summary", "hosts", "tables", "redirects", "relays"):
        wire = answers.show_wire(what)
        assert wire == answers.show(what).to_wire()
        (frame,) = codec.Decoder().feed(codec.encode(wire))
        assert ShowReply.from_wire(frame) == answers.show(what)
    # the wire form is made once per listing
    assert answers.show_wire("hosts")["hosts"] is answers.show_wire("summary")["hosts"]


def test_reconfigure_carries_runtime_redirect_state(setup):
    config, answers, hosts, _ = setup
    answers.set_enabled("redirect", answers.find("redirect", "www"), False)
    answers.set_enabled("redirect", answers.find("redirect", "old"), True)
    answers.set_enabled("table", answers.find("table", "spare"), False)
    new = load_text(CONF.replace('redirect "old"', 'redirect "new"'), lookup=True)
    answers.reconfigure(new, 2)
    # www stays disabled; old is gone; new takes its state from the config;
    # tables take theirs from the config
    assert answers.disabled_redirects == {"www", "new"}
    assert answers.disabled_tables == {"sorry:80"}
    assert answers.show("summary").generation == 2
