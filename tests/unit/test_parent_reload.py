"""The parent's reload queue: a request during a reload runs after it,
requests waiting together are one reload, each caller gets the result of
the reload that covered its request. The reload itself is played by a
subclass whose reloads finish when the test says; the queue is the real
one. And the parent refuses a config path that is not a regular file."""

from __future__ import annotations

import argparse
import asyncio
import os

import pytest

from hoststated.conf.load import load_text
from hoststated.parent import Parent, not_regular

CONF = "engine none\ntable <t> { 198.51.100.11 }\n"


class Playing(Parent):
    def __init__(self):
        args = argparse.Namespace(config_file="/etc/x.conf", verbose=0, debug=True,
                                  defines={}, no_lookup=True)
        super().__init__(args, load_text(CONF, lookup=False), 65534, 65534, [], [])
        self.calls: list[str | None] = []
        self.release: asyncio.Queue = asyncio.Queue()

    async def reload(self, path):
        self.calls.append(path)
        return await self.release.get()      # the result the test hands out


def test_requests_during_a_reload_queue_and_coalesce():
    async def go():
        p = Playing()
        first = p.request_reload(None, "SIGHUP")
        await asyncio.sleep(0)
        assert p.calls == [None]              # running
        # a storm while it runs: one more reload covers all of them
        storm = [p.request_reload(None, "SIGHUP") for _ in range(19)]
        ctl = p.request_reload(None, "hoststatectl reload")
        load = p.request_reload("/tmp/other.conf", "hoststatectl load")
        await p.release.put(None)
        assert await first is None
        await asyncio.sleep(0)
        assert p.calls == [None, None]
        await p.release.put("x.conf:1:1: broken")
        for f in storm + [ctl]:
            assert await f == "x.conf:1:1: broken"     # the reload that covered it
        await asyncio.sleep(0)
        assert p.calls == [None, None, "/tmp/other.conf"]
        await p.release.put(None)
        assert await load is None
        await asyncio.sleep(0)
        assert p.calls == [None, None, "/tmp/other.conf"]   # nothing else ran
        assert not p._reloads
    asyncio.run(go())


def test_a_failing_reload_does_not_stop_the_queue():
    class Broken(Playing):
        async def reload(self, path):
            self.calls.append(path)
            if len(self.calls) == 1:
                raise RuntimeError("boom")
            return None

    async def go():
        p = Broken()
        a = p.request_reload(None, "SIGHUP")
        b = p.request_reload("/tmp/y.conf", "hoststatectl load")
        assert await a == "internal error: RuntimeError"
        assert await b is None
        assert p.calls == [None, "/tmp/y.conf"]
    asyncio.run(go())


def test_not_regular(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="a FIFO, not a regular file"):
        not_regular(str(fifo))
    with pytest.raises(OSError, match="a directory, not a regular file"):
        not_regular(str(tmp_path))
    with pytest.raises(OSError, match="a device, not a regular file"):
        not_regular("/dev/null")
    (tmp_path / "f.conf").write_text("")
    not_regular(str(tmp_path / "f.conf"))
    not_regular(str(tmp_path / "missing.conf"))      # left to the loader to report
