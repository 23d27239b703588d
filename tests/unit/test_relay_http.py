"""relay_http: one HTTP/1.1 relay session, sans-IO (bytes in, bytes out)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoststated.conf.model import Rule, RuleKey
from hoststated.relay_http import MAX_PIPELINE, HttpOptions, HttpRelay, Out

ENV = {"REMOTE_ADDR": "192.0.2.7", "REMOTE_PORT": "40001", "SERVER_ADDR": "198.51.100.1",
       "SERVER_PORT": "8080", "TIMEOUT": "600"}


def HttpRule(verb="match", direction="request", quick=False, when=None, when_name=None,
             when_value=None, action=None, name=None, value=None, forward=None) -> Rule:
    """The rules these tests were written with (a condition on a header or
    the path, a header action, forward to) as conf.model Rules."""
    keys = []
    if when == "header":
        keys.append(RuleKey(type="header", key=when_name, value=when_value))
    elif when == "path":
        keys.append(RuleKey(type="path", key=when_value))
    if action is not None:
        keys.append(RuleKey(type="header", option=action, key=name, value=value))
    return Rule(action=verb, direction=direction, quick=quick, keys=tuple(keys),
                forward=forward)


def relay(**kw) -> HttpRelay:
    return HttpRelay(HttpOptions(**kw), ENV, now=lambda: 0.0)


class Run:
    """Collects everything a session sends, whatever the calls."""

    def __init__(self, s: HttpRelay):
        self.s = s
        self.ts = b""
        self.tc = b""
        self.cc = self.cs = self.up = False
        self.logs: list[str] = []
        self.forwards: list[str] = []

    def take(self, o: Out) -> Out:
        assert isinstance(o.to_server, bytes) and isinstance(o.to_client, bytes)
        self.ts += o.to_server
        self.tc += o.to_client
        self.cc |= o.close_client
        self.cs |= o.close_server
        self.up |= o.upgraded
        if o.log:
            self.logs.append(o.log)
        if o.forward is not None:
            self.forwards.append(o.forward)
        return o

    def c(self, data: bytes) -> Out:
        return self.take(self.s.from_client(data))

    def sv(self, data: bytes) -> Out:
        return self.take(self.s.from_server(data))


GET = b"GET /a HTTP/1.1\r\nHost: www\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- framing ---------------------------------------------------------------

def test_keep_alive_content_length_both_ways():
    r = Run(relay())
    o = r.c(b"POST /up HTTP/1.1\r\nHost: www\r\nContent-Length: 5\r\n\r\nhel")
    assert o.to_server == b"POST /up HTTP/1.1\r\nHost: www\r\nContent-Length: 5\r\n\r\nhel"
    assert r.c(b"lo").to_server == b"lo"
    assert r.sv(OK).to_client == OK
    assert r.c(GET).to_server == GET            # the same connections go on
    assert r.sv(OK).to_client == OK
    assert not (r.cc or r.cs)


def test_chunked_request_is_reframed_and_response_passes():
    r = Run(relay())
    r.c(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=val\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert r.ts.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert r.sv(resp).to_client == resp
    assert r.c(GET).to_server == GET            # the request after the chunked one


def test_response_until_close():
    r = Run(relay())
    r.c(GET)
    o = r.sv(b"HTTP/1.1 200 OK\r\n\r\nsome")
    # the client is told the connection ends with this response
    assert o.to_client == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome"
    assert r.sv(b" more").to_client == b" more"
    o = r.take(r.s.server_eof())
    assert o.close_client and o.close_server and o.log is None


def test_pipelined_responses_stay_in_order():
    r = Run(relay())
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3))
    assert r.c(reqs).to_server == reqs
    resps = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i for i in range(3))
    assert r.sv(resps[:50]).to_client + r.sv(resps[50:]).to_client == resps


def test_pipeline_is_bounded_and_resumes():
    r = Run(relay())
    reqs = [b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(MAX_PIPELINE + 5)]
    o = r.c(b"".join(reqs))
    assert o.to_server == b"".join(reqs[:MAX_PIPELINE])
    assert r.s.client_paused
    o = r.sv(OK)
    assert o.to_client == OK and o.to_server == reqs[MAX_PIPELINE]
    for _ in range(4):
        r.sv(OK)
    assert r.ts == b"".join(reqs) and not r.s.client_paused


def test_connection_close_request_ends_the_session_after_its_answer():
    r = Run(relay())
    o = r.c(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" + GET)
    assert o.to_server.count(b"GET") == 1        # nothing after a last request
    o = r.sv(OK)
    assert o.to_client == OK
    assert o.close_client and o.close_server and o.log is None


def test_server_connection_close_ends_the_session():
    r = Run(relay())
    r.c(GET)
    resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    o = r.sv(resp)
    assert o.to_client == resp and o.close_client and o.close_server


def test_http10_without_keep_alive_closes_with_keep_alive_stays():
    r = Run(relay())
    r.c(b"GET / HTTP/1.0\r\n\r\n")
    assert r.sv(OK).close_client
    r = Run(relay())
    r.c(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    o = r.sv(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    assert not o.close_client


def test_head_response_has_no_body():
    r = Run(relay())
    r.c(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n" + GET)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    assert r.sv(head + OK).to_client == head + OK    # the second response is a response
    assert not r.cc


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status):
    r = Run(relay())
    r.c(GET + GET)
    first = b"HTTP/1.1 %d X\r\nContent-Length: 7\r\n\r\n" % status
    assert r.sv(first + OK).to_client == first + OK


def test_expect_100_continue():
    r = Run(relay())
    r.c(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert r.sv(cont).to_client == cont
    assert r.c(b"body").to_server == b"body"
    o = r.sv(OK)
    assert o.to_client == OK and not o.close_client


def test_expect_answered_before_the_body_ends_the_session():
    r = Run(relay())
    r.c(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    o = r.sv(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
    assert b"Connection: close\r\n" in o.to_client and o.close_client and o.close_server


def test_client_eof_after_requests_still_gets_the_answers():
    r = Run(relay())
    r.c(GET + GET)
    o = r.take(r.s.client_eof())
    assert not o.close_client and not o.close_server
    r.sv(OK)
    o = r.sv(OK)
    assert r.tc == OK + OK and o.close_client and o.close_server and o.log is None


def test_client_eof_mid_request_closes_with_a_line():
    r = Run(relay())
    r.c(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc")
    o = r.take(r.s.client_eof())
    assert o.close_client and o.close_server and "middle of a request" in o.log


# --- websockets --------------------------------------------------------------

WS = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: y\r\n\r\n")


def test_websocket_upgrade_makes_a_pipe():
    r = Run(relay(websockets=True))
    assert r.c(WS + b"\x81\x02hi").to_server == WS   # frames wait for the 101
    o = r.sv(SWITCH + b"\x81\x02yo")
    assert o.upgraded and o.to_client == SWITCH + b"\x81\x02yo"
    assert o.to_server == b"\x81\x02hi"
    assert r.c(b"GET / HTTP/1.1\r\n\r\n").to_server == b"GET / HTTP/1.1\r\n\r\n"  # bytes now
    assert r.sv(b"\x00" * 3).to_client == b"\x00" * 3


def test_websocket_refused_answer_goes_back_to_http():
    r = Run(relay(websockets=True))
    r.c(WS)
    r.sv(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert r.c(GET).to_server == GET and not r.up


@pytest.mark.parametrize("req,code,msg", [
    (WS, 403, "Websocket Forbidden"),
    (WS.replace(b"Connection: Upgrade\r\n", b""), 400, "Bad Websocket Request"),
    (WS.replace(b"GET", b"POST"), 405, "Websocket Method Not Allowed"),
])
def test_websocket_refusals(req, code, msg):
    r = Run(relay(websockets=code != 403, return_error=True))
    o = r.c(req)
    assert o.to_server == b"" and o.to_client.startswith(b"HTTP/1.0 %d " % code)
    assert msg in o.log and o.close_client


def test_101_to_a_request_that_did_not_ask_is_a_502():
    r = Run(relay(websockets=True, return_error=True))
    r.c(GET)
    o = r.sv(SWITCH)
    assert o.to_client.startswith(b"HTTP/1.0 502 Bad Gateway") and o.close_client


def test_other_upgrade_offers_are_removed():
    r = Run(relay())
    o = r.c(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    assert b"Upgrade: h2c" not in o.to_server and o.to_server.startswith(b"GET / HTTP/1.1")


# --- headerlen -----------------------------------------------------------------

def head_of(size: int) -> bytes:
    """A request head whose relayd measure (lines without their CRLF) is size."""
    first = b"GET / HTTP/1.1"
    pad = size - len(first) - len(b"X-Pad: ")
    return first + b"\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"


@pytest.mark.parametrize("limit", [8192, 300])
def test_headerlen_limit(limit):
    ok, big = head_of(limit), head_of(limit + 1)
    kw = {} if limit == 8192 else {"headerlen": limit}
    assert relay(**kw).from_client(ok).to_server == ok
    for split in (len(big), 1):
        r = Run(relay(return_error=True, **kw))
        for i in range(0, len(big), split):
            r.c(big[i:i + split])
        assert r.ts == b"" and r.tc.startswith(b"HTTP/1.0 413 Payload Too Large\r\n")
        assert r.cc and r.logs == ["request headers too large (413 Payload Too Large)"]


def test_a_head_that_never_ends_is_bounded():
    s = relay(headerlen=1000)
    out = Out()
    for _ in range(100):
        out = s.from_client(b"GET / HTTP/1.1\r\nX: " + b"a" * 100)
        if out.close_client:
            break
    assert out.close_client and len(s.cr.buf) == 0


def test_oversized_response_head_is_a_502():
    r = Run(relay(headerlen=100, return_error=True))
    r.c(GET)
    r.sv(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200 + b"\r\n\r\n")
    assert r.tc.startswith(b"HTTP/1.0 502 ") and r.cc and r.cs


# --- header rules --------------------------------------------------------------

RULES = (
    HttpRule(action="append", name="X-Forwarded-For", value="$REMOTE_ADDR"),
    HttpRule(action="append", name="X-Forwarded-By", value="$SERVER_ADDR:$SERVER_PORT"),
    HttpRule(action="set", name="Keep-Alive", value="$TIMEOUT"),
    HttpRule(action="set", name="X-Host", value="$HOST via $SERVER_NAME"),
    HttpRule(action="remove", name="Cookie"),
    HttpRule(direction="response", action="remove", name="Server"),
    HttpRule(direction="response", action="set", name="X-Port", value="$REMOTE_PORT"),
)


def test_header_rules_with_macros():
    r = Run(relay(rules=RULES))
    o = r.c(b"GET / HTTP/1.1\r\nHost: www\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"Keep-Alive: 5\r\nkeep-alive: 6\r\nCookie: a=1\r\n\r\n")
    assert o.to_server == (b"GET / HTTP/1.1\r\nHost: www\r\nX-Forwarded-For: 203.0.113.9\r\n"
                           b"Keep-Alive: 600\r\nX-Forwarded-For: 192.0.2.7\r\n"
                           b"X-Forwarded-By: 198.51.100.1:8080\r\nX-Host: www via hoststated\r\n"
                           b"\r\n")
    o = r.sv(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n")
    assert o.to_client == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Port: 40001\r\n\r\n"


def test_rules_leave_interim_responses_alone():
    r = Run(relay(rules=RULES))
    r.c(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert r.sv(b"HTTP/1.1 100 Continue\r\nServer: x\r\n\r\n").to_client == \
        b"HTTP/1.1 100 Continue\r\nServer: x\r\n\r\n"


# --- rules: relayd's order, and routing ------------------------------------------

def host_is(glob: str, table: str, quick: bool = False, verb: str = "pass") -> HttpRule:
    return HttpRule(verb=verb, quick=quick, when="header", when_name="Host", when_value=glob,
                    forward=table)


def get(host: bytes, path: bytes = b"/") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)


@pytest.mark.parametrize("rules,host,table", [
    # the last matching pass rule wins; quick stops at the first
    ((host_is("*.example", "a"), host_is("www.*", "b")), b"www.example", "b"),
    ((host_is("*.example", "a", quick=True), host_is("www.*", "b")), b"www.example", "a"),
    # header values match whatever their case
    ((host_is("WWW.EXAMPLE", "a"),), b"www.Example", "a"),
    # nothing matches: the relay's own forward to
    ((host_is("other", "a"),), b"www.example", ""),
    # quick means nothing on match rules (relayd); a match rule's table counts
    ((host_is("*", "a", quick=True, verb="match"), host_is("www*", "b", verb="match")),
     b"www.example", "b"),
    # a later bare pass is the last matching pass rule: no table of its own
    ((host_is("*", "a"), HttpRule(verb="pass")), b"www.example", ""),
    ((HttpRule(verb="pass", when="path", when_value="/api/*", forward="api"),),
     b"h", ""),
])
def test_routing_by_rules(rules, host, table):
    r = Run(relay(rules=rules))
    assert r.s.routing
    o = r.c(get(host))
    assert o.forward == table and o.to_server == get(host)


def test_path_routing_ignores_the_query():
    rule = HttpRule(verb="pass", when="path", when_value="/api/*", forward="api")
    assert relay(rules=(rule,)).from_client(get(b"h", b"/api/x?y=/z")).forward == "api"
    assert relay(rules=(rule,)).from_client(get(b"h", b"/API/x")).forward == ""


def test_a_request_for_another_backend_waits_for_the_answers():
    r = Run(relay(rules=(host_is("a", "ta"), host_is("b", "tb"))))
    o = r.c(get(b"a") + get(b"a") + get(b"b") + get(b"a"))
    assert o.forward == "ta" and o.to_server == get(b"a") * 2
    assert r.sv(OK).to_server == b""          # one answer still to come from ta
    o = r.sv(OK)
    assert o.to_client == OK and o.forward == "tb" and o.to_server == get(b"b")
    o = r.sv(OK + b"HTTP/1.1 200 OK\r\n")   # and what tb sent after it: dropped
    assert o.forward == "ta" and o.to_server == get(b"a") and o.to_client == OK
    assert r.forwards == ["ta", "tb", "ta"] and not r.cc
    assert r.sv(OK).to_client == OK


def test_a_held_request_keeps_its_body():
    r = Run(relay(rules=(host_is("a", "ta"), host_is("b", "tb"))))
    post = b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n\r\n"
    r.c(get(b"a") + post + b"\r\n\r\n")
    assert r.s.client_paused
    o = r.sv(OK)
    assert o.forward == "tb" and o.to_server == post + b"\r\n\r\n"


def test_websocket_frames_held_are_not_touched():
    r = Run(relay(websockets=True))
    r.c(WS + b"\r\n\r\nframe")
    assert r.sv(SWITCH).to_server == b"\r\n\r\nframe"


def test_without_forward_rules_there_is_no_routing():
    s = relay(rules=RULES)
    assert not s.routing and s.from_client(GET).forward is None


def test_match_actions_then_the_last_pass_rules():
    rules = (HttpRule(verb="pass", action="set", name="X-Who", value="first pass"),
             HttpRule(verb="match", when="header", when_name="X-Debug", action="append",
                      name="X-Seen", value="debug"),
             HttpRule(verb="pass", action="set", name="X-Who", value="last pass"),
             HttpRule(verb="match", when="header", when_name="X-None", action="remove",
                      name="Host"))
    o = relay(rules=rules).from_client(b"GET / HTTP/1.1\r\nHost: h\r\nX-Debug: 1\r\n\r\n")
    assert o.to_server == (b"GET / HTTP/1.1\r\nHost: h\r\nX-Debug: 1\r\nX-Seen: debug\r\n"
                           b"X-Who: last pass\r\n\r\n")


def test_response_rules_with_a_condition():
    rule = HttpRule(direction="response", when="header", when_name="Content-Type",
                    when_value="text/*", action="set", name="Cache-Control", value="no-cache")
    r = Run(relay(rules=(rule,)))
    r.c(GET + GET)
    o = r.sv(b"HTTP/1.1 200 OK\r\nContent-Type: TEXT/html\r\nContent-Length: 0\r\n\r\n")
    assert b"Cache-Control: no-cache\r\n" in o.to_client
    o = r.sv(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 0\r\n\r\n")
    assert b"Cache-Control" not in o.to_client


# --- bad input -------------------------------------------------------------------

PAGE = re.compile(
    rb"HTTP/1\.0 (\d{3}) ([A-Za-z ]+)\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    rb"Server: hoststated\r\nConnection: close\r\nContent-Type: text/html\r\n"
    rb"Content-Length: (\d+)\r\n\r\n(.*)\Z", re.S)


def test_error_page_is_relayds():
    o = relay(return_error=True).from_client(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
    m = PAGE.match(o.to_client)
    assert m and m.group(1) == b"400" and m.group(2) == b"Bad Request"
    body = m.group(4)
    assert int(m.group(3)) == len(body)
    assert body.startswith(b"<!DOCTYPE html>\n<html>\n<head>\n<title>400 Bad Request</title>")
    assert b"<h1>Bad Request</h1>" in body and b"<div id='m'>malformed header</div>" in body
    assert b"<address>hoststated at 198.51.100.1 port 8080</address>" in body
    assert o.close_client and o.close_server and o.log == "malformed header (400 Bad Request)"


def test_style_and_no_details_of_a_500():
    s = HttpRelay(HttpOptions(return_error=True, style="h1 { x }"), ENV, now=lambda: 0.0)
    page = s.error_page(500, "secret detail")
    assert b"h1 { x }" in page and b"secret" not in page


def test_without_return_error_just_closes():
    o = relay().from_client(b"BAD\r\n\r\n")
    assert o.to_client == b"" and o.close_client and o.close_server
    assert o.log == "malformed request line (400 Bad Request)"


@pytest.mark.parametrize("req,msg", [
    (b"GET /\r\n\r\n", "malformed request line"),
    (b"GET / HTTP/2.0\r\n\r\n", "malformed request line"),
    (b"GET  / HTTP/1.1\r\n\r\n", "malformed request line"),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", "malformed header"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", "malformed header"),
    (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "malformed header"),
    (b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n", "malformed header"),
    (b"GET / HTTP/1.1\nHost: h\r\n\r\n", "malformed request line"),
    (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", "malformed header"),
    (b"\nGET / HTTP/1.1\r\n\r\n", "malformed request line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "Host twice"),
    (b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", "malformed host"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     "request smuggling"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
     "differing Content-Length"),
    (b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "invalid Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
     "invalid Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
     "chunk data longer"),
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", "CONNECT"),
])
def test_bad_requests(req, msg):
    r = Run(relay(return_error=True))
    r.c(req)
    assert r.cc and r.cs and len(r.logs) == 1 and msg in r.logs[0]
    assert PAGE.match(r.tc)
    assert b"\r\n\r\n" not in r.ts or r.ts.startswith(b"POST")   # a head goes on only if sound


def test_same_content_length_twice_is_fine():
    r = Run(relay())
    r.c(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab")
    assert r.ts.endswith(b"\r\n\r\nab") and not r.cc


def test_bad_request_behind_unanswered_ones_is_answered_after_them():
    r = Run(relay(return_error=True))
    o = r.c(GET + b"NONSENSE\r\n\r\n")
    assert o.to_server == GET and o.to_client == b"" and not o.close_client
    o = r.sv(OK)
    assert o.to_client.startswith(OK + b"HTTP/1.0 400 Bad Request\r\n") and o.close_client


def test_server_garbage_before_a_response_is_a_502():
    r = Run(relay(return_error=True))
    r.c(GET)
    o = r.sv(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert PAGE.match(o.to_client).group(1) == b"502" and o.close_client and o.close_server


def test_server_garbage_mid_response_just_closes():
    r = Run(relay(return_error=True))
    r.c(GET)
    r.sv(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    o = r.sv(b"nothex\r\n")
    assert o.to_client == b"" and o.close_client and "invalid chunk size" in o.log


def test_server_closing_before_answering_is_a_502():
    r = Run(relay(return_error=True))
    r.c(GET)
    o = r.take(r.s.server_eof())
    assert o.to_client.startswith(b"HTTP/1.0 502 ") and o.close_client


def test_server_closing_mid_body_closes_without_a_page():
    r = Run(relay(return_error=True))
    r.c(GET)
    r.sv(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    o = r.take(r.s.server_eof())
    assert o.to_client == b"" and o.close_client and "middle of a response" in o.log


def test_idle_server_close_is_clean():
    r = Run(relay())
    r.c(GET)
    r.sv(OK)
    o = r.take(r.s.server_eof())
    assert o.close_client and o.close_server and o.log is None


def test_unasked_response_closes():
    o = relay().from_server(OK)
    assert o.close_client and o.close_server and o.to_client == b""


def test_body_is_streamed_not_buffered():
    s = relay()
    s.from_client(b"POST / HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(50):
        assert s.from_client(chunk).to_server == chunk
        assert len(s.cr.buf) == 0


# --- fuzzing ----------------------------------------------------------------------

def traffic() -> tuple[bytes, bytes]:
    """A valid keep-alive exchange with every kind of framing."""
    reqs = [
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n",
        b"HEAD /d HTTP/1.1\r\nHost: h\r\n\r\n",
        b"PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nzz",
        b"GET /f HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ]
    resps = [
        b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 3\r\n\r\none",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ntwo!\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n5",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    ]
    return b"".join(reqs), b"".join(resps)


def play(client: list[bytes], server: list[bytes], **kw) -> Run:
    r = Run(relay(rules=RULES, return_error=True, **kw))
    for piece in client:
        r.c(piece)
    for piece in server:
        r.sv(piece)
    r.take(r.s.server_eof())
    r.take(r.s.client_eof())
    return r


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def test_the_whole_exchange():
    c, s = traffic()
    r = play([c], [s])
    assert r.logs == [] and r.cc and r.cs
    assert r.ts.count(b"X-Forwarded-For: 192.0.2.7\r\n") == 6
    # the client asked to close: it is not told again
    assert r.tc.endswith(b"HTTP/1.1 200 OK\r\nX-Port: 40001\r\n\r\nuntil close")
    assert b"Server: s" not in r.tc and r.tc.count(b"X-Port: 40001") == 6


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0), max_size=12),
       st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_gives_the_same_bytes(ccuts, scuts):
    c, s = traffic()
    whole = play([c], [s])
    parts = play(split(c, ccuts), split(s, scuts))
    assert (parts.ts, parts.tc, parts.cc, parts.cs, parts.logs) == \
        (whole.ts, whole.tc, whole.cc, whole.cs, whole.logs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=64)), max_size=20),
       st.booleans())
def test_random_bytes_never_raise(feeds, ws):
    routes = (HttpRule(verb="pass", when="header", when_name="Host", when_value="a*",
                       forward="ta"), HttpRule(verb="match", when="path", when_value="/b*",
                                               forward="tb"))
    r = Run(relay(websockets=ws, return_error=True, headerlen=200,
                  rules=RULES + (routes if ws else ())))
    for to_server, data in feeds:
        (r.sv if to_server else r.c)(data)
    r.take(r.s.client_eof())
    r.take(r.s.server_eof())
    assert r.cc and r.cs
    assert not any(x.startswith("internal error") for x in r.logs)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_traffic_never_raises(data):
    c, s = traffic()
    side = data.draw(st.booleans())
    buf = bytearray(c if side else s)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    c2, s2 = (bytes(buf), s) if side else (c, bytes(buf))
    r = play(split(c2, data.draw(st.lists(st.integers(0), max_size=5))),
             split(s2, data.draw(st.lists(st.integers(0), max_size=5))))
    assert r.cc and r.cs
    assert not any(x.startswith("internal error") for x in r.logs)


# --- the two head parsers give the same answers ------------------------------

from hoststated import relay_http  # noqa: E402
from hoststated.relay_http import BadMessage, parse_head_llhttp, parse_head_own  # noqa: E402

# (without the `http` extra only parse_head_own is there: the tests above ran on it)
needs_httptools = pytest.mark.skipif(not hasattr(relay_http, "_httptools"),
                                     reason="httptools is not installed")


def verdict(fn, block: bytes, request: bool):
    try:
        h = fn(block, request)
    except BadMessage as e:
        return ("bad", e.code, e.msg)
    return (h.method, h.target, h.minor, h.status, h.reason, h.headers)


HEAD_BYTES = st.sampled_from([b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", b"X", b":", b" ", b"\t",
                              b"\r\n", b"\r", b"\n", b"a", b"Host", b"Content-Length", b"5",
                              b"Transfer-Encoding", b"chunked", b",", b"\x00", b"\x7f", b"\xff",
                              b"\x01", b"Upgrade", b"websocket", b"\xc3\xa9", b'"', b";"])


@needs_httptools
@settings(max_examples=500, deadline=None)
@given(st.lists(HEAD_BYTES, max_size=25), st.booleans())
def test_llhttp_and_own_agree(parts, request):
    first = b"GET /x HTTP/1.1" if request else b"HTTP/1.1 200 OK"
    block = first + b"\r\n" + b"".join(parts)
    if b"\r\n\r\n" in block or block.endswith(b"\r\n"):
        return       # the reader never hands such a block over
    assert verdict(parse_head_llhttp, block, request) == verdict(parse_head_own, block, request)


@pytest.fixture(params=["own", pytest.param("llhttp", marks=needs_httptools)])
def parser(request, monkeypatch):
    monkeypatch.setattr(relay_http, "parse_head",
                        parse_head_own if request.param == "own" else parse_head_llhttp)


@pytest.mark.usefixtures("parser")
def test_both_parsers_relay_the_same_exchange():
    c, s = traffic()
    r = play([c], [s])
    assert r.logs == [] and r.ts.count(b"X-Forwarded-For: 192.0.2.7\r\n") == 6


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0), max_size=10),
       st.lists(st.integers(min_value=0), max_size=10))
def test_routing_is_the_same_whatever_the_split(ccuts, scuts):
    rules = (host_is("a", "ta"), host_is("b", "tb"))
    c = get(b"a") + get(b"b") + b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nzz" \
        + get(b"a")
    # what each backend sends, in turn (ta, tb, ta)
    backends = [OK, OK + OK, OK]

    def run(cs, cut):
        r = Run(relay(rules=rules))
        for piece in cs:
            r.c(piece)
        for s in backends:
            for piece in cut(s):
                r.sv(piece)
        return r.ts, r.tc, r.forwards, r.cc

    whole = run([c], lambda s: [s])
    assert whole[2] == ["ta", "tb", "ta"] and whole[1] == OK * 4
    assert run(split(c, ccuts), lambda s: split(s, scuts)) == whole


# --- the framing scan of the hot path agrees with parse_head_own --------------

from hoststated.relay_http import scan_head, split_headers  # noqa: E402

FRAMING = {True: (b"content-length", b"transfer-encoding", b"connection", b"host", b"upgrade",
                  b"expect"),
           False: (b"content-length", b"transfer-encoding", b"connection", b"upgrade")}


def scan_verdict(block: bytes, request: bool):
    try:
        h, framing = scan_head(block + b"\r\n\r\n", request)
    except BadMessage as e:
        return ("bad", e.code, e.msg)
    return (h.method, h.target, h.minor, h.status, h.reason, framing)


def own_framing(block: bytes, request: bool):
    v = verdict(parse_head_own, block, request)
    if v[0] == "bad":
        return v
    return v[:5] + ([(n.lower(), x.lower()) for n, x in v[5] if n.lower() in FRAMING[request]],)


@settings(max_examples=1500, deadline=None)
@given(st.lists(HEAD_BYTES, max_size=25), st.booleans())
def test_the_framing_scan_and_own_agree(parts, request):
    first = b"GET /x HTTP/1.1" if request else b"HTTP/1.1 200 OK"
    block = first + b"\r\n" + b"".join(parts)
    if b"\r\n\r\n" in block or block.endswith(b"\r\n"):
        return       # the reader never hands such a block over
    assert scan_verdict(block, request) == own_framing(block, request)
    if scan_verdict(block, request)[0] != "bad":
        # and the full list, when rules want it
        assert split_headers(block + b"\r\n\r\n") == parse_head_own(block, request).headers


@pytest.mark.parametrize("block", [
    b"GET / HTTP/1.1", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5",
    b"GET / HTTP/1.1\r\nhOST:\t A \r\nx:y\r\nConnection: close, Upgrade",
    b"GET / HTTP/1.1\r\nHost : a", b"GET / HTTP/1.1\r\n: a", b"GET / HTTP/1.1\r\nA: b\rc",
    b"GET / HTTP/1.1\r\nA: b\nc: d", b"GET / HTTP/1.1\r\n a: b", b"GET / HTTP/1.1\r\nA: \x7f",
    b"GET / HTTP/1.1\r\nA: \xc3\xa9", b"GET / HTTP/1.1\r\nA:", b"GET / HTTP/1.1\r\n\r\nA: b",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
    b"HTTP/1.0 204\r\nConnection: keep-alive", b"HTTP/1.1 200 OK\r\nA\x00: b",
])
def test_the_framing_scan_on_chosen_heads(block):
    request = block.startswith(b"GET")
    assert scan_verdict(block, request) == own_framing(block, request)


# --- the keep-alive paths answer as the general path -----------------------------

LEAN_REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /b HTTP/1.0\r\n\r\n",
    b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"HEAD /e HTTP/1.1\r\nHost: h\r\nUser-Agent: x\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n", b"GET http://h/g HTTP/1.1\r\nHost: h\r\n\r\n",
    b"CONNECT /h HTTP/1.1\r\n\r\n", b"GET /i HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n",
    b"POST /j HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /k HTTP/1.1\r\nHost h\r\n\r\n", b"\r\nGET /l HTTP/1.1\r\n\r\n",
    b"GET /m HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET /n HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
]
LEAN_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n1", b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nfives",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4 \r\n\r\nfour", b"HTTP/1.1 200 OK\r\n\r\nto the end",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
]


def outs(s: HttpRelay, steps) -> list:
    got = []
    for to_client, data in steps:
        o = s.from_server(data) if to_client else s.from_client(data)
        got.append((o.to_server, o.to_client, o.close_client, o.close_server, o.upgraded,
                    o.log, o.forward, s.client_paused, s.tag))
    for o in (s.server_eof(), s.client_eof()):
        got.append((o.to_server, o.to_client, o.close_client, o.close_server, o.log))
    return got


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 13), min_size=1, max_size=3),
                          st.lists(st.integers(min_value=0), max_size=2)), max_size=12),
       st.booleans(), st.booleans())
def test_the_keep_alive_paths_answer_as_the_general_path(steps, return_error, websockets):
    plan = []
    for to_client, picks, cuts in steps:
        pool = LEAN_RESPONSES if to_client else LEAN_REQUESTS
        for piece in split(b"".join(pool[i] for i in picks), cuts):
            plan.append((to_client, piece))
    lean = relay(return_error=return_error, websockets=websockets)
    general = relay(return_error=return_error, websockets=websockets)
    general._lean_req = general._lean_resp = False
    assert outs(lean, plan) == outs(general, plan)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(LEAN_REQUESTS) - 1),
                          st.integers(0, len(LEAN_RESPONSES) - 1),
                          st.lists(st.integers(min_value=0), max_size=2),
                          st.lists(st.integers(min_value=0), max_size=2)), min_size=1, max_size=6),
       st.booleans())
def test_exchanges_in_turn_through_the_keep_alive_paths(exchanges, return_error):
    plan = []
    for q, a, ccuts, scuts in exchanges:
        plan += [(False, p) for p in split(LEAN_REQUESTS[q], ccuts)]
        plan += [(True, p) for p in split(LEAN_RESPONSES[a], scuts)]
    lean = relay(return_error=return_error)
    general = relay(return_error=return_error)
    general._lean_req = general._lean_resp = False
    assert outs(lean, plan) == outs(general, plan)
