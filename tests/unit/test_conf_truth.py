"""Every statement acts or is refused (issue 18): what nothing implements is
refused at its place with the reason; relays and routers, which have their
own issues, are accepted with one warning each at their place."""

from __future__ import annotations

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text

RDR = ("table <t> {{ 192.0.2.1 }}\nredirect r {{\n\tlisten on 192.0.2.9 port 80\n"
       "\tforward to <t> check tcp{}\n}}\n")
RELAY = 'relay web {\n\tlisten on 192.0.2.9 port 8080\n\tforward to <t> port 80\n}\n'


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.conf", lookup=False)
    return [str(d) for d in e.value.diagnostics]


def warnings(text: str) -> list[str]:
    out: list = []
    load_text(text, "x.conf", lookup=False, warnings=out)
    return [str(w) for w in out]


@pytest.mark.parametrize("text,expected", [
    ("agentx\n" + RDR.format(""), "x.conf:1:1: agentx: hoststated has no AgentX"),
    ('agentx context "c" path "/var/agentx/master"\n' + RDR.format(""),
     "x.conf:1:1: agentx:"),
    ("prefork 5\n" + RDR.format(""), "x.conf:1:1: prefork is for relays, and this "
                                     "configuration has none"),
    ("log connection\n" + RDR.format(""), "x.conf:1:1: log connection is for relays"),
    ("log connection errors\n" + RDR.format(""), "x.conf:1:1: log connection is for relays"),
    (RDR.format(' demote "carp"'), "x.conf:4:27: demote: hoststated demotes no carp group"),
    (RDR.format("\n\tsession timeout 60"), "x.conf:5:2: redirect r: session timeout needs "
                                           "engine pf"),
    (RDR.format('\n\tpftag "T"'), "x.conf:5:2: redirect r: pftag, match pftag needs engine pf"),
    (RDR.format('\n\tmatch pftag "T"'), "x.conf:5:2: redirect r: pftag, match pftag needs "
                                        "engine pf"),
    ("engine ipvs\n" + RDR.format('\n\tpftag "T"'), "x.conf:6:2: redirect r: pftag"),
])
def test_refused(text, expected):
    msgs = errors(text)
    assert any(m.startswith(expected) for m in msgs), msgs


def test_the_same_under_pf_is_accepted():
    load_text("engine pf\n" + RDR.format('\n\tpftag "T"\n\tsession timeout 60'), "x.conf",
              lookup=False)


def test_relays_and_routers_run_without_a_warning():
    # issue 16: routers run (kernel/routes.py); the "does not run routers
    # yet" warning this test held is gone with it
    text = ("table <t> { 192.0.2.1 }\n" + RELAY + RELAY.replace("web", "web2")
            + "router gw {\n\troute 198.51.100.0/24\n\tforward to <t> check icmp\n}\n"
            + "prefork 4\nlog connection\n")
    ws = warnings(text)
    assert [w for w in ws if "does not run" in w] == []


@pytest.mark.parametrize("relay, expected", [
    ("listen on 192.0.2.1 port 80\n\ttransparent forward to <t> port 80",
     "x.conf:3:1: relay r: transparent forward: not supported"),
    ('listen on 192.0.2.1 port 80\n\tprotocol p\n\tforward to <t> port 80',
     "x.conf:8:1: protocol p (relay r): forward to <u>: relay r has no `forward to <u>`"),
])
def test_what_the_relays_do_not_do_is_refused(relay, expected):
    text = ("table <t> { 198.51.100.1 }\ntable <u> { 198.51.100.2 }\nrelay r {\n\t" + relay + "\n}\n"
            'http protocol p {\n\tpass request path "/x" forward to <u>\n}\n')
    if "protocol p\n\t" not in relay:
        text = text.split("http protocol")[0]
    msgs = errors(text)
    assert any(m.startswith(expected) for m in msgs), msgs


# --- what relayd accepts, hoststated accepts (issue 18 item 7) ---------------

def test_a_table_used_with_two_checks_is_two_tables():
    """relayd's table_inherit: each distinct use of <t> port P is its own
    checked table, with its own hosts; an identical use shares it."""
    text = ("table <web> { 192.0.2.1, 192.0.2.2 }\n"
            "redirect a {\n\tlisten on 192.0.2.9 port 80\n\tforward to <web> check tcp\n}\n"
            "redirect b {\n\tlisten on 192.0.2.10 port 80\n"
            '\tforward to <web> check http "/" code 200\n}\n'
            "redirect c {\n\tlisten on 192.0.2.11 port 80\n\tforward to <web> check tcp\n}\n"
            "redirect d {\n\tlisten on 192.0.2.12 port 443\n\tforward to <web> check tcp\n}\n"
            "relay e {\n\tlisten on 192.0.2.13 port 8080\n\tforward to <web> port 80\n}\n")
    config = load_text(text, "x.conf", lookup=False)
    assert [(t.name, t.check.kind, [h.id for h in t.hosts]) for t in config.tables] == [
        ("web:80", "tcp", [1, 2]), ("web:80#2", "http", [3, 4]), ("web:443", "tcp", [5, 6])]
    assert [r.forward.table for r in config.redirects] == [
        "web:80", "web:80#2", "web:80", "web:443"]
    assert [(t.name, [h.id for h in t.hosts]) for t in config.relay_tables] == [
        ("web:80#3", [7, 8])]
    assert config.relays[0].forward[0].table == "web:80#3"
    # and the canonical form reads back to the same tables
    from hoststated.conf.printconf import print_config
    again = load_text(print_config(config), "y.conf", lookup=False)
    assert [t.name for t in again.tables] == [t.name for t in config.tables]
    assert print_config(again) == print_config(config)


@pytest.mark.parametrize("opt,needs", [("code", "a number"), ("digest", "a string"),
                                       ("host", "a string"), ("method", "a string")])
def test_a_bare_http_option_names_its_keyword(opt, needs):
    msgs = errors(RDR.format(f' check http "/" {opt}').replace("check tcp check", "check"))
    assert msgs == [f"x.conf:4:{32 + len(opt)}: '{opt}' needs {needs}: unexpected end of line"]
