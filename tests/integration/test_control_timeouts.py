"""The control server's clocks, on a real Unix socket (no root needed): a
client that idles is hung up on after the idle timeout, a client that keeps
talking is not, a monitor client may idle as long as it likes, and a client
that stops reading its replies is dropped without hurting the others."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from hoststated import control
from hoststated.control import ControlServer

# s; the busy client's margin is 2/3 of it: a stall of the test process
# past that (0.2 s at IDLE 0.3, a loaded box) let the idle timer fire in the
# same loop turn as the busy client's write, and hung up on it
IDLE = 1.0


async def answer(cmd):
    if cmd.words == ("show", "hosts"):
        # big enough that a client that does not read fills its socket buffers
        return {"hosts": [{"id": i, "name": f"192.0.2.{i % 250}", "pad": "x" * 200}
                          for i in range(3000)]}
    return {"cmd": " ".join(cmd.words)}


async def serve(tmp_path):
    path = str(tmp_path / "ctl.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    server = ControlServer(sock, answer, idle_timeout=IDLE)
    await server.start()
    return server, path


async def request(reader, writer, cmd: str) -> dict:
    writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
    await writer.drain()
    return json.loads(await asyncio.wait_for(reader.readline(), 5))


def test_idle_client_is_hung_up_on(tmp_path):
    async def go():
        server, path = await serve(tmp_path)
        try:
            idle_r, idle_w = await asyncio.open_unix_connection(path)
            busy_r, busy_w = await asyncio.open_unix_connection(path)
            mon_r, mon_w = await asyncio.open_unix_connection(path)
            assert (await request(mon_r, mon_w, "monitor"))["ok"]
            # the busy client asks something every IDLE/3, for 3 idle timeouts
            for _ in range(9):
                assert (await request(busy_r, busy_w, "show summary"))["ok"]
                await asyncio.sleep(IDLE / 3)
            # the idle one was closed: EOF, well before our own 5 s guard
            assert await asyncio.wait_for(idle_r.read(), 5) == b""
            # the monitor client is still there and gets an event
            server.broadcast({"event": "host", "id": 1, "status": "down"})
            ev = json.loads(await asyncio.wait_for(mon_r.readline(), 5))
            assert ev["status"] == "down"
            for w in (idle_w, busy_w, mon_w):
                w.close()
        finally:
            server.close()
    asyncio.run(go())


def test_client_that_does_not_read_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "WRITE_TIMEOUT", 0.5)

    async def go():
        server, path = await serve(tmp_path)
        try:
            stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(path)
            # many large requests, never reading a reply
            stalled.sendall(b'{"cmd": "show hosts"}\n' * 50)
            await asyncio.sleep(1.5)
            # the others are answered meanwhile and after
            r, w = await asyncio.open_unix_connection(path, limit=1 << 24)
            assert len((await request(r, w, "show hosts"))["data"]["hosts"]) == 3000
            w.close()
            # the stalled client was dropped: once we read, its stream ends
            stalled.setblocking(False)
            got = bytearray()
            loop = asyncio.get_running_loop()
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(stalled, 1 << 16), 5)
                if not chunk:
                    break
                got += chunk
            # some replies went out before it stalled, not all 50
            assert got.count(b"\n") < 50
            stalled.close()
        finally:
            server.close()
    asyncio.run(go())


@pytest.mark.parametrize("garbage", [b"\x00\xff\xff\xff\xff" * 4, b"{not json}\n"])
def test_garbage_then_carry_on(tmp_path, garbage):
    async def go():
        server, path = await serve(tmp_path)
        try:
            r, w = await asyncio.open_unix_connection(path)
            w.write(garbage)
            await w.drain()
            first = await asyncio.wait_for(r.read(1 << 16), 5)
            assert first                          # an error reply, not silence
            w.close()
            r2, w2 = await asyncio.open_unix_connection(path)
            assert (await request(r2, w2, "show summary"))["ok"]
            w2.close()
        finally:
            server.close()
    asyncio.run(go())
