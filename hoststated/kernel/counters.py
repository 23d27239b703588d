"""Kernel counters carried across rewrites: pfe reads the backends'
counters (Sample) every interval and keeps, per service and destination,
totals that only grow while it runs.

A kernel counter restarts from 0 when its object is made again: an nftables
map element or rule that a write replaced, an IPVS service or destination
deleted and added. So the totals grow by each object's increase since the
last read: its whole value when it is new (first seen, or reset by the
backend since, or smaller than it was). What a replaced object counted
between the last read and its replacement is lost: at most one interval's
worth, only on a write. Pure: no I/O.
"""

from __future__ import annotations

from typing import Iterable

from .service import Counts, Sample, ServiceKey

CUMULATIVE = 5          # Counts' first fields: connections, packets and bytes in/out


class Totals:
    def __init__(self) -> None:
        self._last: dict[tuple, Counts] = {}
        # (service key, destination address or "") -> the cumulative fields
        self.totals: dict[tuple[ServiceKey, str], list[int | None]] = {}
        # the same -> [active, inactive] at the last read (gauges)
        self.gauges: dict[tuple[ServiceKey, str], list[int | None]] = {}

    def add(self, samples: Iterable[Sample], reset: Iterable[tuple] = ()) -> None:
        """One read: every counter object the backends hold now."""
        reset = set(reset)
        last: dict[tuple, Counts] = {}
        gauges: dict[tuple[ServiceKey, str], list[int | None]] = {}
        totals = self.totals
        for s in samples:
            prev = None if s.ident in reset else self._last.get(s.ident)
            at = (s.key, s.address)
            tot = totals.get(at)
            if tot is None:
                tot = totals[at] = [None] * CUMULATIVE
            c = s.counts
            for i in range(CUMULATIVE):
                v = c[i]
                if v is None:
                    continue
                p = prev[i] if prev is not None else None
                delta = v - p if p is not None and v >= p else v
                tot[i] = (tot[i] or 0) + delta
            g = gauges.get(at)
            if g is None:
                g = gauges[at] = [None, None]
            for i, v in enumerate(c[CUMULATIVE:]):
                if v is not None:
                    g[i] = (g[i] or 0) + v
            last[s.ident] = c
        self._last = last
        self.gauges = gauges

    def keep(self, keys: Iterable[ServiceKey]) -> None:
        """Forget the services not in `keys` (gone from the config)."""
        keys = set(keys)
        for d in (self.totals, self.gauges):
            for at in [at for at in d if at[0] not in keys]:
                del d[at]

    def services(self) -> dict[ServiceKey, tuple[Counts, dict[str, Counts]]]:
        """Per service: its counts (its own counters where the engine has
        them, IPVS, else the sum of its destinations') and per destination
        address."""
        own: dict[ServiceKey, Counts] = {}
        dests: dict[ServiceKey, dict[str, Counts]] = {}
        for (key, addr), tot in self.totals.items():
            counts = Counts(tot[0] or 0, *tot[1:], *self.gauges.get((key, addr), (None, None)))
            by = dests.setdefault(key, {})
            if addr == "":
                own[key] = counts
            else:
                by[addr] = counts
        result = {}
        for key, by in dests.items():
            sums = [_sum(d[i] for d in by.values()) for i in range(len(Counts._fields))]
            svc = own.get(key)
            if svc is None:
                svc = Counts(sums[0] or 0, *sums[1:])
            elif svc.active is None:
                # IPVS has the gauges per destination only
                svc = svc._replace(active=sums[5], inactive=sums[6])
            result[key] = (svc, by)
        return result


def _sum(values) -> int | None:
    out = None
    for v in values:
        if v is not None:
            out = (out or 0) + v
    return out
