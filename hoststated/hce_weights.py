"""Runtime host weights and drains (`hoststatectl host weight|drain|undrain`,
`table drain|undrain`, issue 13): their one keeper, in hce. Pure: no clock,
no socket, so a test builds it from a config.

Per host: a weight set at run time (None: the config's) and whether it is
drained. What the kernel and the relays use (`effective`) is 0 while the host
is drained, else its runtime weight, else the config's: a drain keeps the
weight, so that undrain restores it. Weight 0 and drain both take no new
connections and keep the established ones (IPVS's quiescent destination,
HAProxy's `state drain`); the kernel side is kernel/desired.py.

A reload carries both to the host of the new config with the same table,
name, address and port (the key kernel.Reconciler carries states by). A
runtime weight is dropped when the new config gives that host another weight
(the edited file is the newer word); a drain is kept. A host that is gone
takes its settings with it: reconfigure() returns what was dropped, for the
log.
"""

from __future__ import annotations

from dataclasses import dataclass

from hoststated.conf.model import Config, Host


@dataclass(slots=True)
class Override:
    weight: int | None = None     # set at run time; None: the config's
    base: int = 1                 # the config's weight when it was set
    drain: bool = False


def _key(h: Host) -> tuple:
    return (h.table, h.name, h.address, h.port)


class Overrides:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts: dict[int, Host] = {h.id: h for h in config.hosts()}
        self.by_id: dict[int, Override] = {}

    def set_weight(self, hosts: list[Host], weight: int) -> None:
        for h in hosts:
            o = self.by_id.setdefault(h.id, Override(base=h.weight))
            o.weight, o.base = (None if weight == h.weight else weight), h.weight
            self._tidy(h.id)

    def set_drain(self, hosts: list[Host], drain: bool) -> None:
        for h in hosts:
            self.by_id.setdefault(h.id, Override(base=h.weight)).drain = drain
            self._tidy(h.id)

    def _tidy(self, host_id: int) -> None:
        o = self.by_id[host_id]
        if o.weight is None and not o.drain:
            del self.by_id[host_id]

    def weight(self, host_id: int) -> int:
        """The host's weight now (not counting a drain)."""
        o = self.by_id.get(host_id)
        if o is not None and o.weight is not None:
            return o.weight
        return self.hosts[host_id].weight

    def drained(self, host_id: int) -> bool:
        o = self.by_id.get(host_id)
        return o is not None and o.drain

    def shown(self) -> dict[int, tuple[int, bool]]:
        """host id -> (weight, drain), for the hosts with a runtime setting."""
        return {hid: (self.weight(hid), o.drain) for hid, o in self.by_id.items()}

    def effective(self) -> dict[int, int]:
        """host id -> the weight in effect, for every host where it differs
        from the config's (ipc HostWeights: to pfe and the relays)."""
        out = {}
        for hid, o in self.by_id.items():
            w = 0 if o.drain else self.weight(hid)
            if w != self.hosts[hid].weight:
                out[hid] = w
        return out

    def reconfigure(self, config: Config) -> list[str]:
        """Carry the settings over to `config`; returns what was dropped."""
        old = {_key(self.hosts[hid]): o for hid, o in self.by_id.items()}
        dropped = []
        by_id: dict[int, Override] = {}
        seen = set()
        for h in config.hosts():
            o = old.get(_key(h))
            if o is None:
                continue
            seen.add(_key(h))
            o = Override(o.weight, o.base, o.drain)
            if o.weight is not None and h.weight != o.base:
                dropped.append(f"host {h.name} ({h.table}): runtime weight {o.weight} "
                               f"dropped, the config's weight is now {h.weight}")
                o.weight, o.base = None, h.weight
            if o.weight is not None or o.drain:
                by_id[h.id] = o
        for key, o in old.items():
            if key not in seen:
                what = " and ".join(x for x in (
                    f"weight {o.weight}" if o.weight is not None else "",
                    "drain" if o.drain else "") if x)
                dropped.append(f"host {key[1]} ({key[0]}): gone after the reload, "
                               f"its runtime {what} with it")
        self.config = config
        self.hosts = {h.id: h for h in config.hosts()}
        self.by_id = by_id
        return dropped
