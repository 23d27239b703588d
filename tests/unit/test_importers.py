"""migrate (issue 14): `hoststated import ldirectord|keepalived|aloha FILE`
on every ldirectord and keepalived file of the corpus (tests/data) and on
ALOHA configurations written from its reference: each output loads (-n),
re-imports stably (load -> print -> load gives the same model), carries
the services over, and names each line it has no equivalent for. Broken
input (binary, truncated, garbage) gives `file:line: message`, never a
traceback."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from hoststated import cli, importers
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.printconf import print_config
from hoststated.states import HostStatus

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = [(fmt, p) for fmt in importers.FORMATS for p in sorted((DATA / fmt).glob("*.conf"))]


def unplaced(x):
    if isinstance(x, dict):
        return {k: unplaced(v) for k, v in x.items() if k != "where"}
    if isinstance(x, list):
        return [unplaced(v) for v in x]
    return x


def imported(fmt: str, name: str) -> tuple[importers.Imported, object]:
    path = DATA / fmt / name
    r = importers.convert(fmt, path.read_bytes(), path.name)
    return r, load_text(r.text, "imported.conf", lookup=False)


def test_every_format_has_files():
    assert {fmt for fmt, _ in FILES} == set(importers.FORMATS)
    assert sum(1 for f, _ in FILES if f == "ldirectord") == 10
    assert sum(1 for f, _ in FILES if f == "keepalived") == 11


@pytest.mark.parametrize("fmt, path", FILES, ids=[f"{f}/{p.name}" for f, p in FILES])
def test_import_loads_and_reimports_stably(fmt, path):
    r = importers.convert(fmt, path.read_bytes(), path.name)
    config = load_text(r.text, "imported.conf", lookup=False)
    assert r.virtuals == len(config.redirects) > 0
    printed = print_config(config)
    again = load_text(printed, "printed.conf", lookup=False)
    assert unplaced(again.model_dump(mode="json")) == unplaced(config.model_dump(mode="json"))
    assert print_config(again) == printed
    # every note names a line of the original, and is a comment in the output
    lines = path.read_text().count("\n") + 1
    for note in r.notes:
        m = re.match(rf"{re.escape(path.name)}:(\d+): ", note)
        assert m and 1 <= int(m.group(1)) <= lines, note
    for note in r.notes:
        if "\n" not in note:
            assert f"# {note}" in r.text or note.split(":")[1] in r.text


def test_ldirectord_sample_carried_over():
    r, c = imported("ldirectord", "01-ClusterLabs-resource-agents.conf")
    (rdr,) = c.redirects
    assert rdr.name == "Web Site" and not rdr.quiescent            # quiescent=no
    assert (rdr.listen[0].address, rdr.listen[0].port) == ("192.168.6.240", 80)
    assert rdr.forward.method == "route" and rdr.forward.mode == "roundrobin"
    main = c.table(rdr.forward.table)
    assert [h.name for h in main.hosts] == ["192.168.6.2", "192.168.6.3", "192.168.6.6"]
    assert main.check.kind == "http" and main.check.path == "/index.html"
    assert main.check.body == "Test Page" and main.check.host == "www.x.y.z"
    backup = c.table(rdr.backup.table)
    assert [h.name for h in backup.hosts] == ["127.0.0.1"] and backup.check.kind == "none"
    assert c.global_.autoreload is not None and c.global_.autoreload.callback is None
    assert "\nautoreload\n" in r.text and not any("autoreload" in n for n in r.notes)


def test_ldirectord_production_file():
    r, c = imported("ldirectord", "03-grimli-ScriptUtili.conf")
    assert len(c.redirects) == 70
    udp = [x for x in c.redirects if x.listen[0].protocol == "udp"]
    assert udp and udp[0].listen[0].port == 53                 # `:domain`
    kinds = {t.check.kind for t in c.tables}
    assert {"dns", "http", "mysql", "ldap"} <= kinds
    sticky = [x for x in c.redirects if x.sticky is not None]
    assert sticky
    weights = {h.weight for t in c.tables for h in t.hosts}
    assert 100 in weights and 50 in weights
    # emailalert=, emailalertfreq=1800 (global): the global alert mail
    a = c.global_.alert_mail
    assert (a.to, a.every, a.sender, a.host, a.on) == (
        ("it.sysadmin@populis.com",), 1800, None, "localhost", "all")
    assert 'alert mail to "it.sysadmin@populis.com" every 1800\n' in r.text
    assert not any("emailalert" in n for n in r.notes)


def test_ldirectord_external_and_ranges_and_checktype_n():
    text = ("checkinterval=5\nconnecttimeout=1\nnegotiatetimeout=4\n"
            "virtual=192.0.2.10:80\n"
            "\treal=198.51.100.11->198.51.100.13:8080 masq 2\n"
            "\treal=198.51.100.20:8081 masq\n"
            "\tservice=http\n\trequest=\"/alive\"\n\treceive=\"OK\"\n"
            "\tchecktype=3\n\tcheckport=9000\n\tscheduler=wlc\n"
            "\temailalert=\"ops@example.com\"\n\tfallbackcommand=\"/bin/true\"\n"
            "virtual=192.0.2.11:22\n\treal=198.51.100.30 masq\n"
            "\tchecktype=external\n\tcheckcommand=\"/usr/local/bin/chk\"\n"
            "virtual=192.0.2.12:25\n\treal=198.51.100.40 gate\n\tchecktype=off\n"
            "virtual=7\n\treal=198.51.100.50:80 gate\n\tchecktype=on\n\tprotocol=fwm\n")
    r = importers.convert("ldirectord", text.encode(), "ld.cf")
    c = load_text(r.text, "i.conf", lookup=False)
    web, ssh, mail, fw = c.redirects
    t = c.table(web.forward.table)
    assert [(h.name, h.port, h.weight) for h in t.hosts] == [
        ("198.51.100.11", 8080, 2), ("198.51.100.12", 8080, 2), ("198.51.100.13", 8080, 2),
        ("198.51.100.20", 8081, 1)]
    o = t.options
    assert (o.check_port, o.connect_checks, o.connect_timeout,
            o.timeout or c.global_.timeout) == (9000, 3, 1000, 4000)
    assert t.check.kind == "http" and t.check.body == "OK"
    s = c.table(ssh.forward.table).check
    assert (s.kind, s.path, s.convention) == ("script", "/usr/local/bin/chk", "ldirectord")
    assert c.table(mail.forward.table).check.state == "off"
    assert fw.listen[0].fwmark == 7 and c.table(fw.forward.table).check.kind == "none"
    # the virtual's emailalert: its redirect's alert mail; its fallbackcommand: its
    # redirect's notify command on fallback, with a note (it runs unprivileged)
    assert web.alert_mail.to == ("ops@example.com",) and c.global_.alert_mail is None
    assert '\talert mail to "ops@example.com"\n' in r.text
    assert [n.split(": ", 2)[1] for n in r.notes if "NOTIFICATIONS" in n] == [
        'fallbackcommand="/bin/true"']
    assert [(n.command, n.on) for n in web.notify] == [("/bin/true", "fallback")]
    eng = __import__("hoststated.hce_sched", fromlist=["CheckEngine"]).CheckEngine(
        c, lambda row: None)
    st = {h.name: h.status for h in eng.hosts()}
    assert st["198.51.100.40"] == HostStatus.DOWN and st["198.51.100.50"] == HostStatus.UP


def test_keepalived_vrrp_left_and_services():
    r, c = imported("keepalived", "01-acassen-keepalived.conf")
    assert len(c.redirects) == 3
    assert any("vrrp_instance VI_1" in n and "left to keepalived" in n for n in r.notes)
    https = c.redirects[0]
    t = c.table(https.forward.table)
    assert t.check.kind == "https" and t.check.digest == "ff20ad2481f97b1754ef3e12ecd3a9cc"
    assert https.forward.method == "nat" and https.sticky.timeout == 50
    assert c.redirects[1].backup is not None                          # sorry_server
    assert [h.retry for h in t.hosts] == [3]
    # global_defs: notification_email { 3 }, _from, smtp_server: the global alert mail
    a = c.global_.alert_mail
    assert (a.to, a.sender, a.host, a.port) == (
        ("acassen@firewall.loc", "failover@firewall.loc", "sysadmin@firewall.loc"),
        "Alexandre.Cassen@firewall.loc", "192.168.200.1", 25)
    assert ('alert mail to "acassen@firewall.loc, failover@firewall.loc, '
            'sysadmin@firewall.loc" from "Alexandre.Cassen@firewall.loc" via '
            '"192.168.200.1"\n') in r.text
    assert any(n.startswith("01-acassen-keepalived.conf:11: smtp_connect_timeout")
               for n in r.notes)


def test_keepalived_group_and_tcp_checks():
    _, c = imported("keepalived", "02-acassen-keepalived-virtual_server_group.conf")
    (rdr,) = c.redirects
    addrs = [li.address for li in rdr.listen if li.fwmark is None]
    assert "192.168.200.3" in addrs and "192.168.200.10" in addrs
    assert any(li.fwmark == 1 for li in rdr.listen)
    assert c.global_.alert_mail.host == "192.168.200.1"
    _, c = imported("keepalived", "10-mruse-keepalived-lvs.conf")
    assert (c.global_.alert_mail.to, c.global_.alert_mail.host) == (
        ("test1@163.com", "test2@163.com"), "smtp.163.com")
    r, c = imported("keepalived", "03-acassen-keepalived-quorum.conf")
    (q,) = [n for n in r.notes if "quorum_up" in n]
    assert q.startswith("03-acassen-keepalived-quorum.conf:33: ") and "not carried over" in q
    assert c.redirects[0].notify == ()
    t = c.tables[0]
    assert t.check.kind == "tcp" and len(t.hosts) == 10
    _, c = imported("keepalived", "07-zhdnf-python_script.conf")
    assert [x.listen[0].protocol for x in c.redirects] == ["tcp", "udp"]
    assert all(t.check.kind == "none" for t in c.tables)          # no checker: up


def test_aloha_configs():
    r, c = imported("aloha", "01-web-gateway.conf")
    (www,) = c.redirects
    t = c.table(www.forward.table)
    assert www.forward.method == "route" and www.forward.mode == "weighted-roundrobin"
    assert (t.check.kind, t.check.path, t.check.host, t.check.code) == (
        "http", "/health", "www.example.com", 200)
    assert (t.options.interval, t.options.timeout, t.options.rise, t.options.fall) in (
        (None, None, 2, 3), (5, 2000, 2, 3))
    assert www.sticky.timeout == 600 and www.sticky.netmask == "255.255.255.0"
    assert www.quiescent and c.table(www.backup.table).hosts[0].name == "198.51.100.99"
    r, c = imported("aloha", "02-nat-ports.conf")
    app, dns, unwatched, mail = c.redirects
    t = c.table(app.forward.table)
    assert app.forward.mode == "weighted-two-choices"
    assert [(h.port, h.checked) for h in t.hosts] == [(8000, True), (8080, True),
                                                      (8000, False)]
    assert (t.options.check_port, t.options.source) == (9000, "198.51.100.1")
    assert dns.one_packet and c.table(dns.forward.table).check.kind == "icmp"
    assert unwatched.forward.method == "tunnel"
    assert c.table(unwatched.forward.table).check.kind == "none"
    assert any("arpcheck" in n for n in r.notes) and any("srcdst" in n for n in r.notes)
    # arpcheck eth0: check arp, from the interface the route names (a note says so)
    assert c.table(mail.forward.table).check.kind == "arp"
    (arp_note,) = [n for n in r.notes if "arpcheck" in n]
    assert arp_note.startswith("02-nat-ports.conf:28: ") and "(eth0)" in arp_note


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("fmt, data, line, what", [
    ("ldirectord", b"checkinterval=5\n\x00\x01binary", 2, "NUL byte"),
    ("keepalived", b"virtual_server 1.2.3.4 80 {\n\xff\xfe\n}", 2, "invalid UTF-8"),
    ("aloha", b"director a 1.2.3.4:80\n\tserver \x1b[31m", 2, "control character"),
    ("keepalived", b"virtual_server 1.2.3.4 80 {\n  real_server 5.6.7.8 80 {\n", 2,
     "block opened at line 2 is not closed"),
    ("keepalived", b"}\n", 1, "closes no block"),
    ("keepalived", b'global_defs {\n  router_id "unterminated\n}\n', 2, "quoted string"),
    ("ldirectord", b"virtual=1.2.3.4:80\n\treal=5.6.7.8:80 gate\n\tchecktyp", 3,
     "not an ldirectord line"),
    ("aloha", b"\tserver s 1.2.3.4\n", 1, "outside a director"),
])
def test_broken_input_names_its_line(fmt, data, line, what):
    with pytest.raises(importers.ImportFailed) as e:
        importers.convert(fmt, data, "bad.conf")
    assert str(e.value).startswith(f"bad.conf:{line}: ") and what in str(e.value)


def test_cli_import_and_errors(tmp_path, capsys):
    good = DATA / "aloha" / "01-web-gateway.conf"
    assert cli.main(["import", "aloha", str(good)]) == 0
    out, err = capsys.readouterr()
    load_text(out, "o.conf", lookup=False)
    assert "1 virtual services imported" in err
    bad = tmp_path / "k.conf"
    bad.write_bytes(b"virtual_server 1.2.3.4 80 {\n")
    assert cli.main(["import", "keepalived", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{bad}:1: unexpected end of file")
    assert "Traceback" not in err
    assert cli.main(["import", "ldirectord", str(tmp_path / "missing")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_fuzzish_truncations_and_flips():
    """Every cut and a few flipped bytes of each file: an output that loads,
    or ImportFailed with a place; nothing else escapes."""
    rng = random.Random(14)
    for fmt, path in FILES:
        data = path.read_bytes()[:6000]
        cases = [data[:n] for n in sorted({rng.randrange(len(data)) for _ in range(12)})]
        for _ in range(6):
            b = bytearray(data)
            for _ in range(3):
                b[rng.randrange(len(b))] = rng.choice(b"{}=\"#\n\t \x00\xff:->")
            cases.append(bytes(b))
        for case in cases:
            try:
                r = importers.convert(fmt, case, "f.conf")
            except importers.ImportFailed as e:
                assert re.match(r"f\.conf:\d+: \S", str(e)), str(e)
                continue
            if r.virtuals:
                try:
                    load_text(r.text, "o.conf", lookup=False)
                except ConfigError as e:
                    pytest.fail(f"{fmt} {path.name}: output does not load: {e}\n{case!r}")


# --- notifications (issue 14 item 6) ----------------------------------------

def _ld(text: str):
    r = importers.convert("ldirectord", text.encode(), "ld.cf")
    c = load_text(r.text, "i.conf", lookup=False)
    again = load_text(print_config(c), "p.conf", lookup=False)
    assert unplaced(again.model_dump(mode="json")) == unplaced(c.model_dump(mode="json"))
    return r, c


LD_REAL = "virtual=192.0.2.10:80\n\treal=198.51.100.11:80 gate\n"


def test_ldirectord_mail_keys_become_alert_mail():
    r, c = _ld('emailalert="a@example.com, b@example.com"\nemailalertfrom=lb@example.com\n'
               "smtp=mail.example.com\nemailalertfreq=600\nemailalertstatus=all\n" + LD_REAL)
    a = c.global_.alert_mail
    assert (a.to, a.sender, a.host, a.port, a.every, a.on) == (
        ("a@example.com", "b@example.com"), "lb@example.com", "mail.example.com", 25, 600,
        "all")
    (st,) = [n for n in r.notes if "emailalertstatus" in n]
    assert st.startswith("ld.cf:5: ") and "phases" in st and f"# {st}" in r.text


def test_ldirectord_bad_recipient_and_status_none():
    r, c = _ld('emailalert="a@example.com, not an address"\n' + LD_REAL)
    assert c.global_.alert_mail.to == ("a@example.com",)
    assert any(n.startswith("ld.cf:1: ") and "not an address; left out" in n for n in r.notes)
    r, c = _ld("emailalert=a@example.com\nemailalertstatus=starting,stopping\n" + LD_REAL)
    assert c.global_.alert_mail is None
    assert not [x for x in r.text.splitlines() if x.lstrip().startswith("alert")]
    assert {n.split(":")[1] for n in r.notes if "no alert mail" in n} == {"1", "2"}


def test_ldirectord_virtual_alert_mail_replaces_global_with_its_keys():
    r, c = _ld("emailalert=ops@example.com\nsmtp=192.0.2.25\nemailalertfreq=60\n"
               + LD_REAL + "\temailalert=web@example.com\n\tsmtp=192.0.2.26\n"
               "virtual=192.0.2.11:80\n\treal=198.51.100.12:80 gate\n\temailalertfreq=0\n")
    web, other = c.redirects
    assert (web.alert_mail.to, web.alert_mail.host, web.alert_mail.every) == (
        ("web@example.com",), "192.0.2.26", 60)
    assert other.alert_mail.host == "192.0.2.25"
    assert (other.alert_mail.to, other.alert_mail.every) == (("ops@example.com",), 0)
    assert c.global_.alert_mail.to == ("ops@example.com",)


def test_ldirectord_maintenancedir_autoreload_callback():
    r, c = _ld("maintenancedir=/etc/ha.d/maint\nautoreload=yes\n"
               'callback="/usr/local/sbin/sync-cf --quiet"\n' + LD_REAL)
    g = c.global_
    assert g.maintenance_dir == "/etc/ha.d/maint"
    assert g.autoreload.callback == "/usr/local/sbin/sync-cf --quiet"
    (cb,) = [n for n in r.notes if "callback" in n]
    assert cb.startswith("ld.cf:3: ") and "before the reload" in cb and "root" in cb
    r, c = _ld("maintenancedir=maint\ncallback=/bin/true\n" + LD_REAL)
    assert c.global_.maintenance_dir is None and c.global_.autoreload is None
    assert any(n.startswith("ld.cf:1: ") and "absolute" in n for n in r.notes)
    assert any(n.startswith("ld.cf:2: ") and "only with autoreload=yes" in n for n in r.notes)


def test_ldirectord_fallbackcommand_becomes_notify_on_fallback_monitorfile_a_comment():
    r, c = _ld("fallbackcommand=/usr/local/sbin/sorry\n" + LD_REAL
               + "\tmonitorfile=/var/log/ld-web.log\n\tmaintenancedir=/m\n"
               "virtual=192.0.2.11:80\n\treal=198.51.100.12:80 gate\n"
               '\tfallbackcommand="/usr/local/sbin/own --quiet"\n'
               "virtual=192.0.2.12:80\n\treal=198.51.100.13:80 gate\n"
               "\tfallbackcommand=relative\n")
    # the global one in each redirect without its own (ldirectord: a virtual's overrides it)
    assert c.global_.notify == ()
    assert [[(n.command, n.on) for n in r_.notify] for r_ in c.redirects] == [
        [("/usr/local/sbin/sorry", "fallback")], [("/usr/local/sbin/own --quiet", "fallback")],
        []]
    assert c.global_.maintenance_dir is None
    fb, mon, md = (next(n for n in r.notes if k in n) for k in
                   ("fallbackcommand", "monitorfile", "maintenancedir="))
    assert fb.startswith("ld.cf:1: ") and "start" in fb and "stop" in fb and "root" in fb
    (bad,) = [n for n in r.notes if "fallbackcommand=relative" in n]
    assert bad.startswith("ld.cf:11: ") and "absolute path" in bad and "left out" in bad
    assert mon.startswith("ld.cf:4: ") and "log host checks" in mon
    assert c.global_.state_file is None             # a virtual's own: left out
    assert md.startswith("ld.cf:5: ") and "global option" in md


def test_ldirectord_global_monitorfile_becomes_log_state_file():
    r, c = _ld("monitorfile=/var/log/ldirectord.monitor\n" + LD_REAL)
    assert c.global_.state_file == "/var/log/ldirectord.monitor"
    (mon,) = [n for n in r.notes if "monitorfile" in n]
    assert mon.startswith("ld.cf:1: ") and "a line per host state change" in mon
    r, c = _ld("monitorfile=rel.log\n" + LD_REAL)
    assert c.global_.state_file is None
    assert any(n.startswith("ld.cf:1: ") and "absolute" in n for n in r.notes)


def _ka(text: str):
    r = importers.convert("keepalived", text.encode(), "k.conf")
    c = load_text(r.text, "i.conf", lookup=False)
    again = load_text(print_config(c), "p.conf", lookup=False)
    assert unplaced(again.model_dump(mode="json")) == unplaced(c.model_dump(mode="json"))
    return r, c


def test_keepalived_notify_up_down_become_redirect_notify_commands():
    r, c = _ka("virtual_server 192.0.2.10 80 {\n lb_kind DR\n"
               " real_server 198.51.100.11 80 {\n  notify_up /usr/local/bin/rs-up\n"
               '  notify_down "/usr/local/bin/rs-down --web"\n  TCP_CHECK {\n  }\n }\n'
               " real_server 198.51.100.12 80 {\n  notify_up /usr/local/bin/rs-up\n"
               "  notify_down relative.sh\n  TCP_CHECK {\n  }\n }\n}\n")
    (rdr,) = c.redirects
    assert [(n.command, n.on) for n in rdr.notify] == [
        ("/usr/local/bin/rs-up", "up"), ("/usr/local/bin/rs-down --web", "down")]
    assert c.global_.notify == ()
    up = [n for n in r.notes if "notify_up" in n]
    assert [n.split(":")[1] for n in up] == ["4", "10"]
    assert all("every host of the redirect" in n and f"# {n}" in r.text for n in up)
    assert any(n.startswith("k.conf:11: ") and "absolute path" in n for n in r.notes)


def test_keepalived_mail_options():
    r, c = _ka("global_defs {\n notification_email {\n  ops@example.com\n  no<t>ok\n }\n"
               " notification_email_from lb@example.com\n smtp_server mail.example.com 2525\n"
               "}\nvirtual_server 192.0.2.10 80 {\n real_server 198.51.100.11 80 {\n }\n}\n")
    a = c.global_.alert_mail
    assert (a.to, a.sender, a.host, a.port) == (("ops@example.com",), "lb@example.com",
                                                "mail.example.com", 2525)
    assert any(n.startswith("k.conf:2: ") and "no<t>ok" in n.split(": ", 2)[2]
               for n in r.notes)
    r, c = _ka("global_defs {\n notification_email {\n }\n smtp_server -bad-\n}\n"
               "virtual_server 192.0.2.10 80 {\n real_server 198.51.100.11 80 {\n }\n}\n")
    assert c.global_.alert_mail is None
    assert any(n.startswith("k.conf:4: ") and "not an address" in n for n in r.notes)


def test_ldirectord_virtual_without_mail_says_the_global_one_mails_it():
    r, c = _ld("emailalert=ops@example.com\n" + LD_REAL + "\temailalertstatus=none\n")
    assert c.redirects[0].alert_mail is None and c.global_.alert_mail is not None
    assert "# ld.cf:2: no alert mail of its own: the global one mails" in r.text
    r, c = _ld('emailalert="ops@example.com, bad\\"\n' + LD_REAL)
    assert c.global_.alert_mail.to == ("ops@example.com",)
