"""check pgsql against PostgreSQL 15 (Debian's postgresql), initdb in a temp
dir, run as user postgres, with SCRAM passwords and TLS on."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, run, self_signed, world_dir

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs postgres as postgres)")]

PASSWORD = "s3cret-Pg"


def pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("not installed: postgresql (tools/apt/protocols.txt)")
    with world_dir("pgsql") as d:
        yield from _postgres(d, bindir)


def _postgres(d, bindir):
    shutil.chown(d, "postgres", "postgres")
    (d / "pw").write_text(PASSWORD + "\n")
    shutil.chown(d / "pw", "postgres")
    run([f"{bindir}/initdb", "-D", f"{d}/data", "-U", "hs", f"--pwfile={d}/pw",
         "-A", "scram-sha-256", "--no-sync", "-E", "UTF8"], user="postgres")
    cert, key = self_signed(d)
    for f in (cert, key):
        shutil.chown(f, "postgres")
        os.chmod(f, 0o600)
    port = free_port()
    srv = Server("postgres", [
        f"{bindir}/postgres", "-D", f"{d}/data", "-p", str(port), "-k", str(d),
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "ssl=on",
        "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}",
        "-c", "shared_buffers=16MB"], d, port, user="postgres")
    try:
        yield srv.start()
    finally:
        srv.stop()


def pgsql(**kw) -> CheckService:
    return CheckService(kind="pgsql", **{"user": "hs", "password": PASSWORD,
                                         "database": "postgres", **kw})


def test_up(postgres):
    v = check_once(pgsql(), postgres.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "pgsql: query returned a row")


def test_up_sslrequest(postgres):
    v = check_once(pgsql(starttls=True, sql="SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl"),
                   postgres.port)
    assert v.ok, v


def test_wrong_password(postgres):
    v = check_once(pgsql(password="wrong-pw-123"), postgres.port)
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail == 'pgsql: authentication failed: password authentication failed for user "hs"'


def test_wrong_database(postgres):
    v = check_once(pgsql(database="nosuch"), postgres.port)
    assert (v.ok, v.detail) == (False, 'pgsql: login failed: database "nosuch" does not exist')


def test_wrong_no_rows(postgres):
    v = check_once(pgsql(sql="SELECT 1 WHERE false"), postgres.port)
    assert (v.ok, v.detail) == (False, "pgsql: query returned no rows")


def test_down_after_stop(postgres):
    postgres.stop()
    v = check_once(pgsql(), postgres.port, timeout=3.0)
    assert (v.ok, v.error, v.detail) == (False, HostError.TCP_CONNECT_FAIL,
                                         "pgsql: Connection refused")
