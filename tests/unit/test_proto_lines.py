"""Line-protocol checks (smtp, ftp, imap, pop, nntp, redis, sip, http-proxy)
fed the bytes the real servers sent in tests/integration (exim 4.96,
vsftpd 3.0.3, Dovecot 2.3.19, INN 2.7.1, redis 7.0.15, SIPp 3.6.1, tinyproxy
1.11 in front of Python's http.server): bytes in, actions out."""

from __future__ import annotations

import pytest

from hoststated.checks.base import Done, Send, StartTLS, TLSInfo
from hoststated.checks.ftp import FtpCheck
from hoststated.checks.httpproxy import HttpProxyCheck
from hoststated.checks.imap import ImapCheck, imap_quoted
from hoststated.checks.nntp import NntpCheck
from hoststated.checks.pop import PopCheck
from hoststated.checks.redis import RedisCheck, resp_command
from hoststated.checks.sip import SipCheck
from hoststated.checks.smtp import SmtpCheck
from hoststated.states import HostError

TLS = TLSInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", peer_cert_der=None,
              verified=False)


def talk(conv, script):
    """Play a transcript: each item is what the server sends (bytes), or
    "TLS" for a finished handshake; returns every action the check took."""
    actions = list(conv.start())
    for step in script:
        if any(isinstance(a, Done) for a in actions):
            break
        actions += conv.tls_started(TLS) if step == "TLS" else conv.receive(step)
    return actions


def sent(actions) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Send)]


def verdict(actions):
    done = [a for a in actions if isinstance(a, Done)]
    assert len(done) == 1, actions
    assert actions[-1] is done[0]
    return done[0].verdict


EXIM_BANNER = b"220 mx.example.test ESMTP Exim 4.96 Sun, 22 Nov 2026 05:11:15 +0000\r\n"
EXIM_EHLO = (b"250-mx.example.test Hello x [127.0.0.1]\r\n250-SIZE 52428800\r\n"
             b"250-8BITMIME\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n250-CHUNKING\r\n"
             b"250-STARTTLS\r\n250-SMTPUTF8\r\n250 HELP\r\n")
EXIM_EHLO_TLS = (b"250-mx.example.test Hello x [127.0.0.1]\r\n250-SIZE 52428800\r\n"
                 b"250-8BITMIME\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 HELP\r\n")
EXIM_QUIT = b"221 mx.example.test closing connection\r\n"


class TestSmtp:
    def test_up(self):
        a = talk(SmtpCheck("x"), [EXIM_BANNER, EXIM_EHLO, EXIM_QUIT])
        assert sent(a) == [b"EHLO x\r\n", b"QUIT\r\n"]
        assert verdict(a).ok and verdict(a).error is HostError.PROTOCOL_OK

    def test_reply_split_across_reads(self):
        data = EXIM_BANNER + EXIM_EHLO + EXIM_QUIT
        conv, actions = SmtpCheck("x"), []
        for i in range(len(data)):
            actions += conv.receive(data[i:i + 1])
            if any(isinstance(x, Done) for x in actions):
                break
        assert sent(actions) == [b"EHLO x\r\n", b"QUIT\r\n"] and verdict(actions).ok

    def test_starttls(self):
        a = talk(SmtpCheck("x", starttls=True),
                 [EXIM_BANNER, EXIM_EHLO, b"220 TLS go ahead\r\n", "TLS", EXIM_EHLO_TLS, EXIM_QUIT])
        assert sent(a) == [b"EHLO x\r\n", b"STARTTLS\r\n", b"EHLO x\r\n", b"QUIT\r\n"]
        assert [x for x in a if isinstance(x, StartTLS)] == [StartTLS(None)]
        assert verdict(a).ok

    def test_starttls_not_offered(self):
        a = talk(SmtpCheck("x", starttls=True), [EXIM_BANNER, EXIM_EHLO_TLS])
        assert verdict(a).detail == "smtp: STARTTLS not offered"

    def test_banner_rejected(self):
        a = talk(SmtpCheck("x"), [b"550 no service for you\r\n"])
        v = verdict(a)
        assert (v.ok, v.error, v.detail) == (False, HostError.PROTOCOL_FAIL,
                                             "smtp: banner 550 no service for you")

    def test_helo_rejected(self):
        a = talk(SmtpCheck("bad.example"), [EXIM_BANNER, b"550 helo name not welcome here\r\n"])
        assert verdict(a).detail == "smtp: EHLO 550 helo name not welcome here"

    def test_ehlo_unknown_falls_back_to_helo(self):
        a = talk(SmtpCheck("x", proto="submission"),
                 [b"220 old ready\r\n", b"502 unknown command\r\n", b"250 hi\r\n", EXIM_QUIT])
        assert sent(a) == [b"EHLO x\r\n", b"HELO x\r\n", b"QUIT\r\n"] and verdict(a).ok

    def test_not_smtp(self):
        a = talk(SmtpCheck("x"), [b"SSH-2.0-OpenSSH_9.2p1\r\n"])
        assert verdict(a).detail == "smtp: not an SMTP reply: SSH-2.0-OpenSSH_9.2p1"

    def test_eof_in_banner_and_after_quit(self):
        c = SmtpCheck("x")
        assert verdict(c.eof()).detail == "smtp: connection closed by server in banner"
        c = SmtpCheck("x")
        talk(c, [EXIM_BANNER, EXIM_EHLO])
        assert verdict(c.eof()).ok

    def test_endless_line(self):
        c = SmtpCheck("x")
        a = c.receive(b"220" + b"x" * 9000)
        assert verdict(a).detail == "smtp: reply line too long"


VSFTPD = b"220 (vsFTPd 3.0.3)\r\n"


class TestFtp:
    def test_banner_only(self):
        a = talk(FtpCheck(), [VSFTPD, b"221 Goodbye.\r\n"])
        assert sent(a) == [b"QUIT\r\n"] and verdict(a).ok

    def test_login(self):
        a = talk(FtpCheck("anonymous", "hs@"),
                 [VSFTPD, b"331 Please specify the password.\r\n", b"230 Login successful.\r\n",
                  b"221 Goodbye.\r\n"])
        assert sent(a) == [b"USER anonymous\r\n", b"PASS hs@\r\n", b"QUIT\r\n"] and verdict(a).ok

    def test_auth_tls(self):
        a = talk(FtpCheck("anonymous", "hs@", starttls=True),
                 [VSFTPD, b"234 Proceed with negotiation.\r\n", "TLS",
                  b"331 Please specify the password.\r\n", b"230 Login successful.\r\n",
                  b"221 Goodbye.\r\n"])
        assert sent(a)[0] == b"AUTH TLS\r\n" and verdict(a).ok

    def test_multiline_banner(self):
        a = talk(FtpCheck(), [b"220-Welcome\r\n220-to the\r\n server\r\n220 ready\r\n",
                              b"221 Goodbye.\r\n"])
        assert sent(a) == [b"QUIT\r\n"] and verdict(a).ok

    def test_login_refused(self):
        a = talk(FtpCheck("bob", "wrong-pw-123"),
                 [VSFTPD, b"530 This FTP server is anonymous only.\r\n"])
        v = verdict(a)
        assert (v.ok, v.detail) == (False, "ftp: login failed: 530 This FTP server is anonymous only.")

    def test_bad_password(self):
        a = talk(FtpCheck("u", "wrong-pw-123"),
                 [VSFTPD, b"331 Please specify the password.\r\n", b"530 Login incorrect.\r\n"])
        assert verdict(a).detail == "ftp: login failed: 530 Login incorrect."

    def test_banner_busy(self):
        a = talk(FtpCheck(), [b"421 There are too many connected users, please try later.\r\n"])
        assert verdict(a).detail.startswith("ftp: banner 421 There are too many")


DOVECOT_IMAP = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
                b"STARTTLS AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n")


class TestImap:
    def test_banner_only(self):
        a = talk(ImapCheck(), [DOVECOT_IMAP, b"* BYE Logging out\r\nhs1 OK Logout completed (0.001 + 0.000 secs).\r\n"])
        assert sent(a) == [b"hs1 LOGOUT\r\n"] and verdict(a).ok

    def test_starttls_login(self):
        a = talk(ImapCheck("alice", 'pa"ss', starttls=True),
                 [DOVECOT_IMAP, b"hs1 OK Begin TLS negotiation now.\r\n", "TLS",
                  b"hs2 OK [CAPABILITY IMAP4rev1 SASL-IR] Logged in\r\n",
                  b"* BYE Logging out\r\nhs3 OK Logout completed.\r\n"])
        assert sent(a) == [b"hs1 STARTTLS\r\n", b'hs2 LOGIN "alice" "pa\\"ss"\r\n',
                           b"hs3 LOGOUT\r\n"]
        assert verdict(a).ok

    def test_login_failed(self):
        a = talk(ImapCheck("alice", "wrong-pw-123"),
                 [DOVECOT_IMAP, b"hs1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"])
        v = verdict(a)
        assert (v.ok, v.error, v.detail) == (
            False, HostError.PROTOCOL_FAIL,
            "imap: login failed: NO [AUTHENTICATIONFAILED] Authentication failed.")
        assert "wrong-pw-123" not in v.detail

    def test_untagged_lines_are_skipped(self):
        a = talk(ImapCheck("a", "b"), [DOVECOT_IMAP, b"* CAPABILITY IMAP4rev1\r\n",
                                       b"hs1 OK Logged in\r\n", b"hs2 OK bye\r\n"])
        assert verdict(a).ok

    def test_bye_greeting(self):
        a = talk(ImapCheck(proto="imaps", tls=True), [b"* BYE Too many connections\r\n"])
        assert verdict(a).detail == "imaps: greeting * BYE Too many connections"

    def test_preauth(self):
        a = talk(ImapCheck("a", "b"), [b"* PREAUTH ready\r\n", b"hs1 OK bye\r\n"])
        assert sent(a) == [b"hs1 LOGOUT\r\n"] and verdict(a).ok

    def test_quoting(self):
        assert imap_quoted('a\\b"c') == '"a\\\\b\\"c"'
        assert imap_quoted("a\r\nb") is None
        a = talk(ImapCheck("a", "x\r\ny"), [DOVECOT_IMAP])
        assert verdict(a).detail == "imap: user or password cannot be sent (CR, LF or NUL)"


class TestPop:
    def test_login(self):
        a = talk(PopCheck("alice", "pw"), [b"+OK Dovecot (Debian) ready.\r\n", b"+OK\r\n",
                                           b"+OK Logged in.\r\n", b"+OK Logging out.\r\n"])
        assert sent(a) == [b"USER alice\r\n", b"PASS pw\r\n", b"QUIT\r\n"] and verdict(a).ok

    def test_stls(self):
        a = talk(PopCheck(starttls=True), [b"+OK Dovecot (Debian) ready.\r\n",
                                          b"+OK Begin TLS negotiation now.\r\n", "TLS",
                                          b"+OK Logging out.\r\n"])
        assert sent(a) == [b"STLS\r\n", b"QUIT\r\n"] and verdict(a).ok

    def test_login_failed(self):
        a = talk(PopCheck("alice", "wrong-pw-123", proto="pops", tls=True),
                 [b"+OK Dovecot (Debian) ready.\r\n", b"+OK\r\n",
                  b"-ERR [AUTH] Authentication failed.\r\n"])
        assert verdict(a).detail == "pops: login failed: -ERR [AUTH] Authentication failed."

    def test_bad_greeting(self):
        a = talk(PopCheck(), [b"-ERR [SYS/TEMP] Internal error\r\n"])
        assert verdict(a).detail == "pop: greeting -ERR [SYS/TEMP] Internal error"


class TestNntp:
    def test_up(self):
        a = talk(NntpCheck(), [b"200 server.example.net InterNetNews server INN 2.7.1 ready "
                               b"(transit mode)\r\n", b"205 Bye!\r\n"])
        assert sent(a) == [b"QUIT\r\n"] and verdict(a).ok

    def test_throttled(self):
        a = talk(NntpCheck(), [b"400 Throttled -- hoststated test\r\n"])
        assert verdict(a).detail == "nntp: greeting 400 Throttled -- hoststated test"


class TestRedis:
    def test_ping(self):
        a = talk(RedisCheck(), [b"+PONG\r\n", b"+OK\r\n"])
        assert sent(a) == [resp_command("PING"), resp_command("QUIT")] and verdict(a).ok

    def test_auth(self):
        a = talk(RedisCheck("p w"), [b"+OK\r\n", b"+PONG\r\n", b"+OK\r\n"])
        assert sent(a)[0] == b"*2\r\n$4\r\nAUTH\r\n$3\r\np w\r\n" and verdict(a).ok

    def test_acl_user(self):
        a = talk(RedisCheck("pw", user="hs"), [b"+OK\r\n", b"+PONG\r\n", b"+OK\r\n"])
        assert sent(a)[0] == resp_command("AUTH", "hs", "pw") and verdict(a).ok

    def test_wrong_password(self):
        a = talk(RedisCheck("wrong-pw-123"),
                 [b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"])
        v = verdict(a)
        assert v.detail == ("redis: AUTH failed: -WRONGPASS invalid username-password pair "
                            "or user is disabled.")

    def test_noauth(self):
        a = talk(RedisCheck(), [b"-NOAUTH Authentication required.\r\n"])
        assert verdict(a).detail == "redis: PING: -NOAUTH Authentication required."

    def test_loading(self):
        a = talk(RedisCheck(), [b"-LOADING Redis is loading the dataset in memory\r\n"])
        assert verdict(a).detail == "redis: PING: -LOADING Redis is loading the dataset in memory"

    def test_expect(self):
        a = talk(RedisCheck(expect="PANG"), [b"+PONG\r\n"])
        assert verdict(a).detail == "redis: PING answered +PONG, want PANG"


SIPP_200 = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 0.0.0.0:5060;branch=z9hG4bKt;rport=40000\r\n"
            b"From: <sip:hoststated@invalid>;tag=t\r\nTo: <sip:127.0.0.1:5060>;tag=1hs1\r\n"
            b"Call-ID: t@hoststated\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


class TestSip:
    def test_request(self):
        req = SipCheck("sip:127.0.0.1:5060", token="t").request()
        assert req.startswith(b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n")
        assert b"Via: SIP/2.0/UDP 0.0.0.0:5060;branch=z9hG4bKt;rport\r\n" in req
        assert req.endswith(b"Content-Length: 0\r\n\r\n")
        assert b"SIP/2.0/TCP" in SipCheck("sip:x", transport="tcp").request()

    def test_final_response(self):
        a = talk(SipCheck("sip:x", token="t"), [SIPP_200])
        assert verdict(a).ok and verdict(a).detail == "sip: SIP/2.0 200 OK"

    def test_provisional_then_final_tcp(self):
        a = talk(SipCheck("sip:x", transport="tcp"),
                 [b"SIP/2.0 100 Trying\r\nVia: x\r\nContent-Length: 0\r\n\r\n",
                  b"SIP/2.0 486 Busy Here\r\n"])
        assert verdict(a).ok and verdict(a).detail == "sip: SIP/2.0 486 Busy Here"

    def test_expect(self):
        a = talk(SipCheck("sip:x", expect="2"), [b"SIP/2.0 503 Service Unavailable\r\n\r\n"])
        assert verdict(a).detail == "sip: got SIP/2.0 503 Service Unavailable, want 2"

    def test_not_sip(self):
        a = talk(SipCheck("sip:x"), [b"\x12\x34\x81\x80garbage"])
        assert verdict(a).detail.startswith("sip: not a SIP response")


class TestHttpProxy:
    def test_request(self):
        c = HttpProxyCheck("http://www.example.test:8080/health")
        assert c.request() == (b"GET http://www.example.test:8080/health HTTP/1.0\r\n"
                               b"Host: www.example.test:8080\r\nUser-Agent: hoststated\r\n"
                               b"Connection: close\r\n\r\n")

    def test_up(self):
        a = talk(HttpProxyCheck("http://127.0.0.1:8000/health"),
                 [b"HTTP/1.0 200 OK\r\nVia: 1.1 tinyproxy (tinyproxy/1.11.1)\r\n"])
        assert verdict(a).ok and verdict(a).detail == "http-proxy: code 200"

    def test_code_mismatch(self):
        a = talk(HttpProxyCheck("http://127.0.0.1:8000/nosuch"), [b"HTTP/1.0 404 File not found\r\n"])
        assert verdict(a).detail == ("http-proxy: code mismatch: got 404, want 200 "
                                     "(HTTP/1.0 404 File not found)")

    def test_code_wanted(self):
        a = talk(HttpProxyCheck("http://x/", code=403), [b"HTTP/1.1 403 Forbidden\r\n"])
        assert verdict(a).ok

    def test_not_absolute(self):
        assert verdict(HttpProxyCheck("/health").start()).detail == \
            "http-proxy: not an absolute URL: /health"

    def test_not_http(self):
        a = talk(HttpProxyCheck("http://x/"), [b"220 smtp here\r\n"])
        assert verdict(a).detail == "http-proxy: not an HTTP status line: 220 smtp here"
