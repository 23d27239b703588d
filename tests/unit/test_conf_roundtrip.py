"""What -nv prints reads back as the same config: host names that are names,
strings quoted so the lexer gives them back, rule text kept to the letter,
table names written so they parse; and the CA key password left out."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from hoststated import relay_tls
from hoststated.conf import grammar
from hoststated.conf.errors import ConfigError, Reporter
from hoststated.conf.lexer import STRING, Lexer, name, quote
from hoststated.conf.load import load_text
from hoststated.conf.model import Rule, RuleKey
from hoststated.conf.printconf import REDACTED, print_config

REDIRECT = ("redirect r {\n\tlisten on 192.0.2.9 port 80\n"
            "\tforward to <t> check tcp\n}\n")


def loads(text: str):
    return load_text(text, "t.conf", lookup=False, runnable=False)


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text)
    return [str(d) for d in e.value.diagnostics]


def round_trip(text: str):
    """The config, and the config its printout loads to (printing the same)."""
    config = loads(text)
    printed = print_config(config)
    again = load_text(printed, "printed.conf", lookup=False, runnable=False)
    assert print_config(again) == printed
    return config, again


def lexed(text: str) -> list[tuple[str, object]]:
    report = Reporter()
    toks = Lexer(grammar.keywords(), report).lex(text, "q.conf")
    assert not report.errors, report.errors
    return [(t.kind, t.value) for t in toks if t.kind != "_NL"]


# --- (a) host names -------------------------------------------------------------

def test_a_host_ending_in_a_backslash_is_refused_at_its_place():
    # hypothesis' find: it loaded, and -nv printed `"x\"`, which never closes
    assert refused("table <t> { x\\ }\n" + REDIRECT) == [
        "t.conf:1:13: 'x\\': a word may not end in a backslash (to join lines, "
        "end the line with it)",
        "t.conf:1:13: host x\\: not an address or a host name"]


@pytest.mark.parametrize("host", ['"web 1"', '"a;b"', '"-web"', '"web-"', '"a..b"',
                                  '"' + "a" * 64 + '.example"', '""'])
def test_a_host_that_is_no_name_is_refused_without_lookups(host):
    (msg,) = refused(f"table <t> {{ {host} }}\n" + REDIRECT)
    assert msg.startswith("t.conf:1:13: host ") and \
        msg.endswith(": not an address or a host name"), msg


@pytest.mark.parametrize("host", ["web1", "web-1.example.com", "web.example.com.",
                                  "_srv.example", "192.0.2.1", "2001:db8::1", "fe80::1%lo",
                                  '"' + ".".join(["a" * 63] * 3) + '"'])
def test_addresses_and_host_names_load(host):
    config, again = round_trip(f"table <t> {{ {host} }}\n" + REDIRECT)
    assert config.templates[0].hosts[0].name == host.strip('"')
    assert again.templates[0].hosts[0].name == host.strip('"')


# --- (b) quoting: strings, rules, table names ----------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.text(st.sampled_from('\\" \t\'') | st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\n\0"), max_size=30).filter(
    lambda s: not s.endswith("\\")))
@example("a\\ b")
@example('a\\"b')
@example("a\\\tb")
@example("a\\\\ b")
def test_quote_is_what_the_lexer_reads_back(s):
    assert lexed(quote(s)) == [(STRING, s)]
    # and the relays read a printed option's words the same way
    assert relay_tls.words(f"ca file {quote(s)}") == ["ca", "file", s]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.text("ab<>, \"\\:_-", min_size=1, max_size=12).filter(
    lambda s: not s.endswith("\\")))
def test_a_table_name_reads_back(s):
    assert lexed(f"<{name(s, grammar.keywords())}>") == [("<", "<"), (STRING, s), (">", ">")]


@pytest.mark.parametrize("written,value", [
    ('"a\\\\ b"', "a\\ b"),          # the backslash before a blank was lost
    ('"a\\\\"b"', 'a\\"b'),          # and before a quote: build read `a\\`
    ('"a , b < c >"', "a , b < c >"),  # punctuation inside quotes was glued
    ('"say \\"hi\\""', 'say "hi"'),
    ("1", "1"),
])
def test_rule_values_survive_the_printout(written, value):
    config, again = round_trip(
        "table <t> { 192.0.2.1 }\n"
        f"http protocol p {{\n\tmatch request header set \"X\" value {written}\n}}\n"
        "relay r {\n\tlisten on 192.0.2.9 port 80\n\tprotocol p\n"
        "\tforward to <t> port 80\n}\n")
    for c in (config, again):
        assert c.protocols[0].rules == (Rule(keys=(RuleKey(type="header", option="set",
                                                           key="X", value=value),)),)


def test_a_rule_forwards_to_a_table_written_as_tables_are():
    config, again = round_trip(
        'table <t> { 192.0.2.1 }\ntable <"web farm"> { 192.0.2.2 }\n'
        "http protocol p {\n\tpass forward to <t>\n"
        '\tpass request header "Host" value "w" forward to <"web farm">\n}\n'
        "relay r {\n\tlisten on 192.0.2.9 port 80\n\tprotocol p\n"
        "\tforward to <t> port 80\n}\n")
    printed = print_config(config)
    assert "\tpass request forward to <t>\n" in printed
    assert '\tpass request header "Host" value "w" forward to <"web farm">\n' in printed
    assert 'table <"web farm"> {' in printed
    assert [r.forward for r in again.protocols[0].rules] == ["t", "web farm"]


@pytest.mark.parametrize("tname", ['"a b"', '"a>"', '"http"', '"80"'])
def test_table_names_that_are_no_bare_word_are_printed_quoted(tname):
    config, again = round_trip(f"table <{tname}> {{ 192.0.2.1 }}\n"
                               + REDIRECT.replace("<t>", f"<{tname}>"))
    assert again.templates[0].name == config.templates[0].name == tname.strip('"')
    assert f"forward to <{tname}> port 80" in print_config(config)


# --- (c) the TLS inspection CA key's password ---------------------------------------------

@pytest.mark.parametrize("password", ['"s3cret"', '"a \\"b\\" c"', "1234"])
def test_the_ca_key_password_is_not_printed(password):
    config = loads(
        "table <t> { 192.0.2.1 }\n"
        f'tcp protocol p {{\n\ttls {{ ca cert "/c.crt", ca key "/c key" password {password} }}\n}}\n'
        "relay r {\n\tlisten on 192.0.2.9 port 443 tls\n\tprotocol p\n"
        "\tforward with tls to destination\n}\n")
    plain = password.strip('"').replace('\\"', '"')
    # the model keeps it: the parent opens the key with it
    assert relay_tls.options(config.protocols[0].tls).ca_password == plain
    printed = print_config(config)
    assert f'\ttls {{ ca cert "/c.crt", ca key "/c key" password {REDACTED} }}\n' in printed
    assert plain not in printed
    again = load_text(printed, "printed.conf", lookup=False, runnable=False)
    assert print_config(again) == printed
    assert relay_tls.options(again.protocols[0].tls).ca_key == "/c key"


# --- (e) a forward above the listen line --------------------------------------

@pytest.mark.parametrize("text", [
    # relayd's tableport: a table with no port takes the port of a listen
    # line above it; below every listen line it has none (fuzz_conf's find)
    "table <t> { 192.0.2.1 }\ntable <b> { 192.0.2.2 }\nredirect r {\n"
    "\tforward to <t> check tcp\n\tforward to <b> check tcp\n"
    "\tlisten on 192.0.2.9 port 80\n}\n",
    "table <t> { 192.0.2.1 }\nrelay r {\n\tforward to <t> check tcp\n"
    "\tlisten on 127.0.0.1 port 8080\n}\n",
])
def test_a_forward_above_every_listen_line_keeps_its_missing_port(text):
    config, again = round_trip(text)
    ports = [t.port for t in config.tables]
    assert None in ports
    assert [t.port for t in again.tables] == ports
    assert [t.name for t in again.tables] == [t.name for t in config.tables]
