"""The protocol-check registry: which object each kind makes, default ports,
packages and the message -n prints, and that secrets never leak."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from pydantic import SecretStr

from hoststated.checks import make_check, registry
from hoststated.checks.base import Target
from hoststated.conf.model import CheckService, Config, Host, Table

KINDS = ["dns", "smtp", "submission", "ftp", "imap", "imaps", "pop", "pops", "nntp",
         "ldap", "ldaps", "mysql", "pgsql", "radius", "sip", "http-proxy", "redis"]
T = Target(address="198.51.100.12", port=None, name="db1")


def test_every_kind_has_a_port_and_an_object():
    assert sorted(registry.DEFAULT_PORTS) == sorted(KINDS)
    assert registry.default_port("submission") == 587 and registry.default_port("pops") == 995
    for kind in KINDS:
        model = CheckService(kind=kind, user="u", uri="http://x/")
        obj = registry.make(model, T)
        assert type(make_check(model, T)) is type(obj)      # make_check dispatches here
        assert hasattr(obj, "start") or hasattr(obj, "run"), kind


@pytest.mark.parametrize("kind,tls", [("imaps", True), ("pops", True), ("imap", False),
                                      ("pop", False), ("smtp", False)])
def test_implicit_tls(kind, tls):
    assert registry.make(CheckService(kind=kind), T).tls is tls


def test_ldaps_uses_ssl_and_its_port():
    c = registry.make(CheckService(kind="ldaps"), T)
    assert c.tls and c.default_port == 636


@pytest.mark.parametrize("kind,transport", [("dns", "udp"), ("radius", "udp"), ("sip", "udp"),
                                            ("smtp", "tcp"), ("redis", "tcp")])
def test_transport(kind, transport):
    assert registry.make(CheckService(kind=kind), T).transport == transport
    if kind in ("dns", "sip"):
        assert registry.make(CheckService(kind=kind, transport="tcp"), T).transport == "tcp"


def test_sip_default_uri_names_the_host():
    assert registry.make(CheckService(kind="sip"), Target("2001:db8::5", 5070)).uri == \
        "sip:[2001:db8::5]:5070"
    assert registry.make(CheckService(kind="sip"), T).uri == "sip:198.51.100.12:5060"


def test_required_packages():
    assert registry.required_package("mysql") == "PyMySQL"
    assert registry.required_package("pgsql") == "pg8000"
    assert registry.required_package("ldaps") == "ldap3"
    assert registry.required_package("dns") == "dnspython"
    assert registry.required_package("radius") is None
    assert registry.required_package("smtp") is None


def config_with(*checks) -> Config:
    tables = tuple(
        Table(id=i, name=f"t{i}", template=f"t{i}", check=c,
              hosts=(Host(id=i, name="h", table=f"t{i}"),))
        for i, c in enumerate(checks, 1))
    return Config(tables=tables)


def test_missing_packages(monkeypatch):
    cfg = config_with(CheckService(kind="mysql", user="u"), CheckService(kind="smtp"),
                      CheckService(kind="mysql", user="v"), CheckService(kind="ldap"))
    assert registry.missing_packages(cfg) == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name in ("pymysql", "ldap3") else real(name))
    assert registry.missing_packages(cfg) == [("mysql", "PyMySQL"), ("ldap", "ldap3")]
    assert registry.missing_message("mysql", "PyMySQL") == (
        "check mysql needs the Python package PyMySQL (pip install 'hoststated[protocols]')")
    with pytest.raises(registry.MissingPackage, match="check mysql needs the Python package PyMySQL"):
        registry.make(CheckService(kind="mysql", user="u"), T)


def test_secrets_stay_secret():
    pw = "Sup3r-s3cret"
    model = CheckService(kind="imap", user="alice", password=SecretStr(pw))
    assert pw not in repr(model) and pw not in str(model.model_dump())
    for kind in ("imap", "pop", "ftp", "redis", "mysql", "pgsql", "ldap", "radius"):
        m = CheckService(kind=kind, user="alice", password=SecretStr(pw),
                         secret=SecretStr(pw), bind_dn="cn=x")
        obj = registry.make(m, T)
        assert pw not in repr(obj), kind


def test_library_timeout_is_passed():
    c = registry.make(CheckService(kind="pgsql", user="u"), T, timeout=1.5)
    assert c.timeout == 1.5
    assert registry.make(CheckService(kind="mysql", user="u"), T).timeout == registry.LIBRARY_TIMEOUT


def test_port_for():
    assert registry.port_for(CheckService(kind="smtp"), None) == 25
    assert registry.port_for(CheckService(kind="smtp"), 2525) == 2525
    assert registry.port_for(CheckService(kind="ldaps"), None) == 636
    from hoststated.conf.model import CheckTcp
    assert registry.port_for(CheckTcp(), None) is None
