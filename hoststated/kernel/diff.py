"""diff(current, desired) -> ops, and apply_ops(state, ops) -> state. Pure.

The ops are IPVS-shaped (a service and its destinations) because that is the
finest grain any engine has; a backend may coarsen them (nftables rewrites a
touched service's map in one transaction). Order: services removed first
(frees addresses), then added, then updated; destinations removed before
added, so a batch never holds two destinations for one address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Union

from .service import Destination, KernelState, Service, ServiceKey


@dataclass(frozen=True)
class AddService:
    service: Service            # with its destinations


@dataclass(frozen=True)
class UpdateService:
    service: Service            # new attributes (destinations unchanged by this op)


@dataclass(frozen=True)
class DelService:
    service: Service


class _DestFields(NamedTuple):
    key: ServiceKey
    dest: Destination


class _DestOp(_DestFields):
    """A destination op: a tuple (a full table is ten thousand of them, made
    and read in tight loops) that equals only an op of its own kind, as a
    frozen dataclass would."""
    __slots__ = ()

    def __eq__(self, other):
        return type(other) is type(self) and tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, dest={self.dest!r})"


class AddDest(_DestOp):
    __slots__ = ()


class SetDest(_DestOp):
    __slots__ = ()


class DelDest(_DestOp):
    __slots__ = ()


Op = Union[AddService, UpdateService, DelService, AddDest, SetDest, DelDest]


def diff(current: KernelState, desired: KernelState) -> list[Op]:
    ops: list[Op] = []
    new = tuple.__new__          # AddDest(key, dest), without its Python __new__
    for key in sorted(current.keys() - desired.keys()):
        ops.append(DelService(current[key]))
    for key in sorted(desired.keys() - current.keys()):
        ops.append(AddService(desired[key]))
    for key in sorted(desired.keys() & current.keys()):
        cur, want = current[key], desired[key]
        if cur == want:
            continue
        if cur.attributes() != want.attributes():
            ops.append(UpdateService(want.attributes()))
        if not cur.destinations:
            # a service filled at once (the first update after start: every
            # host was unknown): all adds, in ident order
            need = want.dest_map()
            ops.extend([new(AddDest, (key, need[ident])) for ident in sorted(need)])
            continue
        have, need = cur.dest_map(), want.dest_map()
        for ident in sorted(have.keys() - need.keys()):
            ops.append(DelDest(key, have[ident]))
        for ident in sorted(need.keys() - have.keys()):
            ops.append(AddDest(key, need[ident]))
        for ident in sorted(need.keys() & have.keys()):
            if need[ident] != have[ident]:
                ops.append(SetDest(key, need[ident]))
    return ops


def apply_ops(state: KernelState, ops: Iterable[Op]) -> dict[ServiceKey, Service]:
    """The state after `ops`: what a backend that applied them now holds."""
    out = dict(state)
    pending: dict[ServiceKey, dict] = {}     # destination edits, applied once per service

    def settle(key):
        dests = pending.pop(key, None)
        if dests is not None and key in out:
            out[key] = out[key].with_destinations(dests.values())

    # a full table is tens of thousands of destination ops: exact type tests
    # and the ident as a slice keep this loop short
    for op in ops:
        kind = type(op)
        if kind in _SERVICE_OPS:
            key = op.service.key
            settle(key)
            if kind is AddService:
                out[key] = op.service
            elif kind is DelService:
                out.pop(key, None)
            else:
                old = out.get(key)
                out[key] = op.service.with_destinations(old.destinations if old else ())
            continue
        key = op.key
        dests = pending.get(key)
        if dests is None:
            if key not in out:
                continue
            dests = pending[key] = out[key].dest_map()
        dest = op.dest
        if kind is DelDest:
            dests.pop(dest[:2], None)       # dest.ident
        else:
            dests[dest[:2]] = dest
    for key in list(pending):
        settle(key)
    return out


def touched(ops: Iterable[Op]) -> set[ServiceKey]:
    """Keys of the services that `ops` change."""
    return {op.service.key if type(op) in _SERVICE_OPS else op.key for op in ops}


_SERVICE_OPS = frozenset({AddService, UpdateService, DelService})


def describe(op: Op) -> str:
    """One log line per op, for people."""
    if isinstance(op, AddService):
        return f"service {op.service.key}: added with {len(op.service.destinations)} destinations"
    if isinstance(op, DelService):
        return f"service {op.service.key}: removed"
    if isinstance(op, UpdateService):
        return f"service {op.service.key}: updated"
    verb = {AddDest: "added", SetDest: "changed", DelDest: "removed"}[type(op)]
    return f"service {op.key}: destination {op.dest} weight {op.dest.weight} {verb}"
