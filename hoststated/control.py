"""The control socket server, run inside hce (the parent binds the socket as
root and passes the listening fd).

One socket, two encodings, chosen by the client's first byte: `{` means JSON
lines, anything else msgpack frames (ipc.codec). Each request is answered in
order on its connection. Bad input is the client's problem, never ours: a
request that is not one gets an error reply; bytes we cannot frame, an
oversize frame, a client that idles or does not read its replies get the
connection closed. Per-client buffers are bounded, so hundreds of clients at
once cost little.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable

from hoststated import log
from hoststated.ipc import codec, messages
from hoststated.ipc.messages import Command, CommandError, ErrorCode

logger = log.get("control")

IDLE_TIMEOUT = 60.0          # s without a request (monitor clients excepted)
WRITE_TIMEOUT = 10.0         # s for a client to take a reply
MAX_CLIENTS = 2048
MONITOR_QUEUE = 4096         # events buffered per monitor client before we drop it
READ_SIZE = 64 << 10

Handler = Callable[[Command], Awaitable[Any]]


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.json: bool | None = None
        self.decoder: codec.Decoder | codec.LineDecoder | None = None
        self.events: asyncio.Queue | None = None     # set once the client monitors

    def encode(self, obj: Any) -> bytes:
        if self.json:
            return codec.encode_line(obj)
        return codec.encode(obj, messages.MAX_CTL_REPLY)

    async def send(self, obj: Any) -> None:
        self.writer.write(self.encode(obj))
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)


class ControlServer:
    def __init__(self, sock: socket.socket, handler: Handler, *, restricted: bool = False,
                 idle_timeout: float = IDLE_TIMEOUT):
        self.sock = sock
        self.handler = handler
        self.restricted = restricted
        self.idle_timeout = idle_timeout
        self.clients: set[_Client] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        self.server = await asyncio.start_unix_server(self._serve, sock=self.sock,
                                                      limit=READ_SIZE, backlog=1024)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.clients):
            c.writer.close()

    def broadcast(self, ev: dict) -> None:
        """Queue an event for every monitor client; a client that lets its
        queue fill is too slow and is disconnected."""
        for c in list(self.clients):
            if c.events is None:
                continue
            try:
                c.events.put_nowait(ev)
            except asyncio.QueueFull:
                logger.info("monitor client too slow, disconnected")
                c.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(reader, writer)
        if len(self.clients) >= MAX_CLIENTS:
            writer.close()
            return
        self.clients.add(client)
        try:
            await self._converse(client)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass                                   # the client went away or stalled
        except asyncio.CancelledError:
            raise
        except Exception as e:                     # never let one client hurt the rest
            logger.error("control client: %s: %s", type(e).__name__, e)
            logger.debug("traceback", exc_info=True)
        finally:
            self.clients.discard(client)
            writer.close()

    async def _converse(self, client: _Client) -> None:
        while True:
            timeout = None if client.events is not None else self.idle_timeout
            data = await asyncio.wait_for(client.reader.read(READ_SIZE), timeout)
            if not data:
                return
            if client.json is None:
                client.json = data[:1] == b"{"
                client.decoder = (codec.LineDecoder(messages.MAX_CTL_REQUEST) if client.json
                                  else codec.Decoder(messages.MAX_CTL_REQUEST))
            try:
                requests = client.decoder.feed(data)
            except codec.FrameError as e:
                # out of sync: say why, then hang up
                await client.send(messages.reply_error(ErrorCode.BAD_REQUEST, str(e)))
                return
            for req in requests:
                await client.send(await self._answer(client, req))
                if client.events is not None:
                    await self._monitor(client)
                    return

    async def _answer(self, client: _Client, req: Any) -> dict:
        if isinstance(req, codec.BadLine):
            return messages.reply_error(ErrorCode.BAD_REQUEST, f"not JSON: {req.reason}")
        try:
            cmd = messages.check_request(req)
            if self.restricted and cmd.words not in messages.READ_ONLY:
                raise CommandError(ErrorCode.FORBIDDEN,
                                   f"{cmd.name}: not allowed on the restricted socket")
            if cmd.words == ("monitor",):
                client.events = asyncio.Queue(MONITOR_QUEUE)
                return messages.reply_ok({"monitor": True})
            return messages.reply_ok(await self.handler(cmd))
        except CommandError as e:
            return messages.reply_error(e.code, e.message)

    async def _monitor(self, client: _Client) -> None:
        # listen for the client hanging up while we stream its events
        watch = asyncio.ensure_future(self._drain_input(client))
        try:
            while not watch.done():
                get = asyncio.ensure_future(client.events.get())
                done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                await client.send(get.result())
        finally:
            watch.cancel()

    @staticmethod
    async def _drain_input(client: _Client) -> None:
        while await client.reader.read(READ_SIZE):
            pass
