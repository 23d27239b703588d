"""check ldap / ldaps against OpenLDAP's slapd (Debian's slapd): a tiny DIT
loaded with slapadd into a temp dir, served on ldap:// and ldaps://."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import (Server, check_once, free_port, missing_programs, run,
                              self_signed)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs slapd)")]

PASSWORD = "s3cret-Ldap"
ADMIN = "cn=admin,dc=example,dc=test"

SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
TLSCertificateFile {dir}/cert.pem
TLSCertificateKeyFile {dir}/key.pem
database mdb
maxsize 10485760
suffix "dc=example,dc=test"
rootdn "{admin}"
rootpw {password}
directory {dir}/db
access to * by * read
"""

DIT = """\
dn: dc=example,dc=test
objectClass: dcObject
objectClass: organization
o: example
dc: example

dn: ou=people,dc=example,dc=test
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    if why := missing_programs("slapd", "slapadd", "openssl"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("slapd")
    (d / "db").mkdir()
    self_signed(d)
    conf = d / "slapd.conf"
    conf.write_text(SLAPD_CONF.format(dir=d, admin=ADMIN, password=PASSWORD))
    (d / "dit.ldif").write_text(DIT)
    run(["slapadd", "-f", str(conf), "-l", str(d / "dit.ldif")])
    port, tls_port = free_port(), free_port()
    srv = Server("slapd", ["slapd", "-d", "0", "-f", str(conf), "-h",
                           f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"], d, port)
    srv.tls_port = tls_port
    try:
        yield srv.start()
    finally:
        srv.stop()


def ldap(**kw) -> CheckService:
    return CheckService(kind="ldap", **kw)


def test_up_anonymous(slapd):
    v = check_once(ldap(), slapd.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "ldap: bind ok")


def test_up_bind_and_search(slapd):
    v = check_once(ldap(bind_dn=ADMIN, password=PASSWORD, base="dc=example,dc=test",
                        filter="(uid=alice)"), slapd.port)
    assert (v.ok, v.detail) == (True, "ldap: search found uid=alice,ou=people,dc=example,dc=test")


def test_up_starttls(slapd):
    v = check_once(ldap(bind_dn=ADMIN, password=PASSWORD, base="ou=people,dc=example,dc=test",
                        starttls=True), slapd.port)
    assert v.ok, v


def test_up_ldaps(slapd):
    v = check_once(CheckService(kind="ldaps", base="dc=example,dc=test"), slapd.tls_port)
    assert v.ok, v


def test_wrong_password(slapd):
    v = check_once(ldap(bind_dn=ADMIN, password="wrong-pw-123"), slapd.port)
    assert (v.ok, v.error, v.detail) == (False, HostError.PROTOCOL_FAIL,
                                         "ldap: bind failed: invalidCredentials")


def test_wrong_no_entry(slapd):
    v = check_once(ldap(base="dc=example,dc=test", filter="(uid=bob)"), slapd.port)
    assert (v.ok, v.detail) == (False, "ldap: search of dc=example,dc=test found no entry")


def test_wrong_base(slapd):
    v = check_once(ldap(base="dc=nosuch,dc=test"), slapd.port)
    assert (v.ok, v.detail) == (False, "ldap: search of dc=nosuch,dc=test failed: noSuchObject")


def test_down_after_stop(slapd):
    slapd.stop()
    v = check_once(ldap(), slapd.port, timeout=3.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
