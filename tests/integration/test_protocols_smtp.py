"""check smtp / submission against exim4 (Debian's exim4-daemon-light)."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import (Server, check_once, free_port, missing_programs,
                              self_signed)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs exim4)")]

CONFIG = """\
primary_hostname = mx.example.test
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
spool_directory = {dir}/spool
log_file_path = {dir}/%slog
exim_user = root
exim_group = root
never_users =
keep_environment =
tls_advertise_hosts = *
tls_certificate = {dir}/cert.pem
tls_privatekey = {dir}/key.pem
acl_smtp_helo = acl_check_helo
acl_smtp_rcpt = acl_check_rcpt
.ifdef REJECT
acl_smtp_connect = acl_reject
.endif
begin acl
acl_check_helo:
  deny message = helo name not welcome here
       condition = ${{if eq{{$sender_helo_name}}{{bad.example}}}}
  accept
acl_check_rcpt:
  deny
acl_reject:
  deny message = no service for you
begin routers
begin transports
"""


def start_exim(d, *defines) -> Server:
    port = free_port()
    (d / "spool").mkdir(exist_ok=True)
    if not (d / "cert.pem").exists():
        self_signed(d)
    conf = d / f"exim-{port}.conf"
    conf.write_text(CONFIG.format(port=port, dir=d))
    return Server("exim4", ["exim4", "-C", str(conf), *defines, "-bdf"], d, port).start()


@pytest.fixture(scope="module")
def exim(tmp_path_factory):
    if why := missing_programs("exim4", "openssl"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("exim")
    srv = start_exim(d)
    try:
        yield srv
    finally:
        srv.stop()


def smtp(**kw) -> CheckService:
    return CheckService(kind="smtp", **kw)


def test_up(exim):
    v = check_once(smtp(helo="director.example.test"), exim.port)
    assert (v.ok, v.error) == (True, HostError.PROTOCOL_OK), v


def test_up_starttls(exim):
    v = check_once(smtp(starttls=True), exim.port)
    assert v.ok, v


def test_up_submission(exim):
    v = check_once(CheckService(kind="submission"), exim.port)
    assert v.ok, v


def test_wrong_helo_rejected(exim):
    v = check_once(smtp(helo="bad.example"), exim.port)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail == "smtp: EHLO 550 helo name not welcome here"


def test_wrong_banner(tmp_path):
    if why := missing_programs("exim4", "openssl"):
        pytest.skip(why)
    srv = start_exim(tmp_path, "-DREJECT=1")
    try:
        v = check_once(smtp(), srv.port)
    finally:
        srv.stop()
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail == "smtp: banner 550 no service for you"


def test_down_after_stop(exim):
    exim.stop()
    v = check_once(smtp(), exim.port, timeout=1.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
