"""mysql check: log in, run a query (default `SELECT 1`), expect a row
(ldirectord's `mysql`; HAProxy's mysql-check only greets).

Spoken through PyMySQL, which does its own blocking I/O: the check runs it
in a worker thread (asyncio.to_thread) with PyMySQL's own connect, read and
write timeouts set, so the event loop never blocks and the thread ends."""

from __future__ import annotations

import asyncio
import math

from hoststated.checks.base import Target, Verdict, failed, passed, quote, transport_verdict
from hoststated.states import HostError

DEFAULT_QUERY = "SELECT 1"

# PyMySQL client error numbers (CR_*) meaning the transport failed
CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, CR_SERVER_GONE, CR_SERVER_LOST = 2002, 2003, 2006, 2013
ER_ACCESS_DENIED, ER_DBACCESS_DENIED, ER_BAD_DB = 1045, 1044, 1049


class MysqlCheck:
    default_port = 3306

    def __init__(self, user: str, password: str | None = None, *,
                 database: str | None = None, sql: str | None = None,
                 timeout: float = 5.0):
        self.user = user
        self._password = password
        self.database = database
        self.sql = sql or DEFAULT_QUERY
        self.timeout = timeout

    async def run(self, target: Target) -> Verdict:
        return await asyncio.to_thread(self.run_blocking, target)

    def run_blocking(self, target: Target) -> Verdict:
        import pymysql
        secs = max(1, math.ceil(self.timeout))     # PyMySQL wants whole seconds for connect
        try:
            conn = pymysql.connect(host=target.address, port=target.port or self.default_port,
                                   user=self.user, password=self._password or "",
                                   database=self.database, connect_timeout=secs,
                                   read_timeout=self.timeout, write_timeout=self.timeout,
                                   autocommit=True)
        except pymysql.err.OperationalError as e:
            code = e.args[0] if e.args else 0
            if code in (CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR):
                return transport_verdict("mysql", e)
            if code in (CR_SERVER_GONE, CR_SERVER_LOST):
                return failed(HostError.TCP_READ_FAIL, f"mysql: {quote(str(e))}")
            what = "authentication failed" if code in (ER_ACCESS_DENIED, ER_DBACCESS_DENIED) \
                else "login failed"
            return failed(HostError.PROTOCOL_FAIL, f"mysql: {what}: {self._message(e)}")
        except pymysql.err.MySQLError as e:
            return failed(HostError.PROTOCOL_FAIL, f"mysql: login failed: {self._message(e)}")
        except OSError as e:
            return transport_verdict("mysql", e)
        try:
            with conn.cursor() as cur:
                cur.execute(self.sql)
                row = cur.fetchone()
        except pymysql.err.MySQLError as e:
            return failed(HostError.PROTOCOL_FAIL, f"mysql: query failed: {self._message(e)}")
        except OSError as e:
            return failed(HostError.TCP_READ_FAIL, f"mysql: {quote(str(e))}")
        finally:
            try:
                conn.close()
            except Exception:       # closing a broken connection: nothing to report
                pass
        if row is None:
            return failed(HostError.PROTOCOL_FAIL, "mysql: query returned no rows")
        return passed(HostError.PROTOCOL_OK, "mysql: query returned a row")

    @staticmethod
    def _message(e: BaseException) -> str:
        args = getattr(e, "args", ())
        if len(args) >= 2:
            return quote(f"({args[0]}) {args[1]}")
        return quote(str(e))
