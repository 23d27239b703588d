"""The filter rules in the HTTP relay session (relay_http with relay_rules):
what goes to the backend and the client, sans-IO."""

from __future__ import annotations

import re

from hoststated.conf.load import load_text
from hoststated.relay_http import HttpOptions, HttpRelay

ENV = {"REMOTE_ADDR": "192.0.2.7", "REMOTE_PORT": "40001", "SERVER_ADDR": "198.51.100.1",
       "SERVER_PORT": "8080", "TIMEOUT": "600"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def session(body: str, return_error: bool = True) -> HttpRelay:
    text = ("table <w> { 192.0.2.10 }\ntable <api> { 192.0.2.11 }\n"
            f"http protocol \"p\" {{\n{'return error' if return_error else ''}\n{body}\n}}\n"
            "relay \"r\" {\n\tlisten on 192.0.2.1 port 8080\n\tprotocol \"p\"\n"
            "\tforward to <w> port 80\n\tforward to <api> port 80\n}\n")
    (p,) = load_text(text, "t.conf", lookup=False).protocols
    return HttpRelay(HttpOptions.from_protocol(p), ENV, now=lambda: 0.0)


def get(target: bytes = b"/", host: bytes = b"h", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, host, extra)


def test_path_strip_keeps_the_query_and_the_rest_byte_for_byte():
    s = session("\tmatch request path strip 1")
    o = s.from_client(get(b"/api/v1?x=1"))
    assert o.to_server == b"GET /v1?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"


def test_a_head_no_rule_changes_goes_on_as_it_came():
    s = session('\tmatch request path "/nothing" header set "X" value "1"')
    raw = b"GET / HTTP/1.1\r\nHost:  h\r\nx-odd:   spaced  \r\n\r\n"
    assert s.from_client(raw).to_server == raw


PAGE = re.compile(rb"HTTP/1\.0 403 Forbidden\r\n.*Connection: close\r\n.*\r\n\r\n(.*)\Z", re.S)


def test_block_answers_relayds_page_with_the_label_and_closes():
    s = session('\tblock request quick path "/admin*" label "no admins here"')
    o = s.from_client(get(b"/admin/x"))
    m = PAGE.match(o.to_client)
    assert m and o.to_server == b"" and o.close_client and o.close_server
    assert b"<div id='l'>no admins here</div>" in m.group(1)
    assert b"<div id='m'>Forbidden</div>" in m.group(1)
    assert "Forbidden (403 Forbidden)" in o.log


def test_block_without_return_error_just_closes():
    s = session("\tblock", return_error=False)
    o = s.from_client(get())
    assert o.to_client == b"" and o.close_client


def test_a_blocked_request_behind_others_is_answered_after_them():
    s = session('\tblock path "/bad"')
    o = s.from_client(get(b"/ok") + get(b"/bad"))
    assert o.to_server == get(b"/ok") and not o.close_client
    o = s.from_server(OK)
    assert o.to_client.startswith(OK + b"HTTP/1.0 403 Forbidden") and o.close_client


def test_log_lines_name_the_values_and_the_tag():
    s = session('\tmatch request header log "User-Agent" tag "seen"\n'
                '\tmatch request cookie log "sid"')
    o = s.from_client(get(extra=b"User-Agent: curl/8\r\nCookie: sid=42\r\n"))
    assert o.log == "GET / [User-Agent: curl/8] [Cookie: sid=42], tag seen"


def test_response_rules_see_the_requests_tag():
    s = session('\tmatch request path "/s/*" tag "static"\n'
                '\tmatch response tagged "static" header set "Cache-Control" '
                'value "max-age=86400"')
    s.from_client(get(b"/s/a.css") + get(b"/d"))
    o = s.from_server(OK + OK)
    first, second = o.to_client[:len(o.to_client) - len(OK)], o.to_client[-len(OK):]
    assert b"Cache-Control: max-age=86400\r\n" in first and second == OK


def test_response_block_replaces_the_response():
    s = session('\tblock response header "Server" value "leaky*"')
    s.from_client(get())
    o = s.from_server(b"HTTP/1.1 200 OK\r\nServer: leaky/1\r\nContent-Length: 0\r\n\r\n")
    assert o.to_client.startswith(b"HTTP/1.0 403 Forbidden") and o.close_client


def test_forward_and_hash_choose_the_backend():
    s = session('\tpass request path "/api/*" forward to <api>\n'
                '\tmatch request cookie hash "sid"')
    assert s.routing
    o = s.from_client(get(b"/api/x", extra=b"Cookie: sid=abc\r\n"))
    assert o.forward == "api" and s.route_hash == b"abc"
    s = session('\tmatch request cookie hash "sid"')
    assert s.routing and s.from_client(get(extra=b"Cookie: sid=abc\r\n")).forward == ""
    assert s.route_hash == b"abc"


def test_relayd_conf5_example_runs_as_written():
    s = session('\tmatch request header append "X-Forwarded-For" value "$REMOTE_ADDR"\n'
                '\tmatch request header append "X-Forwarded-By" \\\n'
                '\t    value "$SERVER_ADDR:$SERVER_PORT"\n'
                '\tmatch request header set "Keep-Alive" value "$TIMEOUT"\n'
                '\tmatch response header set "Server" value "$SERVER_NAME"')
    o = s.from_client(get())
    assert o.to_server == (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n"
                           b"X-Forwarded-By: 198.51.100.1:8080\r\nKeep-Alive: 600\r\n\r\n")
    o = s.from_server(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n")
    assert o.to_client == b"HTTP/1.1 200 OK\r\nServer: hoststated\r\nContent-Length: 0\r\n\r\n"


def test_a_request_held_for_another_backend_is_logged_once():
    s = session('\tpass request path "/api/*" forward to <api>\n'
                '\tmatch request header log "Host"')
    logs = [s.from_client(get(b"/a") + get(b"/api/b")).log]
    logs.append(s.from_server(OK).log)
    assert logs == ["GET /a [Host: h]", "GET /api/b [Host: h]"]


def test_the_session_tag_is_the_request_in_flights_for_show_sessions():
    s = session('\tmatch request path "/slow*" tag "SLOW"')
    assert s.tag is None
    s.from_client(get(b"/slow/1"))
    assert s.tag == "SLOW"                 # while its response is awaited
    s.from_server(OK)
    assert s.tag is None                   # kept for one request
    s.from_client(get(b"/fast"))
    assert s.tag is None


def test_the_newest_request_in_flight_gives_the_session_tag():
    s = session('\tmatch request path "/slow*" tag "SLOW"')
    s.from_client(get(b"/fast") + get(b"/slow"))
    assert s.tag == "SLOW"
    s.from_server(OK)
    assert s.tag == "SLOW"                 # /slow still waits
    s.from_server(OK)
    assert s.tag is None


def test_a_header_set_after_an_action_added_its_line_replaces_that_line():
    s = session('\tmatch request cookie append "a" value "1"\n'
                '\tmatch request header set "Cookie" value "b=2"\n'
                '\tmatch request header append "X-A" value "1"\n'
                '\tmatch request header set "X-A" value "2"')
    o = s.from_client(get())
    assert o.to_server.count(b"Cookie:") == 1 and b"Cookie: b=2\r\n" in o.to_server
    assert o.to_server.count(b"X-A:") == 1 and b"X-A: 2\r\n" in o.to_server
