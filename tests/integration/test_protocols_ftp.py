"""check ftp against vsftpd (Debian's vsftpd): anonymous login, AUTH TLS, and
a user the server refuses."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import (Server, check_once, free_port, missing_programs,
                              self_signed, world_dir)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs vsftpd)")]

CONF = """\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
anon_root={dir}/anon
local_enable=NO
write_enable=NO
secure_chroot_dir={dir}/empty
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=NO
force_anon_data_ssl=NO
rsa_cert_file={dir}/cert.pem
rsa_private_key_file={dir}/key.pem
vsftpd_log_file={dir}/vsftpd.log
"""


@pytest.fixture(scope="module")
def vsftpd():
    if why := missing_programs("vsftpd", "openssl"):
        pytest.skip(why)
    with world_dir("vsftpd") as d:      # anon_root must be reachable by user ftp
        (d / "anon").mkdir()
        (d / "empty").mkdir()
        self_signed(d)
        port = free_port()
        (d / "vsftpd.conf").write_text(CONF.format(port=port, dir=d))
        srv = Server("vsftpd", ["vsftpd", str(d / "vsftpd.conf")], d, port)
        try:
            yield srv.start()
        finally:
            srv.stop()


def ftp(**kw) -> CheckService:
    return CheckService(kind="ftp", **kw)


def test_up_banner(vsftpd):
    v = check_once(ftp(), vsftpd.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "ftp"), v


def test_up_login(vsftpd):
    v = check_once(ftp(user="anonymous", password="hoststated@"), vsftpd.port)
    assert v.ok, v


def test_up_auth_tls_login(vsftpd):
    v = check_once(ftp(user="anonymous", password="hoststated@", starttls=True), vsftpd.port)
    assert v.ok, v


def test_wrong_user(vsftpd):
    v = check_once(ftp(user="bob", password="wrong-pw-123"), vsftpd.port)
    assert (v.ok, v.error, v.detail) == (
        False, HostError.PROTOCOL_FAIL, "ftp: login failed: 530 This FTP server is anonymous only.")


def test_down_after_stop(vsftpd):
    vsftpd.stop()
    v = check_once(ftp(), vsftpd.port, timeout=3.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
