"""ipc.channel's post(): an encoded frame written at once, for the host
states hce writes to the relays without a task switch. It refuses a channel
not yet open (the caller then queues and send()s); frames go out in the
order they are written: a post at once, a send() when its task runs, which
is why hce posts only while nothing it queued for a relay is unwritten."""

from __future__ import annotations

import asyncio
import socket

from hoststated.ipc.channel import Channel
from hoststated.ipc.messages import HostStatusBatch, MsgType
from hoststated.states import HostStatus


def batch(n: int) -> HostStatusBatch:
    return HostStatusBatch(1, {n: HostStatus.UP})


def test_post_refuses_a_channel_not_open_then_keeps_order_with_send():
    async def go():
        a, b = socket.socketpair()
        ours, theirs = Channel(a, "relay 1"), Channel(b, "hce")
        assert not ours.post(Channel.frame(MsgType.HOST_STATUS, batch(1)))
        await ours.send(MsgType.HOST_STATUS, batch(1))        # opens it
        assert ours.post(Channel.frame(MsgType.HOST_STATUS, batch(2)))
        sending = asyncio.ensure_future(ours.send(MsgType.HOST_STATUS, batch(3)))
        assert ours.post(Channel.frame(MsgType.HOST_STATUS, batch(4)))
        await sending
        got = [list((await theirs.recv()).payload.statuses) for _ in range(4)]
        ours.close()
        assert not ours.post(Channel.frame(MsgType.HOST_STATUS, batch(5)))
        theirs.close()
        return got
    # send(3) writes when its task runs, after post(4) was written
    assert asyncio.run(go()) == [[1], [2], [4], [3]]
