"""Notifications (issue 14): the config words, the state tracker, the
command runner's bounds, the alert mail's text. Real processes, no mocks;
the live daemon and a real MTA are tests/integration/test_notify_live.py."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

from hoststated import notify
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.model import AlertMail, NotifyCommand
from hoststated.conf.printconf import print_config
from hoststated.states import HostStatus

UP, DOWN, UNKNOWN = HostStatus.UP, HostStatus.DOWN, HostStatus.UNKNOWN

BASE = """\
table <web> { 192.0.2.1, 192.0.2.2 }
table <sorry> { 192.0.2.9 }
redirect www {
\tlisten on 203.0.113.1 port 80
\tforward to <web> check tcp
\tforward to <sorry> check tcp
}
"""


def loads(text: str):
    return load_text(text, "t.conf", lookup=False, runnable=False)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text)
    return [str(d) for d in e.value.diagnostics]


# --- the config words ----------------------------------------------------------

def test_options_round_trip():
    text = ('notify command "/bin/true a \'b c\'" on down timeout 500\n'
            'notify command "/bin/echo"\n'
            'alert mail to "root@localhost, ops@example.com" from "lb@example.com" '
            'via 127.0.0.1 port 2525 every 60 on down\n'
            'maintenance directory "/var/lib/hoststated/maintenance"\n'
            'autoreload callback "/bin/true"\n' + BASE)
    c = loads(text)
    g = c.global_
    assert g.notify == (NotifyCommand(command="/bin/true a 'b c'", on="down", timeout=500),
                        NotifyCommand(command="/bin/echo"))
    assert g.alert_mail == AlertMail(to=("root@localhost", "ops@example.com"),
                                     sender="lb@example.com", host="127.0.0.1", port=2525,
                                     every=60, on="down")
    assert g.maintenance_dir == "/var/lib/hoststated/maintenance"
    assert g.autoreload is not None and g.autoreload.callback == "/bin/true"
    printed = print_config(c)
    assert loads(printed).global_ == g
    assert print_config(loads(printed)) == printed


def test_defaults_and_bare_autoreload():
    g = loads('alert mail to "root"\nautoreload\n' + BASE).global_
    assert g.alert_mail == AlertMail(to=("root",))
    assert (g.alert_mail.host, g.alert_mail.port, g.alert_mail.every,
            g.alert_mail.on) == ("localhost", 25, 0, "all")
    assert g.autoreload is not None and g.autoreload.callback is None


def test_words_stay_names():
    """`table <mail>` (etc/monitor-only.conf) is still a table name."""
    c = loads(BASE.replace("<sorry>", "<mail>"))
    assert "<mail>" in print_config(c)


@pytest.mark.parametrize("line, message", [
    ('notify command "true"', "the program must be an absolute path"),
    ('notify command ""', "empty command"),
    ('notify command "/bin/true \'x"', "No closing quotation"),
    ('notify command "/bin/true" on sideways', "on sideways: expected up, down, all or fallback"),
    ('notify command "/bin/true" timeout 0', "invalid timeout 0 ms"),
    ('alert mail to "a b@example.com"', "not a mail address"),
    ('alert mail to "root" from "x\\"y"', "not a mail address"),
    ('alert mail to "root" via "bad host!"', "not an address or a host name"),
    ('alert mail to "root" via 127.0.0.1 port 0', "out of range"),
    ('maintenance directory "relative"', "must be an absolute path"),
    ('autoreload callback "sh -c x"', "the program must be an absolute path"),
])
def test_refused_with_the_place(line, message):
    errs = errors(line + "\n" + BASE)
    assert any(e.startswith("t.conf:1:") and message in e for e in errs), errs


def test_load_checks_program_and_directory(tmp_path):
    """-n (lookup on) checks the program is executable and the maintenance
    directory is one the run-as user can read."""
    prog = tmp_path / "hook"
    prog.write_text("#!/bin/sh\n")
    text = (f'notify command "{prog}"\nmaintenance directory "{tmp_path}/nope"\n'
            'user "root"\n' + BASE)
    errs = [e for e in errors_lookup(text)]
    assert any(f"program {prog} is not executable" in e for e in errs), errs
    assert any(f"maintenance directory {tmp_path}/nope: No such file" in e for e in errs), errs


def errors_lookup(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, "t.conf", lookup=True)
    return [str(d) for d in e.value.diagnostics]


# --- the tracker: hosts -> tables -> redirects ---------------------------------------

def tracker():
    c = loads(BASE)
    ids = {(h.table, h.name): h.id for h in c.hosts()}
    return notify.Tracker(c), ids


def said(events):
    return [(e.kind, e.name, e.old, e.new) for e in events]


def test_tracker_falls_back_and_comes_back():
    t, ids = tracker()
    a, b, s = ids["web:80", "192.0.2.1"], ids["web:80", "192.0.2.2"], ids["sorry:80", "192.0.2.9"]
    # found up at the start: no news
    assert t.host(a, UP, "tcp ok") == [] and t.host(s, UP, "tcp ok") == []
    assert said(t.host(b, DOWN, "tcp connect failed")) == [
        ("host", "192.0.2.2", "unknown", "down")]
    evs = t.host(a, DOWN, "tcp connect timeout")
    assert said(evs) == [("host", "192.0.2.1", "up", "down"),
                         ("table", "web:80", "up", "down"),
                         ("redirect", "www", "up", "backup")]
    assert evs[0].reason == "tcp connect timeout" and evs[0].redirects == ("www",)
    assert evs[2].table == "sorry:80"
    evs = t.host(b, UP, "tcp ok")
    assert said(evs) == [("host", "192.0.2.2", "down", "up"), ("table", "web:80", "down", "up"),
                         ("redirect", "www", "backup", "up")]
    assert said(t.host(s, DOWN, "x")) == [("host", "192.0.2.9", "up", "down"),
                                         ("table", "sorry:80", "up", "down")]


def test_tracker_reconfigure_is_no_change():
    c = loads(BASE)
    ids = {h.name: h.id for h in c.hosts()}
    t = notify.Tracker(c, {ids["192.0.2.1"]: DOWN, ids["192.0.2.2"]: DOWN,
                           ids["192.0.2.9"]: UP})
    assert t.rdr["www"] == "backup" and t.tables["web:80"] == "down"
    assert said(t.host(ids["192.0.2.1"], UP, "ok"))[-1] == ("redirect", "www", "backup", "up")


def test_filter():
    ev = notify.Event("redirect", "www", "up", "backup")
    assert notify.wanted("down", ev) and notify.wanted("all", ev)
    assert not notify.wanted("up", ev)


def test_fallback_words():
    """migrate (issue 14): `on fallback` is ldirectord's fallbackcommand:
    start when the redirect's table has no host up, stop when one is back."""
    E = notify.Event
    for ev, word in ((E("redirect", "www", "up", "backup"), "start"),
                     (E("redirect", "www", "up", "down"), "start"),
                     (E("redirect", "www", "unknown", "down"), "start"),   # at the start
                     (E("redirect", "www", "backup", "up"), "stop"),
                     (E("redirect", "www", "down", "up"), "stop"),
                     (E("redirect", "www", "backup", "down"), None),       # still fallen back
                     (E("redirect", "www", "down", "backup"), None),
                     (E("table", "web:80", "up", "down"), None),
                     (E("host", "192.0.2.1", "up", "down"), None)):
        assert notify.fallback_word(ev) == word, ev
        assert notify.wanted("fallback", ev) is (word is not None), ev
    c = loads('notify command "/bin/true" on fallback\n' + BASE)
    assert c.global_.notify[0].on == "fallback"
    assert 'notify command "/bin/true" on fallback timeout' in print_config(c)
    assert any("alert mail: on fallback: expected up, down or all" in e
               for e in errors('alert mail to "a@example.test" on fallback\n'))


def test_fallback_command_gets_start_and_stop(tmp_path):
    out = tmp_path / "got"
    cmd = NotifyCommand(command=script(tmp_path, f'echo "$# $*" >> {out}\n') + " fb",
                        on="fallback")

    async def go():
        c = notify.Commands()
        for ev in (notify.Event("redirect", "www", "up", "backup"),
                   notify.Event("redirect", "www", "backup", "up")):
            assert notify.wanted(cmd.on, ev)
            c.submit(cmd, ev)
        while c.tasks or c.queue:
            await asyncio.sleep(0.01)
    asyncio.run(go())
    assert out.read_text().splitlines() == ["2 fb start", "2 fb stop"]


# --- commands: real processes -------------------------------------------------------

def script(tmp_path, body: str) -> str:
    p = tmp_path / "hook.sh"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_command_gets_arguments_and_environment(tmp_path):
    out = tmp_path / "got"
    cmd = NotifyCommand(command=script(tmp_path, f'''
python3 -c 'import json, os, sys; json.dump({{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items() if k.startswith("HOSTSTATED_")}}}}, open("{out}", "w"))' "$@"
'''))
    ev = notify.Event("host", "192.0.2.2", "up", "down", "tcp connect failed: refused",
                      "web:80", ("www",), "192.0.2.2", 80)

    async def go():
        c = notify.Commands()
        c.submit(cmd, ev)
        while c.tasks or c.queue:
            await asyncio.sleep(0.01)
        return c
    c = asyncio.run(go())
    got = json.loads(out.read_text())
    assert got["argv"] == ["host", "192.0.2.2", "up", "down", "tcp connect failed: refused"]
    env = got["env"]
    assert {k: env[k] for k in ("HOSTSTATED_EVENT", "HOSTSTATED_NAME", "HOSTSTATED_OLD",
                                "HOSTSTATED_NEW", "HOSTSTATED_REASON", "HOSTSTATED_HOST",
                                "HOSTSTATED_ADDRESS", "HOSTSTATED_PORT", "HOSTSTATED_TABLE",
                                "HOSTSTATED_REDIRECT")} == {
        "HOSTSTATED_EVENT": "host", "HOSTSTATED_NAME": "192.0.2.2", "HOSTSTATED_OLD": "up",
        "HOSTSTATED_NEW": "down", "HOSTSTATED_REASON": "tcp connect failed: refused",
        "HOSTSTATED_HOST": "192.0.2.2", "HOSTSTATED_ADDRESS": "192.0.2.2",
        "HOSTSTATED_PORT": "80", "HOSTSTATED_TABLE": "web:80", "HOSTSTATED_REDIRECT": "www"}
    assert (c.ran, c.failed, c.killed, c.dropped) == (1, 0, 0, 0)


def test_hanging_failing_and_flooding_commands(tmp_path, caplog):
    """A command that hangs is killed at its timeout (its background child
    too), one that fails is logged, a flood beyond the queue is dropped and
    counted; none of it waits in the caller."""
    pidfile = tmp_path / "bg.pid"
    hang = NotifyCommand(command=script(tmp_path, f"sleep 600 & echo $! > {pidfile}\nwait\n"),
                         timeout=300)
    fail = NotifyCommand(command="/bin/sh -c 'echo broken pipe dream; exit 3'")
    ev = notify.Event("host", "192.0.2.1", "up", "down")

    async def go():
        c = notify.Commands()
        c.submit(fail, ev)
        c.submit(hang, notify.Event("host", "192.0.2.7", "up", "down"))
        while c.tasks or c.queue:
            await asyncio.sleep(0.01)
        # a flood: every slot busy with commands that hang, the rest queued or dropped
        slow = NotifyCommand(command="/bin/sleep 600", timeout=600000)
        for i in range(200):
            c.submit(slow, notify.Event("host", f"192.0.2.{i % 250}", "up", "down"))
        flood = (len(c.tasks), len(c.queue), c.dropped)
        c.close()
        await asyncio.gather(*c.tasks, return_exceptions=True)
        return c, flood
    with caplog.at_level("WARNING", logger="hoststated.hce"):
        c, flood = asyncio.run(go())
    assert (c.failed, c.killed) == (1, 1)
    assert flood == (notify.NOTIFY_AT_ONCE, notify.NOTIFY_QUEUE,
                     200 - notify.NOTIFY_AT_ONCE - notify.NOTIFY_QUEUE)
    text = caplog.text
    assert "exit status 3: broken pipe dream" in text
    assert "killed after 300 ms" in text
    bg = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{bg}") or "zombie" in open(f"/proc/{bg}/status").read() \
        or "Z" in open(f"/proc/{bg}/stat").read().split()[2]


def test_one_objects_events_run_in_order(tmp_path):
    out = tmp_path / "order"
    cmd = NotifyCommand(command=script(tmp_path, f'echo "$4" >> {out}\n'))

    async def go():
        c = notify.Commands()
        for new in ("down", "up", "down", "up", "down"):
            c.submit(cmd, notify.Event("host", "192.0.2.1", "x", new, table="web:80"))
        while c.tasks or c.queue:
            await asyncio.sleep(0.01)
    asyncio.run(go())
    assert out.read_text().split() == ["down", "up", "down", "up", "down"]


def test_missing_program_is_logged(caplog):
    async def go():
        c = notify.Commands()
        c.submit(NotifyCommand(command="/nonexistent/hook"), notify.Event("host", "h", "up",
                                                                          "down"))
        while c.tasks or c.queue:
            await asyncio.sleep(0.01)
        return c
    with caplog.at_level("WARNING", logger="hoststated.hce"):
        c = asyncio.run(go())
    assert c.failed == 1 and "could not be started: /nonexistent/hook" in caplog.text


# --- the mail's text -----------------------------------------------------------------------

def test_message_text():
    a = AlertMail(to=("root@localhost", "ops@example.com"), sender="lb@example.com")
    evs = [notify.Event("host", "192.0.2.2", "up", "down", "tcp connect failed", "web:80",
                        ("www",), at=0.0),
           notify.Event("redirect", "www", "up", "backup", "table web:80 down", "sorry:80",
                        ("www",), at=0.0)]
    m = notify.message(a, evs)
    assert m["Subject"] == "hoststated: host 192.0.2.2 (table web:80, redirect www) down " \
                           "(was up), and 1 more"
    assert (m["From"], m["To"]) == ("lb@example.com", "root@localhost, ops@example.com")
    body = m.get_content()
    assert "1970-01-01 00:00:00 UTC host 192.0.2.2 (table web:80, redirect www) down (was " \
           "up): tcp connect failed\n" in body
    assert "redirect www (backup table sorry:80) backup (was up): table web:80 down" in body


def test_mail_repeat_while_down():
    a = AlertMail(to=("root",), every=1, on="down")

    async def go():
        m = notify.Mailer(a)
        m.submit(notify.Event("host", "h", "up", "down", table="t"))
        m.submit(notify.Event("host", "k", "up", "down", table="t"))
        m.submit(notify.Event("host", "k", "down", "up", table="t"))   # not mailed: on down
        first = [e.words() for e in m.queue]
        m.queue.clear()
        key = ("host", "h", "t")
        m.down[key] = (m.down[key][0], 0.0)        # its repeat is due
        m._repeats()
        return first, [e.words() for e in m.queue], set(m.down)
    first, again, down = asyncio.run(go())
    assert first == ["host h (table t) down (was up)", "host k (table t) down (was up)"]
    assert len(again) == 1 and again[0].startswith("host h (table t) still down since ")
    assert down == {("host", "h", "t")}


# --- maintenance files: their names ---------------------------------------------------

@pytest.mark.parametrize("name, parsed", [
    ("192.0.2.1", ("192.0.2.1", None)),
    ("192.0.2.1:80", ("192.0.2.1", 80)),
    ("2001:db8::1", ("2001:db8::1", None)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[2001:DB8::0001]", ("2001:db8::1", None)),
    ("web1.example.com", ("web1.example.com", None)),
    ("Web1.Example.com:8080", ("web1.example.com", 8080)),
    ("web1", ("web1", None)),
    ("192.0.2.1:0", None),
    ("192.0.2.1:99999", None),
    ("192.0.2.1:http", None),
    ("not an address!", None),
    (".swp", None),
    ("-web", None),
    ("[web]:80", None),
    ("1.2.3", None),
    ("a:b:c", None),
])
def test_maintenance_names(name, parsed):
    from hoststated.maintenance import parse
    assert parse(name) == parsed


def test_maintenance_matches_every_table(tmp_path, caplog):
    from hoststated.maintenance import Maintenance
    c = loads(BASE.replace("{ 192.0.2.9 }", "{ 192.0.2.9, 192.0.2.2 }"))
    ids = {(h.table, h.name): h.id for h in c.hosts()}
    changes = []
    m = Maintenance(str(tmp_path), c, lambda: changes.append(set(m.hosts)))
    (tmp_path / "192.0.2.2").touch()
    (tmp_path / "192.0.2.1:81").touch()          # no host on port 81
    (tmp_path / "bad name").touch()
    with caplog.at_level("WARNING", logger="hoststated.hce"):
        m.path = str(tmp_path)
        m.scan()
        m.scan()                                 # a bad name is told once
    assert changes == [{ids["web:80", "192.0.2.2"], ids["sorry:80", "192.0.2.2"]}]
    assert caplog.text.count("'bad name' is not named address") == 1
    (tmp_path / "192.0.2.2").unlink()
    (tmp_path / "192.0.2.9:80").touch()
    m.scan()
    assert changes[-1] == {ids["sorry:80", "192.0.2.9"]}


# --- the director's sysctls (item 5) ---------------------------------------------------

def test_sysctl_needs():
    from hoststated.conf.sysctl import needs
    nat = loads(BASE)
    assert [(n.key, n.why) for n in needs(nat)] == [
        ("net.ipv4.ip_forward", "redirect www forwards to IPv4 hosts by NAT")]
    ipvs = loads("engine ipvs\n" + BASE.replace("check tcp\n", "check tcp\n\tsticky-address\n",
                                                1))
    assert [n.key for n in needs(ipvs)] == ["net.ipv4.ip_forward",
                                            "net.ipv4.vs.expire_quiescent_template"]
    removed = loads("engine ipvs\n" + BASE.replace("check tcp\n", "check tcp\n\tno quiescent\n",
                                                    1))
    assert "net.ipv4.vs.expire_nodest_conn" in [n.key for n in needs(removed)]
    dr = loads("engine ipvs\n" + BASE.replace("forward to <web> check tcp", "route to <web> check tcp")
               .replace("forward to <sorry> check tcp", "route to <sorry> check tcp"))
    assert needs(dr) == []
    none = loads("engine none\n" + BASE)
    assert needs(none) == []


# --- inotify and autoreload's debounce: real files ------------------------------------------

def test_autoreload_sees_an_edit_and_a_rename(tmp_path):
    from hoststated.autoreload import Autoreload
    conf = tmp_path / "h.conf"
    conf.write_text("interval 10\n")
    (tmp_path / "other").write_text("x")

    async def go():
        seen: list[str] = []
        a = Autoreload(seen.append)
        a.watch_files([str(conf)])
        try:
            async def until(n):
                for _ in range(400):                 # 20 s at most
                    if len(seen) >= n:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"autoreload saw {seen}")
            (tmp_path / "other").write_text("y")     # not a config file
            conf.write_text("interval 11\n")          # in place
            await until(1)
            new = tmp_path / "h.conf.new"
            new.write_text("interval 12\n")
            os.rename(new, conf)                      # as editors save
            await until(2)
        finally:
            a.close()
        return seen
    assert asyncio.run(go()) == [str(conf), str(conf)]


def test_watch_refuses_a_missing_directory(tmp_path):
    from hoststated.inotify import Watch
    with pytest.raises(OSError) as e:
        Watch([str(tmp_path / "nope")], lambda names: None)
    assert e.value.filename == str(tmp_path / "nope")


# --- a redirection's own notify command and alert mail --------------------------------------

def test_redirect_overrides():
    text = ('notify command "/bin/true global"\nalert mail to "root"\n'
            'table <web> { 192.0.2.1 }\ntable <other> { 192.0.2.5 }\n'
            'redirect www {\n\tlisten on 203.0.113.1 port 80\n\tforward to <web> check tcp\n'
            '\tnotify command "/bin/true www" on down\n'
            '\talert mail to "web-team@example.com" every 300\n}\n'
            'redirect other {\n\tlisten on 203.0.113.2 port 80\n'
            '\tforward to <other> check tcp\n}\n')
    c = loads(text)
    www = c.redirects[0]
    assert www.notify == (NotifyCommand(command="/bin/true www", on="down"),)
    assert www.alert_mail == AlertMail(to=("web-team@example.com",), every=300)
    printed = print_config(c)
    again = loads(printed)
    assert again.redirects == tuple(r.model_copy(update={"where": a.where})
                                    for r, a in zip(c.redirects, again.redirects))
    n = notify.Notifier(c)
    ids = {h.name: h.id for h in c.hosts()}
    n.tracker.host(ids["192.0.2.1"], UP, "")
    cmds, mails = n._targets(notify.Event("host", "192.0.2.1", "up", "down",
                                          redirects=("www",)))
    assert [x.command for x in cmds] == ["/bin/true global", "/bin/true www"]
    assert [m.alert.to for m in mails] == [("web-team@example.com",)]
    cmds, mails = n._targets(notify.Event("host", "192.0.2.5", "up", "down",
                                          redirects=("other",)))
    assert [x.command for x in cmds] == ["/bin/true global"]
    assert [m.alert.to for m in mails] == [("root",)]


# --- log state file (migrate, issue 14: ldirectord's monitorfile) --------------------

def test_state_file_config_and_problems(tmp_path):
    c = loads(f'log state file "{tmp_path}/state.log"\n' + BASE)
    assert c.global_.state_file == f"{tmp_path}/state.log"
    assert f'log state file "{tmp_path}/state.log"' in print_config(c)
    assert loads(print_config(c)).global_.state_file == c.global_.state_file
    assert any("log state file state.log: must be an absolute path" in e
               for e in errors('log state file "state.log"\n' + BASE))
    # -n (with lookups) checks what the parent will open
    errs = errors_lookup(f'log state file "{tmp_path}/nope/state.log"\n' + BASE)
    assert any(f"t.conf:1:1: log state file {tmp_path}/nope/state.log: its directory "
               f"{tmp_path}/nope does not exist" in e for e in errs), errs
    os.mkfifo(tmp_path / "fifo")
    errs = errors_lookup(f'log state file "{tmp_path}/fifo"\n' + BASE)
    assert any(f"log state file {tmp_path}/fifo: is a FIFO" in e for e in errs), errs


def test_state_file_lines_from_the_tracker(tmp_path):
    from hoststated import proc
    path = tmp_path / "state.log"
    path.write_text("kept\n")
    c = loads(f'log state file "{path}"\n' + BASE)
    fd = proc.open_state_file(c)
    n = notify.Notifier(c, state_fd=fd)
    ids = {h.name: h.id for h in c.hosts()}
    n.host_changed(ids["192.0.2.1"], UP, "tcp ok")          # found up: no line
    n.host_changed(ids["192.0.2.2"], DOWN, "tcp connect failed:\nrefused")
    n.host_changed(ids["192.0.2.2"], UP, "tcp ok")
    n.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "kept"                                # appended, not truncated
    assert [ln.split(" ", 1)[1] for ln in lines[1:]] == [
        "host 192.0.2.2 (table web:80, redirect www) down (was unknown): tcp connect "
        "failed: refused",
        "host 192.0.2.2 (table web:80, redirect www) up (was down): tcp ok"]
    assert all(ln.split(" ", 1)[0].endswith("Z") for ln in lines[1:])
    fresh = tmp_path / "new.log"
    os.close(proc.open_state_file(loads(f'log state file "{fresh}"\n' + BASE)))
    assert fresh.stat().st_mode & 0o777 == 0o640 & ~os.umask(os.umask(0))
    with pytest.raises(OSError):
        proc.open_state_file(loads(f'log state file "{tmp_path}"\n' + BASE))
