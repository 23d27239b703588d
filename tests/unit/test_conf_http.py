"""http protocols: the typed options and rules the HTTP relay carries out, and the
rules it does not carry out yet refused at -n (not ignored)."""

from __future__ import annotations

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.model import HEADERLEN, Rule, RuleKey
from hoststated.conf.printconf import print_config
from hoststated.relay_http import HttpOptions


def conf(body: str, ptype: str = "http") -> str:
    return ("table <w> { 192.0.2.10 }\ntable <api> { 192.0.2.11 }\n"
            f"{ptype} protocol \"p\" {{\n{body}\n}}\n"
            "relay \"r\" {\n\tlisten on 192.0.2.1 port 8080\n\tprotocol \"p\"\n"
            "\tforward to <w> port 80\n}\n")


def proto(body: str, ptype: str = "http"):
    (p,) = load_text(conf(body, ptype), "t.conf", lookup=False, runnable=False).protocols
    return p


def refused(body: str, ptype: str = "http", runnable: bool = False) -> list:
    with pytest.raises(ConfigError) as e:
        load_text(conf(body, ptype), "t.conf", lookup=False, runnable=runnable)
    return e.value.diagnostics


def test_defaults():
    p = proto("")
    assert (p.headerlen, p.websockets, p.rules) == (HEADERLEN, False, ())
    assert HEADERLEN == 8192


def test_http_options():
    p = proto("\thttp { headerlen 131072, websockets }")
    assert (p.headerlen, p.websockets) == (131072, True)
    assert proto("\thttp { websockets, no websockets }").websockets is False
    assert HttpOptions.from_protocol(p).headerlen == 131072


def test_headerlen_over_relayds_maximum():
    (d,) = refused("\thttp { headerlen 131073 }")
    assert (d.line, d.col) == (4, 9) and "invalid headerlen: 131073" in d.message


def test_rules_are_typed():
    p = proto('\tmatch request header append "X-Forwarded-For" value "$REMOTE_ADDR"\n'
              '\tmatch header set "Keep-Alive" value "$TIMEOUT"\n'
              '\tmatch response header remove "Server"\n'
              '\tpass request quick header "Host" value "api.*" forward to <api>\n'
              '\tmatch request path "/static/*" header set "X-Static" value 1\n'
              '\tpass')
    def hdr(option, key, value=None):
        return (RuleKey(type="header", option=option, key=key, value=value),)
    assert p.rules == (
        Rule(keys=hdr("append", "X-Forwarded-For", "$REMOTE_ADDR")),
        Rule(keys=hdr("set", "Keep-Alive", "$TIMEOUT")),
        Rule(direction="response", keys=hdr("remove", "Server")),
        Rule(action="pass", quick=True, keys=hdr(None, "Host", "api.*"), forward="api"),
        Rule(keys=hdr("set", "X-Static", "1") + (RuleKey(type="path", key="/static/*"),)),
        Rule(action="pass"),
    )


@pytest.mark.parametrize("rule,why", [
    ("block", "block rules"),
    ('block request quick header "User-Agent" value "x*"', "block rules"),
    ('match request header "Host" value "a" tag "t"', "'tag'"),
    ('match request tag "t"\n\tmatch response tagged "t" header set "A" value "b"', "'tag'"),
    ('match request url "example.com/" forward to <w>', "'url'"),
    ('match request path set "/a" value "/b"', "'path set'"),
    ('match header log "Host"', "'header log'"),
    ('match request header hash "Cookie"', "'header hash'"),
    ('match request label "x"', "'label'"),
    ('pass inet6', "'inet6'"),
    ('match request method "GET" header set "A" value "b"', "'method'"),
    ('match request cookie "a" value "b"', "'cookie'"),
])
def test_rules_once_refused_are_carried_out(rule, why):
    # (why: what -n said of each while the HTTP relay did not carry it out)
    c = load_text(conf("\t" + rule), "t.conf", lookup=False)
    assert len(c.protocols[0].rules) == rule.count("\n") + 1


@pytest.mark.parametrize("rule", [
    'match response header "A" forward to <w>',
    'match response header hash "Set-Cookie"',
])
def test_response_rules_cannot_choose_the_backend(rule):
    (d,) = refused("\t" + rule, runnable=True)
    assert (d.file, d.line, d.col) == ("t.conf", 4, 2)
    assert d.message.startswith(f"rule not supported yet: {rule.split()[0]}")
    assert "the request chose the backend" in d.message


def test_framing_headers_are_not_for_rules():
    (d,) = refused('\tmatch request header set "Content-Length" value "0"')
    assert "may not change Content-Length" in d.message
    (d,) = refused('\tmatch response header remove "transfer-encoding"')
    assert "may not change transfer-encoding" in d.message


def test_rules_need_an_http_protocol():
    (d,) = refused('\tmatch request header set "A" value "b"', ptype="tcp")
    assert "filter rules need an http protocol" in d.message
    assert proto("\tpass", ptype="tcp").rules == ()     # the default anyway


def test_printing_round_trips():
    text = print_config(load_text(conf(
        '\thttp { headerlen 4096, websockets }\n\treturn error\n'
        '\tmatch request header append "X-Forwarded-For" value "$REMOTE_ADDR"\n'
        '\tpass request quick header "Host" value "api.*" forward to <api>\n'
        '\tmatch response header set "X-Q" value "say \\"hi\\""'), "t.conf", lookup=False, runnable=False))
    again = load_text(text, "printed", lookup=False, runnable=False)
    assert print_config(again) == text
    (p,) = again.protocols
    assert (p.headerlen, p.websockets, len(p.rules)) == (4096, True, 3)
    assert p.rules[2].keys[0].value == 'say "hi"'
