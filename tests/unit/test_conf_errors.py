"""One test per error message: the text, and the file:line:col it points at."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load, load_text

T = "table <t> { 192.0.2.1 }\ntable <u> { 192.0.2.2 }\n"


def errors(text: str, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.conf", lookup=kw.pop("lookup", False), **kw)
    return [str(d) for d in e.value.diagnostics]


def rdr(body: str) -> str:
    return T + "redirect r {\n\tlisten on 192.0.2.9 port 80\n" + body + "\n}\n"


CASES = [
    # (config, expected "line:col: message part")
    ("x = $nope\n", "1:5: macro 'nope' not defined"),
    ("p = 80\n", "1:5: macro p: the value must be a string, quote it"),
    ("table <t> { 192.0.2.1 }\ntable <t> { 192.0.2.2 }\n", "2:1: table <t> defined twice"),
    ("table <t> { }\n", "1:1: table <t> has no hosts"),
    (rdr("\tforward to <nope> check icmp"), "5:2: table <nope> is not defined"),
    (T + "redirect r {\n\tlisten on 192.0.2.9 port 70000\n\tforward to <t> check icmp\n}\n",
     "4:2: port 70000 out of range (1-65535)"),
    ("interval 10\ntimeout 10000\n", "2:1: global timeout 10000 ms is not below the global interval of 10 s"),
    (rdr("\tforward to <t> check icmp timeout 20000"), "5:28: timeout 20000 ms is not below the check interval of 10 s"),
    (rdr("\tforward to <t> check icmp interval 15"), "5:28: table interval 15 s must be a multiple of the global interval 10 s"),
    ("interval 10\nfrobnicate 3\n", "2:1: unknown keyword 'frobnicate'; expected one of"),
    (rdr("\tforward to <t> chek icmp"), "5:17: unknown keyword 'chek'"),
    (rdr("\tforward to <t> check"), "syntax error: unexpected end of line; expected"),
    ("log updates\n", "1:5: 'log updates' is no longer supported: use 'log state changes'"),
    ("log all\n", "1:5: 'log all' is no longer supported: use 'log host checks'"),
    (T + "relay r {\n\tlisten on 192.0.2.9 port 443 ssl\n}\n", "4:31: 'ssl' is no longer a keyword: use 'tls'"),
    ("service www {\n\tvirtual ip 192.0.2.1\n}\n", "1:1: 'service' blocks are now spelled 'redirect'"),
    (rdr("\treal port 80"), "5:2: 'real port' is no longer supported"),
    ("protocol p {\n\ttls session cache disable\n}\n", "2:14: 'session cache' was removed"),
    (rdr("\tforward to <t> check icmp\n\ttag FOO"), "6:2: 'tag' in a redirect is now spelled 'pftag NAME'"),
    ("snmp trap\n", "1:1: 'snmp' was removed: use 'agentx'"),
    ("table webhosts { 192.0.2.1 }\n", "1:1: table names are written in angle brackets"),
    ("interval 10\n\x00\x01garbage\n", "2:1: binary data (NUL byte)"),
    ("interval 10 \xff\n".encode("latin-1").decode("utf-8", "surrogateescape"),
     "1:13: binary data (not UTF-8)"),
    ('x = "abc\n', "1:5: unterminated quoted string"),
    ("table <t> { 192.0.2.1 \n", "1:11: missing '}'"),
    ("}\n", "1:1: unexpected '}'"),
    (rdr("\tforward to <t> check icmp") + "redirect r {\n\tlisten on 192.0.2.9 port 81\n\tforward to <t> port 81 check icmp\n}\n",
     "7:1: redirection r defined twice"),
    (T + "relay x {\n\tlisten on 192.0.2.9 port 80\n\tprotocol nope\n}\n", "5:2: protocol nope is not defined"),
    ("protocol p\nprotocol p\n", "2:1: protocol p defined twice"),
    (rdr("\tforward to <t>"), "5:2: table <t> has no check"),
    (rdr("\tforward to <t> check icmp\n\tforward to <t> port 81 check icmp\n\tforward to <t> port 82 check icmp"),
     "7:2: only one backup table is allowed"),
    (rdr("\tforward to <t> check icmp\n\tforward to <t> port 81 check icmp"),
     "6:2: redirection r uses two different ports"),
    (rdr("\tforward to <t> mode random check icmp\n\tforward to <u> port 80 check tcp"),
     "backup table for r with different mode"),
    (rdr("\tforward to <t> mode loadbalance check icmp"), "5:17: mode loadbalance is not supported for redirections"),
    (rdr("\tforward to <t> mode fastest check icmp"), "5:17: unknown mode 'fastest'"),
    (rdr("\tforward to <t> check http \"/\""), "5:17: check http needs 'code N'"),
    (rdr("\tforward to <t> check http \"/\" digest \"abc\""), "5:32: invalid http digest"),
    (rdr("\tforward to <t> check http \"/\" code 200 method POST"), "check http: method must be GET or HEAD"),
    (rdr("\tforward to <t> check http \"/\" body \"(\""), "check http: invalid body regex"),
    (rdr("\tforward to <t> check icmp\n\tforward to <u> port 80 check tcp interface em0"),
     "superfluous interface"),
    (rdr("\tforward to <t> check smtp database \"x\""), "5:28: check smtp does not take 'database'"),
    (rdr("\tforward to <t> check dns"), "check dns needs a query name"),
    (rdr("\tforward to <t> check dns \"a.example\" type BOGUS"), "check dns: unknown type BOGUS"),
    (rdr("\tforward to <t> check mysql"), "check mysql needs 'user \"name\"'"),
    (rdr("\tforward to <t> check radius user \"u\""), "check radius needs 'secret \"s\"' and 'password \"p\"'"),
    (rdr("\tforward to <t> check ftp user \"u\""), "check ftp: give 'user' and 'password' together"),
    (rdr("\tforward to <t> check ldap filter \"(x=*)\""), "check ldap: 'filter' needs 'base'"),
    (rdr("\tforward to <t> check binary send \"zz\" expect \"00\""), "check binary: send data must be hex digits"),
    (rdr("\tforward to <t> check icmp rise 0"), "invalid rise: 0"),
    (rdr("\tforward to <t> check tls ca \"/x\""), "check tls: 'ca' needs 'verify'"),
    (rdr("\tforward to <t> check icmp\n\tone-packet"), "6:2: one-packet is for udp listeners"),
    (rdr("\tforward to <t> check icmp\n\tengine turbo"), "6:2: unknown engine 'turbo'"),
    ("engine turbo\n", "1:1: unknown engine 'turbo'"),
    ("cleanstop maybe\n", "1:1: cleanstop takes yes or no"),
    ("prefork 99\n", "1:1: invalid number of preforked relays: 99"),
    (rdr("\tforward to <t> check icmp\n\tsticky-address netmask \"300.0.0.0\""), "invalid netmask"),
    (rdr("\tforward to <t> check icmp\n\tsession timeout 3000000000"), "timeout too large"),
    ("table <t> { 192.0.2.1 weight 70000 }\n", "invalid weight: 70000"),
    ("table <t> { 192.0.2.1 parent 9 }\n" + "redirect r {\n\tlisten on 192.0.2.9 port 80\n\tforward to <t> check icmp\n}\n",
     "1:13: host parent 9: there is no host with id 9"),
    ("redirect r {\n\tdisable\n}\n", "1:1: redirection r has no listen address"),
    (T + "redirect r {\n\tlisten on 192.0.2.9 port 80\n}\n", "3:1: redirection r has no table"),
    (T + "redirect r {\n\tlisten on 192.0.2.9 port 9000:8000\n\tforward to <t> check icmp\n}\n",
     "the first port is above the last"),
    (T + "redirect r {\n\tlisten on 192.0.2.9 sctp port 80\n\tforward to <t> check icmp\n}\n",
     "invalid protocol: sctp"),
    ("include \"/nonexistent/x.conf\"\n", "1:9: failed to include file /nonexistent/x.conf"),
    ("router r {\n\troute 10.0.0.0/33\n}\n", "2:2: invalid route"),
    ("protocol p {\n\ttls no tlsv9\n}\n", "invalid TLS flag: tlsv9"),
    ("protocol p {\n\tpass forward to <nope>\n}\n", "2:7: undefined forward table <nope>"),
    (rdr("\tforward to <t> check icmp") + T.replace("<t>", "<t>"), "table <t> defined twice"),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[1][:40] for c in CASES])
def test_error_message(text, expected):
    msgs = errors(text)
    assert any(expected in m for m in msgs), msgs
    for m in msgs:
        assert m.startswith("x.conf:"), m


def test_every_error_not_only_the_first():
    text = ("interval 10\nbogus 1\n" + T + "redirect r {\n\tlisten on 192.0.2.9 port 0\n"
            "\tforward to <t> check icmp\n}\nalsobogus\nprefork 100\n")
    msgs = errors(text)
    assert [m.split(": ")[0] for m in msgs] == ["x.conf:2:1", "x.conf:6:2", "x.conf:9:1",
                                                 "x.conf:10:1"]


def test_include_loop(tmp_path):
    (tmp_path / "a.conf").write_text('include "b.conf"\n')
    (tmp_path / "b.conf").write_text('interval 10\ninclude "a.conf"\n')
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "a.conf"), lookup=False)
    (d,) = e.value.diagnostics
    assert d.file == str(tmp_path / "b.conf") and d.line == 2
    assert "include loop" in d.message


def test_missing_file():
    with pytest.raises(ConfigError) as e:
        load("/nonexistent/hoststated.conf")
    assert "cannot read" in str(e.value)


def test_password_readable_by_others_warns(tmp_path):
    p = tmp_path / "h.conf"
    p.write_text(rdr('\tforward to <t> check redis password "pw"'))
    os.chmod(p, 0o644)
    warnings: list = []
    load(str(p), lookup=False, warnings=warnings)
    assert any("holds a password and can be read by other users" in str(w)
               for w in warnings)
    os.chmod(p, 0o600)
    warnings.clear()
    load(str(p), lookup=False, warnings=warnings)
    assert not any("holds a password" in str(w) for w in warnings)


def test_unknown_service_name_with_lookup():
    msgs = errors(T + "redirect r {\n\tlisten on 192.0.2.9 port nosuchservice\n"
                      "\tforward to <t> check icmp\n}\n", lookup=True)
    assert any("4:2: unknown service name 'nosuchservice'" in m for m in msgs), msgs


def test_unresolvable_host_with_lookup():
    msgs = errors("table <t> { no-such-host.invalid }\n"
                  "redirect r {\n\tlisten on 192.0.2.9 port 80\n\tforward to <t> check icmp\n}\n",
                  lookup=True)
    assert any("1:13: host no-such-host.invalid: cannot resolve" in m for m in msgs), msgs
