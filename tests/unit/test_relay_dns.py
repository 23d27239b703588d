"""relay_dns.DnsRelayCore without sockets: ids replaced and mapped back,
answers that must be dropped, id collisions, the bound and the timeouts."""

from __future__ import annotations

import struct

import pytest

from hoststated.relay_dns import MAX_INFLIGHT_LIMIT, DnsRelayCore

CLIENT = ("192.0.2.10", 40000)
CLIENT2 = ("192.0.2.11", 40001)
BACKEND = ("198.51.100.53", 53)
BACKEND2 = ("198.51.100.54", 53)
# a query for www.example.test A, RD set, from id 0x1234
QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"


def query(qid: int = 0x1234, flags: bytes = b"\x01\x00") -> bytes:
    return struct.pack("!H", qid) + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION


def answer_to(data: bytes, new_id: int | None = None) -> bytes:
    """What a server sends back: QR set, one answer record."""
    rid = data[:2] if new_id is None else struct.pack("!H", new_id)
    return (rid + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + QUESTION
            + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x0a")


def to(backend):
    return lambda client: backend


def test_id_replaced_and_mapped_back():
    core = DnsRelayCore(timeout=5)
    q = query(0x1234)
    fwd = core.query(CLIENT, q, 100.0, to(BACKEND))
    assert fwd.backend == BACKEND
    assert fwd.data[2:] == q[2:] and struct.unpack("!H", fwd.data[:2])[0] == fwd.id
    assert len(core) == 1
    got = core.answer(BACKEND, answer_to(fwd.data), 100.1)
    assert got is not None
    client, reply = got
    assert client == CLIENT
    assert reply[:2] == b"\x12\x34" and reply[2:] == answer_to(fwd.data)[2:]
    # one answer per query: a second copy is for no query in flight
    assert core.answer(BACKEND, answer_to(fwd.data), 100.2) is None
    assert len(core) == 0
    s = core.stats
    assert (s.queries, s.answers, s.unknown) == (1, 1, 1)


def test_pick_gets_the_client_and_none_drops():
    seen = []
    core = DnsRelayCore(timeout=5)
    assert core.query(CLIENT, query(), 0.0, lambda c: seen.append(c)) is None
    assert seen == [CLIENT]
    assert core.stats.no_backend == 1 and len(core) == 0


@pytest.mark.parametrize("n", range(12))
def test_short_packets_dropped(n):
    core = DnsRelayCore(timeout=5)
    called = []
    assert core.query(CLIENT, query()[:n], 0.0, lambda c: called.append(c) or BACKEND) is None
    assert called == []                 # the backend is picked for valid queries only
    fwd = core.query(CLIENT, query(), 0.0, to(BACKEND))
    assert core.answer(BACKEND, answer_to(fwd.data)[:n], 0.1) is None
    assert core.stats.malformed == 2 and len(core) == 1


def test_twelve_bytes_is_enough():
    core = DnsRelayCore(timeout=5)
    fwd = core.query(CLIENT, query()[:12], 0.0, to(BACKEND))
    assert fwd is not None
    assert core.answer(BACKEND, answer_to(fwd.data)[:12], 0.1)[1][:2] == b"\x12\x34"


def test_responses_from_clients_and_queries_from_backends_dropped():
    core = DnsRelayCore(timeout=5)
    # a response sent to the relay's port is not relayed (reflection)
    assert core.query(CLIENT, answer_to(query()), 0.0, to(BACKEND)) is None
    fwd = core.query(CLIENT, query(), 0.0, to(BACKEND))
    # a query (QR clear) from the backend with the id in flight
    assert core.answer(BACKEND, fwd.data, 0.1) is None
    assert core.stats.malformed == 2 and len(core) == 1


def test_unknown_id_dropped():
    ids = iter([100])
    core = DnsRelayCore(timeout=5, rand=lambda n: next(ids))
    core.query(CLIENT, query(), 0.0, to(BACKEND))
    assert core.answer(BACKEND, answer_to(query(), new_id=101), 0.1) is None
    assert core.stats.unknown == 1 and len(core) == 1
    assert core.answer(BACKEND, answer_to(query(), new_id=100), 0.1)[0] == CLIENT


@pytest.mark.parametrize("source", [BACKEND2, ("198.51.100.53", 5353), CLIENT],
                         ids=["other-host", "other-port", "the-client"])
def test_answer_from_elsewhere_dropped_and_query_kept(source):
    core = DnsRelayCore(timeout=5)
    fwd = core.query(CLIENT, query(), 0.0, to(BACKEND))
    assert core.answer(source, answer_to(fwd.data), 0.1) is None
    assert core.stats.wrong_source == 1 and len(core) == 1
    # a spoofed answer does not cancel the real one
    assert core.answer(BACKEND, answer_to(fwd.data), 0.2)[0] == CLIENT


def test_backend_addresses_compared_canonically():
    core = DnsRelayCore(timeout=5)
    fwd = core.query(("2001:db8::10", 5000, 0, 0), query(), 0.0, to(("2001:DB8:0::53", 53)))
    assert fwd.backend == ("2001:db8::53", 53)
    # recvfrom on an AF_INET6 socket: a 4-tuple in inet_ntop's spelling
    got = core.answer(("2001:db8::53", 53, 0, 0), answer_to(fwd.data), 0.1)
    assert got[0] == ("2001:db8::10", 5000, 0, 0)


def test_pick_must_give_an_ip():
    core = DnsRelayCore(timeout=5)
    with pytest.raises(ValueError, match="no IP address"):
        core.query(CLIENT, query(), 0.0, to(("backend.example.test", 53)))


def test_id_collisions_draw_again():
    # the random source repeats ids in flight: each is drawn again
    draws = iter([7, 7, 7, 9, 7, 9, 11])
    core = DnsRelayCore(timeout=5, rand=lambda n: next(draws))
    ids = [core.query(CLIENT, query(0x1234), 0.0, to(BACKEND)).id for _ in range(3)]
    assert ids == [7, 9, 11]
    # an id comes free again once its query is answered
    draws2 = iter([9, 7])
    core._rand = lambda n: next(draws2)
    assert core.answer(BACKEND, answer_to(query(), new_id=7), 0.1) is not None
    assert core.query(CLIENT, query(), 0.0, to(BACKEND)).id == 7


def test_same_client_id_from_two_clients():
    core = DnsRelayCore(timeout=5)
    f1 = core.query(CLIENT, query(0x4242), 0.0, to(BACKEND))
    f2 = core.query(CLIENT2, query(0x4242), 0.0, to(BACKEND2))
    assert f1.id != f2.id
    # answered in the other order, each to its own client with its own id
    assert core.answer(BACKEND2, answer_to(f2.data), 0.1) == \
        (CLIENT2, b"\x42\x42" + answer_to(f2.data)[2:])
    assert core.answer(BACKEND, answer_to(f1.data), 0.1) == \
        (CLIENT, b"\x42\x42" + answer_to(f1.data)[2:])


def test_random_ids():
    core = DnsRelayCore(timeout=5, max_inflight=4000)
    ids = [core.query(CLIENT, query(0), 0.0, to(BACKEND)).id for _ in range(4000)]
    assert len(set(ids)) == 4000        # unique in flight
    # not a counter and not the client's id: spread over the id space
    assert len({i >> 8 for i in ids}) > 200
    assert sum(1 for a, b in zip(ids, ids[1:]) if b == a + 1) < 20
    assert ids.count(0) <= 1            # the client's id, at most by chance


def test_expiry():
    core = DnsRelayCore(timeout=2)
    f1 = core.query(CLIENT, query(1), 10.0, to(BACKEND))
    f2 = core.query(CLIENT, query(2), 11.0, to(BACKEND))
    assert core.next_deadline() == 12.0
    assert core.expire(11.9) == 0 and len(core) == 2
    assert core.expire(12.0) == 1 and len(core) == 1
    assert core.answer(BACKEND, answer_to(f1.data), 12.0) is None    # expired
    assert core.next_deadline() == 13.0
    # a late answer is dropped even before expire() ran
    assert core.answer(BACKEND, answer_to(f2.data), 13.0) is None
    assert len(core) == 0 and core.next_deadline() is None
    assert core.stats.timeouts == 2 and core.stats.answers == 0


def test_query_expires_the_table_first():
    core = DnsRelayCore(timeout=2, max_inflight=1)
    core.query(CLIENT, query(1), 10.0, to(BACKEND))
    core.query(CLIENT, query(2), 12.5, to(BACKEND))
    # the first had timed out: no eviction was needed
    assert core.stats.timeouts == 1 and core.stats.evicted == 0 and len(core) == 1


def test_bound_drops_the_oldest():
    core = DnsRelayCore(timeout=60, max_inflight=3)
    fwds = [core.query(CLIENT, query(i), float(i), to(BACKEND)) for i in range(4)]
    assert len(core) == 3 and core.stats.evicted == 1
    assert core.answer(BACKEND, answer_to(fwds[0].data), 4.0) is None     # the oldest went
    for i in (1, 2, 3):
        client, reply = core.answer(BACKEND, answer_to(fwds[i].data), 4.0)
        assert reply[:2] == struct.pack("!H", i)
    assert core.next_deadline() is None


@pytest.mark.parametrize("kw", [{"timeout": 0}, {"timeout": 5, "max_inflight": 0},
                                {"timeout": 5, "max_inflight": MAX_INFLIGHT_LIMIT + 1}])
def test_bad_settings(kw):
    with pytest.raises(ValueError):
        DnsRelayCore(**kw)
