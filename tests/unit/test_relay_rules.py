"""relay_rules: the compiled filter rules, pure (a head in, the head changed and
a verdict out), against relayd's relay_test semantics."""

from __future__ import annotations

import hashlib

import pytest

from hoststated.conf.load import load_text
from hoststated.relay_rules import Head, compile_rules, strip_path, url_candidates

ENV = {"REMOTE_ADDR": "192.0.2.7", "REMOTE_PORT": "40001", "SERVER_ADDR": "198.51.100.1",
       "SERVER_PORT": "8080", "SERVER_NAME": "hoststated", "TIMEOUT": "600"}


def programs(body: str):
    text = ("table <w> { 192.0.2.10 }\ntable <api> { 192.0.2.11 }\n"
            f"http protocol \"p\" {{\n{body}\n}}\n"
            "relay \"r\" {\n\tlisten on 192.0.2.1 port 8080\n\tprotocol \"p\"\n"
            "\tforward to <w> port 80\n\tforward to <api> port 80\n}\n")
    (p,) = load_text(text, "t.conf", lookup=False, runnable=False).protocols
    return compile_rules(p.rules)


def req(target: bytes = b"/", headers=(), method: bytes = b"GET") -> Head:
    path, _, query = target.partition(b"?")
    return Head(method, path, query if b"?" in target else None, list(headers))


def resp(headers=()) -> Head:
    return Head(b"", b"", None, list(headers))


def run(body: str, head: Head, env=ENV, tag=None):
    program, _ = programs(body)
    return program.run(head, env, tag)


H = [(b"Host", b"www.example.com"), (b"User-Agent", b"curl/8"), (b"Cookie", b"a=1; sid=XyZ")]


# --- the order: last matching pass/block wins, quick stops, match accumulates ----

def test_last_matching_verdict_wins():
    assert run("\tblock\n\tpass", req()).block is False
    assert run("\tpass\n\tblock", req()).block is True
    assert run('\tblock\n\tpass header "Host" value "nomatch"', req(headers=H)).block is True


def test_quick_stops_at_the_first_match():
    assert run("\tblock quick\n\tpass", req()).block is True
    assert run('\tpass quick path "/a*"\n\tblock', req(b"/abc")).block is False
    assert run('\tpass quick path "/a*"\n\tblock', req(b"/xyz")).block is True


def test_match_rules_accumulate_and_pass_rules_replace():
    h = req(headers=[(b"Host", b"h")])
    run('\tmatch header append "X-A" value "1"\n'
        '\tpass header set "X-P" value "first"\n'
        '\tmatch header append "X-B" value "2"\n'
        '\tpass header set "X-P" value "last"\n'
        '\tmatch cookie "none" header append "X-C" value "3"', h)
    # only the last pass rule's action, after the match rules'
    assert h.headers == [(b"Host", b"h"), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-P", b"last")]
    assert h.changed


def test_quick_means_nothing_on_match_rules():
    r = run('\tmatch quick forward to <w>\n\tmatch forward to <api>', req())
    assert r.table == "api"


def test_a_block_still_logs():
    r = run('\tblock header log "User-Agent"', req(headers=H))
    assert r.block and r.log == ["[User-Agent: curl/8]"]


def test_tables_the_last_named():
    assert run('\tpass forward to <api>\n\tpass', req()).table is None
    assert run('\tmatch forward to <api>\n\tpass', req()).table == "api"
    assert run('\tpass path "/api/*" forward to <api>', req(b"/api/x?y")).table == "api"
    assert run('\tpass path "/api/*" forward to <api>', req(b"/API/x")).table is None


# --- tags and labels ------------------------------------------------------------------

def test_a_match_rules_tag_is_seen_by_later_rules():
    body = '\tmatch path "/s/*" tag "static"\n\tblock tagged "static"'
    assert run(body, req(b"/s/x")).block and run(body, req(b"/s/x")).tag == "static"
    assert not run(body, req(b"/d/x")).block


def test_a_pass_rules_tag_comes_after_the_evaluation():
    r = run('\tpass tag "t"\n\tmatch tagged "t" header append "X" value "1"', req())
    assert r.tag == "t" and r.log == []


def test_untag_and_labels():
    r = run('\tmatch tag "t"\n\tmatch no tag label "L"', req())
    assert (r.tag, r.label) == (None, "L")
    r = run('\tmatch label "L"\n\tblock no label', req())
    assert r.label is None and r.block


def test_the_request_tag_reaches_response_rules():
    _, rsp = programs('\tmatch request tag "t"\n'
                      '\tmatch response tagged "t" header set "X-Tagged" value "yes"')
    h = resp()
    assert rsp.run(h, ENV, tag="t").tag == "t" and h.headers == [(b"X-Tagged", b"yes")]
    h = resp()
    rsp.run(h, ENV, tag=None)
    assert h.headers == []


# --- method, address family ---------------------------------------------------------------

def test_method():
    assert run('\tblock method "POST"', req(method=b"POST")).block
    assert not run('\tblock method "POST"', req(method=b"GET")).block


def test_address_family():
    assert run("\tblock inet6", req(), env=dict(ENV, REMOTE_ADDR="2001:db8::1")).block
    assert not run("\tblock inet6", req()).block
    assert run("\tblock inet", req()).block


# --- header ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cond,hit", [
    ('header "Host"', True),
    ('header "host" value "*.example.com"', True),
    ('header "Host" value "WWW.EXAMPLE.*"', True),       # values: case-blind
    ('header "Host" value "other"', False),
    ('header "User-*"', True),                            # a glob on the name
    ('header "X-Missing"', False),
])
def test_header_conditions(cond, hit):
    assert run(f"\tblock {cond}", req(headers=H)).block is hit


def test_header_actions_and_macros():
    h = req(headers=[(b"Host", b"www"), (b"Keep-Alive", b"5"), (b"keep-alive", b"6"),
                     (b"X-Drop", b"1"), (b"X-Drop-Too", b"2")])
    run('\tmatch header append "X-Forwarded-For" value "$REMOTE_ADDR"\n'
        '\tmatch header set "Keep-Alive" value "$TIMEOUT"\n'
        '\tmatch header set "X-Host" value "$HOST via $SERVER_NAME:$SERVER_PORT"\n'
        '\tmatch header remove "X-Drop*"', h)
    assert h.headers == [(b"Host", b"www"), (b"Keep-Alive", b"600"),
                         (b"X-Forwarded-For", b"192.0.2.7"),
                         (b"X-Host", b"www via hoststated:8080")]


def test_a_macro_never_splits_a_header():
    h = req(headers=[(b"Host", b"a")])
    program, _ = programs('\tmatch header set "X" value "$REMOTE_ADDR"')
    program.run(h, dict(ENV, REMOTE_ADDR="1\r\nEvil: yes"))
    assert h.headers[-1] == (b"X", b"1  Evil: yes")


def test_header_hash_and_log():
    r = run('\tmatch header hash "Host"\n\tmatch header log "User-Agent"', req(headers=H))
    assert r.hash == [b"www.example.com"] and r.log == ["[User-Agent: curl/8]"]


def test_response_headers():
    _, rsp = programs('\tmatch response header remove "Server"\n'
                      '\tmatch response header "Content-Type" value "text/*" tag "text"\n'
                      '\tmatch response tagged "text" header set "Cache-Control" '
                      'value "no-cache"')
    h = resp([(b"Server", b"nginx"), (b"Content-Type", b"TEXT/html")])
    rsp.run(h, ENV)
    assert h.headers == [(b"Content-Type", b"TEXT/html"), (b"Cache-Control", b"no-cache")]


# --- cookie -----------------------------------------------------------------------------------

def test_cookie_conditions():
    assert run('\tblock cookie "SID" value "x*"', req(headers=H)).block      # case-blind
    assert not run('\tblock cookie "sid" value "abc"', req(headers=H)).block
    assert not run('\tblock cookie "si*"', req(headers=H)).block              # not a glob
    assert not run('\tblock cookie "sid"', req()).block                       # no Cookie


def test_cookie_actions():
    r = run('\tmatch cookie hash "sid"\n\tmatch cookie log "a"', req(headers=H))
    assert r.hash == [b"XyZ"] and r.log == ["[Cookie: a=1]"]
    h = req(headers=list(H))
    run('\tmatch cookie remove "a"\n\tmatch cookie set "sid" value "new"\n'
        '\tmatch cookie append "c" value "3"', h)
    assert h.headers[-1] == (b"Cookie", b"sid=new; c=3")
    h = req()
    run('\tmatch cookie set "c" value "1"', h)
    assert h.headers == [(b"Cookie", b"c=1")]
    _, rsp = programs('\tmatch response cookie set "s" value "v"')
    h = resp([(b"Set-Cookie", b"s=old; Path=/"), (b"Set-Cookie", b"t=1")])
    rsp.run(h, ENV)
    assert h.headers == [(b"Set-Cookie", b"s=v"), (b"Set-Cookie", b"t=1")]


# --- path and query ---------------------------------------------------------------------------

def test_path_with_a_query_glob():
    assert run('\tblock path "/a" value "x=*"', req(b"/a?X=1")).block        # query case-blind
    assert not run('\tblock path "/a" value "x=*"', req(b"/a")).block
    assert run('\tblock path "/a*"', req(b"/a/b/c")).block                    # * spans /


@pytest.mark.parametrize("path,n,out", [
    (b"/a/b/c", 1, b"/b/c"), (b"/a/b/c", 2, b"/c"), (b"/a/b/c", 3, b"/"),
    (b"/a/b/c", 9, b"/"), (b"/a", 0, b"/a"), (b"/", 1, b"/"),
])
def test_strip(path, n, out):
    assert strip_path(path, n) == out


def test_path_actions_keep_the_query():
    h = req(b"/api/v1/x?q=1")
    run('\tmatch path strip 1', h)
    assert h.target() == b"/v1/x?q=1" and h.changed
    h = req(b"/old/x")
    run('\tmatch path set "/old/*" value "/new/"', h)
    assert h.path == b"/new/"
    h = req(b"/a")
    run('\tmatch path append "/a" value ".html"', h)
    assert h.path == b"/a.html"
    h = req(b"/secret")
    r = run('\tmatch path remove "/secret"\n\tmatch path log "*"\n\tmatch path hash "*"', h)
    # the actions in order: the log and the hash see the path removed
    assert h.path == b"/" and r.log == ["[/]"] and r.hash == [b"/"]


def test_query():
    assert run('\tblock query "debug" value "1"', req(b"/x?a=2&debug=1")).block
    assert not run('\tblock query "debug" value "1"', req(b"/x?debug=0")).block
    assert not run('\tblock query "debug"', req(b"/x")).block
    r = run('\tmatch query log "a*"\n\tmatch query hash "b"', req(b"/?abc=1&b=2"))
    assert r.log == ["[abc: 1]"] and r.hash == [b"2"]


# --- url ------------------------------------------------------------------------------------------

def test_url_candidates_as_relayd():
    got = url_candidates(b"a.b.example.com:8080", b"/1/2/x.html", b"q=1")
    assert got[:5] == [b"a.b.example.com/1/2/x.html?q=1", b"a.b.example.com/1/2/x.html",
                       b"a.b.example.com/", b"a.b.example.com/1/", b"a.b.example.com/1/2/"]
    assert {b"b.example.com/1/", b"example.com/1/2/x.html"} <= set(got)
    assert not any(x.startswith(b"com/") for x in got)


@pytest.mark.parametrize("key,target,hit", [
    ("www.example.com/", b"/", True),
    ("example.com/bad/", b"/bad/thing?x=1", True),          # a parent domain, a prefix
    ("EXAMPLE.com/bad/", b"/bad/", True),                   # case-blind
    ("example.com/bad", b"/badder", False),                 # exact, not a glob
    ("example.com/x?y=1", b"/x?y=1", True),
])
def test_url(key, target, hit):
    assert run(f'\tblock url "{key}"', req(target, H)).block is hit


def test_url_digest():
    sha = hashlib.sha1(b"example.com/bad/").hexdigest()
    md5 = hashlib.md5(b"example.com/bad/").hexdigest().upper()
    assert run(f'\tblock url digest "{sha}"', req(b"/bad/x", H)).block
    assert run(f'\tblock url digest "{md5}"', req(b"/bad/x", H)).block
    assert not run(f'\tblock url digest "{sha}"', req(b"/good/", H)).block


def test_url_without_host_passes_without_action():
    r = run('\tblock url log "example.com/"', req(b"/"))
    assert r.block and r.log == []


def test_url_log_glob_and_keyless():
    r = run('\tmatch url log "/x*"', req(b"/xyz", H))
    assert r.log == ["[www.example.com/xyz]"]
    assert run('\tmatch url log', req(b"/q", H)).log == ["[www.example.com/q]"]


def test_keys_from_a_file(tmp_path):
    f = tmp_path / "bad"
    f.write_text("example.org/\nexample.com/bad/\n")
    text = ("table <w> { 192.0.2.10 }\nhttp protocol \"p\" {\n"
            f"\tblock url file \"{f}\"\n\tmatch header log file \"{f}\"\n}}\n"
            "relay \"r\" {\n\tlisten on 192.0.2.1 port 8080\n\tprotocol \"p\"\n"
            "\tforward to <w> port 80\n}\n")
    (p,) = load_text(text, "t.conf", lookup=True, runnable=False).protocols
    program, _ = compile_rules(p.rules)
    assert program.run(req(b"/bad/1", H), ENV).block
    assert not program.run(req(b"/good", H), ENV).block


# --- the whole ---------------------------------------------------------------------------------------

def test_no_rules_no_program():
    assert programs("") == (None, None)
    req_p, resp_p = programs("\tmatch response header remove \"Server\"")
    assert req_p is None and resp_p is not None


def test_a_rule_set_of_relayd_conf5():
    # relayd.conf(5)'s example protocol, as written there
    program, rsp = programs(
        '\tmatch request header append "X-Forwarded-For" value "$REMOTE_ADDR"\n'
        '\tmatch request header append "X-Forwarded-By" value "$SERVER_ADDR:$SERVER_PORT"\n'
        '\tmatch request header set "Keep-Alive" value "$TIMEOUT"\n'
        '\tmatch request path "/cgi-bin/*" tag "cgi"\n'
        '\tblock request quick tagged "cgi" label "no CGI here"\n'
        '\tmatch response header set "Server" value "$SERVER_NAME"')
    h = req(b"/cgi-bin/x", [(b"Host", b"h")])
    r = program.run(h, ENV)
    assert r.block and r.label == "no CGI here" and r.tag == "cgi"
    h = req(b"/index.html", [(b"Host", b"h")])
    r = program.run(h, ENV)
    assert not r.block and h.headers == [
        (b"Host", b"h"), (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-By", b"198.51.100.1:8080"), (b"Keep-Alive", b"600")]
    h = resp([(b"Server", b"nginx")])
    rsp.run(h, ENV)
    assert h.headers == [(b"Server", b"hoststated")]
