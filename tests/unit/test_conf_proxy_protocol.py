"""`forward to ... proxy-protocol [v1|v2]` on a relay: parsed into the
model, printed back under -nv, refused where no relay writes the header."""

from __future__ import annotations

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.printconf import print_config

RELAY = """table <web> {{ 192.0.2.10, 192.0.2.11 }}
{proto}relay www {{
\tlisten on 127.0.0.1 port 8080
{proto_ref}\tforward to <web> port 80 {opt}
\tforward to <web> port 81 mode roundrobin check tcp {opt}
\tforward to 192.0.2.99 port 80 retry 2 {opt}
\ttransparent forward with tls to destination {opt}
}}
"""


def conf(opt: str, proto: str = "", proto_ref: str = "") -> str:
    return RELAY.format(opt=opt, proto=proto, proto_ref=proto_ref)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.conf", lookup=False, runnable=False)
    return [f"{d.line}:{d.col}: {d.message}" for d in e.value.diagnostics]


@pytest.mark.parametrize("opt,want", [("proxy-protocol", 1), ("proxy-protocol v1", 1),
                                      ("proxy-protocol v2", 2), ("", None)])
def test_every_forward_kind_takes_it(opt, want):
    c = load_text(conf(opt), "x.conf", lookup=False, runnable=False)
    (r,) = c.relays
    assert [f.proxy_protocol for f in r.forward] == [want] * 4
    # the other options of the line are still read
    assert r.forward[1].mode == "roundrobin" and r.forward[2].retry == 2
    assert r.forward[3].destination and r.forward[3].tls and r.forward[3].transparent


@pytest.mark.parametrize("opt", ["proxy-protocol", "proxy-protocol v2", ""])
def test_round_trip_under_nv(opt):
    c = load_text(conf(opt), "x.conf", lookup=False, runnable=False)
    printed = print_config(c)
    if opt:
        version = opt.split()[1] if " " in opt else "v1"     # bare is printed as v1
        assert printed.count(f" proxy-protocol {version}\n") == 4
    else:
        assert "proxy-protocol" not in printed
    again = load_text(printed, "printed.conf", lookup=False, runnable=False)
    assert again.relays[0].forward == c.relays[0].forward
    assert print_config(again) == printed


def test_option_order_is_free():
    c = load_text("table <web> { 192.0.2.10 }\nrelay www {\n\tlisten on 127.0.0.1 port 8080\n"
                  "\tforward to <web> proxy-protocol v2 port 80 mode random\n}\n",
                  "x.conf", lookup=False, runnable=False)
    f = c.relays[0].forward[0]
    assert (f.proxy_protocol, f.port, f.mode) == (2, 80, "random")


@pytest.mark.parametrize("version", ["v3", "2", "V2", "send-proxy"])
def test_unknown_version(version):
    assert errors(conf(f"proxy-protocol {version}")) == [
        f"{line}:{col}: invalid proxy-protocol version: {version} (v1 or v2)"
        for line, col in ((4, 27), (5, 53), (6, 40), (7, 46))]


def test_refused_in_a_redirect_and_a_router():
    text = ("table <web> { 192.0.2.10 }\nredirect r {\n\tlisten on 192.0.2.1 port 80\n"
            "\tforward to <web> port 80 check tcp proxy-protocol v2\n}\n"
            "router gw {\n\troute 203.0.113.0/24\n"
            "\tforward to <web> port 80 check icmp proxy-protocol\n}\n")
    errs = errors(text)
    assert errs == ["4:37: 'proxy-protocol' is for relays: a redirect writes no header "
                    "toward its hosts",
                    "8:38: 'proxy-protocol' is for relays: a router writes no header "
                    "toward its hosts"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_refused_in_a_dns_relay(where):
    proto = "dns protocol dnsp\n"
    text = ("table <d> { 192.0.2.53 }\n" + (proto if where == "before" else "")
            + "relay r {\n\tlisten on 127.0.0.1 port 5353\n\tprotocol dnsp\n"
            "\tforward to <d> port 53 proxy-protocol v2\n}\n"
            + (proto if where == "after" else ""))
    line = 6 if where == "before" else 5
    assert errors(text) == [f"{line}:25: 'proxy-protocol' is for TCP relays; relay r uses "
                            "dns protocol dnsp"]


def test_tcp_protocol_relay_takes_it():
    c = load_text(conf("proxy-protocol v2", proto="tcp protocol t { tcp nodelay }\n",
                       proto_ref="\tprotocol t\n"), "x.conf", lookup=False, runnable=False)
    assert c.relays[0].protocol == "t" and c.relays[0].forward[0].proxy_protocol == 2


def test_hosts_that_read_the_header_are_checked_with_it_in_a_table_of_their_own():
    text = ("table <web> { 192.0.2.10 }\n"
            "redirect r {\n\tlisten on 192.0.2.1 port 80\n"
            "\tforward to <web> port 80 check http \"/\" code 200\n}\n"
            "relay a {\n\tlisten on 127.0.0.1 port 8080\n"
            "\tforward to <web> port 80 proxy-protocol v2 check http \"/\" code 200\n}\n"
            "relay b {\n\tlisten on 127.0.0.1 port 8081\n"
            "\tforward to <web> port 80 proxy-protocol v2 check http \"/\" code 200\n}\n")
    c = load_text(text, "x.conf", lookup=False, runnable=False)
    # the redirect's hosts get plain checks; both relays share one PROXY table
    assert [(t.name, t.proxy_protocol) for t in c.tables] == [("web:80", None),
                                                              ("web:80#2", 2)]
    assert c.redirects[0].forward.table == "web:80"
    assert [r.forward[0].table for r in c.relays] == ["web:80#2", "web:80#2"]
    # and -nv prints what reads back to the same tables
    again = load_text(print_config(c), "x.conf", lookup=False, runnable=False)
    assert [(t.name, t.proxy_protocol) for t in again.tables] == [("web:80", None),
                                                                  ("web:80#2", 2)]
