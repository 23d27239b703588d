"""Slot tables for the nftables maps. Pure.

An nftables `numgen`/`jhash ... mod N map @m` lookup that misses lets the
packet through untranslated, so every slot 0..N-1 is always filled:

- round robin, weighted, random: `spread()` gives each destination a share of
  slots equal to its weight (reduced by their gcd), interleaved in smooth
  order so consecutive connections alternate; the slot
  count follows the weights and the map's rule changes with it (in the same
  transaction as the elements).
- source hash: `consistent()` fills a fixed prime number of slots (which
  steps only when the host count crosses a power of two): by rendezvous
  (highest random weight) hashing, where a host coming or going moves
  exactly its own slots and no other flow, or for large tables (hosts x
  slots > 64k, where rendezvous costs too much Python time) by Maglev's
  lookup-table population (Eisenbud et al., NSDI 2016), which moves a few
  more (about 10-20 % extra).
"""

from __future__ import annotations

import functools
import hashlib
from functools import reduce
from math import gcd
from typing import Sequence

MAX_WEIGHTED_SLOTS = 4096


def spread(weighted: Sequence[tuple[str, int]]) -> list[str]:
    """Slots for (name, weight) pairs (weight > 0); [] if none."""
    items = [(n, w) for n, w in weighted if w > 0]
    if not items:
        return []
    if len({w for _, w in items}) == 1:
        return [n for n, _ in items]        # equal weights: one slot each
    g = reduce(gcd, (w for _, w in items))
    items = [(n, w // g) for n, w in items]
    total = sum(w for _, w in items)
    if total > MAX_WEIGHTED_SLOTS:
        items = [(n, max(1, round(w * MAX_WEIGHTED_SLOTS / total))) for n, w in items]
        total = sum(w for _, w in items)
    if all(w == 1 for _, w in items):
        return [n for n, _ in items]
    # interleave: the k-th share of a destination of weight w sits at
    # (k + 1/2) / w of the cycle, so consecutive slots alternate
    marks = sorted(((k + 0.5) / w, i, n) for i, (n, w) in enumerate(items) for k in range(w))
    return [n for _, _, n in marks]


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def hash_slot_count(configured: int) -> int:
    """A prime >= 16x the destinations, at least 251, at most ~131,072:
    enough slots for an even share each (and for Maglev to move few flows
    besides a leaving host's)."""
    n = min(max(251, 16 * configured), 131071)
    while not _is_prime(n):
        n += 1
    return n


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=salt).digest(), "big")


RENDEZVOUS_MAX = 65536
_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    # splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=256)
def rendezvous(names: tuple[str, ...], size: int) -> tuple[str, ...]:
    """`size` slots, each to the name with the highest hash(name, slot)."""
    if not names:
        return ()
    seeds = [(_h(n, b"hrw"), n) for n in sorted(names)]
    out = []
    for slot in range(size):
        s = slot * 0x9E3779B97F4A7C15
        out.append(max(seeds, key=lambda p: _mix((p[0] + s) & _M64))[1])
    return tuple(out)


def consistent(names: Sequence[str], size: int) -> list[str]:
    names = tuple(sorted(set(names)))
    if len(names) * size <= RENDEZVOUS_MAX:
        return list(rendezvous(names, size))
    return maglev([(n, 1) for n in names], size)


def maglev(weighted: Sequence[tuple[str, int]], size: int) -> list[str]:
    """`size` (prime) slots for (name, weight) pairs; [] if none has weight."""
    items = sorted((n, w) for n, w in weighted if w > 0)
    if not items:
        return []
    top = max(w for _, w in items)
    perm = []
    for name, _ in items:
        offset = _h(name, b"offset") % size
        skip = _h(name, b"skip") % (size - 1) + 1
        perm.append((offset, skip))
    nxt = [0] * len(items)
    credit = [0.0] * len(items)
    table: list[str | None] = [None] * size
    filled = 0
    while True:
        for i, (name, w) in enumerate(items):
            # weighted Maglev: a destination takes a turn per `top/w` rounds
            credit[i] += w / top
            while credit[i] >= 1.0:
                credit[i] -= 1.0
                offset, skip = perm[i]
                while True:
                    c = (offset + nxt[i] * skip) % size
                    nxt[i] += 1
                    if table[c] is None:
                        break
                table[c] = name
                filled += 1
                if filled == size:
                    return table  # type: ignore[return-value]
