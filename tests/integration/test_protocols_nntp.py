"""check nntp against INN's innd (Debian's inn2), run as user news on a
free port with its run dir in a temp dir; `ctlinnd throttle` makes it
refuse readers with a 400 greeting (the "wrong" case).

./run setup installs inn2 on its own: its postinst fails on a machine
whose hostname has no domain; see ./run and tools/apt/protocols.txt."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from hoststated.conf.model import CheckService
from hoststated.states import HostError
from protocol_servers import Server, check_once, free_port, run, world_dir

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs innd as news)")]

INND = "/usr/lib/news/bin/innd"
CTLINND = "/usr/lib/news/bin/ctlinnd"


@pytest.fixture(scope="module")
def innd():
    if not (os.path.exists(INND) and os.path.exists("/etc/news/inn.conf")):
        pytest.skip("inn2 is not installed: ./run setup installs it")
    with world_dir("innd") as d:
        port = free_port()
        ours = {"bindaddress": "127.0.0.1", "port": str(port), "pathrun": f"{d}/run",
                "domain": "example.test"}
        lines = [ln for ln in open("/etc/news/inn.conf").read().splitlines()
                 if ln.split(":", 1)[0].strip() not in ours]
        conf = "\n".join(lines + [f"{k}: {v}" for k, v in ours.items()]) + "\n"
        (d / "run").mkdir()
        shutil.chown(d / "run", "news", "news")
        (d / "inn.conf").write_text(conf)
        env = {**os.environ, "INNCONF": str(d / "inn.conf")}
        srv = Server("innd", [INND, "-f", "-c", "0"], d, port, env=env, user="news")
        srv.env = env
        try:
            yield srv.start()
        finally:
            srv.stop()


def test_up(innd):
    v = check_once(CheckService(kind="nntp"), innd.port)
    assert (v.ok, v.error, v.detail) == (True, HostError.PROTOCOL_OK, "nntp"), v


def test_wrong_throttled(innd):
    ctl = ["env", f"INNCONF={innd.env['INNCONF']}", CTLINND]
    run([*ctl, "throttle", "hoststated test"], user="news")
    try:
        v = check_once(CheckService(kind="nntp"), innd.port)
    finally:
        run([*ctl, "go", "hoststated test"], user="news")
    assert (v.ok, v.error) == (False, HostError.PROTOCOL_FAIL)
    assert v.detail.startswith("nntp: greeting 400"), v


def test_down_after_stop(innd):
    innd.stop()
    v = check_once(CheckService(kind="nntp"), innd.port, timeout=2.0)
    assert (v.ok, v.error) == (False, HostError.TCP_CONNECT_FAIL), v
