"""ipc.channel over a real socketpair, and pfe's checks of what hce sends:
desync is fatal. (No root needed; sockets, so not a unit test.)"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from hoststated.conf.load import load_text
from hoststated.ipc import codec, messages
from hoststated.ipc.channel import Channel, ChannelClosed, ChannelError, recv_blocking
from hoststated.ipc.messages import HostStatusBatch, MsgType, RedirectState
from hoststated.parent import wire_config
from hoststated.pfe import Pfe
from hoststated.states import HostStatus

CONF = """
engine none
table <web> { 198.51.100.11, 198.51.100.12 }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check tcp
}
"""


def run(coro):
    return asyncio.run(coro)


def test_channel_roundtrip_and_eof():
    async def go():
        a, b = socket.socketpair()
        ca, cb = Channel(a, "a"), Channel(b, "b")
        await ca.send(MsgType.HOST_STATUS, HostStatusBatch(1, {1: HostStatus.UP}))
        await ca.send(MsgType.SHUTDOWN)
        m1, m2 = await cb.recv(), await cb.recv()
        assert m1.payload.statuses == {1: "up"} and m2.type == MsgType.SHUTDOWN
        assert type(m1.payload.statuses[1]) is HostStatus      # pfe gets the enum
        ca.close()
        with pytest.raises(ChannelClosed):
            await cb.recv()
    run(go())


@pytest.mark.parametrize("raw", [
    b"\xff\xff\xff\xff",                                    # oversize
    struct.pack(">I", 3) + b"\xc1\xc1\xc1",                 # not msgpack
    codec.encode([99, {}]),                                 # unknown type
    codec.encode([int(MsgType.HOST_STATUS), {"generation": "1", "statuses": {}}]),
])
def test_channel_garbage_is_desync(raw):
    async def go():
        a, b = socket.socketpair()
        a.sendall(raw)
        with pytest.raises(ChannelError):
            await Channel(b, "peer").recv()
        a.close()
    run(go())


def test_recv_blocking_reads_exactly_one_message():
    a, b = socket.socketpair()
    init = messages.Message(MsgType.INIT, messages.Init({}, 1, 65534, 65534))
    a.sendall(codec.encode(init.to_wire()) + codec.encode([int(MsgType.SHUTDOWN), {}]))
    assert recv_blocking(b) == init
    rest = b.recv(100)
    assert codec.Decoder().feed(rest) == [[int(MsgType.SHUTDOWN), {}]]


def make_pfe():
    config = load_text(CONF, lookup=False)
    init = messages.Init(wire_config(config), 1, 65534, 65534)
    return Pfe(None, None, init)


def test_pfe_accepts_valid_statuses():
    p = make_pfe()
    assert p._check_statuses(HostStatusBatch(1, {1: "up", 2: "down"})) == {
        1: HostStatus.UP, 2: HostStatus.DOWN}


def test_pfe_ignores_stale_generation():
    p = make_pfe()
    p.generation = 2
    assert p._check_statuses(HostStatusBatch(1, {99: "up"})) is None


@pytest.mark.parametrize("batch, why", [
    (HostStatusBatch(1, {99: "up"}), "unknown host id 99"),
    (HostStatusBatch(1, {1: "sideways"}), "invalid status"),
    (HostStatusBatch(5, {1: "up"}), "generation 5"),
])
def test_pfe_desync_is_fatal(batch, why):
    with pytest.raises(ChannelError, match=why):
        make_pfe()._check_statuses(batch)


def test_pfe_unknown_redirect_is_fatal():
    async def go():
        a, b = socket.socketpair()
        p = make_pfe()
        p.hce = Channel(b, "hce")
        await Channel(a, "pfe").send(MsgType.REDIRECT_STATE, RedirectState(1, ["nosuch"]))
        with pytest.raises(ChannelError, match="unknown redirect nosuch"):
            await p._dispatch_hce()
    run(go())


def test_wire_config_roundtrips_with_secrets():
    from hoststated.conf.model import Config
    config = load_text(CONF, lookup=False)
    data = codec.Decoder().feed(codec.encode(wire_config(config)))[0]
    assert Config.model_validate(data) == config
