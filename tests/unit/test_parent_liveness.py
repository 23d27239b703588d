"""The parent's heartbeat: each ready child gets PING(seq) and must answer
PONG(seq); one that goes silent for the limit is lost (one line, killed,
the daemon stops with status 1), and WATCHDOG=1 goes to systemd only while
every child answered. The children are played by coroutines on real
socketpairs and the real Channel; the intervals are shortened."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket

import pytest

from hoststated import parent as parent_mod
from hoststated.conf.load import load_text
from hoststated.ipc.channel import Channel
from hoststated.ipc.messages import MsgType
from hoststated.parent import Child, Parent

CONF = "engine none\ntable <t> { 198.51.100.11 }\n"


class FakePopen:
    def __init__(self):
        self.killed = False
        self.pid = 0

    def kill(self):
        self.killed = True


class Kid:
    """One child's end: answers every PING while `answering` is set."""

    def __init__(self, chan: Channel):
        self.chan = chan
        self.answering = True
        self.pings = 0

    async def run(self):
        while True:
            msg = await self.chan.recv()
            assert msg.type == MsgType.PING
            self.pings += 1
            if self.answering:
                await self.chan.send(MsgType.PONG, msg.payload)


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(parent_mod, "HEARTBEAT_INTERVAL", 0.05)
    monkeypatch.setattr(parent_mod, "HEARTBEAT_LIMIT", 0.15)
    sent: list[str] = []
    monkeypatch.setattr(parent_mod.proc, "notify_systemd", sent.append)
    return sent


def make_parent():
    args = argparse.Namespace(config_file="/etc/x.conf", verbose=0, debug=True,
                              defines={}, no_lookup=True)
    p = Parent(args, load_text(CONF, lookup=False), 65534, 65534, [], [])
    p._watchdog = True
    kids = {}
    for role in ("hce", "pfe"):
        a, b = socket.socketpair()
        p.children[role] = Child(role, FakePopen(), Channel(a, role))
        p._ready[role] = True
        kids[role] = Kid(Channel(b, "parent"))
    return p, kids


async def run_for(p: Parent, kids: dict, seconds: float):
    tasks = [asyncio.ensure_future(k.run()) for k in kids.values()]
    tasks += [asyncio.ensure_future(p._dispatch(c)) for c in p.children.values()]
    beat = asyncio.ensure_future(p._heartbeat())
    try:
        await asyncio.wait_for(p._stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    for t in (*tasks, beat):
        t.cancel()
    await asyncio.gather(*tasks, beat, return_exceptions=True)


def test_children_that_answer_keep_the_daemon_and_the_watchdog(fast):
    async def go():
        p, kids = make_parent()
        await run_for(p, kids, 0.6)
        assert not p._stop.is_set() and p.exit_status == 0
        assert all(k.pings >= 5 for k in kids.values())
        assert fast.count("WATCHDOG=1") >= 4
        assert not any(c.popen.killed for c in p.children.values())
    asyncio.run(go())


@pytest.mark.parametrize("role", ["hce", "pfe"])
def test_a_silent_child_is_lost_with_one_line(fast, caplog, role):
    async def go():
        p, kids = make_parent()
        kids[role].answering = False
        with caplog.at_level(logging.ERROR, logger="hoststated"):
            await run_for(p, kids, 2.0)
        assert p._stop.is_set() and p.exit_status == 1
        assert p.children[role].popen.killed
        other = "pfe" if role == "hce" else "hce"
        assert not p.children[other].popen.killed
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1 and re.fullmatch(rf"{role} did not answer for 0\.\d s: stopping",
                                                lines[0]), lines
        # the first beat's only (no PING was out yet): none once one went unanswered
        assert fast == ["WATCHDOG=1"]
    asyncio.run(go())


def test_a_child_applying_a_config_has_the_reload_deadline(fast, monkeypatch):
    monkeypatch.setattr(parent_mod, "RECONFIGURE_TIMEOUT", 0.5)

    async def go():
        p, kids = make_parent()
        kids["pfe"].answering = False
        loop = asyncio.get_running_loop()
        p.children["pfe"].reconfiguring = loop.time() + 0.5
        await run_for(p, kids, 0.4)
        assert not p._stop.is_set()         # busy applying, within its deadline
        await run_for(p, kids, 1.0)
        assert p._stop.is_set() and p.children["pfe"].popen.killed
    asyncio.run(go())


def test_a_pong_for_a_ping_never_sent_is_a_desync(fast):
    async def go():
        p, kids = make_parent()
        await kids["hce"].chan.send(MsgType.PONG, parent_mod.messages.Seq(99))
        with pytest.raises(parent_mod.ChannelError, match="PONG 99 from hce"):
            await asyncio.wait_for(p._dispatch(p.children["hce"]), 2)
    asyncio.run(go())
