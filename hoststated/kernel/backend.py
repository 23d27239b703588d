"""The backend interface and the `none` engine (make_backend() is the
Reconciler's: kernel.reconciler).

A backend owns some kernel objects and nothing else. Its contract:
- `project(state)`: the part of a desired state this engine can express, in
  the form `dump()` gives back (nftables has no connection thresholds and
  stores weights as slot counts; IPVS knows schedulers, not mode names). The
  Reconciler diffs projections, so a kernel that holds what was asked for
  diffs to nothing and is adopted as it is.
- `dump(owned)`: what the kernel holds of the objects this backend owns;
  `owned` names the services the config asks for (IPVS only looks at those).
- `apply(ops, after=None)`: one batch per call, all-or-nothing where the
  kernel allows it. `after`, when given, is the whole state the ops lead to
  (the Reconciler has it: the desired state), so a backend that keeps its
  state need not replay the ops. On failure it raises BackendError, whose
  message is for people.
- `remove(current)`: take away every owned object (clean stop).
- `counters(owned)`: the kernel's counters of the owned services, read
  (kernel.counters carries them across rewrites).
"""

from __future__ import annotations

from typing import Iterable

from .diff import DelService, Op, apply_ops
from .service import KernelState, Sample, Service, ServiceKey


class BackendError(Exception):
    """A kernel write or read failed; str() says what, for an operator."""


class Backend:
    engine = "abstract"

    def project(self, state: KernelState) -> dict[ServiceKey, Service]:
        return dict(state)

    def dump(self, owned: Iterable[ServiceKey] = ()) -> dict[ServiceKey, Service]:
        raise NotImplementedError

    def apply(self, ops: list[Op], after: KernelState | None = None) -> None:
        raise NotImplementedError

    def remove(self, current: KernelState) -> None:
        self.apply([DelService(s) for s in current.values()])

    def counters(self, owned: Iterable[ServiceKey] = ()) -> tuple[list[Sample], set[tuple]]:
        """The kernel's counters of the owned services (kernel.counters),
        and the idents of those made again since the last call; none for
        an engine that counts nothing."""
        return [], set()

    def close(self) -> None:
        pass


class NoneBackend(Backend):
    """`engine none`: monitor only. Keeps the state it was given, in memory."""
    engine = "none"

    def __init__(self) -> None:
        self.state: dict[ServiceKey, Service] = {}
        self.batches = 0

    def dump(self, owned: Iterable[ServiceKey] = ()) -> dict[ServiceKey, Service]:
        return dict(self.state)

    def apply(self, ops: list[Op], after: KernelState | None = None) -> None:
        self.state = dict(after) if after is not None else apply_ops(self.state, ops)
        self.batches += 1
