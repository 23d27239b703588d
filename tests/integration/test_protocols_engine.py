"""Protocol checks from a config file, through the real CheckEngine, against
real servers: the config engineer's grammar -> services.make -> the runner
-> host state with relayd's error word and the protocol's detail.
redis-server for a line protocol, MariaDB for a library check."""

from __future__ import annotations

import asyncio
import os

import pytest

from hoststated.conf.load import load_text
from hoststated.hce_sched import CheckEngine
from hoststated.states import HostError, HostStatus
from protocol_servers import Server, free_port, missing_programs, run

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs servers)")]

PASSWORD = "s3cret-Engine"


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    if why := missing_programs("redis-server"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("redis-engine")
    port = free_port()
    srv = Server("redis-server", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
        "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(d),
        "--logfile", ""], d, port)
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    if why := missing_programs("mariadbd", "mariadb-install-db"):
        pytest.skip(why)
    d = tmp_path_factory.mktemp("mariadb-engine")
    run(["mariadb-install-db", "--no-defaults", f"--datadir={d}/data", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"])
    (d / "init.sql").write_text(
        f"CREATE USER IF NOT EXISTS 'hs'@'%' IDENTIFIED BY '{PASSWORD}';\n")
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


def test_engine_reports_protocol_verdicts(redis, mariadb):
    conf = f"""
engine none
interval 3
timeout 2000
table <cache> {{ 127.0.0.1 }}
table <cache2> {{ 127.0.0.1 }}
table <db> {{ 127.0.0.1 }}
table <db2> {{ 127.0.0.1 }}
redirect "cache" {{
  listen on 127.0.0.1 port 16379
  forward to <cache> port {redis.port} check redis password "{PASSWORD}"
}}
redirect "cache-bad" {{
  listen on 127.0.0.1 port 16380
  forward to <cache2> port {redis.port} check redis password "wrong-pw-123"
}}
redirect "db" {{
  listen on 127.0.0.1 port 13306
  forward to <db> port {mariadb.port} check mysql user "hs" password "{PASSWORD}"
}}
redirect "db-bad" {{
  listen on 127.0.0.1 port 13307
  forward to <db2> port {mariadb.port} check mysql user "hs" password "wrong-pw-123"
}}
"""
    config = load_text(conf, lookup=False)

    async def main():
        eng = CheckEngine(config, lambda report: None)
        task = asyncio.create_task(eng.run())
        for _ in range(300):
            if all(h.status is not HostStatus.UNKNOWN for h in eng.hosts()):
                break
            await asyncio.sleep(0.02)
        reports = {h.table: h for h in eng.hosts()}
        eng.stop()
        await task
        return reports

    r = asyncio.run(main())
    cache, cache_bad = r[f"cache:{redis.port}"], r[f"cache2:{redis.port}"]
    db, db_bad = r[f"db:{mariadb.port}"], r[f"db2:{mariadb.port}"]
    assert cache.status is HostStatus.UP and db.status is HostStatus.UP, (cache, db)
    assert (cache_bad.status, cache_bad.error) == (HostStatus.DOWN, HostError.PROTOCOL_FAIL)
    assert cache_bad.detail.startswith("redis: AUTH failed: -WRONGPASS")
    assert (db_bad.status, db_bad.error) == (HostStatus.DOWN, HostError.PROTOCOL_FAIL)
    assert db_bad.detail.startswith("mysql: authentication failed: (1045)")
    for h in r.values():
        assert PASSWORD not in h.detail and "wrong-pw-123" not in h.detail
