"""check radius against FreeRADIUS 3 (Debian's freeradius): a minimal
radiusd.conf with one client, the pap and files modules and one user."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, missing_programs

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs freeradius)")]

SECRET = "s3cret-Radius"
PASSWORD = "alice-Pw"

CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {dir}
raddbdir = {dir}
radacctdir = {dir}
name = freeradius
confdir = {dir}
run_dir = {dir}
db_dir = {dir}
libdir = /usr/lib/freeradius
pidfile = {dir}/radiusd.pid
correct_escapes = true
max_request_time = 5
cleanup_delay = 0
max_requests = 64
hostname_lookups = no
log {{
  destination = stdout
  auth = yes
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}}
thread pool {{
  start_servers = 1
  max_servers = 2
  min_spare_servers = 1
  max_spare_servers = 2
}}
client localhost {{
  ipaddr = 127.0.0.1
  secret = {secret}
  require_message_authenticator = yes
}}
modules {{
  pap {{
  }}
  files {{
    filename = {dir}/users
  }}
}}
listen {{
  type = auth
  ipaddr = 127.0.0.1
  port = {port}
  virtual_server = default
}}
server default {{
  authorize {{
    files
    pap
  }}
  authenticate {{
    Auth-Type PAP {{
      pap
    }}
  }}
}}
"""

USERS = f"""\
alice Cleartext-Password := "{PASSWORD}"
"""


@pytest.fixture(scope="module")
def radiusd(tmp_path_factory):
    if why := missing_programs("freeradius"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("radius")
    port = free_port()
    (d / "radiusd.conf").write_text(CONF.format(dir=d, port=port, secret=SECRET))
    (d / "users").write_text(USERS)
    srv = Server("freeradius", ["freeradius", "-f", "-l", "stdout", "-d", str(d)], d, port)
    try:
        yield srv.start(srv.wait_udp)
    finally:
        srv.stop()


def radius(**kw) -> CheckService:
    return CheckService(kind="radius", **{"secret": SECRET, "user": "alice",
                                          "password": PASSWORD, **kw})


def test_up(radiusd):
    v = check_once(radius(nas_identifier="director-1"), radiusd.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "radius: access accepted")


def test_wrong_password(radiusd):
    v = check_once(radius(password="wrong-pw-123"), radiusd.port)
    assert (v.ok, v.error, v.detail) == (False, HostError.PROTOCOL_FAIL, "radius: access rejected")


def test_wrong_user(radiusd):
    v = check_once(radius(user="mallory"), radiusd.port)
    assert (v.ok, v.detail) == (False, "radius: access rejected")


def test_wrong_secret(radiusd):
    """FreeRADIUS drops a request whose Message-Authenticator does not verify:
    no answer at all, so the check times out."""
    v = check_once(radius(secret="wrong-secret"), radiusd.port, timeout=1.0)
    assert (v.ok, v.error) == (False, HostError.TCP_READ_TIMEOUT), v
    assert "wrong-secret" not in v.detail and PASSWORD not in v.detail


def test_down_after_stop(radiusd):
    radiusd.stop()
    v = check_once(radius(), radiusd.port, timeout=1.0)
    assert (v.ok, v.error) == (False, HostError.TCP_READ_FAIL), v
