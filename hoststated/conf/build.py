"""relayd's meaning of the parsed statements: the Config model, with every error.

Statements are applied in file order, as relayd's parser actions are: the
global `timeout` in force when a table is used is that table's timeout, a
table must be defined before it is used, ids count up as objects appear.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Any, get_args

from pydantic import SecretStr, ValidationError

from hoststated.conf import engines, model as m, printconf
from hoststated.conf.errors import Reporter
from hoststated.conf.parse import Opt, Stmt
from hoststated.conf.ports import SERVICES

Where = tuple[str, int, int]

SESSION_TIMEOUT_MAX = 2147483647
PREFORK_MAX = 32

# what each protocol check kind accepts (besides its positional argument)
SERVICE_OPTS: dict[str, set[str]] = {
    "dns": {"type", "expect", "tcp"},
    "smtp": {"helo", "starttls"},
    "submission": {"helo", "starttls"},
    "ftp": {"user", "password"},
    "imap": {"user", "password", "starttls"},
    "imaps": {"user", "password"},
    "pop": {"user", "password", "starttls"},
    "pops": {"user", "password"},
    "nntp": set(),
    "ldap": {"bind", "password", "base", "filter", "starttls"},
    "ldaps": {"bind", "password", "base", "filter"},
    "mysql": {"user", "password", "database", "query"},
    "pgsql": {"user", "password", "database", "query"},
    "radius": {"secret", "user", "password", "nas-identifier"},
    "sip": {"tcp"},
    "http-proxy": {"code"},
    "redis": {"password", "expect"},
}
SERVICE_ARG = {"dns": "query name", "sip": "request uri", "http-proxy": "url"}
DNS_TYPES = {"A", "AAAA", "MX", "NS", "TXT", "SOA", "CNAME", "PTR"}
HTTP_OPTS = {"host", "code", "digest", "body", "method", "verify", "ca"}
RELAYD_MODES = set(get_args(m.RelaydMode))
IPVS_MODES = set(get_args(m.IpvsMode))
RDR_BAD_MODES = {"loadbalance", "hash"}
TLS_FLAGS = {"tlsv1", "tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3", "sslv3",
             "client-renegotiation", "cipher-server-preference", "legacy"}
ENGINES = set(get_args(m.Engine))


_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def is_ip(s: str) -> bool:
    if _IPV4.fullmatch(s):               # the common case, 20 times cheaper
        return True
    try:
        ipaddress.ip_address(s.split("%", 1)[0])
        return True
    except ValueError:
        return False


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_host_name(s: str) -> bool:
    """A DNS name as resolvers take it: labels of letters, digits, `-`
    (not first or last) and `_` (service names), 63 at most each, 253 in
    all, an optional root dot."""
    s = s[:-1] if s.endswith(".") else s
    return 0 < len(s) <= 253 and all(_LABEL.fullmatch(label) for label in s.split("."))


class Names:
    """Names to numbers without looking anything up (--no-lookup): literal
    addresses, the well-known service names of conf.ports.

    conf.load hands the Builder its subclass that asks the system
    (getaddrinfo, getservbyname, if_nametoindex); this module does no I/O.
    """

    lookup = False

    def address(self, name: str) -> tuple[str | None, str | None]:
        """(address, error); (None, None) when the name was not looked up."""
        if _IPV4.fullmatch(name):           # canonical dotted quad: itself
            return name, None
        if is_ip(name):
            return str(ipaddress.ip_address(name.split("%", 1)[0])), None
        return None, None

    def service(self, name: str, proto: str = "tcp") -> int | None:
        """The port of a service name; None if unknown (or not looked up)."""
        return SERVICES.get(name)

    def interface(self, name: str) -> bool | None:
        """Whether a network interface of that name exists; None: not looked up."""
        return None


class Builder:
    def __init__(self, report: Reporter, names: Names | None = None, runnable: bool = True):
        self.report = report
        self.runnable = runnable
        self.resolver = names or Names()
        self.lookup = self.resolver.lookup
        self.glob: dict[str, Any] = {}
        self.glob_where: dict[str, Where] = {}
        self.templates: dict[str, m.TableTemplate] = {}
        self.template_used: set[str] = set()
        # concrete tables by (name, check and options): relayd's table_inherit
        # makes one per distinct use; a second distinct use of <t> port P is
        # t:P#2 here (relayd gives both the same name; ours must be unique)
        self.tables: dict[tuple[str, Any], m.Table | m.RelayTable] = {}
        self.table_uses: dict[str, int] = {}
        self.table_list: list[m.Table] = []
        self.relay_tables: list[m.RelayTable] = []
        self.redirects: list[m.Redirect] = []
        self.relays: list[m.Relay] = []
        self.protocols: dict[str, m.Protocol] = {}
        self.routers: list[m.Router] = []
        self.order: list[str] = []
        self.relay_protocol_refs: list[tuple[str, Where]] = []
        # (relay, where) of each `proxy-protocol`: refused in a dns relay
        self.relay_proxy_refs: list[tuple[str, Where]] = []
        self.next_table = 1
        self.next_host = 1
        self.host_where: dict[int, Where] = {}
        self.arp_checks: list[Where] = []     # migrate (issue 14): each `check arp`
        self.parent_refs: list[tuple[int, Where]] = []
        self.table_timeouts: list[tuple[int, int | None]] = []
        self.secrets: list[Where] = []
        # files the config names, checked by conf.load unless --no-lookup
        self.files_named: list[tuple[str, Where, str]] = []
        # each protocol's tls options' places, in Protocol.tls order
        self.tls_where: dict[str, list[Where]] = {}
        # protocol checks and where each is written: conf.load reports the
        # ones whose Python package is not installed
        self.service_checks: list[tuple[str, Where]] = []
        # per redirect: (redirect, [(feature, where, note)]), checked against
        # the capability table (conf.engines) once the engine is known
        self.rdr_features: list[tuple[m.Redirect, list[tuple[str, Where, str]]]] = []
        # statements nothing implements: refused with the reason
        self.unimplemented: list[tuple[Where, str]] = []
        # interfaces the config names: (name, where, needed by the kernel write)
        self.interfaces: list[tuple[str, Where, bool]] = []
        self.names_redirects: set[str] = set()
        self.names_relays: set[str] = set()
        self.names_routers: set[str] = set()
        # each protocol's rules' places, in Protocol.rules order
        self.rule_where: dict[str, list[Where]] = {}

    def err(self, where: Where, msg: str) -> None:
        self.report.error(where, msg)

    def is_interface(self, name: str) -> bool:
        # `listen on egress`: relayd's interface group, taken as it is
        return name == "egress" or bool(self.resolver.interface(name))

    # -- global options -------------------------------------------------------

    @property
    def interval(self) -> int:
        return self.glob.get("interval", m.CHECK_INTERVAL)

    @property
    def timeout(self) -> int:
        return self.glob.get("timeout", m.CHECK_TIMEOUT)

    def global_opt(self, o: Opt) -> None:
        k, v, w = o.key, o.value, o.where
        if k == "interval":
            if v <= 0:
                return self.err(w, f"invalid interval: {v} (must be at least 1 s)")
        elif k == "timeout":
            if v <= 0:
                return self.err(w, f"invalid timeout: {v} ms")
        elif k == "prefork":
            if not 1 <= v <= PREFORK_MAX:
                return self.err(w, f"invalid number of preforked relays: {v} "
                                   f"(1-{PREFORK_MAX})")
        elif k == "socket":
            path, group = v
            self.glob["socket"] = str(path)
            if group is not None:
                self.glob["socket_group"] = str(group)
            self.glob_where[k] = w
            return
        elif k == "engine":
            v = str(v)
            if v not in ENGINES:
                return self.err(w, f"unknown engine '{v}': expected one of "
                                   + ", ".join(sorted(ENGINES)))
        elif k == "cleanstop":
            v = str(v)
            if v not in ("yes", "no"):
                return self.err(w, f"cleanstop takes yes or no, not '{v}'")
            v = v == "yes"
        elif k == "max_checks":
            if v < 1:
                return self.err(w, f"invalid max checks: {v} (must be at least 1)")
        elif k == "check_workers":
            if not 1 <= v <= m.MAX_CHECK_WORKERS:
                return self.err(w, f"invalid check workers: {v} (must be 1 to "
                                   f"{m.MAX_CHECK_WORKERS})")
        elif k == "metrics":
            addr, port = str(v[0]), v[1]
            if not is_ip(addr):
                return self.err(w, f"metrics listen on {addr}: not an IP address (the "
                                   "endpoint is bound at start, before any lookup)")
            port = m.METRICS_PORT if port is None else self.port(port, w, "metrics port")
            if port is None:
                return
            v = m.MetricsListen(address=addr, port=port)
        elif k in ("notify", "alert_mail", "maintenance_dir", "autoreload"):
            return self.notify_opt(k, v, w)     # issue 14
        elif k == "state_file":                 # migrate (issue 14): monitorfile
            v = str(v)
            if not v.startswith("/"):
                return self.err(w, f"log state file {v}: must be an absolute path")
            self.files_named.append((v, w, "log state file"))
        elif k == "agentx":
            v = m.AgentX(**v)
        elif k in ("user", "restricted_socket"):
            v = str(v)
        self.glob[k] = v                  # the last one wins, as relayd
        self.glob_where[k] = w

    # -- issue 14: notifications, maintenance files, autoreload ---------------

    def program(self, cmd: str, w: Where, what: str) -> str | None:
        """A command run without a shell: its words (shlex), the first an
        absolute path the load checks is an executable file."""
        try:
            words = shlex.split(cmd)
        except ValueError as e:
            self.err(w, f"{what} {cmd!r}: {e}")
            return None
        if not words:
            self.err(w, f"{what}: empty command")
            return None
        if not words[0].startswith("/"):
            self.err(w, f"{what} {cmd!r}: the program must be an absolute path (it runs "
                        "without a shell, and without a search path)")
            return None
        self.files_named.append((words[0], w, "program"))
        return cmd

    def mail_address(self, a: str, w: Where, what: str) -> bool:
        if not a or any(c.isspace() or c in "<>,;\"()" for c in a) or a.count("@") > 1:
            self.err(w, f"{what} {a!r}: not a mail address")
            return False
        return True

    def notify_opt(self, k: str, v: Any, w: Where) -> None:
        if k in ("notify", "alert_mail"):
            if (nv := self.notify_value(k, v, w)) is None:
                return
            if k == "notify":
                # every `notify command` runs (keepalived's notify_up and
                # notify_down become two of them)
                self.glob["notify"] = (*self.glob.get("notify", ()), nv)
            else:
                self.glob[k] = nv                 # the last one wins, as relayd
            self.glob_where[k] = w
            return
        self.other_notify_opt(k, v, w)

    def notify_value(self, k: str, v: Any, w: Where) -> Any:
        """A NotifyCommand or an AlertMail, global or a redirection's; None
        (and an error) if it is wrong."""
        if k == "notify":
            cmd, opts = v
            d: dict[str, Any] = {"command": self.program(str(cmd), w, "notify command")}
            for o in opts:
                if o.key == "on":
                    # fallback: migrate (issue 14), ldirectord's fallbackcommand
                    if o.value not in ("up", "down", "all", "fallback"):
                        return self.err(o.where, f"notify command: on {o.value}: expected "
                                                 "up, down, all or fallback")
                    d["on"] = o.value
                elif o.key == "timeout":
                    if not 1 <= o.value <= 3600000:
                        return self.err(o.where, f"notify command: invalid timeout "
                                                 f"{o.value} ms (1-3600000)")
                    d["timeout"] = int(o.value)
            return m.NotifyCommand(**d) if d["command"] is not None else None
        if k == "alert_mail":
            to, opts = v
            rcpts = tuple(a.strip() for a in str(to).split(","))
            if not all(self.mail_address(a, w, "alert mail to") for a in rcpts):
                return
            d = {"to": rcpts}
            for o in opts:
                if o.key == "from":
                    if not self.mail_address(o.value, o.where, "alert mail from"):
                        return
                    d["sender"] = o.value
                elif o.key == "via":
                    host, port = o.value
                    if not is_ip(host) and not is_host_name(host):
                        return self.err(o.where, f"alert mail via {host}: not an address "
                                                 "or a host name")
                    d["host"] = host
                    if port is not None:
                        if (port := self.port(port, o.where, "alert mail port")) is None:
                            return
                        d["port"] = port
                elif o.key == "every":
                    if not 0 <= o.value <= 2**31 - 1:
                        return self.err(o.where, f"alert mail: invalid every {o.value} s")
                    d["every"] = int(o.value)
                elif o.key == "on":
                    if o.value not in ("up", "down", "all"):
                        return self.err(o.where, f"alert mail: on {o.value}: expected up, "
                                                 "down or all")
                    d["on"] = o.value
            return m.AlertMail(**d)

    def other_notify_opt(self, k: str, v: Any, w: Where) -> None:
        if k == "maintenance_dir":
            v = str(v)
            if not v.startswith("/"):
                return self.err(w, f"maintenance directory {v}: must be an absolute path")
            self.files_named.append((v, w, "maintenance directory"))
        elif k == "autoreload":
            cb = None if v is None else self.program(str(v), w, "autoreload callback")
            if v is not None and cb is None:
                return
            v = m.Autoreload(callback=cb)
        self.glob[k] = v                  # the last one wins, as relayd
        self.glob_where[k] = w

    def finish_global(self) -> m.Global:
        g = dict(self.glob)
        if g.get("timeout", m.CHECK_TIMEOUT) >= g.get("interval", m.CHECK_INTERVAL) * 1000:
            where = self.glob_where.get("timeout") or self.glob_where.get("interval")
            self.err(where, f"global timeout {g.get('timeout', m.CHECK_TIMEOUT)} ms is not "
                            f"below the global interval of "
                            f"{g.get('interval', m.CHECK_INTERVAL)} s")
        return m.Global(**g)

    # -- tables -----------------------------------------------------------------

    def table_def(self, s: Stmt) -> None:
        name = str(s.name)
        if name in self.templates:
            first = self.templates[name].where
            return self.err(s.where, f"table <{name}> defined twice (first at "
                                     f"{first.file}:{first.line})")
        if not s.opts:
            self.err(s.where, f"table <{name}> has no hosts")
            return
        hosts = []
        for h in s.opts:
            spec = self.host_spec(h)
            # migrate (issue 14): an address range stands for each of its addresses
            rng = address_range(spec.name)
            if isinstance(rng, str):
                self.err(h.where, f"host {spec.name}: {rng}")
                continue
            if rng is None:
                hosts.append(spec)
            else:
                hosts.extend(spec.model_copy(update={"name": a}) for a in rng)
        self.templates[name] = m.TableTemplate(
            name=name, disabled=s.extra["disabled"], hosts=tuple(hosts),
            where=m.Location(file=s.where[0], line=s.where[1], col=s.where[2]))

    def host_spec(self, h: Stmt) -> m.HostSpec:
        d: dict[str, Any] = {"name": str(h.name)}
        for o in h.opts:
            v = o.value
            if o.key == "port":             # migrate (issue 14): a port of its own
                d["port"] = self.port(v, o.where, f"host {h.name} port")
                continue
            if o.key == "no_check":
                d["checked"] = False
                continue
            if o.key in ("retry", "priority", "ip_ttl", "weight", "max_connections",
                         "min_connections", "parent"):
                lim = {"ip_ttl": (1, 255), "priority": (1, 255), "weight": (0, 65535),
                       "retry": (0, 1000000), "parent": (1, 2**31 - 1)}.get(o.key, (0, 2**31 - 1))
                if not lim[0] <= v <= lim[1]:
                    self.err(o.where, f"host {h.name}: invalid {o.key.replace('_', ' ')}: "
                                      f"{v} ({lim[0]}-{lim[1]})")
                    continue
            d[o.key] = int(v) if isinstance(v, int) else v
        if d.get("max_connections") is not None and d.get("min_connections") is not None \
                and d["min_connections"] > d["max_connections"]:
            self.err(h.where, f"host {h.name}: min-connections is above max-connections")
        if address_range(d["name"]) is not None:
            pass                            # an address range: table_def expands it
        elif not is_ip(d["name"]) and not is_host_name(d["name"]):
            # relayd would fail to resolve it; --no-lookup must refuse it too
            self.err(h.where, f"host {d['name']}: not an address or a host name")
        elif self.lookup and not is_ip(d["name"]):
            addr, error = self.resolver.address(d["name"])
            if error:
                self.err(h.where, f"host {d['name']}: {error}")
        d["where"] = m.Location(file=h.where[0], line=h.where[1], col=h.where[2])
        return m.HostSpec(**d)

    def port(self, v, where: Where, what: str = "port") -> int | None:
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= 65535:
                self.err(where, f"{what} {v} out of range (1-65535)")
                return None
            return v
        s = str(v)
        if s.isdigit():
            return self.port(int(s), where, what)
        p = self.resolver.service(s)
        if p is None and self.lookup:
            self.err(where, f"unknown service name '{s}' for {what} "
                            "(use a number, or a name from /etc/services)")
        elif p is None:
            # a port we cannot name is no config to accept (nor to print: -nv)
            self.err(where, f"service name '{s}' for {what} is not one hoststated "
                            "knows without /etc/services, which --no-lookup does not "
                            "read (use a number)")
        return p

    def table_use(self, ref, opts: list[Opt], where: Where, ctx: str,
                  default_port: int | None) -> tuple[m.Forward | None, dict]:
        """`forward to <t> port P check ...`: the concrete table, and the forward."""
        name = str(ref)
        info: dict[str, Any] = {}
        tmpl = self.templates.get(name)
        if tmpl is None:
            self.err(where, f"table <{name}> is not defined (define it with "
                            f"'table <{name}> {{ hosts }}' before it is used)")
        else:
            self.template_used.add(name)
        port = None
        check = None
        o_d: dict[str, Any] = {}
        fwd: dict[str, Any] = {}
        ok = True
        for o in opts:
            k, v, w = o.key, o.value, o.where
            if k == "port":
                port = self.port(v, w)
                if port is None and not isinstance(v, int) and not str(v).isdigit() \
                        and ":" in str(v):
                    self.err(w, f"invalid port {v}: a table takes one port")
            elif k == "check":
                if check is not None:
                    self.err(w, "only one check per table use")
                check = self.check(v, w)
                if check is None:
                    ok = False
            elif k == "timeout":
                if v <= 0:
                    self.err(w, f"invalid timeout: {v} ms")
                o_d["timeout"] = v
                info["timeout_where"] = w
            elif k == "interval":
                g = self.interval
                if v < g or v % g:
                    self.err(w, f"table interval {v} s must be a multiple of the "
                                f"global interval {g} s")
                o_d["interval"] = v
            elif k in ("rise", "fall"):
                if not 1 <= v <= 1000:
                    self.err(w, f"invalid {k}: {v} (1-1000)")
                o_d[k] = v
            elif k in ("fast_interval", "down_interval"):
                if v <= 0:
                    self.err(w, f"invalid {k.replace('_', ' ')}: {v}")
                o_d[k] = v
            elif k in MIGRATE_OPTS:        # migrate (issue 14)
                if k in o_d:
                    self.err(w, f"'{MIGRATE_OPTS[k]}' given twice")
                v = self.migrate_opt(k, v, w)
                if v is not None:
                    o_d[k] = v
                    info[f"{k}_where"] = w
            elif k == "demote":
                o_d["demote"] = str(v)
                self.unimplemented.append((w, "demote: hoststated demotes no carp group "
                                              "(Linux has no carp); remove it"))
            elif k == "mode":
                mode, key = str(v[0]), v[1]
                if mode not in RELAYD_MODES and mode not in IPVS_MODES:
                    self.err(w, f"unknown mode '{mode}': expected one of "
                                + ", ".join(sorted(RELAYD_MODES | IPVS_MODES)))
                    continue
                if ctx == "redirect" and mode in RDR_BAD_MODES:
                    self.err(w, f"mode {mode} is not supported for redirections")
                    continue
                # least-states: relayd's is for redirects only; the relays
                # here count their own sessions (relay_select)
                if ctx == "relay" and mode in IPVS_MODES:
                    self.err(w, f"mode {mode} is not supported for relays")
                    continue
                if key is not None and mode not in ("source-hash", "loadbalance", "hash"):
                    self.err(w, f"mode {mode} takes no key")
                fwd["mode"] = mode
                info["mode_where"] = w
                if key is not None:
                    fwd["mode_key"] = str(key)
            elif k == "interface":
                fwd["interface"] = str(v)
            elif k == "retry":
                if ctx != "relay":
                    self.err(w, "'retry' on 'forward to' is for relays; in a redirect "
                                "write it on the host: table <t> { host retry N }")
                fwd["retry"] = v
            elif k in ("inet", "inet6"):
                self.err(w, f"'{k}' is only for a relay forwarding to an address")
            elif k == "passive":
                passive = self.passive(v, w, ctx)
                if passive is not None:
                    o_d["passive"] = passive
                    info["passive_where"] = w
            elif k == "proxy_protocol":
                if ctx != "relay":
                    self.err(w, f"'proxy-protocol' is for relays: a {ctx} writes no "
                                "header toward its hosts")
                elif (version := self.proxy_version(v, w)) is not None:
                    fwd["proxy_protocol"] = version
                    info["proxy_where"] = w
        if port is None:
            port = default_port
        info["port"] = port
        info["fwd"] = fwd
        if "timeout" in o_d and o_d["timeout"] >= o_d.get("interval", self.interval) * 1000:
            self.err(info["timeout_where"],
                     f"timeout {o_d['timeout']} ms is not below the check interval "
                     f"of {o_d.get('interval', self.interval)} s")
        if check is not None:
            self.migrate_check_opts(check, o_d, info)
        for key in [k for k in MIGRATE_OPTS if k in o_d and check is None]:
            self.err(info[f"{key}_where"], f"{MIGRATE_OPTS[key]} without a check")
            o_d.pop(key)
        if check is None and ok and ctx != "relay":
            self.err(where, f"table <{name}> has no check (add e.g. 'check tcp' "
                            "or 'check icmp')")
            return None, info
        if check is None and "passive" in o_d:
            # issue 15: a host passive detection takes down comes back by its checks
            self.err(info["passive_where"], f"passive: table <{name}> has no check, and a "
                                            "host taken down comes back only through "
                                            "its checks (add e.g. 'check tcp')")
            ok = False
        if tmpl is None or not ok:
            return None, info
        tname = f"{name}:{port}" if port else name
        try:
            options = m.CheckOptions(**{("source" if k == "check_source" else k): v
                                      for k, v in o_d.items()})
        except ValidationError as e:
            self.err(where, _pydantic_msg(e))
            return None, info
        # hosts that read a PROXY header are checked with one: a table of
        # their own, apart from the same hosts used without it
        proxy = fwd.get("proxy_protocol")
        key = (check.model_dump_json() if check is not None else None,
               options.model_dump_json(), tmpl.disabled, proxy)
        if (tname, key) in self.tables:
            table = self.tables[(tname, key)]
            tname = table.name
        else:
            base = tname
            uses = self.table_uses.get(base, 0) + 1
            self.table_uses[base] = uses
            if uses > 1:
                tname = f"{base}#{uses}"
            hosts = []
            for hs in tmpl.hosts:
                addr, _ = self.resolver.address(hs.name)
                hid = self.next_host
                self.next_host += 1
                hosts.append(m.Host(
                    id=hid, name=hs.name, address=addr, port=hs.port or port, table=tname,
                    retry=hs.retry, parent=hs.parent, ip_ttl=hs.ip_ttl,
                    priority=hs.priority, weight=hs.weight,
                    max_connections=hs.max_connections,
                    min_connections=hs.min_connections,
                    checked=hs.checked and getattr(check, "kind", None) != "none"))
                w = hs.where
                self.host_where[hid] = (w.file, w.line, w.col) if w else where
                if hs.parent is not None:
                    self.parent_refs.append((hs.parent, self.host_where[hid]))
                # migrate (issue 14): check arp asks for IPv4 addresses only
                if getattr(check, "kind", None) == "arp" and hs.checked and addr \
                        and ":" in addr:
                    self.err(self.host_where[hid],
                             f"check arp: host {hs.name} is an IPv6 address, and ARP asks "
                             "only for IPv4 ones (check icmp pings IPv6 hosts)")
            tid = self.next_table
            self.next_table += 1
            if check is None:
                table = m.RelayTable(id=tid, name=tname, template=name, port=port,
                                     disabled=tmpl.disabled, hosts=tuple(hosts))
                self.relay_tables.append(table)
            else:
                table = m.Table(id=tid, name=tname, template=name, port=port,
                                check=check, options=options, disabled=tmpl.disabled,
                                hosts=tuple(hosts), proxy_protocol=proxy)
                self.table_list.append(table)
                # relayd: a table takes the global timeout in force when used
                self.table_timeouts.append((len(self.table_list) - 1,
                                            None if "timeout" in o_d else self.timeout))
            self.tables[(base, key)] = table
        info["table"] = table
        forward = None
        if ctx != "relay":
            try:
                forward = m.Forward(table=tname, port=port, **fwd)
            except ValidationError as e:
                self.err(where, _pydantic_msg(e))
        return forward, info

    # -- passive failure detection (issue 15) ------------------------------------

    def passive(self, words: list, where: Where, ctx: str) -> m.Passive | None:
        """`passive [resets] [unreachables] [errors] [limit N [in T]] [action A]`."""
        if ctx == "router":
            self.err(where, "passive is for redirects and relays: a router forwards no "
                            "connections of its own")
            return None
        d: dict[str, Any] = {}
        events: set[str] = set()
        ok = True
        for word, value, w in words:
            key = "limit" if word == "limit" else word
            if key in d or word in events:
                self.err(w, f"passive: {word} given twice")
                ok = False
                continue
            if word in m.PASSIVE_EVENTS:
                events.add(word)
            elif word == "limit":
                n, t = value
                if not 1 <= n <= m.PASSIVE_LIMIT_MAX:
                    self.err(w, f"passive: invalid limit {n} (1-{m.PASSIVE_LIMIT_MAX})")
                    ok = False
                d["limit"] = n
                if t is not None:
                    if not 1 <= t <= m.PASSIVE_WINDOW_MAX:
                        self.err(w, f"passive: invalid limit {n} in {t}: the window is "
                                    f"1-{m.PASSIVE_WINDOW_MAX} s")
                        ok = False
                    d["window"] = t
            elif word == "action":
                d["action"] = value
        if events:
            for e in m.PASSIVE_EVENTS:
                d[e] = e in events
        if ctx == "redirect" and events and not events & {"resets", "unreachables"}:
            self.err(where, "passive errors: a redirect sees no relay errors, only the "
                            "hosts' resets and unreachables (write passive resets, "
                            "passive unreachables, or passive)")
            ok = False
        return m.Passive(**d) if ok else None

    # -- checks -------------------------------------------------------------------

    def check(self, v, w: Where):
        shape, kind, arg, opts = v
        kind = str(kind)
        seen: dict[str, Opt] = {}
        for o in opts:
            if o.key in seen:
                self.err(o.where, f"check {kind}: '{o.key}' given twice")
            seen[o.key] = o

        def val(key, default=None):
            return str(seen[key].value) if key in seen else default

        def refuse(allowed: set[str]) -> bool:
            bad = [o for o in opts if o.key not in allowed]
            for o in bad:
                allowed_s = ", ".join(sorted(allowed)) if allowed else "no options"
                self.err(o.where, f"check {kind} does not take '{o.key}' "
                                  f"(it takes {allowed_s})")
            return bool(bad)

        try:
            if shape == "send" or shape == "binary":
                if refuse({"tls"}):
                    return None
                send, expect = (None if v[1] is None else str(v[1])), str(v[2])
                if shape == "binary":
                    for s, what in ((send, "send"), (expect, "expect")):
                        if s is not None and not _is_hex(s):
                            self.err(w, f"check binary: {what} data must be hex digits, "
                                        f"not {s!r}")
                            return None
                    return m.CheckBinary(send=send, expect=expect, tls="tls" in seen)
                return m.CheckSendExpect(send=send, expect=expect, tls="tls" in seen)
            if shape == "script":
                self.files_named.append((str(kind), w, "script"))
                return m.CheckScript(path=str(kind), convention=arg or "relayd")
            if kind == "none":              # migrate (issue 14): hosts not checked
                if arg is not None and str(arg) != "off":
                    self.err(w, f"check none takes off (always down) or nothing (always "
                                f"up), not '{arg}'")
                    return None
                if refuse(set()):
                    return None
                return m.CheckNone(state=str(arg) if arg is not None else "on")
            if kind == "icmp" or kind == "tcp" or kind == "arp":
                if arg is not None:
                    self.err(w, f"check {kind} takes no argument")
                    return None
                if refuse(set()):
                    return None
                if kind == "arp":           # migrate (issue 14)
                    self.arp_checks.append(w)
                    return m.CheckArp()
                return m.CheckIcmp() if kind == "icmp" else m.CheckTcp()
            if kind == "tls":
                if arg is not None:
                    self.err(w, "check tls takes no argument")
                    return None
                if refuse({"verify", "ca"}):
                    return None
                if "ca" in seen and "verify" not in seen:
                    self.err(seen["ca"].where, "check tls: 'ca' needs 'verify'")
                if "ca" in seen:
                    self.files_named.append((val("ca"), seen["ca"].where, "ca file"))
                return m.CheckTls(verify="verify" in seen, ca_file=val("ca"))
            if kind in ("http", "https"):
                if arg is None:
                    self.err(w, f"check {kind} needs a path: check {kind} \"/\" code 200")
                    return None
                if refuse(HTTP_OPTS):
                    return None
                if "code" not in seen and "digest" not in seen and "body" not in seen:
                    self.err(w, f"check {kind} needs 'code N', 'digest \"hex\"' "
                                "or 'body \"regex\"'")
                    return None
                if "code" in seen and "digest" in seen:
                    self.err(seen["digest"].where, f"check {kind}: use 'code' or "
                                                   "'digest', not both")
                    return None
                code = seen["code"].value if "code" in seen else None
                if code is not None and not 100 <= code <= 999:
                    self.err(seen["code"].where, f"invalid HTTP code: {code}")
                    return None
                digest = val("digest")
                if digest is not None and (len(digest) not in (32, 40)
                                           or not _is_hex(digest)):
                    self.err(seen["digest"].where, "invalid http digest: want 40 hex "
                                                   "digits (sha1) or 32 (md5)")
                    return None
                method = val("method")
                if method is not None:
                    method = method.upper()
                    if method not in ("GET", "HEAD"):
                        self.err(seen["method"].where, f"check {kind}: method must be "
                                                       f"GET or HEAD, not {method}")
                        return None
                    if method == "HEAD" and (digest or "body" in seen):
                        self.err(seen["method"].where, f"check {kind}: a digest or "
                                                       "body check needs method GET")
                        return None
                body = val("body")
                if body is not None:
                    try:
                        re.compile(body)
                    except re.error as e:
                        self.err(seen["body"].where, f"check {kind}: invalid body "
                                                     f"regex: {e}")
                        return None
                if "verify" in seen and kind == "http":
                    self.err(seen["verify"].where, "check http: 'verify' is for https")
                    return None
                return m.CheckHttp(kind=kind, path=str(arg), host=val("host"),
                                   method=method, code=code, digest=digest,
                                   body=body)
            if kind in SERVICE_OPTS:
                return self.service_check(kind, arg, opts, seen, w, refuse)
        except ValidationError as e:
            self.err(w, _pydantic_msg(e))
            return None
        known = sorted({"icmp", "tcp", "tls", "http", "https", "send", "binary",
                        "script", "arp"} | set(SERVICE_OPTS))
        self.err(w, f"unknown check method '{kind}': expected one of " + ", ".join(known))
        return None

    def service_check(self, kind, arg, opts, seen, w, refuse):
        if refuse(SERVICE_OPTS[kind]):
            return None
        self.service_checks.append((kind, w))
        d: dict[str, Any] = {"kind": kind}
        if arg is not None:
            if kind not in SERVICE_ARG:
                self.err(w, f"check {kind} takes no argument (got \"{arg}\")")
                return None
            d["uri" if kind in ("sip", "http-proxy") else "query"] = str(arg)
        elif kind in ("dns", "http-proxy"):
            self.err(w, f"check {kind} needs a {SERVICE_ARG[kind]}: "
                        + ('check dns "www.example.com"' if kind == "dns"
                           else 'check http-proxy "http://www.example.com/"'))
            return None
        for key, o in seen.items():
            v = o.value
            if key == "type":
                t = str(v).upper()
                if t not in DNS_TYPES:
                    self.err(o.where, f"check dns: unknown type {v}: expected one of "
                                      + ", ".join(sorted(DNS_TYPES)))
                    return None
                d["qtype"] = t
            elif key == "tcp":
                d["transport"] = "tcp"
            elif key == "starttls":
                d["starttls"] = True
            elif key == "query":
                d["sql"] = str(v)
            elif key == "bind":
                d["bind_dn"] = str(v)
            elif key == "nas-identifier":
                d["nas_identifier"] = str(v)
            elif key in ("password", "secret"):
                d[key] = SecretStr(str(v))
                self.secrets.append(o.where)
            elif key == "code":
                if not 100 <= v <= 999:
                    self.err(o.where, f"invalid HTTP code: {v}")
                    return None
                d["code"] = v
            else:
                d[key] = str(v)
        if kind in ("mysql", "pgsql", "radius") and "user" not in d:
            self.err(w, f"check {kind} needs 'user \"name\"'")
            return None
        if kind == "radius" and ("secret" not in d or "password" not in d):
            self.err(w, "check radius needs 'secret \"s\"' and 'password \"p\"'")
            return None
        if kind in ("ftp", "imap", "imaps", "pop", "pops") and \
                ("user" in d) != ("password" in d):
            self.err(w, f"check {kind}: give 'user' and 'password' together")
            return None
        if "filter" in d and "base" not in d:
            self.err(seen["filter"].where, f"check {kind}: 'filter' needs 'base'")
            return None
        return m.CheckService(**d)

    # -- migrate (issue 14): check options of ldirectord and ALOHA -----------------

    def migrate_opt(self, k: str, v, w: Where):
        if k == "check_port":
            return self.port(v, w, "check port")
        if k == "check_source":
            s = str(v)
            if not is_ip(s):
                self.err(w, f"check source {s}: not an IP address")
                return None
            return str(ipaddress.ip_address(s))
        if k == "connect_timeout":
            if v <= 0:
                self.err(w, f"invalid connect timeout: {v} ms")
                return None
            return v
        if not 1 <= v <= 1000:
            self.err(w, f"invalid connect checks: {v} (1-1000)")
            return None
        return v

    def migrate_check_opts(self, check, o_d: dict, info: dict) -> None:
        """What each check kind can do with the migrate options: refused where
        the check would not honour them."""
        kind = check.kind
        state = getattr(check, "state", None)
        for key in MIGRATE_OPTS:
            if key not in o_d:
                continue
            w = info[f"{key}_where"]
            word = MIGRATE_OPTS[key]
            why = None
            if kind in _NO_CONNECT:
                why = {"icmp": "an ICMP echo has no port and goes from the shared raw socket",
                       "arp": "an ARP request has no port and goes from the shared raw socket",
                       "script": "the script makes its own connections",
                       "none": "the hosts are not checked"}[kind]
                if kind in ("icmp", "arp") and key == "connect_timeout":
                    why = f"an {'ICMP echo' if kind == 'icmp' else 'ARP request'} opens no " \
                          "connection"
            elif kind in _LIBRARY and key in ("check_source", "connect_timeout"):
                why = "its client library opens the connection"
            elif key == "connect_checks" and kind == "tcp":
                why = "check tcp is a connect check already"
            if why is not None:
                self.err(w, f"{word} with check {kind}{' ' + state if state else ''}: {why}")
                o_d.pop(key)
        if "connect_timeout" in o_d:
            limit = o_d.get("timeout", self.timeout)
            if o_d["connect_timeout"] > limit:
                self.err(info["connect_timeout_where"],
                         f"connect timeout {o_d['connect_timeout']} ms is above the check's "
                         f"timeout of {limit} ms (which covers the whole check)")

    # -- redirects ----------------------------------------------------------------

    def redirect(self, s: Stmt) -> None:
        name = str(s.name)
        if name in self.names_redirects:
            self.err(s.where, f"redirection {name} defined twice")
        self.names_redirects.add(name)
        d: dict[str, Any] = {"id": len(self.redirects) + 1, "name": name}
        listens: list[m.Listen] = []
        forwards: list[tuple[m.Forward | None, Where, dict]] = []
        listen_port = None
        has_udp = False
        feats: list[tuple[str, Where, str]] = []
        listen_ifaces: list[tuple[str, Where]] = []
        bare_listens: list[Where] = []
        for o in s.opts:
            k, v, w = o.key, o.value, o.where
            if k == "listen":
                proto = "tcp" if v["proto"] is None else str(v["proto"])
                if proto not in ("tcp", "udp"):
                    self.err(w, f"invalid protocol: {proto} (tcp or udp)")
                    continue
                has_udp |= proto == "udp"
                port, port_end = self.port_range(v["port"], w)
                addr = str(v["address"])
                if self.lookup and not is_ip(addr):
                    a, error = self.resolver.address(addr)
                    if error and not self.is_interface(addr):
                        self.err(w, f"invalid virtual ip: {addr}: {error}")
                elif not is_ip(addr) and not _plausible_name(addr):
                    self.err(w, f"invalid virtual ip: {addr}")
                try:
                    listens.append(m.Listen(address=addr, protocol=proto, port=port,
                                            port_end=port_end,
                                            interface=None if v["interface"] is None
                                            else str(v["interface"])))
                except ValidationError as e:
                    self.err(w, _pydantic_msg(e))
                if listen_port is None and port is not None and port_end is None:
                    listen_port = port
                if v["interface"] is not None:
                    feats.append(("listen interface", w, ""))
                    listen_ifaces.append((str(v["interface"]), w))
                else:
                    bare_listens.append(w)
            elif k == "listen_fwmark":
                if not 1 <= v <= 0xFFFFFFFF:
                    self.err(w, f"invalid fwmark: {v}")
                    continue
                listens.append(m.Listen(fwmark=v))
                feats.append(("listen fwmark", w, ""))
            elif k == "forward":
                method, ref, topts = v
                fwd, info = self.table_use(ref, topts, w, "redirect", listen_port)
                if fwd is not None:
                    fwd = fwd.model_copy(update={"method": method})
                    if method == "nat" and fwd.interface:
                        self.err(w, "superfluous interface: 'forward to' does not take "
                                    "one (use 'route to' for direct routing)")
                    if method == "tunnel" and fwd.interface:
                        self.err(w, "superfluous interface on 'tunnel to'")
                forwards.append((fwd, w, info))
                self.forward_features(fwd, str(ref), w, info, feats, method)
                if "passive_where" in info:     # issue 15: replies must pass the director
                    pw = info["passive_where"]
                    if method in ("route", "tunnel"):
                        how = "direct routing" if method == "route" else "tunnelling"
                        self.err(pw, f"passive: {method} to ({how}) cannot see the hosts' "
                                     "replies, which go to the clients without passing "
                                     "this machine; passive needs forward to (NAT)")
                    else:
                        feats.append(("passive", pw, ""))
            elif k == "sticky":
                sd = {}
                for so in v:
                    if so.key == "timeout":
                        if not 1 <= so.value <= SESSION_TIMEOUT_MAX:
                            self.err(so.where, f"invalid sticky-address timeout: "
                                               f"{so.value}")
                            continue
                        sd["timeout"] = so.value
                    else:
                        nm = str(so.value)
                        if not _valid_netmask(nm):
                            self.err(so.where, f"invalid netmask: {nm}")
                            continue
                        sd["netmask"] = nm
                d["sticky"] = m.Sticky(**sd)
                feats.append(("sticky-address", w, ""))
                sticky_where = w
                for so in v:
                    feats.append(("sticky-address options", so.where, ""))
                    break
            elif k in ("pftag", "match_pftag"):
                feats.append(("pftag", w, ""))
                d["pftag"] = str(v)
                d["match_pftag"] = k == "match_pftag"
            elif k == "session_timeout":
                if v < 0:
                    self.err(w, f"invalid timeout: {v}")
                elif v > SESSION_TIMEOUT_MAX:
                    self.err(w, f"timeout too large: {v}")
                else:
                    d["session_timeout"] = v
                    feats.append(("session timeout", w, ""))
            elif k == "disable":
                d["disabled"] = True
            elif k == "quiescent":
                d["quiescent"] = v
            elif k == "one_packet":
                d["one_packet"] = True
                feats.append(("one-packet", w, ""))
                d["_one_packet_where"] = w
            elif k == "engine":
                if str(v) not in ENGINES:
                    self.err(w, f"unknown engine '{v}': expected one of "
                                + ", ".join(sorted(ENGINES)))
                else:
                    d["engine"] = str(v)
            elif k in ("notify", "alert_mail"):     # issue 14
                if (nv := self.notify_value(k, v, w)) is not None:
                    if k == "notify":
                        d["notify"] = (*d.get("notify", ()), nv)
                    else:
                        d["alert_mail"] = nv
        if d.get("sticky") is not None and \
                any(f and f.method == "route" for f, _, _ in forwards):
            feats.append(("sticky-address route to", sticky_where, ""))
        opw = d.pop("_one_packet_where", None)
        if opw and not has_udp:
            self.err(opw, "one-packet is for udp listeners ('listen on ... udp port P')")
        if not listens:
            self.err(s.where, f"redirection {name} has no listen address "
                              "(listen on ADDRESS port P)")
        if not forwards:
            self.err(s.where, f"redirection {name} has no table (forward to <table> ...)")
        if len(forwards) > 2:
            self.err(forwards[2][1], "only one backup table is allowed")
        if len(forwards) >= 2:
            main, backup = forwards[0][0], forwards[1][0]
            if main and backup:
                if main.mode != backup.mode:
                    self.err(forwards[1][1], f"backup table for {name} with different "
                                             "mode")
                if main.port != backup.port:
                    self.err(forwards[1][1], f"redirection {name} uses two different "
                                             "ports for its table and backup table")
            d["backup"] = backup
            feats.append(("backup table", forwards[1][1], ""))
        if not listens or not forwards or forwards[0][0] is None or \
                (len(forwards) >= 2 and forwards[1][0] is None):
            return
        d["listen"] = tuple(listens)
        d["forward"] = forwards[0][0]
        d["where"] = m.Location(file=s.where[0], line=s.where[1], col=s.where[2])
        try:
            rdr = m.Redirect(**d)
        except ValidationError as e:
            return self.err(s.where, _pydantic_msg(e))
        self.redirects.append(rdr)
        self.order.append(f"redirect:{name}")
        self.rdr_features.append((rdr, feats, listen_ifaces, bare_listens))

    def forward_features(self, fwd: m.Forward | None, template: str, w: Where, info: dict,
                         feats: list, method: str) -> None:
        """The features one `forward/route/tunnel to` asks of the engine."""
        feats.append((f"{method} to" if method != "nat" else "forward to", w, ""))
        if fwd is None:
            return
        mode_w = info.get("mode_where", w)
        feats.append((f"mode {fwd.mode}", mode_w, ""))
        if fwd.mode_key is not None:
            feats.append(("mode source-hash key", mode_w, ""))
        if method == "route" and fwd.interface:
            feats.append(("route to interface", w, ""))
        if method == "route" and f"mode {fwd.mode} route to" in engines.TABLE:
            feats.append((f"mode {fwd.mode} route to", mode_w, ""))
        tmpl = self.templates.get(template)
        for hs in tmpl.hosts if tmpl else ():
            hw = (hs.where.file, hs.where.line, hs.where.col) if hs.where else w
            note = f" (host {hs.name} of table <{template}>)"
            if hs.max_connections is not None or hs.min_connections is not None:
                feats.append(("max-connections", hw, note))
            if hs.port is not None and hs.port != fwd.port:     # migrate (issue 14)
                if method != "nat":
                    self.err(hw, f"host {hs.name} port {hs.port}: {method} to keeps the "
                                 "virtual port (only NAT, forward to, maps ports)")
                feats.append(("host port", hw, note))
            if hs.weight != 1:
                feats.append(("weight", hw, note))
                if fwd.mode in ("source-hash", "destination-hash") or method == "route":
                    feats.append(("weight hashed", hw, note))
                if fwd.mode in engines.IPVS_UNWEIGHTED:
                    feats.append(("weight unweighted scheduler", hw, note))

    def check_engines(self, glob: m.Global) -> None:
        """Refuse what the redirect's engine does not do (conf.engines)."""
        for rdr, feats, listen_ifaces, bare_listens in self.rdr_features:
            engine = rdr.engine or glob.engine
            seen: set[Where] = set()
            for feature, where, note in feats:
                if feature == "passive" and engine == "none":
                    self.err(where, f"redirect {rdr.name}: passive needs a kernel table "
                                    "that logs the hosts' replies (engine nftables); "
                                    "engine none writes none")
                    continue
                base = engines.UNDER.get(feature)
                if base and engines.refusal(engine, base):
                    continue
                why = engines.refusal(engine, feature)
                if why and where not in seen:
                    seen.add(where)         # one refusal per place
                    self.err(where, f"redirect {rdr.name}: {why}{note}")
            route = [f for f in (rdr.forward, rdr.backup) if f and f.method == "route"]
            route_w = [w for f, w, _ in feats if f == "route to"] or [_where_of(rdr)]
            needed = engine == "nftables" and bool(route)
            if needed:
                # nft.py's direct routing is a netdev ingress chain: no device, no rule
                for w in bare_listens:
                    self.err(w, f"redirect {rdr.name}: route to under engine nftables "
                                "needs 'listen on ... interface IF' (the ingress device)")
                for f, w in zip(route, route_w * 2):
                    if not f.interface:
                        self.err(w, f"redirect {rdr.name}: route to under "
                                 "engine nftables needs 'interface IF' (the device "
                                 "towards the hosts)")
            if engine in ("nftables", "pf"):
                for name, w in listen_ifaces:
                    self.interfaces.append((name, w, needed))
            if engine == "nftables":
                for f, w in zip(route, route_w * 2):
                    if f.interface:
                        self.interfaces.append((f.interface, w, True))
        # routers (issue 16): kernel.routes writes them through rtnetlink
        for r in self.routers:
            for feature in ("router",) + (("router rtlabel",) if r.rtlabel else ()):
                if why := engines.refusal(glob.engine, feature):
                    self.err(_where_of(r), f"router {r.name}: {why}")
                    break

    def port_range(self, v, w) -> tuple[int | None, int | None]:
        s = str(v)
        if not isinstance(v, int) and ":" in s:
            a, _, b = s.partition(":")
            pa, pb = self.port(a, w), self.port(b, w)
            if pa is not None and pb is not None and pa > pb:
                self.err(w, f"invalid port range {s}: the first port is above the last")
            return pa, pb
        return self.port(v, w), None

    # -- relays -------------------------------------------------------------------

    def relay(self, s: Stmt) -> None:
        name = str(s.name)
        if name in self.names_relays:
            self.err(s.where, f"relay {name} defined twice")
        self.names_relays.add(name)
        d: dict[str, Any] = {"id": len(self.relays) + 1, "name": name}
        listens, forwards = [], []
        listen_port = None
        for o in s.opts:
            k, v, w = o.key, o.value, o.where
            if k == "listen":
                if v["port"] is None:
                    self.err(w, "relay listen needs a port: listen on ADDRESS port P")
                    continue
                port = self.port(v["port"], w)
                addr = str(v["address"])
                if self.lookup and not is_ip(addr):
                    a, error = self.resolver.address(addr)
                    if error and not self.is_interface(addr):
                        self.err(w, f"invalid listen address: {addr}: {error}")
                if port is None:
                    continue
                listens.append(m.RelayListen(address=addr, port=port, tls=v["tls"]))
                if listen_port is None:
                    listen_port = port or None
            elif k == "forward":
                kind, target = v["target"]
                fd: dict[str, Any] = {"tls": v["tls"], "transparent": v["transparent"]}
                if kind == "table":
                    _, info = self.table_use(target, v["opts"], w, "relay", listen_port)
                    t = info.get("table")
                    fd["table"] = t.name if t is not None else str(target)
                    fd["port"] = info.get("port")
                    fwd = info.get("fwd", {})
                    for key in ("mode", "mode_key", "retry", "proxy_protocol"):
                        if key in fwd:
                            fd[key] = fwd[key]
                    if "proxy_where" in info:
                        self.relay_proxy_refs.append((name, info["proxy_where"]))
                else:
                    if kind == "address":
                        fd["address"] = str(target)
                        if self.lookup and not is_ip(str(target)):
                            _, error = self.resolver.address(str(target))
                            if error:
                                self.err(w, f"forward to {target}: {error}")
                    elif kind == "destination":
                        fd["destination"] = True
                    else:
                        fd["nat_lookup"] = True
                    for to in v["opts"]:
                        if to.key == "port":
                            fd["port"] = self.port(to.value, to.where)
                        elif to.key == "retry":
                            fd["retry"] = to.value
                        elif to.key in ("inet", "inet6") and kind == "address":
                            fd["inet"] = f"{to.key} {to.value}"
                        elif to.key == "proxy_protocol":
                            version = self.proxy_version(to.value, to.where)
                            if version is not None:
                                fd["proxy_protocol"] = version
                                self.relay_proxy_refs.append((name, to.where))
                        else:
                            self.err(to.where, f"'{to.key.replace('_', ' ')}' needs a "
                                               "table: forward to <table> ...")
                forwards.append(m.RelayForward(**fd))
            elif k == "protocol":
                d["protocol"] = str(v)
                self.relay_protocol_refs.append((str(v), w))
            elif k == "session_timeout":
                if not 0 <= v <= SESSION_TIMEOUT_MAX:
                    self.err(w, f"invalid timeout: {v}")
                else:
                    d["session_timeout"] = v
            elif k == "disable":
                d["disabled"] = True
        if not listens:
            self.err(s.where, f"relay {name} has no listener")
            return
        d["listen"] = tuple(listens)
        d["forward"] = tuple(forwards)
        d["where"] = m.Location(file=s.where[0], line=s.where[1], col=s.where[2])
        self.relays.append(m.Relay(**d))
        self.order.append(f"relay:{name}")

    def proxy_version(self, v, w: Where) -> int | None:
        """`proxy-protocol [v1|v2]`: bare is v1, as HAProxy's send-proxy."""
        if v is True:
            return 1
        if str(v) in ("v1", "v2"):
            return int(str(v)[1])
        self.err(w, f"invalid proxy-protocol version: {v} (v1 or v2)")
        return None

    # -- protocols ------------------------------------------------------------------

    def protocol(self, s: Stmt) -> None:
        name = str(s.name)
        if name in self.protocols:
            self.err(s.where, f"protocol {name} defined twice")
            return
        ptype = "tcp" if s.extra is None else str(s.extra)
        if ptype not in ("tcp", "http", "dns"):
            self.err(s.where, f"invalid protocol type: {ptype} (tcp, http or dns)")
            return
        d: dict[str, Any] = {"name": name, "type": ptype}
        tcp, tls, http, rules = [], [], [], []
        rule_wheres: list[Where] = []
        for o in s.opts:
            if o.key in ("tcp", "tls", "http"):
                for f in o.value:
                    if o.key == "tls":
                        self.tls_flag(f)
                        # conf.keypairs tells a tls option's problems at its place
                        self.tls_where.setdefault(name, []).append(f.where)
                    elif o.key == "http":
                        self.http_flag(f, d)
                    {"tcp": tcp, "tls": tls, "http": http}[o.key].append(f.value)
                if o.key == "http" and ptype != "http":
                    self.err(o.where, f"http options in a {ptype} protocol")
            elif o.key == "return_error":
                d["return_error"] = True
                if o.value is not None:
                    d["style"] = str(o.value)
            elif o.key == "rule":
                hr = self.rule(o.value["text"], o.value["words"], o.where, ptype)
                if hr is not None:
                    rules.append(hr)
                    rule_wheres.append(o.where)
                for t in o.value["tables"]:
                    tn = str(t[1])
                    if tn not in self.templates:
                        self.err(t[2], f"undefined forward table <{tn}>")
                    else:
                        self.template_used.add(tn)
        self.check_tags(name, rules, rule_wheres)
        d.update(tcp=tuple(tcp), tls=tuple(tls), http=tuple(http), rules=tuple(rules))
        d["where"] = m.Location(file=s.where[0], line=s.where[1], col=s.where[2])
        self.protocols[name] = m.Protocol(**d)

    def http_flag(self, f: Opt, d: dict[str, Any]) -> None:
        words = f.value.split()
        if words[0] == "headerlen":
            n = int(words[1])
            if not 0 <= n <= m.HEADERLEN_MAX:
                self.err(f.where, f"invalid headerlen: {n} (0 to {m.HEADERLEN_MAX})")
            d["headerlen"] = n
        else:
            d["websockets"] = words[0] != "no"

    def rule(self, text: str, words: list[tuple[str, bool]], where: Where,
             ptype: str) -> m.Rule | None:
        """A filter rule typed (relayd's parse.y filterrule/ruleopts); None
        after an error, told at the rule's place.  What the HTTP relay does
        not carry out is refused later, by check_runnable."""
        plain = [w for w, _ in words]
        if ptype != "http":
            if plain[0] == "pass" and plain[1:] in ([], ["request"], ["response"]):
                return None      # pass is the default: nothing to do
            self.err(where, f"filter rules need an http protocol: {text}")
            return None
        n = len(words)
        i = 1

        def at(*kws: str) -> bool:
            return i < n and not words[i][1] and words[i][0] in kws

        def bad(msg: str) -> None:
            self.err(where, f"{msg}: {text}")

        d: dict[str, Any] = {"action": plain[0]}
        if at("request", "response"):
            d["direction"] = plain[i]
            i += 1
        if at("quick"):
            d["quick"] = True
            i += 1
        if at("inet", "inet6"):
            d["af"] = plain[i]
            i += 1
        keys: dict[str, dict[str, Any]] = {}
        last = None
        while i < n:
            w = plain[i]
            if w == "method":
                meth = plain[i + 1]
                if meth not in m.HTTP_METHODS:
                    return bad(f"unknown HTTP method {meth!r}")
                if "method" in d:
                    return bad("method already defined")
                d["method"] = meth
                i += 2
            elif w in m.KEY_TYPES:
                if w in keys:
                    return bad(f"a rule has one {w} key at most")
                k: dict[str, Any] = {"type": w}
                i += 1
                if at("append", "set", "remove", "hash", "log"):
                    k["option"] = plain[i]
                    i += 1
                elif at("strip"):
                    k["option"] = "strip"
                    k["strip"] = int(plain[i + 1])
                    i += 2
                if at("digest"):
                    k["digest"] = True
                    i += 1
                if i < n and (words[i][1] or plain[i] not in _RULE_WORDS):
                    k["key"] = plain[i]
                    i += 1
                if at("value"):
                    k["value"] = plain[i + 1]
                    i += 2
                keys[w] = k
                last = w
            elif w == "forward":
                d["forward"] = plain[i + 3]         # forward to < name >
                i += 5
            elif w in ("tag", "tagged", "label"):
                if w in d:
                    return bad(f"{w} already defined")
                d[w] = plain[i + 1]
                i += 2
            elif w == "no":
                d["untag" if plain[i + 1] == "tag" else "unlabel"] = True
                i += 2
            elif w == "file":
                if last is None:
                    return bad("file: name the key type first (cookie, header, path, "
                               "query or url)")
                if "file" in keys[last]:
                    return bad("only one file per rule supported")
                keys[last]["file"] = plain[i + 1]
                i += 2
                if at("value"):
                    keys[last]["value"] = plain[i + 1]
                    i += 2
            else:
                return bad(f"unexpected {w!r} in a rule")
        if d.get("tag") is not None and d.get("untag") or \
                d.get("label") is not None and d.get("unlabel"):
            return bad("a rule cannot both set and remove its tag or label")
        out = []
        for t in m.KEY_TYPES:
            if t in keys:
                k = self.rule_key(keys[t], d.get("direction", "request"), bad)
                if k is None:
                    return None
                out.append(k)
        d["keys"] = tuple(out)
        return m.Rule(**d)

    def rule_key(self, k: dict[str, Any], direction: str, bad) -> m.RuleKey | None:
        t, opt, key, value = k["type"], k.get("option"), k.get("key"), k.get("value")
        if opt == "strip" and t != "path":
            return bad(f"strip is for path keys, not {t}")
        if k.get("digest") and t != "url":
            return bad(f"digest is for url keys, not {t}")
        if t in ("query", "url") and opt in ("append", "set", "remove"):
            # relayd's own message
            return bad(f"combining {t} type and the given option is not supported")
        if t in ("path", "query", "url") and direction == "response":
            return bad(f"{t} is a request key: a response rule cannot use it")
        if key is not None and k.get("file") is not None:
            return bad(f"{t}: a key or a file of keys, not both")
        if opt in ("append", "set", "remove") and k.get("file") is not None:
            return bad(f"{t} {opt}: a file of keys is for conditions, hash and log")
        if opt in ("append", "set", "remove") and t in ("header", "cookie") and key is None:
            return bad(f"{t} {opt} needs a name")
        if opt == "strip" and (key is not None or value is not None):
            return bad("path strip N takes no key or value")
        if opt in ("append", "set") and value is None and t != "path" or \
                t == "path" and opt in ("append", "set") and value is None:
            return bad(f"{t} {opt} needs a value")
        if t in ("header", "cookie") and opt in ("append", "set") and key is not None \
                and any(c in key for c in "*?["):
            return bad(f"{t} {opt} writes a name: no glob in {key!r}")
        if t == "header" and key is not None:
            if not _HEADER_GLOB.fullmatch(key):
                return bad(f"invalid header name: {key!r}")
            if opt in ("append", "set", "remove") and key.lower() in (
                    "content-length", "transfer-encoding"):
                return bad(f"a rule may not change {key}: the relay frames messages by it")
        if value is not None and opt in ("append", "set") and any(
                ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
            return bad(f"invalid value: {value!r} (control character)")
        if t == "path" and opt in ("append", "set") and any(
                ord(c) <= 32 or ord(c) == 127 for c in value):
            return bad(f"invalid path: {value!r} (space or control character)")
        rk: dict[str, Any] = {"type": t, "option": opt, "key": key, "value": value,
                              "strip": k.get("strip", 0), "file": k.get("file")}
        if k.get("digest"):
            rk["digest"] = _digest_type(key) if key is not None else None
            if key is not None and rk["digest"] is None:
                return bad("invalid http digest (40 hex digits for SHA-1, 32 for MD5)")
        path = k.get("file")
        if path is not None and self.lookup:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines = [ln.strip() for ln in f]
            except OSError as e:
                return bad(f"file {path}: cannot read: {e.strerror or e}")
            fk = tuple(ln for ln in lines if ln and not ln.startswith("#"))
            if k.get("digest"):
                kinds = {_digest_type(x) for x in fk}
                if None in kinds or len(kinds) > 1:
                    return bad(f"file {path}: digests of one kind, one a line "
                               "(40 hex digits for SHA-1, 32 for MD5)")
                rk["digest"] = kinds.pop() if kinds else "sha1"
            rk["file_keys"] = fk
        elif path is not None and k.get("digest"):
            rk["digest"] = "sha1"     # unread (--no-lookup): the kind is unknown
        return m.RuleKey(**rk)

    def check_tags(self, proto: str, rules: list[m.Rule], wheres: list[Where]) -> None:
        """A `tagged` names a tag some rule of the protocol sets; `no tag` and
        `no label` follow a rule that sets one (relayd: "no tag defined")."""
        tags = {r.tag for r in rules if r.tag is not None}
        seen_tag = seen_label = False
        for r, w in zip(rules, wheres):
            if r.tagged is not None and r.tagged not in tags:
                self.err(w, f"tagged {r.tagged!r}: no rule of protocol {proto} sets "
                            f"tag {r.tagged!r}")
            if r.untag and not seen_tag:
                self.err(w, "no tag: no tag defined (by a rule before it)")
            if r.unlabel and not seen_label:
                self.err(w, "no label: no label defined (by a rule before it)")
            seen_tag = seen_tag or r.tag is not None
            seen_label = seen_label or r.label is not None
        self.rule_where[proto] = list(wheres)

    def tls_flag(self, f: Opt) -> None:
        words = f.value.split()
        if words[0] == "no":
            words = words[1:]
        if len(words) == 1 and words[0].startswith('"'):
            flag = words[0].strip('"')
            if flag not in TLS_FLAGS:
                self.err(f.where, f"invalid TLS flag: {flag} (expected one of "
                                  + ", ".join(sorted(TLS_FLAGS)) + ")")
        if "password" in words:
            self.secrets.append(f.where)
        # the files they name are read and checked by conf.keypairs

    # -- routers ---------------------------------------------------------------------

    def router(self, s: Stmt) -> None:
        name = str(s.name)
        if name in self.names_routers:
            self.err(s.where, f"router {name} defined twice")
        self.names_routers.add(name)
        d: dict[str, Any] = {"id": len(self.routers) + 1, "name": name}
        routes = []
        for o in s.opts:
            k, v, w = o.key, o.value, o.where
            if k == "route":
                r = str(v)
                try:
                    net = ipaddress.ip_network(r, strict=False)
                    routes.append(str(net))
                except ValueError:
                    self.err(w, f"invalid route: {r} (want address/prefix)")
            elif k == "forward":
                if "forward" in d:
                    self.err(w, "router has more than one 'forward to'")
                    continue
                fwd, _ = self.table_use(v[1], v[2], w, "router", None)
                if fwd is not None:
                    d["forward"] = fwd
            elif k == "rtable":
                if not 0 <= v <= 255:
                    self.err(w, f"invalid rtable id {v}")
                d["rtable"] = v
            elif k == "rtlabel":
                d["rtlabel"] = str(v)
            elif k == "disable":
                d["disabled"] = True
        fams = {ipaddress.ip_network(r).version for r in routes}
        if len(fams) > 1:
            self.err(s.where, f"router {name}: all routes must be of one address family")
        if not routes:
            self.err(s.where, f"router {name} has no route")
        if "forward" not in d:
            self.err(s.where, f"router {name} has no 'forward to <table>'")
        d["routes"] = tuple(routes)
        d["where"] = m.Location(file=s.where[0], line=s.where[1], col=s.where[2])
        self.routers.append(m.Router(**d))
        self.order.append(f"router:{name}")

    def check_unimplemented(self) -> None:
        for w, msg in self.unimplemented:
            self.err(w, msg)
        gw = self.glob_where
        if "agentx" in gw:
            self.err(gw["agentx"], "agentx: hoststated has no AgentX (SNMP) subagent; "
                                   "remove it")
        # relay options: only with relays
        for key, word in (("prefork", "prefork"), ("log_connection", "log connection")):
            if key in gw and not self.relays and not self.report.errors:
                self.err(gw[key], f"{word} is for relays, and this configuration has none; "
                                  "remove it")

    def check_runnable(self) -> None:
        """What the relays do not do yet: refused, so that -n never says
        OK to a relay that would not do what its config says."""
        self.check_routers()
        protocols = self.protocols
        for r in self.relays:
            w = _where_of(r)
            for f in r.forward:
                if f.transparent:
                    self.err(w, f"relay {r.name}: transparent forward: not supported (the "
                                "relays run without the capability a foreign source "
                                "address needs)")
                if f.inet:
                    self.err(w, f"relay {r.name}: forward to {f.address} {f.inet}: address "
                                "family mapping is not supported yet")
            p = protocols.get(r.protocol) if r.protocol else None
            if p is None:
                continue
            pw = _where_of(p)
            if p.type == "dns" and any(f.tls for f in r.forward) or p.type == "dns" and any(
                    ln.tls for ln in r.listen):
                self.err(pw, f"dns protocol {p.name} (relay {r.name}): DNS over TLS is not "
                             "supported")
            # a rule's `forward to <t>`: one of the relay's own tables (relayd
            # finds it among the relay's forward tables)
            names = {f.table for f in r.forward if f.table}
            mine = {t.template for t in self.tables.values() if t.name in names}
            wheres = self.rule_where.get(p.name, [])
            for rule, rw in zip(p.rules, wheres):
                why = _unenforced(rule)
                if why is not None:
                    self.err(rw, f"rule not supported yet: {printconf.print_rule(rule)} "
                                 f"({why})")
            for rule in p.rules:
                if rule.forward is not None and rule.forward not in mine:
                    self.err(pw, f"protocol {p.name} (relay {r.name}): forward to "
                                 f"<{rule.forward}>: relay {r.name} has no `forward to "
                                 f"<{rule.forward}>`")
            for opt in p.tcp:
                w = opt.split()
                if w == ["no", "sack"]:
                    # `sack` is Linux's default (sysctl net.ipv4.tcp_sack)
                    self.err(pw, f"protocol {p.name} (relay {r.name}): tcp no sack: not "
                                 "supported (Linux sets SACK for the whole system, "
                                 "sysctl net.ipv4.tcp_sack, not per socket)")
            if any(o.split()[:2] in (["ca", "cert"], ["ca", "key"]) for o in p.tls):
                self.err(pw, f"protocol {p.name} (relay {r.name}): TLS inspection (ca cert, "
                             "ca key) is not supported yet")

    # -- routers (issue 16): what kernel.routes can write ---------------------------

    def check_routers(self) -> None:
        """A route is written per (prefix, table): one router's; its
        gateways of its family; a next hop's weight fits Linux's 1-256;
        route realms (rtlabel) are IPv4's only. What the machine must have
        (connected networks, the table's rule, the realm's name) is
        conf.load's check_system (kernel.routes.director_errors)."""
        tables = {t.name: t for t in self.tables.values()}
        seen: dict[tuple[str, int], str] = {}
        for r in self.routers:
            w = _where_of(r)
            fam = ipaddress.ip_network(r.routes[0]).version if r.routes else 4
            for dst in r.routes:
                other = seen.setdefault((dst, r.rtable or 0), r.name)
                if other != r.name:
                    self.err(w, f"router {r.name}: route {dst} is router {other}'s too "
                                "(one router per prefix and rtable)")
            if r.rtlabel is not None and fam == 6:
                self.err(w, f"router {r.name}: rtlabel on an IPv6 router: Linux route "
                            "realms are IPv4 only")
            t = tables.get(r.forward.table) if r.forward else None
            for h in (t.hosts if t is not None else ()):
                if h.address is not None and ipaddress.ip_address(h.address).version != fam:
                    self.err(w, f"router {r.name}: gateway {h.name} is not an IPv{fam} "
                                "address, as the routes are")
                if h.weight > 256:
                    self.err(w, f"router {r.name}: gateway {h.name} weight {h.weight}: a "
                                "route's next hop weighs 1 to 256 on Linux")

    # -- the whole ----------------------------------------------------------------------

    def build(self, stmts: list) -> m.Config:
        for s in stmts:
            if isinstance(s, Opt):
                self.global_opt(s)
            elif s.kind == "table":
                self.table_def(s)
            elif s.kind == "redirect":
                self.redirect(s)
            elif s.kind == "relay":
                self.relay(s)
            elif s.kind == "protocol":
                self.protocol(s)
            elif s.kind == "router":
                self.router(s)
        glob = self.finish_global()
        self.check_engines(glob)
        self.check_unimplemented()
        if self.runnable and not self.report.errors:
            # after the language's errors: those are the first to fix
            self.check_runnable()
        for pname, w in self.relay_protocol_refs:
            if pname not in self.protocols:
                self.err(w, f"protocol {pname} is not defined")
        relay_protos = {r.name: self.protocols.get(r.protocol or "") for r in self.relays}
        for rname, w in self.relay_proxy_refs:
            p = relay_protos.get(rname)
            if p is not None and p.type == "dns":
                self.err(w, f"'proxy-protocol' is for TCP relays; relay {rname} uses "
                            f"dns protocol {p.name}")
        all_ids = set(self.host_where)
        for pid, w in self.parent_refs:
            if pid not in all_ids:
                self.err(w, f"host parent {pid}: there is no host with id {pid}")
        for name, t in self.templates.items():
            if name not in self.template_used:
                w = t.where
                self.report.warn((w.file, w.line, w.col), f"table <{name}> is not used")
        # the global timeout in force when a table was used, if it changed later
        tables = list(self.table_list)
        for idx, tmo in self.table_timeouts:
            if tmo is not None and tmo != glob.timeout:
                t = tables[idx]
                tables[idx] = t.model_copy(update={
                    "options": t.options.model_copy(update={"timeout": tmo})})
        return m.Config(**{
            "global": glob, "templates": tuple(self.templates.values()),
            "tables": tuple(tables), "relay_tables": tuple(self.relay_tables),
            "redirects": tuple(self.redirects), "relays": tuple(self.relays),
            "protocols": tuple(self.protocols.values()),
            "routers": tuple(self.routers), "order": tuple(self.order)})


def _where_of(obj) -> Where:
    w = obj.where
    return (w.file, w.line, w.col)


def _is_hex(s: str) -> bool:
    return len(s) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in s)


def _plausible_name(s: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-:]*", s) is not None


def _valid_netmask(s: str) -> bool:
    try:
        if s.startswith("/"):
            n = int(s[1:])
            return 0 <= n <= 128
        ipaddress.ip_network(f"0.0.0.0/{s}")
        return True
    except ValueError:
        return False


def _pydantic_msg(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


# the words of a rule that are not a key (conf.grammar's rule_opt)
_RULE_WORDS = frozenset({"method", "cookie", "header", "path", "query", "url", "forward",
                         "tag", "tagged", "label", "no", "file", "value", "digest",
                         "append", "set", "remove", "hash", "log", "strip"})
# a header name, or a glob of names (relayd matches names with fnmatch)
_HEADER_GLOB = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z?\[\]]+")


def _unenforced(r: m.Rule) -> str | None:
    """What of a rule the HTTP relay does not carry out (None: all of it)."""
    if r.direction == "response":
        if r.forward is not None:
            return "forward to in a response rule: the request chose the backend"
        if any(k.option == "hash" for k in r.keys):
            return "hash in a response rule: the request chose the backend"
    return None


def _digest_type(s: str) -> str | None:
    if not re.fullmatch(r"[0-9A-Fa-f]+", s):
        return None
    return {40: "sha1", 32: "md5"}.get(len(s))


# --- migrate (issue 14): ldirectord's and ALOHA's check options ----------------

MIGRATE_OPTS = {"check_port": "check port", "check_source": "check source",
                "connect_timeout": "connect timeout", "connect_checks": "connect checks"}
RANGE_MAX = 256          # addresses one range may stand for
# checks that open no connection of their own, or whose library opens it
_NO_CONNECT = {"icmp", "script", "none", "arp"}
_LIBRARY = {"mysql", "pgsql", "ldap", "ldaps"}


def address_range(name: str) -> list[str] | str | None:
    """`192.0.2.11-192.0.2.15` (ldirectord's 192.0.2.11->192.0.2.15): the
    addresses, first to last; None when the name is not a range, an error
    message when it is a bad one."""
    first, sep, last = name.partition("-")
    if not sep or not is_ip(first) or not is_ip(last):
        return None
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    if a.version != b.version:
        return "a range's two ends must be of one address family"
    if int(b) < int(a):
        return "the range's first address is above its last"
    if int(b) - int(a) + 1 > RANGE_MAX:
        return f"a range stands for at most {RANGE_MAX} addresses"
    return [str(ipaddress.ip_address(i)) for i in range(int(a), int(b) + 1)]
