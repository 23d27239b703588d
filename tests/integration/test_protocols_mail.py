"""check imap / imaps / pop / pops against Dovecot (Debian's dovecot-imapd
and dovecot-pop3d), with a passwd-file user and a self-signed certificate."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import (Server, check_once, free_port, missing_programs,
                              self_signed, world_dir)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs dovecot)")]

PASSWORD = "s3cret-Mail"

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{dir}/mail/%u
first_valid_uid = 1
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={dir}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop}
  }}
  inet_listener pop3s {{
    port = {pops}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
"""


@pytest.fixture(scope="module")
def dovecot():
    if why := missing_programs("dovecot", "openssl"):
        pytest.skip(why)
    with world_dir("dovecot") as d:
        self_signed(d)
        ports = {k: free_port() for k in ("imap", "imaps", "pop", "pops")}
        (d / "mail").mkdir()
        os.chown(d / "mail", *_dovecot_ids())
        (d / "users").write_text(f"alice:{{PLAIN}}{PASSWORD}\n")
        (d / "dovecot.conf").write_text(CONF.format(dir=d, **ports))
        srv = Server("dovecot", ["dovecot", "-F", "-c", str(d / "dovecot.conf")], d,
                     ports["imap"])
        srv.ports = ports
        try:
            srv.start()
            for p in ports.values():        # every listener, not only the first
                srv.port = p
                srv.wait_tcp()
            yield srv
        finally:
            srv.stop()


def _dovecot_ids() -> tuple[int, int]:
    import pwd
    pw = pwd.getpwnam("dovecot")
    return pw.pw_uid, pw.pw_gid


def svc(kind: str, **kw) -> CheckService:
    return CheckService(kind=kind, **kw)


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_up_banner(dovecot, kind):
    v = check_once(svc(kind), dovecot.ports[kind])
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, kind), v


@pytest.mark.parametrize("kind", ["imap", "imaps", "pop", "pops"])
def test_up_login(dovecot, kind):
    v = check_once(svc(kind, user="alice", password=PASSWORD), dovecot.ports[kind])
    assert v.ok, v


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_up_starttls_login(dovecot, kind):
    v = check_once(svc(kind, user="alice", password=PASSWORD, starttls=True),
                   dovecot.ports[kind])
    assert v.ok, v


def test_wrong_imap_login(dovecot):
    v = check_once(svc("imap", user="alice", password="wrong-pw-123"), dovecot.ports["imap"],
                   timeout=10.0)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail == "imap: login failed: NO [AUTHENTICATIONFAILED] Authentication failed."
    assert "wrong-pw-123" not in v.detail


def test_wrong_pop_login(dovecot):
    v = check_once(svc("pops", user="alice", password="wrong-pw-123"), dovecot.ports["pops"],
                   timeout=10.0)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail == "pops: login failed: -ERR [AUTH] Authentication failed."


def test_wrong_tls_on_plain_port(dovecot):
    """imaps pointed at the plain port: the runner says the TLS handshake failed."""
    v = check_once(svc("imaps"), dovecot.ports["imap"])
    assert not v.ok and v.error in (HostError.TLS_CONNECT_FAIL, HostError.TLS_CONNECT_ERROR), v


def test_down_after_stop(dovecot):
    dovecot.stop()
    for kind in ("imap", "pops"):
        v = check_once(svc(kind), dovecot.ports[kind], timeout=3.0)
        assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
