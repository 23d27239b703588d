"""check http: bytes in, verdict out."""

import hashlib

import pytest

from hoststated.checks.base import Done, Send
from hoststated.checks.http import HttpCheck, dechunk, parse_status
from hoststated.states import HostError


def run(check, *chunks, eof=True):
    """Feed chunks; return the verdict of the first Done."""
    for c in chunks:
        for a in check.receive(c):
            if isinstance(a, Done):
                return a.verdict
    if eof:
        (done,) = check.eof()
        return done.verdict
    return None


def test_request_http10_head_without_host():
    (send,) = HttpCheck(path="/health", code=200).start()
    assert send == Send(b"HEAD /health HTTP/1.0\r\n\r\n")


def test_request_http11_with_host_and_close():
    (send,) = HttpCheck(path="/", host="www.example.com", code=200).start()
    assert send.data == b"HEAD / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"


def test_get_for_digest_and_body():
    assert HttpCheck(digest="a" * 40).start()[0].data.startswith(b"GET / HTTP/1.0")
    assert HttpCheck(body="ok").start()[0].data.startswith(b"GET ")
    assert HttpCheck(code=200, method="GET").start()[0].data.startswith(b"GET ")


def test_code_ok_as_soon_as_status_line_arrives():
    v = run(HttpCheck(code=200), b"HTTP/1.1 200 OK\r\n", eof=False)
    assert v.ok and v.error == HostError.HTTP_CODE_OK


def test_code_mismatch_detail():
    v = run(HttpCheck(code=200), b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n")
    assert not v.ok
    assert str(v) == "http code mismatch: got 302, want 200"


def test_status_line_split_across_reads():
    c = HttpCheck(code=204)
    assert c.receive(b"HTTP/1.") == []
    assert run(c, b"1 204 No Content\r\n", eof=False).ok


@pytest.mark.parametrize("line", [b"HTTP/2 200 OK\r\n", b"SSH-2.0-OpenSSH\r\n",
                                  b"HTTP/1.1 2x0 OK\r\n", b"HTTP/1.1 20\r\n", b"\x00\xff\r\n"])
def test_malformed_status_line(line):
    v = run(HttpCheck(code=200), line)
    assert v.error == HostError.HTTP_CODE_ERROR and not v.ok
    assert "got '" in v.detail


def test_eof_before_status_line():
    v = run(HttpCheck(code=200), b"HTTP/1.1 20")
    assert v.error == HostError.HTTP_CODE_ERROR and "no status line" in v.detail


def test_garbage_without_newline_capped():
    c = HttpCheck(code=200)
    v = run(c, b"x" * 20000, eof=False)
    assert v is not None and v.error == HostError.HTTP_CODE_ERROR


def test_parse_status():
    assert parse_status(b"HTTP/1.0 200 OK") == 200
    assert parse_status(b"HTTP/1.1 404") == 404
    assert parse_status(b"HTTP/1.1 4041") is None
    assert parse_status(b"http/1.1 200 OK") is None


BODY = b"<html>hello</html>"


def test_digest_sha1_and_md5_by_length():
    sha1 = hashlib.sha1(BODY).hexdigest()
    md5 = hashlib.md5(BODY).hexdigest()
    resp = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + BODY
    assert run(HttpCheck(digest=sha1), resp).error == HostError.HTTP_DIGEST_OK
    assert run(HttpCheck(digest=md5.upper()), resp).ok
    v = run(HttpCheck(digest="0" * 40), resp)
    assert v.error == HostError.HTTP_DIGEST_FAIL and v.detail == f"got {sha1}, want {'0' * 40}"


def test_digest_with_content_length_done_before_eof():
    sha1 = hashlib.sha1(BODY).hexdigest()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
    assert run(HttpCheck(digest=sha1), resp[:10], resp[10:], eof=False).ok


def test_digest_of_chunked_body():
    sha1 = hashlib.sha1(BODY).hexdigest()
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\n<html>\r\nc\r\nhello</html>\r\n0\r\n\r\n")
    assert run(HttpCheck(digest=sha1), resp, eof=False).ok


def test_malformed_chunk():
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc"
    v = run(HttpCheck(digest="a" * 40), resp)
    assert v.error == HostError.HTTP_DIGEST_ERROR and "malformed chunk" in v.detail


def test_dechunk_partial():
    assert dechunk(b"5\r\nhel", 100) == (b"hel", False)
    assert dechunk(b"3;ext=1\r\nabc\r\n0\r\n\r\n", 100) == (b"abc", True)


def test_body_regex_match_and_mismatch():
    resp = b"HTTP/1.0 200 OK\r\n\r\nstatus: healthy\n"
    assert run(HttpCheck(body=r"status: (ok|healthy)"), resp).error == HostError.HTTP_BODY_OK
    v = run(HttpCheck(body=r"^ready$"), resp)
    assert v.error == HostError.HTTP_BODY_FAIL and "healthy" in v.detail


def test_body_with_code_checks_code_first():
    v = run(HttpCheck(code=200, body="x"), b"HTTP/1.0 500 Oops\r\n\r\nx")
    assert v.error == HostError.HTTP_CODE_FAIL


def test_huge_body_capped():
    c = HttpCheck(digest="a" * 40, body_cap=1000)
    v = run(c, b"HTTP/1.0 200 OK\r\n\r\n", b"y" * 600, b"y" * 600, eof=False)
    assert v is not None and v.error == HostError.HTTP_DIGEST_FAIL and "over 1000" in v.detail


def test_headers_never_ending():
    c = HttpCheck(body="x")
    v = run(c, b"HTTP/1.0 200 OK\r\n", b"X-A: b\r\n" * 3000, eof=False)
    assert v is not None and not v.ok


def test_progress_shows_what_arrived():
    c = HttpCheck(code=200)
    c.receive(b"HTTP/1.")
    assert c.progress() == "got 'HTTP/1.'"


def test_fresh_is_a_new_conversation_with_the_same_request():
    proto = HttpCheck(path="/h", host="www.example.com", code=204)
    used = proto.fresh()
    assert run(used, b"HTTP/1.1 204 No Content\r\n", b"\r\n").ok
    again = proto.fresh()                         # nothing of the used one carries over
    assert again.start() == proto.start()
    assert again.progress() == "got ''"
    v = run(again, b"HTTP/1.1 500 Oops\r\n\r\n")
    assert (v.ok, v.error, v.detail) == (False, HostError.HTTP_CODE_FAIL, "got 500, want 204")


def test_fresh_copy_of_a_digest_check_parses_its_own_headers():
    body = b"hello"
    digest = hashlib.sha1(body).hexdigest()
    proto = HttpCheck(digest=digest)
    chunked = proto.fresh()
    assert run(chunked, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
               eof=False).ok
    plain = proto.fresh()                        # not chunked: the copy starts from the settings
    assert run(plain, b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", eof=False).ok


def test_success_in_one_read_same_verdict_as_split():
    whole = run(HttpCheck(code=200), b"HTTP/1.0 200 OK\r\n\r\n", eof=False)
    split = run(HttpCheck(code=200), b"HTTP/1.0 2", b"00 OK\r\n\r\n", eof=False)
    assert whole == split
    assert (whole.ok, whole.error, whole.detail) == (True, HostError.HTTP_CODE_OK, "got 200")
    bad = run(HttpCheck(code=200), b"HTTP/1.0 200x\r\n", eof=False)   # the slow path judges it
    assert (bad.ok, bad.error) == (False, HostError.HTTP_CODE_ERROR)


@pytest.mark.parametrize("code", [200, 204, 20, 0])
@pytest.mark.parametrize("first", [
    b"HTTP/1.0 200 OK\r\n\r\n", b"HTTP/1.1 200\r\n\r\n", b"HTTP/1.0 200\n", b"HTTP/1.0 200\r\r\n",
    b"HTTP/1.0 200\rX\r\n", b"HTTP/1.0 2000 OK\r\n", b"HTTP/1.0 200OK\r\n", b"HTTP/1.0 200 OK",
    b"HTTP/1.2 200 OK\r\n", b"http/1.0 200 OK\r\n", b"HTTP/1.0 20\r\n", b"HTTP/1.0 20\n0 \n",
    b"HTTP/1.0 204 No\r\n", b"HTTP/1.0 020 x\n", b"HTTP/1.0 000\n", b"HTTP/1.0  200 OK\n",
    b"HTTP/1.0 \xd9\xa0\xd9\xa0 x\n", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_first_read_fast_path_same_verdict_as_byte_by_byte(code, first):
    """The first read's shortcut (the status line whole, with the code
    wanted) says what the general parser says when the same bytes come one
    at a time, for lines it must take and lines it must refuse."""
    fast = run(HttpCheck(code=code), first)
    slow = run(HttpCheck(code=code), *(first[i:i + 1] for i in range(len(first))))
    assert fast == slow
