"""The pf backend (OpenBSD, FreeBSD): relayd's anchors, driven through pfctl.

Per redirect, as relayd does (relayd.md §1.6, §4.3): anchor
`hoststated/<redirect>` holds one rule per listen address and one
persistent table named after the redirect with the addresses of the active
hosts. A host change replaces the table's contents in one
`pfctl -a hoststated/<r> -t <r> -T replace -f -` (atomic in pf, like
DIOCRSETADDRS); the rules are loaded with `pfctl -a hoststated/<r> -f -`
(one transaction) only when they change. A redirect with no active host
gets its rules flushed and its table emptied, as relayd does; traffic to
the virtual address is then not redirected. pf.conf must contain
`anchor "hoststated/*"` (FreeBSD: also `rdr-anchor "hoststated/*"`).

Rule per listen address (OpenBSD pf.conf syntax):

    pass in quick [on IF] inet proto tcp from any to VIP port P \\
        flags S/SA keep state (tcp.established T) [tag TAG] \\
        rdr-to <r> [port P'] round-robin [sticky-address]

`match in` instead of `pass in quick` with `match pftag`; `route-to <r>`
instead of `rdr-to` for direct routing. Modes: roundrobin, random,
source-hash (with its key), least-states map to pf's pools; IPVS-only
modes fall back to round-robin (logged). pf tables carry no weights here:
a host with weight 0 (disabled, quiescent) is simply left out.

What has been tried on a real pf: NOTHING. Neither pfctl nor a BSD kernel
is available where this was written. The generated rules and pfctl command
lines are checked against golden files (tests/unit/golden_pf/), written from
pf.conf(5) and relayd's pfe_filter.c behaviour; they have not been loaded
into a real pf, and `dump()` (parsing `pfctl -T show` / `-s rules`) has not
seen real pfctl output.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable

from .backend import Backend, BackendError
from .diff import Op, apply_ops, touched
from .service import KernelState, Service, ServiceKey

log = logging.getLogger("hoststated.kernel.pf")

ANCHOR = "hoststated"
PFCTL = "/sbin/pfctl"
POOL = {"roundrobin": "round-robin", "random": "random", "source-hash": "source-hash",
        "least-states": "least-states", "loadbalance": "source-hash", "hash": "source-hash"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdin: str = ""

    def __str__(self) -> str:
        line = " ".join(self.argv)
        return line + ("\n" + self.stdin if self.stdin else "\n")


def _check_name(redirect: str) -> str:
    # the redirect's name becomes an anchor and a table name
    if not _NAME.match(redirect):
        raise BackendError(f"redirect {redirect!r}: pf needs a name of letters, digits, "
                           "'_', '.', '-' (at most 31)")
    return redirect


def active_addresses(services: Iterable[Service]) -> list[str]:
    addrs = {d.address for s in services for d in s.destinations if d.weight > 0}
    return sorted(addrs, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def render_rule(svc: Service, table: str, session_timeout: int = 600,
                pftag: str | None = None, match: bool = False, hash_key: str | None = None,
                port: int = 0) -> str:
    k = svc.key
    if k.protocol == "fwmark":
        raise BackendError(f"service {k}: pf has no firewall marks (use a listen address)")
    words = ["match in" if match else "pass in quick"]
    if svc.interface:
        words.append(f"on {svc.interface}")
    words.append("inet" if k.family == 4 else "inet6")
    words.append(f"proto {k.protocol} from any to {k.address}")
    words.append(f"port {k.port}:{k.port_end}" if k.port_end else f"port {k.port}")
    if k.protocol == "tcp" and not match:
        words.append("flags S/SA")
    if not match:
        words.append(f"keep state (tcp.established {session_timeout})" if k.protocol == "tcp"
                     else "keep state")
    if pftag:
        words.append(f"tag {pftag}")
    if not port:
        ports = {d.port for d in svc.destinations if d.weight > 0}
        port = min(ports) if ports else 0
    if svc.method == "route":
        words.append(f"route-to <{table}>")
    else:
        words.append(f"rdr-to <{table}>")
        if port and (port != k.port or k.port_end):
            words.append(f"port {port}")
    pool = POOL.get(svc.mode)
    if pool is None:
        log.warning("service %s: mode %s has no pf pool, round-robin used", k, svc.mode)
        pool = "round-robin"
    words.append(pool)
    if pool == "source-hash" and hash_key:
        words.append(hash_key)
    if svc.persistence:
        words.append("sticky-address")
    return " ".join(words)


def render_anchor(redirect: str, services: list[Service], **opts) -> str:
    """The rules of anchor hoststated/<redirect>: one per listen address that
    has an active host of its address family."""
    _check_name(redirect)
    return "".join(render_rule(s, redirect, **opts) + "\n"
                   for s in sorted(services, key=lambda s: s.key)
                   if any(d.weight > 0 for d in s.destinations))


def sync_commands(redirect: str, services: list[Service], loaded_rules: str | None,
                  pfctl: str = PFCTL, **opts) -> tuple[list[Command], str]:
    """Commands that bring one redirect's anchor to `services`; also returns
    the rules text now loaded ("" when none)."""
    anchor = f"{ANCHOR}/{_check_name(redirect)}"
    addrs = active_addresses(services)
    if not addrs:
        cmds = []
        if loaded_rules != "":
            cmds.append(Command((pfctl, "-a", anchor, "-F", "rules")))
        cmds.append(Command((pfctl, "-a", anchor, "-t", redirect, "-T", "flush")))
        return cmds, ""
    rules = render_anchor(redirect, services, **opts)
    cmds = [Command((pfctl, "-a", anchor, "-t", redirect, "-T", "replace", "-f", "-"),
                    "".join(a + "\n" for a in addrs))]
    if rules != loaded_rules:
        cmds.append(Command((pfctl, "-a", anchor, "-f", "-"), rules))
    return cmds, rules


def remove_commands(redirect: str, pfctl: str = PFCTL) -> list[Command]:
    anchor = f"{ANCHOR}/{_check_name(redirect)}"
    return [Command((pfctl, "-a", anchor, "-F", "rules")),
            Command((pfctl, "-a", anchor, "-t", redirect, "-T", "kill"))]


def run_pfctl(cmd: Command) -> tuple[int, str, str]:
    p = subprocess.run(cmd.argv, input=cmd.stdin, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


class PfBackend(Backend):
    engine = "pf"

    def __init__(self, run: Callable[[Command], tuple[int, str, str]] = run_pfctl,
                 pfctl: str = PFCTL, redirect_opts: dict[str, dict] | None = None) -> None:
        self._run = run
        self._pfctl = pfctl
        self._state: dict[ServiceKey, Service] = {}
        self._rules: dict[str, str] = {}        # redirect -> rules text loaded
        # per-redirect options the generic Service does not carry
        # (session timeout, pftag, match, hash key), set by configure()
        self.redirect_opts = dict(redirect_opts or {})
        self._listens: dict[str, list] = {}

    def configure(self, config) -> None:
        """Take pf-only options (session timeout, tags) from the config."""
        for r in config.redirects:
            table = config.table(r.forward.table)
            port = r.forward.port or (table.port if table else None) or 0
            self.redirect_opts[r.name] = {"session_timeout": r.session_timeout,
                                          "pftag": r.pftag, "match": r.match_pftag,
                                          "hash_key": r.forward.mode_key, "port": port}
            self._listens[r.name] = [l for l in r.listen if l.address and l.fwmark is None]

    def project(self, state: KernelState) -> dict[ServiceKey, Service]:
        out = {}
        for key, svc in state.items():
            if key.protocol == "fwmark":
                log.warning("service %s: pf has no firewall marks; skipped", key)
                continue
            dests = [d for d in svc.destinations if d.weight > 0]
            out[key] = Service(key=key, mode=svc.mode, method=svc.method,
                               interface=svc.interface, persistence=svc.persistence,
                               redirect=svc.redirect).with_destinations(
                [type(d)(d.address, 0, 1) for d in dests])
        return out

    def dump(self, owned: Iterable[ServiceKey] = ()) -> dict[ServiceKey, Service]:
        # pf's tables can be read exactly; its rules only as pfctl prints
        # them, so they are reloaded (atomically) once after a restart.
        # A redirect whose table holds addresses is reported with them.
        from .service import Destination, family_of
        owned = set(owned)
        out = {}
        for r, listens in sorted(self._listens.items()):
            rc, text, _ = self._run(Command((self._pfctl, "-a", f"{ANCHOR}/{r}",
                                             "-t", r, "-T", "show")))
            have = sorted({ln.strip() for ln in text.splitlines() if ln.strip()}) if rc == 0 else []
            if not have:
                continue
            for l in listens:
                try:
                    fam = family_of(l.address)
                except ValueError:
                    continue
                key = ServiceKey(fam, l.protocol, l.address, l.port or 0, l.port_end or 0)
                if key not in owned:
                    continue
                prev = self._state.get(key)
                dests = [Destination(a, 0, 1) for a in have if family_of(a) == fam]
                out[key] = Service(key=key, mode=prev.mode if prev else "roundrobin",
                                   method=prev.method if prev else "nat",
                                   interface=l.interface,
                                   persistence=prev.persistence if prev else 0,
                                   redirect=r).with_destinations(dests)
        self._state = dict(out)
        return out

    def apply(self, ops: list[Op], after: KernelState | None = None) -> None:
        # (not `after`: the pf anchors follow the redirect names replayed here)
        after = apply_ops(self._state, ops)
        keys = touched(ops)
        redirects = sorted({s.redirect for s in list(self._state.values()) + list(after.values())
                            if s.key in keys})
        for r in redirects:
            svcs = [s for s in after.values() if s.redirect == r]
            if not svcs:
                cmds, rules = remove_commands(r, self._pfctl), None
            else:
                cmds, rules = sync_commands(r, svcs, self._rules.get(r), self._pfctl,
                                            **self.redirect_opts.get(r, {}))
            for c in cmds:
                rc, _, err = self._run(c)
                if rc != 0:
                    raise BackendError(f"pf: {' '.join(c.argv)}: {err.strip() or f'exit {rc}'}")
            if rules is None:
                self._rules.pop(r, None)
            else:
                self._rules[r] = rules
        self._state = after

    def remove(self, current: KernelState) -> None:
        for r in sorted({s.redirect for s in current.values()} | set(self._rules)):
            for c in remove_commands(r, self._pfctl):
                self._run(c)
        self._state, self._rules = {}, {}
