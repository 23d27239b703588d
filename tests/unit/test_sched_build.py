"""hce_sched's engine build: what _attach reads once per table (the check's
key, whether it speaks TLS) gives each host the probe it had when it was read per
host: checks that differ (a password only, another table) make other probes, and
a TLS check's probes get its context."""

from hoststated import hce_sched
from hoststated.conf.load import load_text
from hoststated.hce_sched import CheckEngine

CONF = """
table <a> { 198.51.100.11, 198.51.100.12 }
table <b> { 198.51.100.11, 198.51.100.12 }
table <c> { 198.51.100.11 }
table <d> { 198.51.100.11 }
redirect "a" {
	listen on 203.0.113.10 port 443
	forward to <a> port 443 check tls verify
}
redirect "b" {
	listen on 203.0.113.11 port 443
	forward to <b> port 443 check https "/" code 200
}
redirect "c" {
	listen on 203.0.113.12 port 6379
	forward to <c> port 6379 check redis password "one"
}
redirect "d" {
	listen on 203.0.113.13 port 6379
	forward to <d> port 6379 check redis password "two"
}
redirect "e" {
	listen on 203.0.113.14 port 443
	forward to <a> port 8443 check tls verify
}
"""


def engine():
    return CheckEngine(load_text(CONF, lookup=False), lambda row: None)


def probes_by_table(eng):
    out = {}
    for p in eng.probes.values():
        for e in p.entries:
            out.setdefault(e.table.name, set()).add(id(p))
    return out


def test_each_host_of_each_table_has_its_probe():
    eng = engine()
    by = probes_by_table(eng)
    names = {t.name: t for t in eng.config.tables}
    # a table per redirect and port; a host is its own probe in each
    assert {n: len(v) for n, v in by.items()} == {
        n: len(t.hosts) for n, t in names.items()}
    # the same address and port, another check: another probe
    assert not set.intersection(*by.values())


def test_a_password_alone_makes_another_probe():
    eng = engine()
    redis = [p for p in eng.probes.values() if p.check.kind == "redis"]
    assert len(redis) == 2
    assert redis[0].key[2] != redis[1].key[2]          # the check's key
    assert redis[0].key[:2] == redis[1].key[:2]        # the same address and port


def test_the_key_is_the_checks_whether_asked_once_or_again():
    eng = engine()
    for p in eng.probes.values():
        hce_sched._last_key = None
        assert hce_sched._check_key(p.check) == p.key[2]
    checks = [t.check for t in eng.config.tables]
    first = [hce_sched._check_key(c) for c in checks]
    assert [hce_sched._check_key(c) for c in reversed(checks)] == first[::-1]


def test_tls_probes_have_their_checks_context():
    eng = engine()
    verify = {}
    for p in eng.probes.values():
        if p.check.kind in ("tls", "https"):
            assert p.ssl_ctx is not None and p.setup_error is None
            verify.setdefault(p.entries[0].table.name, set()).add(p.ssl_ctx.check_hostname)
        else:
            assert p.ssl_ctx is None
    assert verify == {"a:443": {True}, "a:8443": {True}, "b:443": {False}}
