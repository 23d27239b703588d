"""Health checks: one sans-IO module per kind, and the runner that does the I/O.

make_check(check_model, target) turns a table's check (conf.model) into the
object the runner drives for one host: a Conversation (tcp, tls, http,
send/expect, binary, protocol checks), a LibraryCheck, a ScriptCheck or an
IcmpCheck. A fresh object per check run: conversations hold state."""

from __future__ import annotations

from typing import Any

from hoststated.checks.arp import ArpCheck
from hoststated.checks.base import Conversation, LibraryCheck, Target
from hoststated.checks.http import HttpCheck
from hoststated.checks.icmp import IcmpCheck
from hoststated.checks.script import ScriptCheck
from hoststated.checks.send import BinarySendExpectCheck, SendExpectCheck
from hoststated.checks.tcp import TcpCheck
from hoststated.checks.tls import TlsCheck


def make_check(check_model: Any, target: Target) -> Any:
    kind = check_model.kind
    if kind == "tcp":
        return TcpCheck()
    if kind in ("http", "https"):
        return HttpCheck(path=check_model.path, host=check_model.host,
                         code=check_model.code, digest=check_model.digest,
                         body=check_model.body, method=check_model.method,
                         tls=kind == "https")
    if kind == "tls":
        return TlsCheck()
    if kind == "send":
        return SendExpectCheck(check_model.send, check_model.expect, tls=check_model.tls)
    if kind == "binary":
        return BinarySendExpectCheck(check_model.send, check_model.expect, tls=check_model.tls)
    if kind == "icmp":
        return IcmpCheck()
    if kind == "arp":                   # migrate (issue 14): hce_arp sends it
        if target.link is None:
            raise ValueError("check arp: no interface was found for the host at load")
        return ArpCheck(target.address, *target.link)
    if kind == "script":
        if getattr(check_model, "convention", "relayd") == "ldirectord":
            vaddr, vport = target.virtual or ("", "")
            return ScriptCheck(check_model.path, target.name or target.address, "ldirectord",
                               (vaddr, vport, target.address, str(target.port or 0)))
        return ScriptCheck(check_model.path, target.name or target.address)
    # protocol checks (dns, smtp, ...); imported on first use: some need optional libraries
    from hoststated.checks import registry
    return registry.make(check_model, target)


def check_name(check_model: Any) -> str:
    """relayd's table_check() words for log lines: "http code", "send expect"."""
    kind = check_model.kind
    if kind in ("http", "https"):
        what = "digest" if check_model.digest else ("body" if check_model.body else "code")
        return f"http {what}" + (" use tls" if kind == "https" else "")
    if kind == "send":
        return "send expect" + (" use tls" if check_model.tls else "")
    if kind == "binary":
        return "binary send expect" + (" use tls" if check_model.tls else "")
    return kind


__all__ = ["make_check", "check_name", "Conversation", "LibraryCheck", "Target"]
