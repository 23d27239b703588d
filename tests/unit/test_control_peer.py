"""The peer's uid (SO_PEERCRED) reaches the command handler, and hce's
`load` (a file the parent reads as root) answers root only: a real
ControlServer on a Unix socket, real clients as root and as uid 65534."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from hoststated import control
from hoststated.hce import Hce

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv (a client of another uid)")

NOBODY = 65534
CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"cmd": sys.argv[2]}).encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
sys.stdout.write(buf.decode())
"""


async def ask(path: str, cmd: str, uid: int) -> dict:
    argv = [sys.executable, "-c", CLIENT, path, cmd]
    if uid != 0:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    p = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(p.communicate(), 30)
    return json.loads(out)


@pytest.fixture
def tmp_path():
    # pytest's tmp_path is under a 0700 directory: uid 65534 must reach the socket
    d = tempfile.mkdtemp(prefix="hs-peer-")
    os.chmod(d, 0o711)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def serve(tmp_path, handler, **kw):
    path = str(tmp_path / "ctl.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    return path, control.ControlServer(sock, handler, **kw)


@pytest.mark.parametrize("restricted", [False, True])
def test_the_handler_knows_who_asks(tmp_path, restricted):
    async def who(cmd):
        return {"uid": control.PEER_UID.get()}

    async def go():
        path, server = serve(tmp_path, who, restricted=restricted)
        await server.start()
        try:
            return [await ask(path, "show summary", uid) for uid in (0, NOBODY, 0)]
        finally:
            server.close()
    got = asyncio.run(go())
    assert [r["data"]["uid"] for r in got] == [0, NOBODY, 0], got
    assert control.PEER_UID.get() is None          # never set outside a client's task


def test_load_is_for_root_only(tmp_path):
    loads = []

    async def reload(path):
        loads.append(path)
        return {"generation": 2}
    hce = SimpleNamespace(answers=SimpleNamespace(invalidate=lambda: None), _reload=reload)

    async def go():
        path, server = serve(tmp_path, functools.partial(Hce.command, hce))
        await server.start()
        try:
            return (await ask(path, "load /etc/shadow", NOBODY),
                    await ask(path, "reload", NOBODY),
                    await ask(path, "load /etc/hoststated.conf", 0))
        finally:
            server.close()
    refused, reloaded, loaded = asyncio.run(go())
    assert refused == {"ok": False, "error": {
        "code": "forbidden",
        "message": f"load: only root may load a file, which the daemon reads as root "
                   f"(this client runs as uid {NOBODY})"}}, refused
    assert reloaded == {"ok": True, "data": {"generation": 2}}, reloaded    # its own file
    assert loaded == {"ok": True, "data": {"generation": 2}}, loaded
    assert loads == [None, "/etc/hoststated.conf"]
