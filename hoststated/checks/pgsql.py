"""pgsql check: log in (optionally after SSLRequest), run a query (default
`SELECT 1`), expect a row (ldirectord's `pgsql`; HAProxy's pgsql-check only
greets).

Spoken through pg8000 (pure Python, SCRAM-SHA-256 and md5 auth), which does
its own blocking I/O: run in a worker thread with pg8000's socket timeout."""

from __future__ import annotations

import asyncio
import ssl

from hoststated.checks.base import Target, Verdict, failed, passed
from hoststated.checks.base import quote
from hoststated.checks.base import transport_verdict
from hoststated.states import HostError

DEFAULT_QUERY = "SELECT 1"
AUTH_SQLSTATES = {"28P01", "28000"}        # invalid_password, invalid_authorization


def server_error(e: BaseException) -> tuple[str, str]:
    """(SQLSTATE, message) of a pg8000 DatabaseError, whose args[0] is the
    ErrorResponse as a dict of field codes."""
    fields = e.args[0] if e.args and isinstance(e.args[0], dict) else {}
    return fields.get("C", ""), fields.get("M", str(e))


class PgsqlCheck:
    default_port = 5432

    def __init__(self, user: str, password: str | None = None, *,
                 database: str | None = None, sql: str | None = None,
                 starttls: bool = False, timeout: float = 5.0):
        self.user = user
        self._password = password
        self.database = database
        self.sql = sql or DEFAULT_QUERY
        self.starttls = starttls
        self.timeout = timeout

    async def run(self, target: Target) -> Verdict:
        return await asyncio.to_thread(self.run_blocking, target)

    def run_blocking(self, target: Target) -> Verdict:
        import pg8000.native
        from pg8000.exceptions import DatabaseError, InterfaceError
        ctx = None
        if self.starttls:
            # like relayd's `check tls`: the handshake is checked, not the chain
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            conn = pg8000.native.Connection(
                self.user, host=target.address, port=target.port or self.default_port,
                database=self.database, password=self._password, timeout=self.timeout,
                ssl_context=ctx, application_name="hoststated")
        except DatabaseError as e:
            state, msg = server_error(e)
            what = "authentication failed" if state in AUTH_SQLSTATES else "login failed"
            return failed(HostError.PROTOCOL_FAIL, f"pgsql: {what}: {quote(msg)}")
        except InterfaceError as e:
            text = str(e)
            cause = e.__cause__ or e.__context__
            if "SSL" in text or isinstance(cause, ssl.SSLError):
                return failed(HostError.PROTOCOL_FAIL, f"pgsql: {quote(text)}")
            if isinstance(cause, OSError) or "connection" in text.lower():
                return transport_verdict("pgsql", cause or e)
            return failed(HostError.PROTOCOL_FAIL, f"pgsql: {quote(text)}")
        except OSError as e:
            return transport_verdict("pgsql", e)
        try:
            rows = conn.run(self.sql)
        except DatabaseError as e:
            return failed(HostError.PROTOCOL_FAIL, f"pgsql: query failed: {quote(server_error(e)[1])}")
        except (InterfaceError, OSError) as e:
            return failed(HostError.TCP_READ_FAIL, f"pgsql: {quote(str(e))}")
        finally:
            try:
                conn.close()
            except Exception:       # closing a broken connection: nothing to report
                pass
        if not rows:
            return failed(HostError.PROTOCOL_FAIL, "pgsql: query returned no rows")
        return passed(HostError.PROTOCOL_OK, "pgsql: query returned a row")
