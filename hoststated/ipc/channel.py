"""The asyncio driver of ipc.codec over one end of a socketpair.

It only moves bytes: reads feed the Decoder, each frame is checked against
the schema (messages.from_wire), sends are encoded frames. Between daemon
processes every error here is fatal to the caller: EOF means the peer died,
a bad frame or message means the processes are out of sync.
"""

from __future__ import annotations

import asyncio
import socket

from hoststated.ipc import codec, messages
from hoststated.ipc.messages import Message, MsgType

READ_SIZE = 256 << 10


class ChannelClosed(Exception):
    """The peer closed its end (it exited or died)."""


class ChannelError(Exception):
    """The peer sent something outside the schema: desync, fatal."""


class Channel:
    def __init__(self, sock: socket.socket, peer: str):
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self._decoder = codec.Decoder()
        self._inbox: list[Message] = []
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._send_lock = asyncio.Lock()
        self._opening: asyncio.Future | None = None

    async def _open(self) -> None:
        # once, even when a reader and a sender task start together
        if self._opening is None:
            self._opening = asyncio.ensure_future(
                asyncio.open_unix_connection(sock=self.sock, limit=READ_SIZE))
        if self._reader is None:
            self._reader, self._writer = await asyncio.shield(self._opening)

    async def recv(self) -> Message:
        await self._open()
        while not self._inbox:
            try:
                data = await self._reader.read(READ_SIZE)
            except ConnectionError as e:    # it died with our data unread: a reset
                raise ChannelClosed(f"{self.peer} closed the channel ({e.strerror or e})") from None
            if not data:
                raise ChannelClosed(f"{self.peer} closed the channel")
            try:
                frames = self._decoder.feed(data)
            except codec.FrameError as e:
                raise ChannelError(f"from {self.peer}: {e}") from None
            for frame in frames:
                try:
                    self._inbox.append(messages.from_wire(frame))
                except messages.MessageError as e:
                    raise ChannelError(f"from {self.peer}: {e}") from None
        return self._inbox.pop(0)

    def take(self, mtype: MsgType) -> Message | None:
        """The next message if it has been read already (recv reads all the
        frames that have come) and is an mtype, else None; never waits. A
        reader that can merge a run of one type takes them this way."""
        if self._inbox and self._inbox[0].type == mtype:
            return self._inbox.pop(0)
        return None

    async def send(self, mtype: MsgType, payload=None) -> None:
        msg = Message(mtype, payload if payload is not None else messages.Empty())
        await self._open()
        data = codec.encode(msg.to_wire())
        async with self._send_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as e:
                raise ChannelClosed(f"{self.peer}: {e}") from None

    def post(self, data: bytes) -> bool:
        """Write an encoded frame now, without waiting for the peer to read
        (frame()): False when the channel is not open yet or closing (send
        then). Small messages whose delay counts (host states to the
        relays). A frame goes out whole when posted, a send() when its
        task runs: a caller mixing them keeps the order itself (hce posts
        only while nothing it queued for that channel is unwritten)."""
        w = self._writer
        if w is None or w.is_closing():
            return False
        w.write(data)
        return True

    @staticmethod
    def frame(mtype: MsgType, payload) -> bytes:
        return codec.encode(Message(mtype, payload).to_wire())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()


def recv_blocking(sock: socket.socket, max_frame: int = messages.MAX_FRAME) -> Message:
    """Read exactly one message, byte-exact, before the event loop runs (a
    child's INIT): whatever the parent sends next stays in the socket."""
    def read_exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = sock.recv(n - len(buf))
            if not data:
                raise ChannelClosed("parent closed the channel before INIT")
            buf += data
        return bytes(buf)

    (length,) = codec.HEADER.unpack(read_exactly(codec.HEADER.size))
    if length > max_frame:
        raise ChannelError(f"frame of {length} bytes exceeds the limit of {max_frame}")
    try:
        return messages.from_wire(codec.decode_body(read_exactly(length)))
    except (codec.FrameError, messages.MessageError) as e:
        raise ChannelError(str(e)) from None


async def until_one_ends(tasks: dict[asyncio.Future, str], logger,
                         vital: tuple[str, ...] = ()) -> str | None:
    """A child's main loop: wait until the first of its tasks ends and say
    why that is fatal, or None for a clean end (a peer closed its channel,
    the stop signal). A task named in `vital` may not end even cleanly.
    The caller cancels the rest."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    fatal = None
    for t in done:
        exc = t.exception()
        if isinstance(exc, ChannelClosed):
            logger.info("%s", exc)
        elif isinstance(exc, ChannelError):
            fatal = f"desynchronized: {exc}"
        elif exc is not None:
            fatal = f"{tasks[t]}: {type(exc).__name__}: {exc}"
            logger.debug("traceback", exc_info=exc)
        elif tasks[t] in vital:
            fatal = f"{tasks[t]} stopped"
    return fatal
