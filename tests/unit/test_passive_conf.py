"""Issue 15: the `passive` table option: model, grammar, refusals, round trip."""

from __future__ import annotations

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.model import Passive
from hoststated.conf.printconf import print_config

TABLE = "table <t> { 192.0.2.11, 192.0.2.12 }\n"


def rdr(opts: str, verb: str = "forward to", extra: str = "") -> str:
    return (TABLE + f"redirect r {{\n\tlisten on 192.0.2.9 port 80\n{extra}"
            f"\t{verb} <t> check tcp {opts}\n}}\n")


def loads(text: str, runnable: bool = True):
    return load_text(text, "t.conf", lookup=False, runnable=runnable)


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text)
    return [str(d) for d in e.value.diagnostics]


def passive_of(text: str) -> Passive | None:
    return loads(text).tables[0].options.passive


def test_bare_passive_counts_every_event_three_in_a_second_and_marks_down():
    p = passive_of(rdr("passive"))
    assert p == Passive(resets=True, unreachables=True, errors=True, limit=3, window=1,
                        action="down")


def test_words_choose_the_events_and_the_limit_window_and_action():
    p = passive_of(rdr("passive resets limit 5 in 2 action fast"))
    assert (p.resets, p.unreachables, p.errors) == (True, False, False)
    assert (p.limit, p.window, p.action) == (5, 2, "fast")
    assert passive_of(rdr("passive unreachables action fail")).action == "fail"


def test_no_passive_is_none():
    assert passive_of(rdr("")) is None


@pytest.mark.parametrize("opts", [
    "passive", "passive resets", "passive unreachables limit 1",
    "passive resets unreachables limit 10 in 5 action fail",
    "interval 10 passive limit 2 action fast rise 2",
])
def test_printout_loads_back_to_the_same_model(opts):
    config = loads(rdr(opts))
    printed = print_config(config)
    again = loads(printed)
    assert again.tables == config.tables
    assert print_config(again) == printed


def test_passive_makes_a_table_of_its_own():
    text = (TABLE + "redirect a {\n\tlisten on 192.0.2.9 port 80\n"
            "\tforward to <t> check tcp passive\n}\n"
            "redirect b {\n\tlisten on 192.0.2.10 port 80\n\tforward to <t> check tcp\n}\n")
    c = loads(text)
    assert [t.options.passive is not None for t in c.tables] == [True, False]


@pytest.mark.parametrize("verb, word", [("route to", "direct routing"),
                                        ("tunnel to", "tunnelling")])
def test_forwarding_that_cannot_see_replies_is_refused(verb, word):
    extra = "\tlisten on 192.0.2.9 port 81 interface eth0\n" if verb == "route to" else ""
    opts = "passive interface eth0" if verb == "route to" else "passive"
    errs = refused(rdr(opts, verb, extra).replace("engine", "engine"))
    assert any(word in e and "passive needs forward to (NAT)" in e for e in errs), errs


@pytest.mark.parametrize("engine", ["nftables", "ipvs"])
def test_nat_under_a_kernel_engine_that_logs_replies_is_accepted(engine):
    assert loads(f"engine {engine}\n" + rdr("passive")).tables[0].options.passive


@pytest.mark.parametrize("verb", ["route to", "tunnel to"])
def test_ipvs_direct_routing_and_tunnelling_are_refused(verb):
    extra = "\tlisten on 192.0.2.9 port 81 interface eth0\n" if verb == "route to" else ""
    opts = "passive interface eth0" if verb == "route to" else "passive"
    errs = refused("engine ipvs\n" + rdr(opts, verb, extra))
    assert any("passive needs forward to (NAT)" in e and "cannot see the hosts' replies" in e
               for e in errs), errs


@pytest.mark.parametrize("engine, why", [("pf", "pf logs to pflog"),
                                         ("none", "engine none writes none")])
def test_engines_that_log_no_replies_refuse_passive(engine, why):
    errs = refused(f"engine {engine}\n" + rdr("passive"))
    assert any(why in e and e.startswith("t.conf:5:") for e in errs), errs


def test_errors_alone_on_a_redirect_is_refused():
    errs = refused(rdr("passive errors"))
    assert any("a redirect sees no relay errors" in e for e in errs), errs


@pytest.mark.parametrize("opts, msg", [
    ("passive limit 0", "invalid limit 0"),
    ("passive limit 3 in 0", "the window is 1-3600 s"),
    ("passive resets resets", "resets given twice"),
    ("passive action down action fast", "action given twice"),
])
def test_bad_values_are_refused_at_their_place(opts, msg):
    errs = refused(rdr(opts))
    assert any(msg in e and e.startswith("t.conf:4:") for e in errs), errs


def test_a_bad_action_is_a_syntax_error():
    errs = refused(rdr("passive action maybe"))
    assert errs and all(e.startswith("t.conf:4:") for e in errs), errs


RELAY = (TABLE + "http protocol h { }\n"
         "relay r {\n\tlisten on 192.0.2.9 port 8080\n\tprotocol h\n"
         "\tforward to <t> port 80 OPTS\n}\n")


def test_a_relay_counts_what_it_sees_on_a_checked_table():
    c = loads(RELAY.replace("OPTS", "check tcp passive errors limit 2"))
    p = c.tables[0].options.passive
    assert (p.resets, p.unreachables, p.errors, p.limit) == (False, False, True, 2)
    again = loads(print_config(c))
    assert again.tables == c.tables


def test_passive_on_a_relay_table_without_a_check_is_refused():
    errs = refused(RELAY.replace("OPTS", "passive"))
    assert any("has no check" in e and "comes back only through its checks" in e
               for e in errs), errs
