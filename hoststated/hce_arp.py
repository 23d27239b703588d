"""hce's ARP prober (check arp, issue 14): the I/O around checks.arp.

One raw AF_PACKET socket for ARP frames on every interface, opened by the
parent as root before the privilege drop (privsep.open_arp_socket) and
passed in as an fd; a request goes out of the host's interface, a reply is
matched to the probes waiting for it by checks.arp.Pending."""

from __future__ import annotations

import asyncio
import socket

from hoststated import privsep
from hoststated.checks import arp
from hoststated.checks.base import Verdict, failed, passed
from hoststated.states import HostError

PACKET_OUTGOING = 4          # <linux/if_packet.h>: our own requests, looped back to us
READ_BURST = 256             # frames read per wake-up, so one busy segment cannot hog the loop


class ArpPinger:
    def __init__(self, fd: int | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        if fd is None:                   # a root caller without the parent (tests)
            fd = privsep.open_arp_socket()
        self.pending = arp.Pending()
        # -1: none was opened (the parent refuses a reload that adds check arp)
        self.sock: socket.socket | None = socket.socket(fileno=fd) if fd >= 0 else None
        if self.sock is not None:
            self.sock.setblocking(False)
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    async def probe(self, check: arp.ArpCheck, timeout: float) -> Verdict:
        if self.sock is None:
            return failed(HostError.ARP_WRITE_FAIL, "no ARP socket")
        fut = self.loop.create_future()
        self.pending.add(check, fut)
        try:
            try:
                self.sock.sendto(arp.request_frame(check.mac, check.source, check.address),
                                 (check.ifname, arp.ETH_P_ARP))
            except OSError as e:
                return failed(HostError.ARP_WRITE_FAIL, f"ARP request on {check.ifname}: "
                                                        f"{e.strerror or e}")
            try:
                async with asyncio.timeout(timeout):
                    await fut
            except TimeoutError:
                return failed(HostError.ARP_READ_TIMEOUT,
                              f"no ARP reply on {check.ifname} within {timeout * 1000:.0f}ms")
            return passed(HostError.ARP_OK, f"reply on {check.ifname}")
        finally:
            self.pending.discard(check, fut)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(READ_BURST):
            try:
                frame, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            for fut in self.pending.match(addr[0], frame):
                if not fut.done():
                    fut.set_result(None)
