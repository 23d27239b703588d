"""relay_select: the relay modes' choices, counted (pure, no sockets).
The end-to-end distributions through the daemon are in
tests/integration/test_relay_modes_live.py."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hoststated.relay_select import Pool, Target, hash_key


def pool(mode: str, weights=(1, 1, 1), up=None, tries=1) -> Pool:
    p = Pool(mode=mode, key=hash_key("web", None), max_tries=tries)
    for i, w in enumerate(weights):
        p.targets.append(Target(i + 1, f"198.51.100.{11 + i}", 80, w))
    p.up = set(range(len(weights)) if up is None else up)
    return p


def count(p: Pool, n: int, **kw) -> Counter:
    return Counter(p.pick(**kw)[0].address for _ in range(n))


def test_roundrobin_is_exact_and_weighted():
    assert count(pool("roundrobin"), 30) == {
        "198.51.100.11": 10, "198.51.100.12": 10, "198.51.100.13": 10}
    p = pool("roundrobin", (3, 1))
    seq = [p.pick()[0].address[-2:] for _ in range(8)]
    assert Counter(seq) == {"11": 6, "12": 2}
    assert seq[:4].count("12") == 1            # interleaved, not 3 in a row then 1


def test_roundrobin_starts_over_when_the_hosts_up_change():
    p = pool("roundrobin")
    p.pick()                                    # .11 taken, the running weights moved
    p.mark(1, False)
    p.mark(1, True)
    assert count(p, 30) == {"198.51.100.11": 10, "198.51.100.12": 10, "198.51.100.13": 10}
    p.mark(2, True)                             # already up: no change, no restart
    assert count(p, 3) == {"198.51.100.11": 1, "198.51.100.12": 1, "198.51.100.13": 1}


def test_a_host_down_or_of_weight_zero_gets_nothing():
    for mode in ("roundrobin", "random", "least-states", "source-hash", "loadbalance", "hash"):
        p = pool(mode, (1, 0, 1), up={0, 1})
        got = {p.pick(client=f"192.0.2.{i}", relay="192.0.2.1:80")[0].address
               for i in range(3, 40)}
        assert got == {"198.51.100.11"}, mode
        assert pool(mode, up=set()).pick() == []
        assert pool(mode, (0, 0)).pick() == [], mode


def test_random_reaches_every_host_in_proportion_to_weight():
    rng = random.Random(1)
    c = count(pool("random", (3, 1)), 4000, rng=rng)
    assert set(c) == {"198.51.100.11", "198.51.100.12"}
    assert 2.5 < c["198.51.100.11"] / c["198.51.100.12"] < 3.5, c


def test_least_states_takes_the_fewest_sessions_per_weight():
    p = pool("least-states", (1, 1, 2))
    p.targets[0].sessions, p.targets[1].sessions, p.targets[2].sessions = 2, 0, 1
    assert p.pick()[0].address == "198.51.100.12"
    p.targets[1].sessions = 1
    # .13 has 1 session for weight 2: 0.5 per unit
    assert p.pick()[0].address == "198.51.100.13"
    p.targets[2].sessions = 2                   # a tie at 1 per unit: table order
    assert p.pick()[0].address == "198.51.100.12"


@pytest.mark.parametrize("mode", ["source-hash", "loadbalance", "hash"])
def test_hash_modes_are_stable_and_move_only_a_lost_hosts_clients(mode):
    p = pool(mode)
    clients = [f"192.0.2.{i}" for i in range(3, 200)]
    before = {c: p.pick(client=c, relay="192.0.2.1:8080")[0].address for c in clients}
    again = {c: pool(mode).pick(client=c, relay="192.0.2.1:8080")[0].address for c in clients}
    assert before == again                      # a fresh pool (another process) agrees
    p.mark(1, False)
    after = {c: p.pick(client=c, relay="192.0.2.1:8080")[0].address for c in clients}
    moved = {c for c in clients if before[c] != after[c]}
    assert moved == {c for c in clients if before[c] == "198.51.100.12"}
    if mode == "hash":
        assert len(set(before.values())) == 1   # the client is not hashed
    else:
        assert len(set(before.values())) == 3


def test_what_each_hash_mode_hashes():
    relay_a, relay_b = "192.0.2.1:8080", "192.0.2.1:8081"
    clients = [f"192.0.2.{i}" for i in range(3, 60)]

    def spread(mode, relay):
        return [pool(mode).pick(client=c, relay=relay)[0].address for c in clients]
    # source-hash: the client only, the relay's port does not matter
    assert spread("source-hash", relay_a) == spread("source-hash", relay_b)
    # loadbalance: the client and the relay's address and port
    assert spread("loadbalance", relay_a) != spread("loadbalance", relay_b)
    # hash: the relay's address and port only
    assert len(set(spread("hash", relay_a))) == 1


def test_hash_weights_shift_the_share():
    c = Counter(pool("source-hash", (3, 1)).pick(client=f"192.0.2.{i}")[0].address
                for i in range(1, 255))
    assert 2.2 < c["198.51.100.11"] / c["198.51.100.12"] < 4.0, c


def test_retry_order_is_the_choice_then_the_others():
    p = pool("roundrobin", tries=3)
    assert [t.address[-2:] for t in p.pick()] == ["11", "12", "13"]
    assert [t.address[-2:] for t in p.pick()] == ["12", "13", "11"]
    p = pool("source-hash", tries=3)
    order = p.pick(client="192.0.2.9")
    assert len({t.address for t in order}) == 3
    p.mark(p.targets.index(order[0]), False)
    assert p.pick(client="192.0.2.9") == order[1:]
