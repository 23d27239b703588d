"""The Reconciler: keeps the kernel equal to desired(config, host states).

pfe drives it: start() once, update() on every batch of state changes from
hce (the changes only: the Reconciler is the one keeper of every host's
status and of the runtime-disabled redirects; applied at once, no waiting
for the next interval, unlike relayd's batched F_ADD), resync() on a timer,
reconfigure() on reload, stop() at the end. All decisions are in the pure `desired` and `diff`; this class only
keeps the last known kernel state per engine and hands ops to backends.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

from hoststated.conf.model import Config
from hoststated.states import HostStatus

from .backend import Backend, BackendError, NoneBackend
from .counters import Totals
from .desired import adopted_statuses, engine_of, redirect_services, service_keys
from .diff import Op, describe, diff
from .ipvs import IpvsBackend
from .nft import NftBackend
from .pf import PfBackend
from .routes import NetlinkRoutes, Routes
from .service import Counts, Service, ServiceKey

log = logging.getLogger("hoststated.kernel")


def make_backend(engine: str, **kwargs) -> Backend:
    """The backend for an engine name: "nftables", "ipvs", "pf" or "none"."""
    if engine == "none":
        return NoneBackend()
    if engine == "nftables":
        return NftBackend(**kwargs)
    if engine == "ipvs":
        return IpvsBackend(**kwargs)
    if engine == "pf":
        return PfBackend(**kwargs)
    raise BackendError(f"unknown engine {engine!r}")


class Reconciler:
    def __init__(self, config: Config, backend: Backend | None = None, *,
                 backends: Mapping[str, Backend] | None = None,
                 routes: Routes | None = None) -> None:
        self.config = config
        # routers (kernel.routes): written through rtnetlink unless the
        # engine is none (a monitor) or the backend is fixed (tests)
        if routes is None:
            real = backend is None and config.global_.engine != "none"
            routes = Routes(config, make=NetlinkRoutes if real else None)
        self.routes = routes
        self._fixed = backend               # one backend for every redirect
        if backend is not None:
            self._configure(backend)
        self._backends: dict[str, Backend] = dict(backends or {})
        self._statuses: dict[int, HostStatus] = {}
        # hosts whose status we took from the kernel (start) or carried over
        # (reconfigure): UNKNOWN does not override them, a real status does
        self._provisional: set[int] = set()
        self._disabled: frozenset[str] = frozenset()
        # runtime weights (hoststatectl host weight|drain): host id -> weight
        self._weights: dict[int, int] = {}
        self._current: dict[str, dict[ServiceKey, Service]] = {}
        self._owned: dict[str, set[ServiceKey]] = {}
        self.last_ops: list[Op] = []
        self.errors = 0                     # failed batches, for show summary
        self._owner: dict[ServiceKey, str] = {}        # service -> redirect
        self._rdr_keys: dict[str, set[ServiceKey]] = {}
        self._host_rdrs = self._index(config)
        self._totals = Totals()             # the kernel counters, carried across rewrites

    @staticmethod
    def _index(config: Config) -> dict[int, set[str]]:
        """host id -> the redirects whose main or backup table holds it."""
        out: dict[int, set[str]] = {}
        for r in config.redirects:
            for fwd in (r.forward, r.backup):
                t = config.table(fwd.table) if fwd else None
                for h in (t.hosts if t else ()):
                    out.setdefault(h.id, set()).add(r.name)
        return out

    # --- helpers ----------------------------------------------------------

    def _engines(self) -> set[str]:
        if self._fixed is not None:
            return {self._fixed.engine}
        return {engine_of(self.config, r) for r in self.config.redirects} | set(self._current)

    def backend(self, engine: str) -> Backend:
        if self._fixed is not None:
            return self._fixed
        if engine not in self._backends:
            self._backends[engine] = make_backend(engine)
            self._configure(self._backends[engine])
        return self._backends[engine]

    def _configure(self, backend: Backend) -> None:
        # engine-only options (pf: session timeout, tags) come from the config
        configure = getattr(backend, "configure", None)
        if configure is not None:
            configure(self.config)

    def _desired(self, names: set[str] | None = None
                 ) -> tuple[dict[str, dict[ServiceKey, Service]], dict[str, set[ServiceKey]] | None]:
        """The projected desired state per engine: of every redirect, or of
        the redirects in `names` only (an update touches few); with `names`,
        also the keys in scope per engine (what they had and have)."""
        fixed = self._fixed.engine if self._fixed is not None else None
        want: dict[str, dict[ServiceKey, Service]] = {}
        scope: dict[str, set[ServiceKey]] = {}
        if names is None:
            self._owner, self._rdr_keys = {}, {}
            for e in self._engines():
                want[e] = {}
        for r in self.config.redirects:
            if names is not None and r.name not in names:
                continue
            eng = fixed or engine_of(self.config, r)
            old = self._rdr_keys.get(r.name, set())
            for k in old:
                if self._owner.get(k) == r.name:
                    del self._owner[k]
            off = r.disabled or r.name in self._disabled
            svcs = [] if off else redirect_services(self.config, r, self._statuses,
                                                    weights=self._weights)
            proj = self.backend(eng).project({sv.key: sv for sv in svcs})
            keys = set()
            bucket = want.setdefault(eng, {})
            for k, sv in proj.items():
                owner = self._owner.get(k)
                if owner is not None and owner != r.name:
                    log.warning("redirect %s: %s already used by redirect %s, ignored",
                                r.name, k, owner)
                    continue
                self._owner[k] = r.name
                bucket[k] = sv
                keys.add(k)
            self._rdr_keys[r.name] = keys
            scope.setdefault(eng, set()).update(old | keys)
        return want, (scope if names is not None else None)

    def _all_keys(self) -> dict[str, set[ServiceKey]]:
        """Every service key the config could ask for, per engine (IPVS dumps
        only these: what we own)."""
        engine = self._fixed.engine if self._fixed is not None else None
        keys = {e: set(self.backend(e).project({k: Service(k) for k in ks}))
                for e, ks in service_keys(self.config, engine).items()}
        for e, cur in self._current.items():
            keys.setdefault(e, set()).update(cur)
        return keys

    def _sync(self, want: dict[str, dict[ServiceKey, Service]],
              scope: dict[str, set[ServiceKey]] | None = None) -> list[Op]:
        """Diff and apply, per engine: everything, or only the keys in scope."""
        done: list[Op] = []
        for engine in (scope if scope is not None else want):
            state = want.get(engine, {})
            current = self._current.get(engine, {})
            if scope is None:
                ops = diff(current, state)
            else:
                keys = scope[engine]
                ops = diff({k: current[k] for k in keys if k in current}, state)
            if not ops:
                continue
            self._log_ops(engine, ops)
            # the ops lead to the desired state for the keys in scope
            # (apply_ops(cur, diff(cur, want)) == want): no need to replay
            # tens of thousands of ops on a full write, here or in a backend
            if scope is None:
                after = dict(state)
            else:
                after = {k: sv for k, sv in current.items() if k not in keys}
                after.update(state)
            backend = self.backend(engine)
            try:
                backend.apply(ops, after)
            except BackendError as e:
                # the kernel is in some state: learn which; resync retries
                log.error("%s: %s", engine, e)
                self.errors += 1
                try:
                    self._current[engine] = backend.dump(self._all_keys().get(engine, set()))
                except BackendError as e2:
                    log.error("%s: %s", engine, e2)
                continue
            self._current[engine] = after
            done.extend(ops)
        self.last_ops = done
        return done

    @staticmethod
    def _log_ops(engine: str, ops: list[Op]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        if len(ops) <= 20:
            for op in ops:
                log.info("%s: %s", engine, describe(op))
            return
        per: dict[ServiceKey, int] = {}
        for op in ops:
            k = op.key if hasattr(op, "key") else op.service.key     # dest ops: most
            per[k] = per.get(k, 0) + 1
        log.info("%s: %d changes to %d services (%s%s)", engine, len(ops), len(per),
                 ", ".join(str(k) for k in list(per)[:3]), ", ..." if len(per) > 3 else "")

    def _dump(self) -> None:
        owned = self._all_keys()
        for engine in self._engines() | set(owned):
            self._current[engine] = self.backend(engine).dump(owned.get(engine, set()))

    # --- the contract -----------------------------------------------------

    def start(self) -> list[Op]:
        """Dump the kernel, adopt what matches, apply the rest."""
        self._dump()
        merged: dict[ServiceKey, Service] = {}
        for cur in self._current.values():
            merged.update(cur)
        before = dict(self._statuses)
        self._statuses = adopted_statuses(self.config, self._statuses, merged)
        # the gateways our routes go through now: up until hce says otherwise
        for h in self.routes.start():
            if self._statuses.get(h, HostStatus.UNKNOWN) == HostStatus.UNKNOWN:
                self._statuses[h] = HostStatus.UP
        self._provisional = {h for h, st in self._statuses.items() if before.get(h) != st}
        ops = self._sync(*self._desired())
        self.routes.sync(self._statuses, self._weights)
        return ops

    def update(self, changes: Mapping[int, HostStatus],
               disabled_redirects: Iterable[str] | None = None) -> list[Op]:
        """Apply the host states that changed (hosts not named keep theirs:
        the Reconciler is the one keeper of the statuses) and, when given,
        the complete set of redirects disabled at run time (kept until the
        next one is given); the kernel changes at once."""
        return self.update_batches((changes,), disabled_redirects)

    def update_batches(self, batches: Iterable[Mapping[int, HostStatus]],
                       disabled_redirects: Iterable[str] | None = None) -> list[Op]:
        """update() of several batches in their order, with one write: the
        kernel goes to the state the last leaves, as after one update()
        each. pfe hands over the batches hce sent while the kernel thread
        was busy: a write recomputes every redirect of the hosts it names,
        so on the first round (every host changes, a few at a time) one per
        batch cost pfe a second of CPU at 10,000 hosts."""
        changed = set()
        # every host on the first round: locals, and the provisional set
        # only looked at while it has members
        unknown, known, provisional = HostStatus.UNKNOWN, self._statuses, self._provisional
        for changes in batches:
            for host_id, st in changes.items():
                if provisional:
                    if st == unknown and host_id in provisional:
                        continue
                    provisional.discard(host_id)
                if known.get(host_id, unknown) != st:
                    changed.add(host_id)
                known[host_id] = st
        if changed:
            self.routes.update(changed, known, self._weights)
        rdrs = self._host_rdrs
        names = {r for h in changed for r in rdrs.get(h, ())}
        if disabled_redirects is not None:
            disabled = frozenset(disabled_redirects)
            names |= disabled ^ self._disabled
            self._disabled = disabled
        if not names:
            return []
        return self._sync(*self._desired(names))

    def set_weights(self, weights: Mapping[int, int]) -> list[Op]:
        """The complete map of runtime weights (hosts not named: their
        config's); only the redirects of hosts whose weight changed are
        rewritten."""
        old, self._weights = self._weights, dict(weights)
        changed = {h for h in old.keys() | self._weights.keys()
                   if old.get(h) != self._weights.get(h)}
        if changed:
            self.routes.update(changed, self._statuses, self._weights)
        names = {r for h in changed for r in self._host_rdrs.get(h, ())}
        if not names:
            return []
        return self._sync(*self._desired(names))

    def weights(self) -> dict[int, int]:
        return dict(self._weights)

    def disabled(self) -> frozenset[str]:
        """The redirects disabled at run time (by hce, through pfe)."""
        return self._disabled

    def reconfigure(self, new_config: Config) -> list[Op]:
        """A reload: carry host states over to the new config's ids (same
        table, name, address and port), re-dump the kernel (a reload also
        repairs drift) and apply only the diff."""
        old = {(h.table, h.name, h.address, h.port): self._statuses.get(h.id)
               for h in self.config.hosts()}
        old_w = {(h.table, h.name, h.address, h.port): self._weights[h.id]
                 for h in self.config.hosts() if h.id in self._weights}
        carried: dict[int, HostStatus] = {}
        weights: dict[int, int] = {}
        for h in new_config.hosts():
            k = (h.table, h.name, h.address, h.port)
            st = old.get(k)
            if st is not None:
                carried[h.id] = st
            if k in old_w:
                # until hce's map for the new config arrives (it follows)
                weights[h.id] = old_w[k]
        self._weights = weights
        self.config = new_config
        self._host_rdrs = self._index(new_config)
        self._statuses = carried
        self._provisional = set(carried)
        for b in ({self._fixed} if self._fixed else set(self._backends.values())):
            self._configure(b)
        names = {r.name for r in new_config.redirects}
        self._disabled = frozenset(n for n in self._disabled if n in names)
        self._dump()
        ops = self._sync(*self._desired())
        self.routes.reconfigure(new_config)
        self.routes.sync(self._statuses, self._weights, dump=True)
        return ops

    def resync(self) -> list[Op]:
        """Re-dump the kernel and repair any drift; returns the repairs."""
        self._dump()
        ops = self._sync(*self._desired())
        if ops:
            log.warning("kernel drift repaired: %d changes", len(ops))
        if routes := self.routes.sync(self._statuses, self._weights, dump=True):
            log.warning("route drift repaired: %d changes", len(routes))
        return ops

    def stop(self, clean: bool = True) -> None:
        """With clean, remove every object we own; close the backends."""
        try:
            if clean:
                for engine, current in list(self._current.items()):
                    self.backend(engine).remove(current)
                    self._current[engine] = {}
        finally:
            try:
                self.routes.stop(clean)
            finally:
                for b in ({self._fixed} if self._fixed else set(self._backends.values())):
                    b.close()

    def counters(self) -> list[tuple[str, str, ServiceKey, Counts, dict[str, Counts]]]:
        """Read every engine's counters of the services we hold: per service
        (redirect, engine, key, its counts, per destination address), totals
        that grow across rewrites (kernel.counters)."""
        samples, reset, engines = [], set(), {}
        for engine, current in self._current.items():
            if not current:
                continue
            got, fresh = self.backend(engine).counters(current.keys())
            samples += got
            reset |= fresh
            engines.update(dict.fromkeys(current, engine))
        self._totals.add(samples, reset)
        self._totals.keep(self._owner)
        out = []
        for key, (svc, dests) in sorted(self._totals.services().items()):
            redirect = self._owner.get(key)
            if redirect is not None:
                out.append((redirect, engines.get(key, ""), key, svc, dests))
        return out

    # --- introspection ----------------------------------------------------

    def state(self, engine: str | None = None) -> dict[ServiceKey, Service]:
        """The last known kernel state (all engines merged without `engine`)."""
        if engine is not None:
            return dict(self._current.get(engine, {}))
        out: dict[ServiceKey, Service] = {}
        for cur in self._current.values():
            out.update(cur)
        return out

    def statuses(self) -> dict[int, HostStatus]:
        return dict(self._statuses)


__all__ = ["Reconciler", "BackendError"]
