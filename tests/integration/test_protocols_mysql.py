"""check mysql against MariaDB (Debian's mariadb-server), with a temp
datadir made by mariadb-install-db and a user made by an init file."""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, missing_programs, run

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs mariadbd)")]

PASSWORD = "s3cret-Mysql"
INIT = f"""\
CREATE DATABASE IF NOT EXISTS hsdb;
CREATE TABLE IF NOT EXISTS hsdb.backends (name VARCHAR(32));
CREATE USER IF NOT EXISTS 'hs'@'%' IDENTIFIED BY '{PASSWORD}';
GRANT SELECT ON hsdb.* TO 'hs'@'%';
"""


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    if why := missing_programs("mariadbd", "mariadb-install-db"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("mariadb")
    run(["mariadb-install-db", "--no-defaults", f"--datadir={d}/data", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"])
    (d / "init.sql").write_text(INIT)
    port = free_port()
    srv = Server("mariadbd", [
        "mariadbd", "--no-defaults", f"--datadir={d}/data", f"--socket={d}/sock",
        f"--pid-file={d}/pid", f"--port={port}", "--bind-address=127.0.0.1", "--user=root",
        "--skip-name-resolve", f"--init-file={d}/init.sql", "--innodb-buffer-pool-size=16M",
        "--skip-log-bin", f"--log-error={d}/error.log"], d, port)
    try:
        yield srv.start()
    finally:
        srv.stop()


def mysql(**kw) -> CheckService:
    return CheckService(kind="mysql", **{"user": "hs", "password": PASSWORD, **kw})


def test_up(mariadb):
    v = check_once(mysql(), mariadb.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "mysql: query returned a row")


def test_up_database_and_query(mariadb):
    v = check_once(mysql(database="hsdb", sql="SELECT COUNT(*) FROM backends"), mariadb.port)
    assert v.ok, v


def test_wrong_password(mariadb):
    v = check_once(mysql(password="wrong-pw-123"), mariadb.port)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail.startswith("mysql: authentication failed: (1045) Access denied for user 'hs'@")
    assert "wrong-pw-123" not in v.detail and PASSWORD not in v.detail


def test_wrong_no_rows(mariadb):
    v = check_once(mysql(database="hsdb", sql="SELECT name FROM backends"), mariadb.port)
    assert (v.ok, v.detail) == (False, "mysql: query returned no rows")


def test_wrong_query(mariadb):
    v = check_once(mysql(sql="SELECT * FROM nosuch.t"), mariadb.port)
    assert not v.ok and v.detail.startswith("mysql: query failed: (1142)") or \
        v.detail.startswith("mysql: query failed: (1146)"), v


def test_down_after_stop(mariadb):
    mariadb.stop()
    v = check_once(mysql(), mariadb.port, timeout=3.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
    assert "Connection refused" in v.detail, v
