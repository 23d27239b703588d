"""µs per HTTP/1.1 head: relay_http's own parser against httptools (llhttp) and h11,
on realistic heads (a browser's GET, a curl GET, an nginx response), and the whole
HttpRelay for one keep-alive request and its response.

    .venv/bin/pip install httptools h11     # only for the comparison
    .venv/bin/python bench/http_parse.py

Every parser does the same work: find the end of the head, split the first line
and the header lines into bytes, and tell Content-Length / chunked.  Columns:
own = relay_http.parse_head; httptools = one parser kept for the connection (the
way it is fastest, but then llhttp frames the bodies too); per head = httptools
as relay_http could use it (a parser a head); h11 = a Connection a head (h11
wants each response sent before it reads the next request).  Best of 5 runs of
N heads each, in CPU time (time.process_time); one core.
"""

from __future__ import annotations

import time

from hoststated.conf.model import Rule, RuleKey
from hoststated.relay_http import HttpOptions, HttpRelay, parse_head

BROWSER = (b"GET /static/css/site.css?v=3 HTTP/1.1\r\n"
           b"Host: www.example.com\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
           b"Firefox/128.0\r\n"
           b"Accept: text/css,*/*;q=0.1\r\n"
           b"Accept-Language: en-US,en;q=0.5\r\n"
           b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
           b"Referer: https://www.example.com/\r\n"
           b"Connection: keep-alive\r\n"
           b"Cookie: session=4f2a9c1e8b7d6a5f; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n"
           b"Sec-Fetch-Dest: style\r\n"
           b"Sec-Fetch-Mode: no-cors\r\n"
           b"Sec-Fetch-Site: same-origin\r\n"
           b"If-Modified-Since: Tue, 01 Dec 2026 10:00:00 GMT\r\n"
           b"\r\n")
CURL = b"GET / HTTP/1.1\r\nHost: 198.51.100.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Server: nginx/1.26.2\r\n"
            b"Date: Tue, 01 Dec 2026 11:31:51 GMT\r\n"
            b"Content-Type: text/css\r\n"
            b"Content-Length: 5120\r\n"
            b"Last-Modified: Mon, 30 Nov 2026 09:00:00 GMT\r\n"
            b"Connection: keep-alive\r\n"
            b"ETag: \"6570a1b2-1400\"\r\n"
            b"Accept-Ranges: bytes\r\n"
            b"\r\n")
N = 20000


def best(fn, data: bytes, n: int = N) -> float:
    runs = []
    for _ in range(5):
        # CPU time: the figure survives other work on the machine better
        t = time.process_time()
        for _ in range(n):
            fn(data)
        runs.append(time.process_time() - t)
    return min(runs) / n * 1e6


def framing(headers) -> tuple[int, bool]:
    length, chunked = 0, False
    for name, value in headers:
        ln = name.lower()
        if ln == b"content-length":
            length = int(value)
        elif ln == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
    return length, chunked


def own(request: bool):
    def run(data: bytes):
        h = parse_head(data[:data.find(b"\r\n\r\n")], request)
        return framing(h.headers)
    return run


def httptools_parser(request: bool):
    import httptools

    class P:
        def __init__(self):
            self.headers = []
            self.done = False

        def on_header(self, name, value):
            self.headers.append((name, value))

        def on_headers_complete(self):
            self.done = True

    p = P()
    parser = httptools.HttpRequestParser(p)

    def run(data: bytes):
        # one parser for the connection, as a relay would keep it
        p.headers = []
        parser.feed_data(data)
        parser.get_method()
        return framing(p.headers)

    def run_response(data: bytes):
        # a response parser would wait for the body: a new one a head
        p.headers = []
        httptools.HttpResponseParser(p).feed_data(data)
        return framing(p.headers)
    return run if request else run_response


def httptools_per_head(request: bool):
    """httptools the way relay_http could use it: it frames bodies itself
    (chunked re-framed, streamed), so a parser a head, with llhttp's framing
    checks left to relay_http (same messages), the first line by its pattern."""
    import httptools

    from hoststated.relay_http import _REQUEST_LINE, _STATUS_LINE

    class P:
        __slots__ = ("headers",)

        def __init__(self):
            self.headers = []

        def on_header(self, name, value):
            self.headers.append((name, value))

    def run(data: bytes):
        p = P()
        parser = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(p)
        parser.set_dangerous_leniencies(lenient_chunked_length=True,
                                        lenient_transfer_encoding=True)
        parser.feed_data(data)
        first = data[:data.find(b"\r\n")]
        m = (_REQUEST_LINE if request else _STATUS_LINE).fullmatch(first)
        return m.groups(), framing(p.headers)
    return run


def h11_parser(request: bool):
    import h11

    def run(data: bytes):
        # h11 wants each response sent before the next request: one Connection a head
        c = h11.Connection(h11.SERVER if request else h11.CLIENT)
        if not request:
            c.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        c.receive_data(data)
        ev = c.next_event()
        return framing(ev.headers)
    return run


def relay_round() -> float:
    rules = (Rule(keys=(RuleKey(type="header", option="append", key="X-Forwarded-For",
                                value="$REMOTE_ADDR"),)),
             Rule(direction="response", keys=(RuleKey(type="header", option="remove",
                                                      key="Server"),)))
    env = {"REMOTE_ADDR": "192.0.2.7", "REMOTE_PORT": "40001",
           "SERVER_ADDR": "198.51.100.1", "SERVER_PORT": "8080", "TIMEOUT": "600"}
    out = {}
    for label, opts in (("no rules", HttpOptions()), ("2 rules", HttpOptions(rules=rules))):
        s = HttpRelay(opts, env)
        body = b"x" * 5120

        def run(_):
            s.from_client(BROWSER)
            s.from_server(RESPONSE)
            s.from_server(body)
        out[label] = best(run, b"")
    return out


def main() -> None:
    print(f"µs per head, best of 5 x {N}")
    print(f"{'head':<22}{'own':>8}{'httptools':>11}{'per head':>10}{'h11':>8}")
    for name, data, req in (("browser GET (13 hdr)", BROWSER, True),
                            ("curl GET (3 hdr)", CURL, True),
                            ("nginx 200 (9 hdr)", RESPONSE, False)):
        row = [best(own(req), data)]
        for make in (httptools_parser, httptools_per_head, h11_parser):
            try:
                row.append(best(make(req), data, N // 10 if make is h11_parser else N))
            except ImportError:
                row.append(float("nan"))
        print(f"{name:<22}" + "".join(f"{x:>{w}.2f}" for x, w in zip(row, (8, 11, 10, 8))))
    for label, us in relay_round().items():
        print(f"HttpRelay, browser GET + nginx 200 + 5 KiB body, {label}: {us:.2f} µs")


if __name__ == "__main__":
    main()
