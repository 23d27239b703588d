"""Which backend a new relay session goes to: relayd's relay modes, pure.

A Pool is one `forward to <table>` of a relay (or its backup table): the
hosts with their weights, the hosts up right now (pushed by the relay
process as hce's states arrive), and the per-host session counts the relay
keeps. pick() returns the hosts to try in order: the first is the mode's
choice, the rest are where a failed connect goes next (`retry`), so a
connect that fails moves on without asking the mode again.

The modes, as relayd.conf(5) words them, with host weights added:
- roundrobin (default): smooth weighted round robin (nginx's), so a host of
  weight 3 gets 3 of every 4 sessions beside one of weight 1, interleaved;
  it starts over when the hosts up change, so that each process's share
  stays exact (n sessions over k equal hosts: each gets n/k, rounded);
- random: weighted random;
- least-states: the fewest sessions now per unit of weight (relayd has it
  for redirects only; here it counts this relay process's own sessions,
  a session from the moment it is given a host, so that a burst of
  connections accepted together spreads instead of all going to the host
  that was least loaded before it);
- source-hash: key + client address (not its port); loadbalance: key +
  client address + the relay's address and port; hash: key + the relay's
  address and port (+ what protocol `hash` rules feed in, issue 12), as
  relayd's relay_from_table hashes them. Hashing is rendezvous (highest
  random weight, weighted): a host that goes down moves only its own
  clients, and one that comes back takes back only its share.

A host of weight 0 takes no new session (IPVS's meaning of weight 0: its
sessions run on, as on a host that is down).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

DEFAULT_MODE = "roundrobin"
HASH_MODES = ("source-hash", "loadbalance", "hash")
MODES = ("roundrobin", "random", "least-states", *HASH_MODES)


@dataclass(slots=True)
class Target:
    """One backend of a pool: a table's host, or a fixed address."""
    host_id: int | None          # None for `forward to ADDRESS`
    address: str
    port: int
    weight: int = 1
    sessions: int = 0            # this process's sessions on it now
    current: int = 0             # smooth round robin's running weight
    tls: object = None           # an ssl.SSLContext for `forward with tls`
    sni: str | None = None       # the name sent with it (never an address)
    proxy: int | None = None     # PROXY protocol version sent first (1, 2), if any

    def key(self) -> bytes:
        return f"{self.address}:{self.port}".encode()


@dataclass(slots=True)
class Pool:
    mode: str = DEFAULT_MODE
    key: bytes = b""             # the mode's hash key (relayd: random when omitted)
    targets: list[Target] = field(default_factory=list)
    up: set[int] = field(default_factory=set)    # indexes of targets up now
    max_tries: int = 1           # 1 + retry: hosts one session may try
    template: str = ""           # the table's template (what HTTP rules name)

    def candidates(self) -> list[Target]:
        return [t for i, t in enumerate(self.targets) if i in self.up and t.weight > 0]

    def mark(self, i: int, up: bool) -> None:
        """Target i is up (or not): hce's word, through the relay process."""
        before = len(self.up)
        if up:
            self.up.add(i)
        else:
            self.up.discard(i)
        if len(self.up) != before:
            # round robin starts over on the new set: a host coming back
            # would otherwise carry the running weight it had when it went
            for t in self.targets:
                t.current = 0

    def set_weight(self, i: int, weight: int) -> None:
        """Target i's weight now (hoststatectl host weight|drain); round
        robin starts over when it changes, as when the hosts up change."""
        if self.targets[i].weight != weight:
            self.targets[i].weight = weight
            for t in self.targets:
                t.current = 0

    def pick(self, client: str = "", relay: str = "",
             rng: random.Random | None = None) -> list[Target]:
        """The hosts to try, best first (empty: no host up)."""
        up = self.candidates()
        if not up:
            return []
        n = min(self.max_tries, len(up))
        if self.mode == "roundrobin":
            first = _smooth_rr(up)
        elif self.mode == "random":
            first = (rng or random).choices(up, weights=[t.weight for t in up])[0]
        elif self.mode == "least-states":
            first = min(up, key=lambda t: (t.sessions / t.weight, t.sessions))
        else:
            ranked = rendezvous(up, self.hash_input(client, relay))
            return ranked[:n]
        if n == 1:
            return [first]
        # then the others in table order, starting after the first
        i = up.index(first)
        return (up[i:] + up[:i])[:n]

    def hash_input(self, client: str, relay: str) -> bytes:
        if self.mode == "source-hash":
            return self.key + b"|" + client.encode()
        if self.mode == "loadbalance":
            return self.key + b"|" + client.encode() + b"|" + relay.encode()
        return self.key + b"|" + relay.encode()


def _smooth_rr(up: list[Target]) -> Target:
    total = 0
    best = None
    for t in up:
        t.current += t.weight
        total += t.weight
        if best is None or t.current > best.current:
            best = t
    best.current -= total
    return best


def rendezvous(targets: list[Target], what: bytes) -> list[Target]:
    """targets ranked by weighted rendezvous hashing of `what`: the score
    -weight / ln(u) for u uniform in (0, 1) from a hash of (what, target)."""
    def score(t: Target) -> float:
        h = hashlib.blake2b(what + b"#" + t.key(), digest_size=8).digest()
        u = (int.from_bytes(h, "big") + 1) / (2 ** 64 + 2)
        return -t.weight / math.log(u)
    return sorted(targets, key=score, reverse=True)


def hash_key(table: str, text: str | None) -> bytes:
    """relayd's mode key: `0x` and 32 hex digits, or a string (hashed), fed
    into the hash with the table's name (relayd: "the hashed name of the
    table"). relayd draws a random key when none is given; here every relay
    process must send one client to the same host, so the key is the
    table's name alone: stable across processes and restarts."""
    base = table.encode()
    if text is None:
        return base
    if text.startswith("0x") and len(text) == 34:
        try:
            return base + bytes.fromhex(text[2:])
        except ValueError:
            pass
    return base + hashlib.md5(text.encode()).digest()
