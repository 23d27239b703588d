"""relay_dns: how each query ends, for its `log connection` line (relayd
opens a session per query and logs it as it closes): answered, timed out
(expired or answered late), evicted, no backend, send failed; a spoofed
answer ends nothing."""

from __future__ import annotations

import struct

import pytest

from hoststated.relay_dns import (DONE, EVICTED, NO_BACKEND, SEND_FAILED, TIMEOUT,
                                  DnsRelayCore, Ended, format_line)

CLIENT = ("192.0.2.2", 40000)
BACKEND = ("198.51.100.11", 53)


def query(qid: int = 7) -> bytes:
    return struct.pack("!HBBHHHH", qid, 0x01, 0, 1, 0, 0, 0) + b"\x03www\x00\x00\x01\x00\x01"


def answer_to(data: bytes) -> bytes:
    return data[:2] + bytes([data[2] | 0x80]) + data[3:] + b"\xc0\x0c" * 3


def core_with_log(**kw):
    ended: list[Ended] = []
    return DnsRelayCore(on_end=ended.append, **kw), ended


def test_an_answered_query_ends_done_with_its_bytes_and_duration():
    core, ended = core_with_log(timeout=5)
    q = query()
    fwd = core.query(CLIENT, q, 100.0, lambda c: BACKEND)
    a = answer_to(fwd.data)
    core.answer(BACKEND, a, 100.25)
    (e,) = ended
    assert (e.sid, e.client, e.backend, e.what, e.error) == (1, CLIENT, BACKEND, DONE, False)
    assert (e.duration, e.bytes_in, e.bytes_out) == (0.25, len(q), len(a))
    assert format_line("dns", e, 0) == (
        f"relay dns, session 1 (0 active), 192.0.2.2:40000 -> 198.51.100.11:53, done, "
        f"0.250s, {len(q)} in / {len(a)} out")


def test_every_way_a_query_ends_is_one_end():
    core, ended = core_with_log(timeout=2, max_inflight=2)
    assert core.query(CLIENT, query(1), 0.0, lambda c: None) is None          # no backend
    f2 = core.query(CLIENT, query(2), 0.0, lambda c: BACKEND)
    core.answer(("198.51.100.99", 53), answer_to(f2.data), 0.5)              # spoofed: no end
    assert len(ended) == 1
    f3 = core.query(CLIENT, query(3), 1.0, lambda c: BACKEND)
    core.query(CLIENT, query(4), 1.5, lambda c: BACKEND)                    # evicts query 2
    core.cancel(f3.id, 1.6)                                                  # its send failed
    core.expire(10.0)                                                        # query 4 times out
    f5 = core.query(CLIENT, query(5), 20.0, lambda c: BACKEND)
    core.answer(BACKEND, answer_to(f5.data), 23.0)                          # late: timed out
    assert [(e.sid, e.what, e.error) for e in ended] == [
        (1, NO_BACKEND, True), (2, EVICTED, True), (3, SEND_FAILED, True),
        (4, TIMEOUT, True), (5, TIMEOUT, True)]
    assert ended[0].backend is None and format_line("r", ended[0], 0).count("-> -,") == 1
    assert ended[1].duration == 1.5 and ended[2].duration == pytest.approx(0.6)
    assert ended[3].duration == 8.5 and ended[4].duration == 3.0


def test_without_a_callback_the_core_relays_as_before():
    core = DnsRelayCore(timeout=2)
    assert core.query(CLIENT, query(), 0.0, lambda c: None) is None
    fwd = core.query(CLIENT, query(), 0.0, lambda c: BACKEND)
    assert core.answer(BACKEND, answer_to(fwd.data), 0.1) is not None
    assert core.expire(5.0) == 0 and core.stats.answers == 1
