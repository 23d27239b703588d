"""Slot tables for the nftables maps. Pure.

An nftables `numgen`/`jhash ... mod N map @m` lookup that misses lets the
packet through untranslated, so every slot 0..N-1 is always filled:

- round robin, weighted, random: `spread()` gives each destination a share of
  slots equal to its weight (reduced by their gcd), interleaved in smooth
  order so consecutive connections alternate; the slot
  count follows the weights and the map's rule changes with it (in the same
  transaction as the elements).
- source hash: `maglev()` fills a fixed prime number of slots (chosen from the
  configured host count, not the up count) with Maglev's lookup-table
  population (Eisenbud et al., NSDI 2016): each destination walks its own
  permutation of the slots, so when one comes or goes mostly its own slots
  change and other flows stay where they were.
"""

from __future__ import annotations

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
    """A prime >= 16x the destinations, at least 1021, at most ~131,072:
    Maglev moves few flows besides a leaving host's when slots >> hosts."""
    n = min(max(1021, 16 * configured), 131071)
    while not _is_prime(n):
        n += 1
    return n


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=salt).digest(), "big")


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
