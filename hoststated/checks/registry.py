"""The protocol-check registry: which module speaks each `check <service>`
kind. The port each kind defaults to and the optional Python package it
needs are conf.model's tables (DEFAULT_PORTS, PACKAGES), and whether it is
installed conf.packages' one lookup: conf.load reports a
missing package in the configuration, make() refuses to build its check.

    make(check_model, target, *, timeout=None) -> Conversation | LibraryCheck
    required_package(kind) -> "PyMySQL" | None
    missing_packages(config) -> [("mysql", "PyMySQL"), ...]
    default_port(kind) -> 3306

Secrets (SecretStr in the model) are unwrapped only here, straight into the
check object; no check puts one in a Verdict detail."""

from __future__ import annotations

import platform

from hoststated.checks.base import Conversation, LibraryCheck, Target
from hoststated.conf.model import (DEFAULT_PORTS, PACKAGES, CheckService, Config,
                                   missing_package_message)
from hoststated.conf.packages import missing_package

LIBRARY_TIMEOUT = 5.0      # s, when the caller gives none


def default_port(kind: str) -> int:
    return DEFAULT_PORTS[kind]


def required_package(kind: str) -> str | None:
    """The PyPI package a kind of check needs, or None for the ones spoken here."""
    entry = PACKAGES.get(kind)
    return entry[1] if entry else None


def missing_packages(config: Config) -> list[tuple[str, str]]:
    """(kind, package) for each service check in the config whose package is
    not installed, once per kind, in order of first use."""
    out: list[tuple[str, str]] = []
    for table in config.tables:
        check = table.check
        if isinstance(check, CheckService):
            pkg = missing_package(check.kind)
            if pkg and (check.kind, pkg) not in out:
                out.append((check.kind, pkg))
    return out


missing_message = missing_package_message


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def make(check: CheckService, target: Target, *,
         timeout: float | None = None) -> Conversation | LibraryCheck:
    """The check object for one check of one host. `timeout` (seconds) is
    handed to library checks, whose blocking libraries need their own."""
    kind = check.kind
    pkg = missing_package(kind)
    if pkg:
        raise MissingPackage(missing_message(kind, pkg))
    lib_timeout = timeout if timeout is not None else LIBRARY_TIMEOUT
    server_name = target.server_name
    if kind == "dns":
        from hoststated.checks.dns import DnsCheck
        return DnsCheck(check.query or target.name or ".", check.qtype or "A",
                        expect=check.expect, transport=check.transport or "udp")
    if kind in ("smtp", "submission"):
        from hoststated.checks.smtp import SmtpCheck
        return SmtpCheck(check.helo or platform.node() or "localhost",
                         starttls=check.starttls, proto=kind, server_name=server_name)
    if kind == "ftp":
        from hoststated.checks.ftp import FtpCheck
        return FtpCheck(check.user, _secret(check.password), starttls=check.starttls,
                        server_name=server_name)
    if kind in ("imap", "imaps"):
        from hoststated.checks.imap import ImapCheck
        return ImapCheck(check.user, _secret(check.password), starttls=check.starttls,
                         tls=kind == "imaps", proto=kind, server_name=server_name)
    if kind in ("pop", "pops"):
        from hoststated.checks.pop import PopCheck
        return PopCheck(check.user, _secret(check.password), starttls=check.starttls,
                        tls=kind == "pops", proto=kind, server_name=server_name)
    if kind == "nntp":
        from hoststated.checks.nntp import NntpCheck
        return NntpCheck()
    if kind in ("ldap", "ldaps"):
        from hoststated.checks.ldap import LdapCheck
        return LdapCheck(bind_dn=check.bind_dn, password=_secret(check.password),
                         base=check.base, filter=check.filter, starttls=check.starttls,
                         tls=kind == "ldaps", proto=kind, timeout=lib_timeout)
    if kind == "mysql":
        from hoststated.checks.mysql import MysqlCheck
        return MysqlCheck(check.user or "", _secret(check.password), database=check.database,
                          sql=check.sql, timeout=lib_timeout)
    if kind == "pgsql":
        from hoststated.checks.pgsql import PgsqlCheck
        return PgsqlCheck(check.user or "", _secret(check.password), database=check.database,
                          sql=check.sql, starttls=check.starttls, timeout=lib_timeout)
    if kind == "radius":
        from hoststated.checks.radius import RadiusCheck
        return RadiusCheck(_secret(check.secret) or "", check.user or "",
                           _secret(check.password) or "", nas_identifier=check.nas_identifier)
    if kind == "sip":
        from hoststated.checks.sip import SipCheck
        host = target.address if ":" not in target.address else f"[{target.address}]"
        uri = check.uri or f"sip:{host}:{target.port or DEFAULT_PORTS['sip']}"
        return SipCheck(uri, transport=check.transport or "udp", expect=check.expect)
    if kind == "http-proxy":
        from hoststated.checks.httpproxy import HttpProxyCheck
        return HttpProxyCheck(check.uri or "http://localhost/", check.code)
    if kind == "redis":
        from hoststated.checks.redis import RedisCheck
        return RedisCheck(_secret(check.password), user=check.user, expect=check.expect)
    raise ValueError(f"unknown service check {kind!r}")


class MissingPackage(RuntimeError):
    """A check whose Python package is not installed; the message says which."""


def port_for(check, port: int | None) -> int | None:
    """The port to check: the table's, else the protocol check's default
    (a `check smtp` on a table with no port checks 25)."""
    if port is not None:
        return port
    return DEFAULT_PORTS.get(getattr(check, "kind", ""))
