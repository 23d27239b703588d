"""hoststatectl's renderers and parser: relayctl's exact columns, pure."""

import json

import pytest

from hoststatectl import output, parser
from hoststatectl.main import main
from hoststated.ipc.messages import HostRow

HOSTS = {
    "tables": [
        {"id": 1, "name": "web:80", "status": "active (1 hosts)", "up": 1, "disabled": False},
        {"id": 2, "name": "old:80", "status": "disabled", "up": 0, "disabled": True},
    ],
    "hosts": [
        {"id": 1, "name": "10.0.0.1", "table": "web:80", "status": "up", "error": "",
         "detail": "", "check_cnt": 120, "up_cnt": 120, "retry_cnt": 0},
        {"id": 2, "name": "10.0.0.2", "table": "web:80", "status": "down",
         "error": "http code mismatch", "detail": "got 302, want 200",
         "check_cnt": 120, "up_cnt": 115, "retry_cnt": 2},
        {"id": 3, "name": "10.0.0.3", "table": "web:80", "status": "unknown", "error": "",
         "detail": "", "check_cnt": 0, "up_cnt": 0, "retry_cnt": 0},
        {"id": 4, "name": "10.0.0.4", "table": "old:80", "status": "disabled", "error": "",
         "detail": "", "check_cnt": 3, "up_cnt": 3, "retry_cnt": 0},
    ],
}


def test_show_hosts_columns():
    assert output.text(("show", "hosts"), HOSTS).split("\n") == [
        "Id  \tType    \tName                    \tAvlblty\tStatus",
        "1   \ttable   \tweb:80                  \t       \tactive (1 hosts)",
        "1   \thost    \t10.0.0.1                \t100.00%\tup",
        "\t        \ttotal: 120/120 checks",
        "2   \thost    \t10.0.0.2                \t95.83% \tdown",
        "\t        \ttotal: 115/120 checks, 2 retries, error: http code mismatch: "
        "got 302, want 200",
        "3   \thost    \t10.0.0.3                \t       \tunknown",
        "2   \ttable   \told:80                  \t       \tdisabled",
    ]


def test_show_summary_has_no_totals_but_scheduler_lag():
    data = dict(HOSTS, redirects=[{"id": 1, "name": "www", "status":
                                   "active (using backup table)"}],
                relays=[{"id": 1, "name": "tls", "status": "active"}],
                stats={"lag_p50_ms": 1.25, "lag_p99_ms": 9.5, "checks_done": 7})
    lines = output.text(("show", "summary"), data).split("\n")
    assert lines[1] == "1   \tredirect\twww                     \t       \tactive (using backup table)"
    assert not [l for l in lines if "total:" in l]
    assert lines[-2] == "1   \trelay   \ttls                     \t       \tactive"
    assert lines[-1] == "scheduler: lag p50 ms 1.2, lag p99 ms 9.5, checks done 7"


def test_show_tables_only_tables():
    assert output.text(("show", "tables"), HOSTS).count("\thost") == 0


@pytest.mark.parametrize("words", [("poll",), ("reload",), ("host", "disable"), ("log", "brief")])
def test_action_commands_say_succeeded(words):
    assert output.text(words, None) == "command succeeded"


def test_event_text():
    ev = {"event": "host", "data": {"id": 2, "name": "10.0.0.2", "table": "web:80",
                                    "status": "down", "error": "tcp connect timeout",
                                    "detail": ""}}
    assert output.event_text(ev).endswith(
        "host 2 10.0.0.2 (web:80): down, error: tcp connect timeout")


def test_load_path_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parser.parse(["load", "x.conf"]).arg == str(tmp_path / "x.conf")


def test_usage_lists_every_command():
    lines = parser.usage_lines()
    assert "show summary" in lines and "host disable <id|name>" in lines and "load <file>" in lines


def test_bad_command_exit_status_without_daemon(capsys):
    assert main(["-s", "/nonexistent/x.sock", "sh"]) == 2
    assert "incomplete command" in capsys.readouterr().err
    assert main(["-s", "/nonexistent/x.sock", "show", "hosts"]) == 1
    assert capsys.readouterr().err == \
        "hoststatectl: connect /nonexistent/x.sock: No such file or directory\n"


def test_json_output_is_json():
    assert json.loads(output.as_json(HOSTS)) == HOSTS


def test_child_host_names_its_parent():
    h = {"id": 5, "name": "10.0.0.5", "table": "web:80", "status": "up", "parent": 1,
         "check_cnt": 0, "up_cnt": 0}
    assert output.host_lines(HostRow.from_wire(h), True) == [
        "5   \thost    \t10.0.0.5 parent 1       \t       \tup"]


def _session(**kw) -> dict:
    return {"id": 3, "relay": 1, "relay_name": "www", "pid": 4242, "client": "192.0.2.2",
            "client_port": 50000, "backend": "198.51.100.11", "backend_port": 80,
            "age": 61.0, "idle": 2.0, "bytes_in": 10, "bytes_out": 20, **kw}


def test_show_sessions_prints_a_tag_by_name_and_nothing_untagged():
    text = output.text(("show", "sessions"), {"sessions": [_session(tag="SLOW"), _session(id=4)]})
    assert text.split("\n") == [
        "session 1:3 192.0.2.2:50000 -> 198.51.100.11:80\tRUNNING",
        "\tage 00:01:01, idle 00:00:02, relay 1, pid 4242, tag SLOW",
        "session 1:4 192.0.2.2:50000 -> 198.51.100.11:80\tRUNNING",
        "\tage 00:01:01, idle 00:00:02, relay 1, pid 4242",
    ]
