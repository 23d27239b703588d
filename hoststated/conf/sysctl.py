"""The sysctls a director's configuration needs (issue 14 item 5).

needs(config) says which, with the reason; pfe sets them at start and at
each reload (it holds CAP_NET_ADMIN, which the kernel takes as root for the
net.* sysctls of its namespace) and logs each change; -n warns about the
ones not set yet. Per network namespace, as the kernel keeps them.

- NAT (`forward to`): the director routes the replies back, so forwarding
  must be on for the backends' family: net.ipv4.ip_forward,
  net.ipv6.conf.all.forwarding. (conntrack, which NAT rides on, is loaded
  by the kernel with the first NAT rule; a kernel without it fails that
  write, which stops the daemon.)
- IPVS with persistence (`sticky-address`) and quiescent hosts (the
  default): a host at weight 0 still takes the clients its persistence
  templates point to unless net.ipv4.vs.expire_quiescent_template is 1.
- IPVS with `no quiescent` (a down host is removed): its connections
  expire at their next packet with net.ipv4.vs.expire_nodest_conn = 1,
  instead of hanging until their timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from hoststated.conf.model import Config, Location

PROC = "/proc/sys"


@dataclass(frozen=True)
class Need:
    key: str                  # dotted: net.ipv4.ip_forward
    value: str
    why: str
    where: Location | None = None   # the redirect that needs it (for -n)


def needs(config: Config) -> list[Need]:
    out: dict[str, Need] = {}
    default = config.global_.engine
    tables = {t.name: t for t in config.tables}
    for r in config.redirects:
        engine = r.engine or default
        if engine not in ("nftables", "ipvs"):
            continue
        for f in (r.forward, r.backup):
            if f is None or f.method != "nat" or f.table not in tables:
                continue
            for h in tables[f.table].hosts:
                v6 = ":" in (h.address or h.name)
                key = "net.ipv6.conf.all.forwarding" if v6 else "net.ipv4.ip_forward"
                out.setdefault(key, Need(key, "1", f"redirect {r.name} forwards to "
                                                   f"{'IPv6' if v6 else 'IPv4'} hosts by NAT",
                                         r.where))
        if engine == "ipvs":
            if r.sticky is not None and r.quiescent:
                key = "net.ipv4.vs.expire_quiescent_template"
                out.setdefault(key, Need(key, "1", f"redirect {r.name}: sticky-address with "
                                                   "quiescent hosts (IPVS)", r.where))
            if not r.quiescent:
                key = "net.ipv4.vs.expire_nodest_conn"
                out.setdefault(key, Need(key, "1", f"redirect {r.name}: no quiescent, down "
                                                   "hosts are removed (IPVS)", r.where))
    return sorted(out.values(), key=lambda n: n.key)


def path(key: str) -> str:
    return f"{PROC}/{key.replace('.', '/')}"


def read(key: str) -> str | None:
    """The value now; None if the kernel has no such sysctl (yet: the vs
    ones come with the ip_vs module)."""
    try:
        with open(path(key)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def write(key: str, value: str) -> None:
    with open(path(key), "w") as f:
        f.write(value + "\n")


def unmet(config: Config) -> list[tuple[Need, str | None]]:
    """The needs not met now, with the value now (None: not present)."""
    out = []
    for n in needs(config):
        try:
            cur = read(n.key)
        except OSError:
            cur = None
        if cur != n.value:
            out.append((n, cur))
    return out
