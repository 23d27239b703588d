"""ldap and ldaps checks: optional StartTLS, a bind (anonymous unless a DN
is given) and an optional search that must find an entry (ldirectord's
`ldap`; HAProxy's ldap-check only binds anonymously).

Spoken through ldap3, which does its own blocking I/O: run in a worker
thread with ldap3's connect and receive timeouts set (ldirectord's LDAP
check could stall its whole loop; this one cannot)."""

from __future__ import annotations

import asyncio
import math
import ssl

from hoststated.checks.base import Target, Verdict, failed, passed
from hoststated.checks.base import quote
from hoststated.checks.base import transport_verdict
from hoststated.states import HostError


class LdapCheck:
    def __init__(self, *, bind_dn: str | None = None, password: str | None = None,
                 base: str | None = None, filter: str | None = None,
                 starttls: bool = False, tls: bool = False, proto: str = "ldap",
                 timeout: float = 5.0):
        self.bind_dn = bind_dn
        self._password = password
        self.base = base
        self.filter = filter
        self.starttls = starttls
        self.tls = tls
        self.proto = proto
        self.timeout = timeout
        self.default_port = 636 if tls else 389

    async def run(self, target: Target) -> Verdict:
        return await asyncio.to_thread(self.run_blocking, target)

    def run_blocking(self, target: Target) -> Verdict:
        import ldap3
        from ldap3.core.exceptions import (LDAPException, LDAPSocketOpenError,
                                           LDAPSocketReceiveError, LDAPStartTLSError)
        p = self.proto
        secs = max(1, math.ceil(self.timeout))   # ldap3 packs whole seconds into SO_RCVTIMEO
        tls = ldap3.Tls(validate=ssl.CERT_NONE) if (self.tls or self.starttls) else None
        server = ldap3.Server(target.address, port=target.port or self.default_port,
                              use_ssl=self.tls, tls=tls, get_info=ldap3.NONE,
                              connect_timeout=secs)
        conn = ldap3.Connection(server, user=self.bind_dn, password=self._password,
                                receive_timeout=secs, auto_bind=ldap3.AUTO_BIND_NONE,
                                raise_exceptions=False, read_only=True)
        try:
            try:
                conn.open()
            except LDAPSocketOpenError as e:
                return transport_verdict(p, e)
            if self.starttls:
                try:
                    if not conn.start_tls():
                        return failed(HostError.PROTOCOL_FAIL,
                                      f"{p}: StartTLS refused: {self._result(conn)}")
                except LDAPStartTLSError as e:
                    return failed(HostError.PROTOCOL_FAIL, f"{p}: StartTLS failed: {quote(str(e))}")
            if not conn.bind():
                return failed(HostError.PROTOCOL_FAIL, f"{p}: bind failed: {self._result(conn)}")
            if self.base is None:
                return passed(HostError.PROTOCOL_OK, f"{p}: bind ok")
            scope = ldap3.SUBTREE if self.filter else ldap3.BASE
            if not conn.search(self.base, self.filter or "(objectClass=*)", search_scope=scope,
                               attributes=[], size_limit=1):
                code = (conn.result or {}).get("result")
                if code == 4:       # sizeLimitExceeded: more than the one entry asked for
                    return passed(HostError.PROTOCOL_OK, f"{p}: search found entries")
                if code == 0:       # success, but nothing matched
                    return failed(HostError.PROTOCOL_FAIL,
                                  f"{p}: search of {self.base} found no entry")
                return failed(HostError.PROTOCOL_FAIL,
                              f"{p}: search of {self.base} failed: {self._result(conn)}")
            if not conn.entries:
                return failed(HostError.PROTOCOL_FAIL, f"{p}: search of {self.base} found no entry")
            return passed(HostError.PROTOCOL_OK, f"{p}: search found {conn.entries[0].entry_dn}")
        except LDAPSocketReceiveError as e:
            return failed(HostError.TCP_READ_TIMEOUT if "timed out" in str(e) else
                          HostError.TCP_READ_FAIL, f"{p}: {quote(str(e))}")
        except LDAPException as e:
            return failed(HostError.PROTOCOL_FAIL, f"{p}: {quote(str(e))}")
        except (ssl.SSLError, OSError) as e:
            return failed(HostError.TLS_CONNECT_ERROR if isinstance(e, ssl.SSLError)
                          else HostError.TCP_READ_FAIL, f"{p}: {quote(str(e))}")
        except Exception as e:      # the library's own failure: still a verdict naming ldap
            return failed(HostError.PROTOCOL_FAIL, f"{p}: {type(e).__name__}: {quote(str(e))}")
        finally:
            try:
                conn.unbind()
            except Exception:       # closing a broken connection: nothing to report
                pass

    @staticmethod
    def _result(conn) -> str:
        r = conn.result or {}
        desc = r.get("description", "")
        msg = r.get("message", "")
        return quote(f"{desc} {msg}".strip() or "no result")
