"""A small client API for hoststated's control socket.

    from hoststatectl.client import Client, CtlError
    hosts = Client("/run/hoststated.sock").request("show hosts")["hosts"]
    for event in Client().monitor():
        print(event)

Blocking, msgpack frames; imports only the shared schema from hoststated.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Iterator

from hoststated.ipc import codec, messages
from hoststated.ipc.messages import DEFAULT_SOCKET


class CtlError(Exception):
    """The daemon answered with an error (code and message), or could not be
    reached (code "connect")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def exit_status(self) -> int:
        return messages.EXIT_STATUS.get(self.code, 1)


class Client:
    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float | None = 60.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = codec.Decoder(messages.MAX_CTL_REPLY)
        self._frames: list[Any] = []

    def connect(self) -> "Client":
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except OSError as e:
                s.close()
                raise CtlError("connect", f"connect {self.path}: "
                                          f"{e.strerror or os.strerror(e.errno or 0) or e}") from None
            self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # a connection's unread bytes end with it (monitor --reconnect)
        self._decoder = codec.Decoder(messages.MAX_CTL_REPLY)
        self._frames = []

    def __enter__(self) -> "Client":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def _next(self) -> Any:
        while not self._frames:
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                raise CtlError("timeout", f"{self.path}: no answer from the daemon") from None
            except OSError as e:
                raise CtlError("connect", f"{self.path}: {e.strerror or e}") from None
            if not data:
                raise CtlError("connect", f"{self.path}: the daemon closed the connection")
            try:
                self._frames.extend(self._decoder.feed(data))
            except codec.FrameError as e:
                raise CtlError("protocol", f"{self.path}: {e}") from None
        return self._frames.pop(0)

    def call(self, cmd: str) -> dict:
        """Send one request, return the raw reply {"ok": ..., ...}."""
        self.connect()
        try:
            self._sock.sendall(codec.encode(messages.request(cmd), messages.MAX_CTL_REQUEST))
        except OSError as e:
            raise CtlError("connect", f"{self.path}: {e.strerror or e}") from None
        reply = self._next()
        if not isinstance(reply, dict) or "ok" not in reply:
            raise CtlError("protocol", f"{self.path}: not a reply: {reply!r:.80}")
        return reply

    def request(self, cmd: str) -> Any:
        """Send a command (hoststatectl's words), return the reply's data or
        raise CtlError with the daemon's code and message."""
        reply = self.call(cmd)
        if not reply["ok"]:
            err = reply.get("error") or {}
            raise CtlError(str(err.get("code", "failed")), str(err.get("message", "command failed")))
        return reply.get("data")

    def monitor(self) -> Iterator[dict]:
        """Subscribe now, then yield every event ({"event": "host", "data":
        {...}}) until the daemon goes away."""
        self.request("monitor")
        self._sock.settimeout(None)
        return self._events()

    def _events(self) -> Iterator[dict]:
        while True:
            try:
                yield self._next()
            except CtlError as e:
                if e.code == "connect":
                    return
                raise
