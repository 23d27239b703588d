"""One HTTP/1.1 relay session, sans-IO: bytes in, bytes out (relayd's relay_http.c).

The relay core (relay_tcp.py) owns the sockets; for a relay whose protocol is
`http` it feeds what it reads to an HttpRelay and writes what comes back:

    s = HttpRelay(HttpOptions.from_protocol(proto), env)
    out = s.from_client(data)    # or from_server(data), client_eof(), server_eof()
    write out.to_server to the backend, out.to_client to the client, THEN
    close the client if out.close_client, the backend if out.close_server;
    out.log, when set, is one line for the session's log (why it ended badly);
    out.upgraded: the session became a WebSocket byte pipe: the core may relay
    the rest as plain TCP itself (from_* keep passing bytes through if called).
    s.client_paused: stop reading from the client while True (requests are
    held until earlier responses finish); re-test it after every from_server.
    s.routing: a request rule has `forward to <table>` or `hash` (relayd's late
    connect; s.route_hash: what the hash rules fed, for the backend's choice): connect
    to no backend before an Out whose `forward` is not None; out.forward is
    the table's name as the rule gives it (the template's), or "" for the
    relay's own `forward to`.  When a later Out names another table, close
    the backend (drop anything more it sends), connect to the new one and
    write out.to_server there: every response of the old one has gone to the
    client by then (the request waited), and what else came in from it with
    the last response is dropped.  As relayd, each request is routed by the
    rules on its own.

env holds the macro values without the `$`: REMOTE_ADDR, REMOTE_PORT,
SERVER_ADDR, SERVER_PORT (the relay's listening address), SERVER_NAME
(defaults to "hoststated"), TIMEOUT (the relay's session timeout, seconds).

What it does:
- heads: lines end in CRLF (a bare LF or CR is refused, as llhttp does);
  scan_head checks the header lines and picks the framing ones (two
  patterns, the verdicts of parse_head_own, which parse_head_llhttp gives
  too), split_headers lists them all only for rules and rewrites (per head
  about as fast as a llhttp parser a head, which gives every header by a
  call; the savings are in not buffering nor copying a head that starts a
  read, and in the keep-alive paths); `headerlen`
  bounds a head as relayd counts it (the lines without their CRLF; 413 for a
  request, 502 for a response);
- framing both ways: Content-Length, chunked (re-framed: chunk extensions are
  dropped), responses delimited by the backend closing, no body for HEAD and
  1xx/204/304; bodies are streamed through, only heads (up to `headerlen`)
  and chunk-size lines are buffered;
- keep-alive on both sides, pipelining (at most MAX_PIPELINE requests
  outstanding; responses come back in order since there is one backend
  connection), `Connection: close` and HTTP/1.0 without keep-alive end the
  session after that response (the client is told `Connection: close`);
- `Expect: 100-continue`: passed on, the backend's 100 is passed back; a
  final answer before any body byte ends the session after it (the client may
  or may not send the body: nobody can tell where the next request starts);
- `Upgrade: websocket` only with `http { websockets }` (relayd: 403 without,
  400 without `Connection: upgrade`, 405 unless GET; a 101 without them is a
  502); other Upgrade offers are removed from the request;
- the protocol's filter rules (relay_rules, compiled once per protocol) on
  every request head and final response head: header and cookie actions,
  path strip/set/append/remove (the query kept), `forward to` routing, `hash`
  values for the backend's choice (route_hash, read by relay.targets_for),
  `log` lines (out.log: the request line or status, what the rules named, the
  tag and label), tags carried from a request to its response's rules;
  `block` answers 403 Forbidden (relayd's page with the rule's label under
  `return error`) after the responses the client still waits for, and ends
  the session, as relayd; heads no rule touches go on byte for byte;
- bad input: relayd's relay_abort_http: with `return error` the client gets
  relayd's small HTML error page (HTTP/1.0, Connection: close), then both
  sides close; without it, both sides just close.  A bad request pipelined
  behind unanswered ones is answered after them.  A backend that sends
  garbage gets a 502 to the client if nothing of that response was sent yet.
Nothing raises out of the class: an internal fault is a 500 and a close.
CONNECT is refused (405): a reverse proxy has no tunnel to offer.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from hoststated.conf.model import HEADERLEN, Protocol, Rule
from hoststated.relay_rules import Head as RuleHead, Program, compile_rules

SERVER_NAME = "hoststated"
MAX_PIPELINE = 32            # requests sent on and not yet answered
MAX_CHUNK_LINE = 1024        # a chunk-size line with its extensions

REASONS = {
    400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
    413: "Payload Too Large", 500: "Internal Server Error",
    502: "Bad Gateway", 505: "HTTP Version Not Supported",
}

# relayd's relay_abort_http style when the protocol sets none
DEFAULT_STYLE = ("body { background-color: #a00000; color: white; font-family: "
                 "'Comic Sans MS', 'Chalkboard SE', 'Comic Neue', sans-serif; }\n"
                 "hr { border: 0; border-bottom: 1px dashed; }\n")


@dataclass(frozen=True)
class HttpOptions:
    headerlen: int = HEADERLEN
    websockets: bool = False
    return_error: bool = False
    style: str | None = None
    rules: tuple[Rule, ...] = ()
    # the rules compiled (relay_rules), once per protocol: (request, response)
    programs: tuple[Program | None, Program | None] = field(
        default=(None, None), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "programs", compile_rules(self.rules))

    @classmethod
    def from_protocol(cls, p: Protocol) -> HttpOptions:
        return cls(headerlen=p.headerlen, websockets=p.websockets,
                   return_error=p.return_error, style=p.style, rules=p.rules)


@dataclass(slots=True)
class Out:
    to_server: bytes = b""
    to_client: bytes = b""
    close_client: bool = False
    close_server: bool = False
    upgraded: bool = False
    log: str | None = None
    forward: str | None = None


# --- the head parser (bench/http_parse.py measures it against httptools, h11) --

class BadMessage(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e\x80-\xff]+) HTTP/1\.([01])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
# Lines end in CRLF, as llhttp insists (a bare LF is refused: no two parsers on
# the path can disagree on where a line ends).  One header line, anchored on a
# CR before the line's end: a line that does not match makes the counts differ.
# (A value keeps the spaces it ends with: nothing reads them.)
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
_HEADER = re.compile(rb"^(" + _TCHAR + rb"+):[ \t]*(" + _VALUE + rb")\r$", re.M)
_FIELD = re.compile(_TCHAR + rb"+:[ \t]*" + _VALUE)
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\x20-\x7e\t]*)?")


class Head:
    """A parsed head: the first line's parts and the header lines, in order."""
    __slots__ = ("method", "target", "minor", "status", "reason", "headers")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.minor = 1
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []


def parse_head_own(block: bytes, request: bool) -> Head:
    """The head without the CRLF of its last line and the empty line after it;
    BadMessage if it is not HTTP/1.x."""
    h = Head()
    nl = block.find(b"\r\n")
    first = block if nl < 0 else block[:nl]
    if request:
        m = _REQUEST_LINE.fullmatch(first)
        if m is None:
            raise BadMessage(400, "malformed request line")
        h.method, h.target, minor = m.groups()
        h.minor = minor[0] - 48
    else:
        m = _STATUS_LINE.fullmatch(first)
        if m is None:
            raise BadMessage(502, "malformed status line")
        minor, status, h.reason = m.groups()
        h.minor = minor[0] - 48
        h.status = int(status)
    if nl >= 0:
        rest = block[nl + 2:] + b"\r"
        h.headers = _HEADER.findall(rest)
        if len(h.headers) != rest.count(b"\n") + 1:
            raise BadMessage(400 if request else 502, "malformed header")
    return h


class _Fields:
    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def parse_head_llhttp(block: bytes, request: bool) -> Head:
    """parse_head_own's answer, faster: llhttp (httptools) splits the header
    lines.  The first line is checked by the same pattern, and whatever llhttp
    refuses goes to parse_head_own, so that both give the same verdicts and
    messages (tests/unit/test_relay_http.py compares them)."""
    nl = block.find(b"\r\n")
    if nl < 0:
        return parse_head_own(block, request)
    f = _Fields()
    p = (_httptools.HttpRequestParser if request else _httptools.HttpResponseParser)(f)
    # framing is relay_http's own business, with its own messages
    p.set_dangerous_leniencies(lenient_chunked_length=True, lenient_transfer_encoding=True)
    try:
        p.feed_data(block + b"\r\n\r\n")
    except _httptools.HttpParserUpgrade:
        pass
    except _httptools.HttpParserError:
        return parse_head_own(block, request)
    h = Head()
    first = block[:nl]
    if request:
        m = _REQUEST_LINE.fullmatch(first)
        if m is None:
            raise BadMessage(400, "malformed request line")
        h.method, h.target, minor = m.groups()
    else:
        m = _STATUS_LINE.fullmatch(first)
        if m is None:
            raise BadMessage(502, "malformed status line")
        minor, status, h.reason = m.groups()
        h.status = int(status)
    h.minor = minor[0] - 48
    h.headers = f.headers
    return h


try:
    import httptools as _httptools
    parse_head = parse_head_llhttp
except ImportError:        # without the `http` extra: the same answers, slower
    parse_head = parse_head_own


# --- the framing scan: the hot path's head reading ---------------------------------
# A head no rule reads needs only its first line and its framing headers: one
# pattern checks every header line as parse_head_own would (the same
# verdicts: tests/unit/test_relay_http.py), one more picks the framing
# headers (names lower-cased, values as parse_head gives them but
# lower-cased: everything reads them without regard to case); no list of
# every header is built (parse_head does that when rules or a rewrite need it).
_HEAD_LINES = re.compile(rb"(?:\r\n" + _TCHAR + rb"+:" + _VALUE + rb")*")
_REQ_FRAMING = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|host|upgrade|expect):[ \t]*([^\r]*)")
_RESP_FRAMING = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|upgrade):[ \t]*([^\r]*)")


def scan_head(raw: bytes, request: bool) -> tuple[Head, list[tuple[bytes, bytes]]]:
    """The head's first line (a Head without headers) and its framing
    headers, lower-cased; BadMessage as parse_head_own.  `raw` ends with the
    empty line (parse_head's block does not)."""
    h = Head()
    nl = raw.find(b"\r\n")
    if request:
        m = _REQUEST_LINE.fullmatch(raw, 0, nl)
        if m is None:
            raise BadMessage(400, "malformed request line")
        h.method, h.target, minor = m.groups()
    else:
        m = _STATUS_LINE.fullmatch(raw, 0, nl)
        if m is None:
            raise BadMessage(502, "malformed status line")
        minor, status, h.reason = m.groups()
        h.status = int(status)
    h.minor = minor[0] - 48
    if nl == len(raw) - 4:
        return h, []
    rest = raw[nl:-4]               # every header line after a CRLF
    if _HEAD_LINES.fullmatch(rest) is None:
        raise BadMessage(400 if request else 502, "malformed header")
    return h, (_REQ_FRAMING if request else _RESP_FRAMING).findall(rest.lower())


def split_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Every header line of a head scan_head took (with its empty line), as
    parse_head gives them: the lines are known good, so a split does."""
    lines = raw[:-4].split(b"\r\n")
    out = []
    for line in lines[1:]:
        n, _, v = line.partition(b":")
        out.append((n, v.lstrip(b" \t")))
    return out


def _tokens(values: list[bytes]) -> list[bytes]:
    if not values:
        return []
    out = []
    for v in values:
        for t in v.split(b","):
            t = t.strip(b" \t").lower()
            if t:
                out.append(t)
    return out


def _content_length(values: list[bytes], code: int) -> int:
    """relayd and RFC 9112 6.3: one value, or the same value repeated."""
    if len(values) == 1 and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])                   # the usual one
    seen = set()
    for v in values:
        for t in v.split(b","):
            t = t.strip(b" \t")
            if not t.isdigit() or len(t) > 18:
                raise BadMessage(code, "invalid Content-Length")
            seen.add(int(t))
    if len(seen) != 1:
        raise BadMessage(code, "differing Content-Length values")
    return seen.pop()


# --- one direction's reader -------------------------------------------------

HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, UNTIL_CLOSE, PIPE, DEAD = range(9)


class _Reader:
    """Splits one direction's bytes into heads and body pieces."""

    def __init__(self, limit: int, request: bool, on_head: Callable[[bytes], None],
                 on_body: Callable[[bytes], None], on_end: Callable[[], None],
                 on_error: Callable[[int, str], None], may_start: Callable[[], bool]):
        self.buf = bytearray()
        self.state = HEAD
        self.left = 0                # bytes of the body or chunk still to come
        self.scan = 0                # where the search for the head's end resumes
        self.trailer = 0
        self.limit = limit
        self.request = request
        self.on_head, self.on_body, self.on_end = on_head, on_body, on_end
        self.on_error, self.may_start = on_error, may_start

    def feed(self, data: bytes) -> None:
        st = self.state
        if st == DEAD:
            return
        if not self.buf:
            # the bulk paths: no copy
            if st == LENGTH and len(data) <= self.left:
                self.left -= len(data)
                self.on_body(data)
                if not self.left:
                    self.end()
                return
            if st in (UNTIL_CLOSE, PIPE):
                self.on_body(data)
                return
            if st == HEAD:
                # the keep-alive path: a whole head where the bytes start,
                # within headerlen by any measure (relayd's is at most its
                # length): handed over as it came, what follows it buffered
                # first, as run() would have it
                i = data.find(b"\r\n\r\n")
                if 0 < i <= self.limit and data[0] != 13 and self.may_start():
                    if i + 4 < len(data):
                        self.buf += memoryview(data)[i + 4:]
                    self.state = DEAD      # on_head sets the next state
                    self.on_head(data if i + 4 == len(data) else data[:i + 4])
                    buf = self.buf
                    if buf and self.state == LENGTH and len(buf) <= self.left:
                        # the body of a message in the same read (run() without its loop)
                        self.left -= len(buf)
                        body = bytes(buf)
                        buf.clear()
                        self.on_body(body)
                        if not self.left:
                            self.end()
                    elif buf:
                        self.run()
                    return
        self.buf += data
        self.run()

    def run(self) -> None:
        buf = self.buf
        pos = 0
        while True:
            # a callback may have emptied the buffer (drop())
            n = len(buf)
            if pos >= n:
                pos = n
                break
            st = self.state
            if st == HEAD:
                # (held bytes may be a body or websocket frames: not even skipped)
                if not self.may_start():
                    break
                # empty lines before a message are ignored (RFC 9112 2.2)
                while buf.startswith(b"\r\n", pos):
                    pos += 2
                if pos >= n or (pos + 1 == n and buf[pos] == 13):
                    break          # nothing, or a CR waiting for its LF
                i = buf.find(b"\r\n\r\n", pos + self.scan)
                if i < 0:
                    # every line has a byte besides its end, so the measure
                    # relayd uses is at least a third of the bytes: never
                    # refuses a head early that would fit when whole
                    if (n - pos - 3) // 3 > self.limit:
                        self.fail(*self.too_large())
                        return
                    # (the end is 4 bytes: look again from 3 back)
                    self.scan = max(0, n - pos - 3)
                    break
                pos, i = i + 4, i + 4 - pos
                block = bytes(buf[pos - i:pos])      # with its empty line
                self.scan = 0
                # relayd counts the lines without their ends
                if i - 2 * block.count(b"\r\n") > self.limit:
                    self.fail(*self.too_large())
                    return
                self.state = DEAD          # on_head sets the next state
                self.on_head(block)
            elif st == LENGTH or st == CHUNK_DATA:
                take = min(self.left, n - pos)
                self.left -= take
                self.on_body(bytes(buf[pos:pos + take]))
                pos += take
                if self.left:
                    break
                if st == LENGTH:
                    self.end()
                else:
                    self.state = CHUNK_END
            elif st == CHUNK_SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if n - pos > MAX_CHUNK_LINE:
                        self.fail(self.bad_code(), "invalid chunk size")
                        return
                    break
                line = bytes(buf[pos:i])
                pos = i + 2
                m = _CHUNK.fullmatch(line)
                if m is None or len(line) > MAX_CHUNK_LINE:
                    self.fail(self.bad_code(), "invalid chunk size")
                    return
                size = int(m.group(1), 16)
                self.on_body(b"%x\r\n" % size)
                if size:
                    self.state, self.left = CHUNK_DATA, size
                else:
                    self.state, self.trailer = TRAILER, 0
            elif st == CHUNK_END:
                if buf.startswith(b"\r\n", pos):
                    pos += 2
                elif pos + 1 == n and buf[pos] == 13:
                    break
                else:
                    self.fail(self.bad_code(), "chunk data longer than its size")
                    return
                self.on_body(b"\r\n")
                self.state = CHUNK_SIZE
            elif st == TRAILER:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if self.trailer + n - pos - 1 > self.limit:
                        self.fail(*self.too_large())
                        return
                    break
                line = bytes(buf[pos:i])
                pos = i + 2
                if not line:
                    self.on_body(b"\r\n")
                    self.end()
                    continue
                self.trailer += len(line)
                if self.trailer > self.limit:
                    self.fail(*self.too_large())
                    return
                if _FIELD.fullmatch(line) is None:
                    self.fail(self.bad_code(), "malformed trailer")
                    return
                self.on_body(line + b"\r\n")
            elif st == UNTIL_CLOSE or st == PIPE:
                self.on_body(bytes(buf[pos:]))
                pos = n
            else:
                pos = n
        del buf[:pos]

    def drop(self) -> None:
        """Forget what is buffered (it came from a backend the session left)."""
        self.buf.clear()
        self.scan = 0

    def end(self) -> None:
        self.state = HEAD
        self.on_end()

    def fail(self, code: int, msg: str) -> None:
        self.state = DEAD
        self.buf.clear()
        self.on_error(code, msg)

    def bad_code(self) -> int:
        return 400 if self.request else 502

    def too_large(self) -> tuple[int, str]:
        if self.request:
            return 413, "request headers too large"
        return 502, "response headers too large"


class _Req:
    """A request sent on whose response has not ended."""
    __slots__ = ("head", "websocket", "keep", "expect", "body_sent", "tag", "label")

    def __init__(self, head: bool, websocket: bool, keep: bool, expect: bool):
        self.head = head
        self.websocket = websocket
        self.keep = keep
        self.expect = expect
        self.body_sent = False
        self.tag: str | None = None         # a request rule's tag, for its response's rules
        self.label: str | None = None


# --- the session ---------------------------------------------------------------

class HttpRelay:
    def __init__(self, opts: HttpOptions, env: dict[str, str],
                 now: Callable[[], float] = time.time):
        self.opts = opts
        self.env = dict(env)
        self.env.setdefault("SERVER_NAME", SERVER_NAME)
        self.now = now
        self.req_prog, self.resp_prog = opts.programs
        # `forward to` or `hash` in a request rule: the backend is chosen by
        # the request (relayd's late connect)
        p = self.req_prog
        self.routing = p is not None and (p.routes or p.hashes)
        self.route_hash = b""               # what `hash` rules fed for the backend's choice
        self._label: str | None = None      # the error page's label (a rule's)
        self.backend: str | None = None     # the table the backend is from, when routing
        self.switch: bytes | None = None    # a request head waiting for another backend
        self._forward: str | None = None
        self.pending: deque[_Req] = deque()
        self.cr = _Reader(opts.headerlen, True, self._req_head, self._req_body,
                          self._req_end, self._req_error, self._may_request)
        self.sr = _Reader(opts.headerlen, False, self._resp_head, self._resp_body,
                          self._resp_end, self._resp_error, self._may_response)
        self.resp_started = False      # bytes of the current response went to the client
        self.client_eof_seen = False
        self.deferred: tuple[int, str] | None = None
        self.upgraded = False
        self.closed = False
        self._ts: list[bytes] = []
        self._tc: list[bytes] = []
        self._cc = self._cs = False
        self._up = False
        self._log: list[str] = []
        # the tag of the newest request in flight (relayd's se_tag, `show
        # sessions`): its request rules set it, its response's end clears
        # it; an upgraded session keeps its request's
        self.tag: str | None = None
        # the keep-alive paths (_lean_request, _lean_response) need no rules
        self._lean_req = self.req_prog is None
        self._lean_resp = self.resp_prog is None
        # issue 15: 5xx responses from the backend (the relay reports them as
        # passive events against the host)
        self.server_errors = 0

    # -- the interface ---------------------------------------------------------

    def from_client(self, data: bytes) -> Out:
        return self._guard(self._from_client, data)

    def from_server(self, data: bytes) -> Out:
        return self._guard(self._from_server, data)

    def client_eof(self) -> Out:
        return self._guard(self._client_eof)

    def server_eof(self) -> Out:
        return self._guard(self._server_eof)

    @property
    def client_paused(self) -> bool:
        return self.cr.state == HEAD and bool(self.cr.buf) and not self._may_request()

    # -- the keep-alive paths ----------------------------------------------------
    # What the reader and _req_head/_resp_head do for the commonest exchange,
    # inline: a request head alone in a read with nothing but Host and
    # Connection among its framing headers; a final response with one
    # Content-Length whose head starts a read.  Anything else, or anything
    # the scan refuses, takes the general path, which answers it the same.

    def _from_client(self, data: bytes) -> None:
        if not (self._lean_req and self._lean_request(data)):
            self.cr.feed(data)

    def _from_server(self, data: bytes) -> None:
        if not (self._lean_resp and self._lean_response(data)):
            self.sr.feed(data)

    def _lean_request(self, data: bytes) -> bool:
        cr = self.cr
        n = len(data) - 4
        if cr.state != HEAD or cr.buf or data.find(b"\r\n\r\n") != n or n > cr.limit \
                or n <= 0 or data[0] == 13 or not self._may_request():
            return False
        try:
            h, framing = scan_head(data, True)
        except BadMessage:
            return False
        conn = []
        hosts = 0
        for name, value in framing:
            if name == b"host":
                hosts += 1
            elif name == b"connection":
                conn.append(value)
            else:
                return False
        if hosts > 1 or h.target[:1] != b"/" or h.method == b"CONNECT":
            return False
        ctoks = _tokens(conn)
        keep = b"close" not in ctoks if h.minor else b"keep-alive" in ctoks
        self._ts.append(data)
        self.pending.append(_Req(h.method == b"HEAD", False, keep, False))
        self.tag = None
        if not keep:
            cr.state = DEAD          # _req_end: nothing after a last request is read
        return True

    def _lean_response(self, data: bytes) -> bool:
        sr = self.sr
        if sr.state != HEAD or sr.buf or not self.pending or data[:1] == b"\r":
            return False
        i = data.find(b"\r\n\r\n")
        req = self.pending[0]
        if not 0 < i <= sr.limit or req.head or req.expect or req.websocket:
            return False
        try:
            h, framing = scan_head(data if i + 4 == len(data) else data[:i + 4], False)
        except BadMessage:
            return False
        if h.status < 200 or h.status in (204, 304):
            return False
        cl = None
        conn = []
        for name, value in framing:
            if name == b"content-length" and cl is None:
                cl = value
            elif name == b"connection":
                conn.append(value)
            elif name != b"upgrade":        # (read only in a 101)
                return False
        if cl is None or not cl.isdigit() or len(cl) > 18:
            return False
        if h.status >= 500:
            self.server_errors += 1
        length = int(cl)
        ctoks = _tokens(conn)
        keep = req.keep and (b"close" not in ctoks if h.minor else b"keep-alive" in ctoks)
        body = len(data) - i - 4
        if body > length or not keep and req.keep and b"close" not in ctoks:
            return False            # more than this response, or a head to rewrite
        self._tc.append(data)
        self.resp_started = True
        req.keep = keep
        if body == length:
            sr.end()
        else:
            sr.state, sr.left = LENGTH, length - body
        return True

    # -- plumbing --------------------------------------------------------------

    def _guard(self, fn: Callable, *args) -> Out:
        if not self.closed:
            try:
                fn(*args)
            except Exception as e:   # a fault here must not take the relay process down
                self._abort(500, f"internal error: {type(e).__name__}: {e}",
                            answer=not self.resp_started)
        ts, tc = self._ts, self._tc
        out = Out(ts[0] if len(ts) == 1 else b"".join(ts),
                  tc[0] if len(tc) == 1 else b"".join(tc), self._cc, self._cs, self._up,
                  "; ".join(self._log) if self._log else None, self._forward)
        self._forward = None
        self._ts.clear()
        self._tc.clear()
        self._log.clear()
        self._up = False
        return out

    def _close(self, log: str | None = None) -> None:
        self._cc = self._cs = True
        self.closed = True
        self.cr.state = self.sr.state = DEAD
        if log:
            self._log.append(log)

    def _abort(self, code: int, msg: str, answer: bool) -> None:
        reason = REASONS.get(code, "Unknown Error")
        if answer and self.opts.return_error:
            self._tc.append(self.error_page(code, msg))
        self._close(f"{msg} ({code} {reason})")

    def error_page(self, code: int, msg: str) -> bytes:
        """relayd's relay_abort_http document (details of a 500 are not shown)."""
        reason = REASONS.get(code, "Unknown Error")
        text = "" if code == 500 else _html(msg)
        style = self.opts.style if self.opts.style is not None else DEFAULT_STYLE
        body = ("<!DOCTYPE html>\n<html>\n<head>\n"
                f"<title>{code:03d} {reason}</title>\n"
                f"<style type=\"text/css\"><!--\n{style}\n--></style>\n"
                "</head>\n<body>\n"
                f"<h1>{reason}</h1>\n"
                f"<div id='m'>{text}</div>\n"
                f"<div id='l'>{_html(self._label or '')}</div>\n"
                f"<hr><address>{_html(self.env['SERVER_NAME'])} at "
                f"{_html(self.env.get('SERVER_ADDR', ''))} port "
                f"{_html(self.env.get('SERVER_PORT', ''))}</address>\n"
                "</body>\n</html>\n").encode()
        head = (f"HTTP/1.0 {code:03d} {reason}\r\n"
                f"Date: {formatdate(self.now(), usegmt=True)}\r\n"
                f"Server: {self.env['SERVER_NAME']}\r\n"
                "Connection: close\r\n"
                "Content-Type: text/html\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return head + body

    # -- filter rules ----------------------------------------------------------

    def _rule_log(self, first: bytes, res) -> None:
        """relayd's `log` lines: what the rules named, with the tag and label."""
        if res.log:
            extra = (f", tag {res.tag}" if res.tag else "") + \
                    (f", label {res.label}" if res.label else "")
            self._log.append(first.decode("latin-1") + " " + " ".join(res.log) + extra)

    # -- requests --------------------------------------------------------------

    def _may_request(self) -> bool:
        if self.deferred is not None or self.switch is not None \
                or len(self.pending) >= MAX_PIPELINE:
            return False
        return not (self.pending and self.pending[-1].websocket)

    def _req_head(self, raw: bytes) -> None:
        """A request head with its empty line (raw)."""
        try:
            h, framing = scan_head(raw, True)
            cl, te, conn, up, hosts, expect = [], [], [], [], [], False
            for ln, value in framing:           # (lower-cased)
                if ln == b"content-length":
                    cl.append(value)
                elif ln == b"transfer-encoding":
                    te.append(value)
                elif ln == b"connection":
                    conn.append(value)
                elif ln == b"host":
                    hosts.append(value)
                elif ln == b"upgrade":
                    up.append(value)
                elif ln == b"expect":
                    expect = expect or value == b"100-continue"
            if h.method == b"CONNECT":
                raise BadMessage(405, "CONNECT is not relayed")
            if cl and te:
                raise BadMessage(400, "request smuggling: Content-Length and "
                                      "Transfer-Encoding")
            chunked = False
            length = 0
            if te:
                codings = _tokens(te)
                if h.minor == 0 or not codings or codings[-1] != b"chunked" \
                        or codings.count(b"chunked") != 1:
                    raise BadMessage(400, "invalid Transfer-Encoding")
                chunked = True
            elif cl:
                length = _content_length(cl, 400)
            if len(hosts) > 1:
                raise BadMessage(400, "malformed header: Host twice")
            if hosts and h.target[:7].lower() in (b"http://", b"https:/"):
                auth = h.target.split(b"/", 3)[2] if h.target.count(b"/") >= 2 else b""
                if auth.lower() != hosts[0]:
                    raise BadMessage(400, "malformed host")
            ctoks = _tokens(conn)
            websocket = False
            if up:
                utoks = [t.split(b"/")[0] for t in _tokens(up)]
                if b"websocket" in utoks:
                    if not self.opts.websockets:
                        raise BadMessage(403, "Websocket Forbidden")
                    if b"upgrade" not in ctoks:
                        raise BadMessage(400, "Bad Websocket Request")
                    if h.method != b"GET":
                        raise BadMessage(405, "Websocket Method Not Allowed")
                    websocket = True
        except BadMessage as e:
            self._req_error(e.code, e.msg, head=True)
            return
        keep = b"close" not in ctoks if h.minor else b"keep-alive" in ctoks
        target = h.target
        rewrite = False
        tag = label = None
        prog = self.req_prog
        # every header line, only for what reads or rewrites them
        headers = split_headers(raw) if prog is not None or up else None
        if prog is not None:
            q = target.find(b"?")
            rh = RuleHead(h.method, target if q < 0 else target[:q],
                          None if q < 0 else target[q + 1:], headers)
            res = prog.run(rh, self.env)
            tag, label = res.tag, res.label
            if res.block:
                self._rule_log(b"%s %s" % (h.method, target), res)
                self._label = label
                self._req_error(403, "Forbidden", head=True)
                return
            if self.routing and (res.table or "") != self.backend:
                if self.pending:
                    # another backend: once this one has answered all it was
                    # asked (the rules run again then, and log then)
                    self.switch = raw
                    self.cr.state = HEAD
                    return
                self.backend = self._forward = res.table or ""
                self.route_hash = b"|".join(res.hash)
            self._rule_log(b"%s %s" % (h.method, target), res)
            if rh.changed:
                headers, target, rewrite = rh.headers, rh.target(), True
        if up and not websocket:
            headers = [x for x in headers if x[0].lower() != b"upgrade"]
            rewrite = True
        if rewrite:
            self._ts.append(b"%s %s HTTP/1.%d\r\n" % (h.method, target, h.minor))
            self._ts.append(b"".join([n + b": " + v + b"\r\n" for n, v in headers]))
            self._ts.append(b"\r\n")
        else:
            self._ts.append(raw)
        rq = _Req(h.method == b"HEAD", websocket, keep, expect)
        rq.tag, rq.label = tag, label
        self.pending.append(rq)
        self.tag = tag
        if chunked:
            self.cr.state = CHUNK_SIZE
        elif length:
            self.cr.state, self.cr.left = LENGTH, length
        else:
            self.cr.end()

    def _req_body(self, data: bytes) -> None:
        if self.pending and not self.upgraded:
            self.pending[-1].body_sent = True
        self._ts.append(data)

    def _req_end(self) -> None:
        if self.pending and not self.pending[-1].keep:
            # nothing after a last request is read: the session ends with its answer
            self.cr.state = DEAD
            self.cr.buf.clear()

    def _req_error(self, code: int, msg: str, head: bool = False) -> None:
        self.cr.state = DEAD
        self.cr.buf.clear()
        if head and self.pending:
            # answered after the responses the client is waiting for
            self.deferred = (code, msg)
            return
        # a body cut short: the backend has a broken request, the answer to it is lost
        self._abort(code, msg, answer=not self.resp_started and len(self.pending) <= 1)

    # -- responses -------------------------------------------------------------

    def _may_response(self) -> bool:
        return True

    def _resp_head(self, raw: bytes) -> None:
        """A response head with its empty line (raw)."""
        if not self.pending:
            self._close("response from server to no request")
            return
        try:
            h, framing = scan_head(raw, False)
            req = self.pending[0]
            cl, te, conn, up = [], [], [], []
            for ln, value in framing:           # (lower-cased)
                if ln == b"content-length":
                    cl.append(value)
                elif ln == b"transfer-encoding":
                    te.append(value)
                elif ln == b"connection":
                    conn.append(value)
                elif ln == b"upgrade":
                    up.append(value)
            ctoks = _tokens(conn)
            if h.status == 101:
                if not (req.websocket and b"upgrade" in ctoks
                        and b"websocket" in [t.split(b"/")[0] for t in _tokens(up)]):
                    raise BadMessage(502, "Bad Websocket Gateway")
            elif te and cl:
                raise BadMessage(502, "response with Content-Length and Transfer-Encoding")
            length = -1           # until the backend closes
            chunked = False
            if req.head or h.status < 200 or h.status in (204, 304):
                length = 0
            elif te:
                codings = _tokens(te)
                if codings and codings[-1] == b"chunked":
                    if codings.count(b"chunked") != 1:
                        raise BadMessage(502, "invalid Transfer-Encoding")
                    chunked = True
            elif cl:
                length = _content_length(cl, 502)
        except BadMessage as e:
            self._resp_error(e.code, e.msg)
            return
        final = h.status >= 200
        if h.status >= 500:
            self.server_errors += 1
        keep = req.keep and (b"close" not in ctoks if h.minor else b"keep-alive" in ctoks)
        if length < 0 and not chunked:
            keep = False
        if final and req.expect and not req.body_sent and self.cr.state in (
                LENGTH, CHUNK_SIZE) and self.pending[-1] is req:
            keep = False
        headers = None
        rewrite = False
        if final and self.resp_prog is not None:
            headers = split_headers(raw)
            rh = RuleHead(b"", b"", None, headers)
            res = self.resp_prog.run(rh, self.env, req.tag, req.label)
            self._rule_log(b"%d" % h.status, res)
            if res.block:
                self._label = res.label
                self._abort(403, "Forbidden", answer=True)
                return
            if rh.changed:
                headers, rewrite = rh.headers, True
        if final and not keep and req.keep and b"close" not in ctoks:
            if headers is None:
                headers = split_headers(raw)
            headers = list(headers) + [(b"Connection", b"close")]
            rewrite = True
        if rewrite:
            self._tc.append(b"HTTP/1.%d %d %s\r\n" % (h.minor, h.status, h.reason or b""))
            self._tc.append(b"".join([n + b": " + v + b"\r\n" for n, v in headers]))
            self._tc.append(b"\r\n")
        else:
            self._tc.append(raw)
        if h.status == 101:
            self.pending.popleft()
            self.upgraded = self._up = True
            self.sr.state = PIPE
            self.cr.state = PIPE
            self.cr.run()        # what the client sent after its request, held till now
            return
        if not final:
            self.sr.state = HEAD     # 100 Continue and friends: the answer follows
            return
        self.resp_started = True
        req.keep = keep
        if chunked:
            self.sr.state = CHUNK_SIZE
        elif length > 0:
            self.sr.state, self.sr.left = LENGTH, length
        elif length < 0:
            self.sr.state = UNTIL_CLOSE
        else:
            self.sr.end()

    def _resp_body(self, data: bytes) -> None:
        self._tc.append(data)

    def _resp_end(self) -> None:
        self.resp_started = False
        req = self.pending.popleft()
        if not self.pending:
            self.tag = None
        if not req.keep:
            self._close()
            return
        if self.switch is not None and not self.pending:
            # what else came in with this from the old backend is not for anyone
            self.sr.drop()
            block, self.switch = self.switch, None
            self.cr.state = DEAD
            self._req_head(block)
        # requests held while the pipeline was full (or behind an upgrade or a
        # change of backend) go on now
        if self.cr.buf and self.cr.state != DEAD:
            self.cr.run()
        if self.closed or self.pending:
            return
        if self.deferred is not None:
            self._abort(*self.deferred, answer=True)
        elif self.client_eof_seen:
            self._close("client closed in the middle of a request"
                        if self.cr.state != HEAD or self.cr.buf.strip(b"\r\n") else None)

    def _resp_error(self, code: int, msg: str) -> None:
        self._abort(code, msg, answer=not self.resp_started)

    # -- ends ------------------------------------------------------------------

    def _client_eof(self) -> None:
        if self.upgraded:
            self._close()
            return
        cr = self.cr
        idle = cr.state == DEAD or (cr.state == HEAD and not cr.buf.strip(b"\r\n"))
        held = cr.state == HEAD and not self._may_request()
        if self.pending and (idle or held):
            self.client_eof_seen = True     # the answers it waits for still go to it
        elif idle:
            self._close()
        else:
            self._close("client closed in the middle of a request")

    def _server_eof(self) -> None:
        sr = self.sr
        if self.upgraded:
            self._close()
            return
        if sr.state == UNTIL_CLOSE:
            self.resp_started = False
            self.pending.popleft()
            self._close()
            return
        if not self.pending and sr.state == HEAD and not sr.buf:
            self._close()
            return
        if sr.state == DEAD:
            self._close()
            return
        self._abort(502, "server closed in the middle of a response"
                    if self.resp_started or sr.buf else "server closed before responding",
                    answer=not self.resp_started)


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
