"""The configuration model: what a hoststated.conf means, with no I/O.

conf.build makes it from the parsed statements, conf.load wraps it with files and
macros, conf.printconf writes it back in canonical form; every process reads it.

relayd's semantics carried over:
- a `table <t> { hosts }` is a template; each `forward to <t> port P check ...`
  makes a concrete, checked table named `t:P` (`t` when no port is given), with
  its own copies of the hosts and their own ids;
- a redirect's (or relay's) second `forward to` names its backup table;
- ids are assigned in order of appearance, from 1, per kind of object.

Times: `interval` values are seconds, `timeout` values milliseconds, as relayd.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr


# pydantic keeps, in each instance, the set of the fields its input named
# (model_fields_set); the instances of one class mostly name the same ones,
# so they share one set: a Host's was ~730 bytes of its ~1,300 (7.3 MB of the
# config's 12.9 at 10,000 hosts, in every process). Safe as the models are
# frozen: pydantic changes that set in place only on attribute assignment,
# and model_copy(update=...) changes the copy's own copy.
_FIELDS_SETS: dict[frozenset, set] = {}


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_post_init(self, context: object, /) -> None:
        mine = self.__pydantic_fields_set__
        key = frozenset(mine)
        shared = _FIELDS_SETS.setdefault(key, mine)
        if shared is not mine:
            object.__setattr__(self, "__pydantic_fields_set__", shared)


# --- defaults, as relayd.h -------------------------------------------------

CHECK_INTERVAL = 10          # s
CHECK_TIMEOUT = 200          # ms
RELAY_NUMPROC = 3
SESSION_TIMEOUT = 600        # s
DEFAULT_SOCKET = "/run/hoststated.sock"   # = ipc.messages.DEFAULT_SOCKET (tested)
DEFAULT_USER = "_hoststated"
# No fallback: as nobody, hce and pfe could be signalled or traced by any
# other process running as nobody (faults-found 7.3); a missing user is an
# error (etc/hoststated.sysusers makes it).
FALLBACK_USER: str | None = None

Engine = Literal["nftables", "ipvs", "pf", "none"]

# relayd's modes, then IPVS schedulers spelled as modes (Linux extension).
RelaydMode = Literal["roundrobin", "random", "source-hash", "least-states",
                     "loadbalance", "hash"]
IpvsMode = Literal["weighted-roundrobin", "least-connections",
                   "weighted-least-connections", "locality-least-connections",
                   "locality-least-connections-replicated", "destination-hash",
                   "shortest-expected-delay", "never-queue",
                   "weighted-failover", "weighted-overflow", "maglev-hash",
                   # migrate (issue 14): IPVS twos, ALOHA's `balance twos`
                   "weighted-two-choices"]
Mode = Union[RelaydMode, IpvsMode]

# the IPVS scheduler each mode maps to
IPVS_SCHEDULER: dict[str, str] = {
    "roundrobin": "rr", "random": "rr", "source-hash": "sh",
    "least-states": "lc", "loadbalance": "sh", "hash": "sh",
    "weighted-roundrobin": "wrr", "least-connections": "lc",
    "weighted-least-connections": "wlc", "locality-least-connections": "lblc",
    "locality-least-connections-replicated": "lblcr", "destination-hash": "dh",
    "shortest-expected-delay": "sed", "never-queue": "nq",
    "weighted-failover": "fo", "weighted-overflow": "ovf", "maglev-hash": "mh",
    "weighted-two-choices": "twos",
}


# --- protocol checks: default ports and the Python package each needs -------
# conf.load reports a missing package at the `check` that needs it (-n and
# start); checks.registry uses the same tables when it makes a check.

DEFAULT_PORTS: dict[str, int] = {
    "dns": 53, "smtp": 25, "submission": 587, "ftp": 21, "imap": 143, "imaps": 993,
    "pop": 110, "pops": 995, "nntp": 119, "ldap": 389, "ldaps": 636, "mysql": 3306,
    "pgsql": 5432, "radius": 1812, "sip": 5060, "http-proxy": 3128, "redis": 6379,
}

# kind -> (module to import, package name on PyPI); all in the `protocols` extra
PACKAGES: dict[str, tuple[str, str]] = {
    "dns": ("dns.message", "dnspython"),
    "mysql": ("pymysql", "PyMySQL"),
    "pgsql": ("pg8000", "pg8000"),
    "ldap": ("ldap3", "ldap3"),
    "ldaps": ("ldap3", "ldap3"),
}



def install_hint(extra: str) -> str:
    """How to install one of pyproject's extras (protocols, http, relay)."""
    return f"pip install 'hoststated[{extra}]'"


INSTALL_HINT = install_hint("protocols")


def missing_package_message(kind: str, package: str) -> str:
    return f"check {kind} needs the Python package {package} ({INSTALL_HINT})"


class Location(Model):
    """Where an object was written, for messages that name file:line:col."""
    file: str
    line: int
    col: int = 1


# --- global options --------------------------------------------------------

class AgentX(Model):
    path: str | None = None
    context: str | None = None


METRICS_PORT = 9469            # `metrics listen on A` without a port (Prometheus' registry of ports)
MAX_CHECK_WORKERS = 64          # `check workers N` (issue 17): 1..64


class MetricsListen(Model):
    """`metrics listen on ADDRESS port PORT`: where hce serves GET /metrics."""
    address: str                          # an IP address: the parent binds it at start
    port: int = METRICS_PORT


# --- issue 14: notifications, maintenance files, autoreload ------------------
# (hoststated.conf(5) NOTIFICATIONS; hoststated/notify.py, maintenance.py,
# autoreload.py carry them out)

NOTIFY_TIMEOUT = 10000        # ms a notify command may run before it is killed
SMTP_PORT = 25

EventFilter = Literal["up", "down", "all"]


class NotifyCommand(Model):
    """`notify command "CMD" [on up|down|all] [timeout MS]`: run by hce
    (unprivileged) at each host, table and redirect state change."""
    command: str
    # fallback (migrate, issue 14: ldirectord's fallbackcommand): run with
    # `start` when a redirect's table has no host up, `stop` when one is back
    on: Literal["up", "down", "all", "fallback"] = "all"
    timeout: int = NOTIFY_TIMEOUT         # ms


class AlertMail(Model):
    """`alert mail to "ADDR[, ADDR]" [from "ADDR"] [via HOST [port N]]
    [every S] [on up|down|all]`: ldirectord's emailalert, emailalertfrom,
    smtp, emailalertfreq and the states mailed."""
    to: tuple[str, ...]
    sender: str | None = None             # None: hoststated@<this host's name>
    host: str = "localhost"               # the SMTP relay
    port: int = SMTP_PORT
    every: int = 0                        # s: re-sent while down; 0: once
    on: EventFilter = "all"


class Autoreload(Model):
    """`autoreload [callback "CMD"]`: reload when a config file changes."""
    callback: str | None = None


class Global(Model):
    interval: int = CHECK_INTERVAL
    timeout: int = CHECK_TIMEOUT
    prefork: int = RELAY_NUMPROC
    log_state_changes: bool = False       # `log state changes` (on with -d)
    log_host_checks: bool = False         # `log host checks`
    log_connection: Literal["none", "all", "errors"] = "none"
    socket: str = DEFAULT_SOCKET
    socket_group: str | None = None       # extension: group of the 0660 socket
    restricted_socket: str | None = None  # extension: show/monitor only, 0666
    agentx: AgentX | None = None
    user: str = DEFAULT_USER              # extension
    engine: Engine = "nftables"           # extension
    cleanstop: bool = True                # extension: remove kernel objects at stop
    max_checks: int = 1000                # extension: cap on checks in flight
    # extension (issue 17): check worker processes; None: by the checks a
    # second and the cores (hce_shards.auto_workers), fixed at start
    check_workers: int | None = None
    metrics: MetricsListen | None = None  # extension: the Prometheus endpoint, off by default
    # issue 14 (moving from ldirectord/keepalived)
    notify: tuple[NotifyCommand, ...] = ()
    alert_mail: AlertMail | None = None
    maintenance_dir: str | None = None    # files address[:port] drain those hosts
    autoreload: Autoreload | None = None
    # migrate (issue 14): `log state file "PATH"` (ldirectord's monitorfile): a
    # line per host state change, appended to a file the parent opens at start
    state_file: str | None = None


# --- checks ----------------------------------------------------------------

# --- passive failure detection (issue 15) ------------------------------------
# `passive [resets] [unreachables] [errors] [limit N [in T]] [action down|fast|fail]`
# on a table use: what real traffic shows about a host counts against it.

PASSIVE_EVENTS = ("resets", "unreachables", "errors")
PASSIVE_LIMIT = 3             # events ...
PASSIVE_WINDOW = 1            # ... within this many seconds
PASSIVE_LIMIT_MAX = 10000
PASSIVE_WINDOW_MAX = 3600


class Passive(Model):
    """Which events count (none written: all), how many within how long
    before acting, and what is done: `down` marks the host down at once,
    `fast` checks it now and then at the fast interval, `fail` counts as
    one failed check. The host comes back only through its active checks."""
    resets: bool = True                   # TCP RST from the host (kernel, relay)
    unreachables: bool = True             # ICMP port/host unreachable from the host (kernel)
    errors: bool = True                   # relay: connect failures, and 5xx for http
    limit: int = PASSIVE_LIMIT
    window: int = PASSIVE_WINDOW          # s
    action: Literal["down", "fast", "fail"] = "down"


class CheckOptions(Model):
    """Per-use options of a `forward to <t> ... check ...` (relayd + HAProxy)."""
    interval: int | None = None           # s; multiple of the global interval
    timeout: int | None = None            # ms
    demote: str | None = None             # carp group (kept for relayd configs)
    rise: int = 1                         # extension: successes to go up
    fall: int | None = None               # extension: failures to go down (else retry+1)
    fast_interval: float | None = None    # extension: s, while in transition
    down_interval: float | None = None    # extension: s, while down
    passive: Passive | None = None        # extension (issue 15): passive detection
    # migrate (issue 14): ldirectord's and ALOHA's check options
    check_port: int | None = None         # `check port N`: checked there, not the host's port
    source: str | None = None             # `check source ADDR`: the checks' source address
    connect_timeout: int | None = None    # `connect timeout MS`: the connect alone (ldirectord)
    connect_checks: int = 0               # `connect checks N`: N connects, then the check


class CheckIcmp(Model):
    kind: Literal["icmp"] = "icmp"


class CheckTcp(Model):
    kind: Literal["tcp"] = "tcp"


class CheckTls(Model):
    kind: Literal["tls"] = "tls"
    verify: bool = False                  # extension: verify the certificate chain
    ca_file: str | None = None


class CheckHttp(Model):
    kind: Literal["http", "https"] = "http"
    path: str = "/"
    host: str | None = None
    method: Literal["HEAD", "GET"] | None = None  # None: HEAD, GET for digest/body
    code: int | None = None
    digest: str | None = None             # hex sha1 (40) or md5 (32)
    body: str | None = None               # extension: regex on the body (ldirectord receive)


class CheckSendExpect(Model):
    kind: Literal["send"] = "send"
    send: str | None = None               # None: `nothing`, read the banner
    expect: str = ""                      # fnmatch(3) glob
    tls: bool = False


class CheckBinary(Model):
    kind: Literal["binary"] = "binary"
    send: str | None = None               # hex
    expect: str = ""                      # hex
    tls: bool = False


class CheckScript(Model):
    kind: Literal["script"] = "script"
    path: str
    # migrate (issue 14): `check script "p" ldirectord`: exit 0 is up, and the
    # arguments are virtual address, virtual port, real address, real port
    convention: Literal["relayd", "ldirectord"] = "relayd"


class CheckNone(Model):
    """migrate (issue 14): `check none [off]`: the hosts are not checked,
    always up (ldirectord's checktype on) or always down (checktype off)."""
    kind: Literal["none"] = "none"
    state: Literal["on", "off"] = "on"


class CheckArp(Model):
    """migrate (issue 14): `check arp`: an ARP request from the interface the
    kernel routes the host through (ALOHA's and ldirectord's arpcheck)."""
    kind: Literal["arp"] = "arp"


class ArpLink(Model):
    """migrate (issue 14): where a `check arp` host is asked from, found by
    conf.load in the kernel's route to it (like Host.address, resolved)."""
    ifname: str
    mac: str                              # the interface's, lowercase "aa:bb:..."
    source: str                           # the interface's IPv4 address the route prefers


ServiceKind = Literal[
    "dns", "smtp", "submission", "ftp", "imap", "imaps", "pop", "pops", "nntp",
    "ldap", "ldaps", "mysql", "pgsql", "radius", "sip", "http-proxy", "redis",
]


class CheckService(Model):
    """Protocol checks (ldirectord/keepalived/HAProxy services), extension.

    One model for all kinds; which fields a kind takes is checked by conf.build.
    Secrets are SecretStr so they are never printed or logged by accident.
    """
    kind: ServiceKind
    query: str | None = None              # dns: name to ask for
    qtype: str | None = None              # dns: A, AAAA, MX, ...
    expect: str | None = None             # dns answer / sip / redis reply to match
    helo: str | None = None               # smtp, submission
    starttls: bool = False
    user: str | None = None
    password: SecretStr | None = None
    database: str | None = None           # mysql, pgsql
    sql: str | None = None                # mysql, pgsql: query run after login
    bind_dn: str | None = None            # ldap
    base: str | None = None               # ldap search base
    filter: str | None = None             # ldap search filter
    secret: SecretStr | None = None       # radius
    nas_identifier: str | None = None     # radius
    uri: str | None = None                # sip request uri; http-proxy url
    code: int | None = None               # http-proxy: status wanted
    transport: Literal["udp", "tcp"] | None = None  # dns, sip


Check = Annotated[
    Union[CheckIcmp, CheckTcp, CheckTls, CheckHttp, CheckSendExpect,
          CheckBinary, CheckScript, CheckService, CheckNone, CheckArp],
    Field(discriminator="kind"),
]


# --- tables and hosts ------------------------------------------------------

class HostSpec(Model):
    """A host as written in a table template."""
    name: str                             # address or host name, as written
    retry: int = 0
    parent: int | None = None
    ip_ttl: int | None = None
    priority: int | None = None
    weight: int = 1                       # extension
    max_connections: int | None = None    # extension: IPVS upper threshold
    min_connections: int | None = None    # extension: IPVS lower threshold
    # migrate (issue 14): a port of its own (ldirectord real = a:p, ALOHA server a:p),
    # and hosts taken as up without a check (ALOHA servers without `check`)
    port: int | None = None
    checked: bool = True
    where: Location | None = None


class TableTemplate(Model):
    name: str
    disabled: bool = False
    hosts: tuple[HostSpec, ...]
    where: Location | None = None


class Host(Model):
    """A host of a concrete, checked table."""
    id: int
    name: str                             # as written
    address: str | None = None            # resolved address (None with --no-lookup)
    port: int | None = None               # the table's port, or the host's own
    table: str                            # concrete table name, e.g. "web:80"
    retry: int = 0
    parent: int | None = None
    ip_ttl: int | None = None
    priority: int | None = None
    weight: int = 1
    max_connections: int | None = None
    min_connections: int | None = None
    checked: bool = True                  # migrate (issue 14): False: taken as up, unchecked
    link: ArpLink | None = None           # migrate (issue 14): check arp's interface (conf.load)

    @property
    def fall(self) -> int:
        return self.retry + 1


class Table(Model):
    """A concrete table: a template used with a port and a check."""
    id: int
    name: str                             # "web:80"
    template: str                         # "web"
    port: int | None = None
    check: Check
    options: CheckOptions = CheckOptions()
    disabled: bool = False
    hosts: tuple[Host, ...]
    # the hosts read a PROXY header first (a relay sends them one): the
    # checks open with one too, v1 UNKNOWN or v2 LOCAL, as HAProxy's do
    proxy_protocol: Literal[1, 2] | None = None


# --- redirects (layer 3, the kernel tables) --------------------------------

class Listen(Model):
    address: str | None = None            # None for fwmark listeners
    protocol: Literal["tcp", "udp"] = "tcp"
    port: int | None = None
    port_end: int | None = None           # `port 8000:8010`
    interface: str | None = None
    fwmark: int | None = None             # extension: `listen on fwmark N`


class Sticky(Model):
    timeout: int = 300                    # s; IPVS persistence timeout
    netmask: str | None = None            # e.g. 255.255.255.0 or /24 for v6


class Forward(Model):
    table: str                            # concrete table name
    port: int | None = None
    mode: Mode = "roundrobin"
    mode_key: str | None = None           # source-hash/loadbalance/hash key
    method: Literal["nat", "route", "tunnel"] = "nat"  # route: `route to` (DR)
    interface: str | None = None          # `route to ... interface if`


class Redirect(Model):
    id: int
    name: str
    listen: tuple[Listen, ...]
    forward: Forward
    backup: Forward | None = None
    sticky: Sticky | None = None
    session_timeout: int = SESSION_TIMEOUT
    pftag: str | None = None
    match_pftag: bool = False
    disabled: bool = False
    engine: Engine | None = None          # extension: per-redirect engine
    one_packet: bool = False              # extension: IPVS one-packet scheduling (udp)
    quiescent: bool = True                # extension: down host -> weight 0 (else removed)
    # issue 14: for its own events and its tables' (ldirectord's per-virtual
    # fallbackcommand, emailalert): commands added, a mail in place of the global
    notify: tuple[NotifyCommand, ...] = ()
    alert_mail: AlertMail | None = None
    where: Location | None = None


# --- relays, protocols, routers (layer 7; parsed now, run later) -----------
# conf.build owns these shapes; they are modelled fully so -nv round-trips.

class RelayForward(Model):
    table: str | None = None              # concrete table
    address: str | None = None            # fixed target
    destination: bool = False             # `forward to destination`
    nat_lookup: bool = False              # `forward to nat lookup`
    port: int | None = None
    tls: bool = False                     # `forward with tls`
    transparent: bool = False
    mode: Mode | None = None
    mode_key: str | None = None
    retry: int | None = None
    inet: str | None = None               # `inet`/`inet6 prefix`
    proxy_protocol: Literal[1, 2] | None = None   # `proxy-protocol v1|v2` (HAProxy's send-proxy[-v2])


class RelayListen(Model):
    address: str
    port: int
    tls: bool = False


class Relay(Model):
    id: int
    name: str
    listen: tuple[RelayListen, ...]
    forward: tuple[RelayForward, ...] = ()
    protocol: str | None = None
    session_timeout: int = SESSION_TIMEOUT
    disabled: bool = False
    where: Location | None = None


HEADERLEN = 8192             # relayd.h RELAY_DEFHEADERLENGTH
HEADERLEN_MAX = 131072       # relayd.h RELAY_MAXHEADERLENGTH


KeyType = Literal["cookie", "header", "path", "query", "url"]
KEY_TYPES: tuple[str, ...] = ("cookie", "header", "path", "query", "url")
KeyOption = Literal["append", "set", "remove", "hash", "log", "strip"]
# the request methods relayd knows (relay_httpmethod_byname: http.h)
HTTP_METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
    "VERSION-CONTROL", "REPORT", "CHECKOUT", "CHECKIN", "UNCHECKOUT", "MKWORKSPACE",
    "UPDATE", "LABEL", "MERGE", "BASELINE-CONTROL", "MKACTIVITY", "ORDERPATCH", "ACL",
    "MKREDIRECTREF", "UPDATEREDIRECTREF", "SEARCH", "PATCH"})


class RuleKey(Model):
    """One key type of a filter rule (relayd's rule_kv[type]): `cookie`,
    `header`, `path`, `query` or `url`, an option (none: the key is only a
    condition), the key (a name or glob; a url's host/path or its digest) and
    the value (a glob to match, or what append/set write)."""
    type: KeyType
    option: KeyOption | None = None
    key: str | None = None
    value: str | None = None
    strip: int = 0                          # `path strip N`
    digest: Literal["sha1", "md5"] | None = None   # `url digest HEX`: key is the hex
    file: str | None = None                 # `file PATH`: the keys, one a line
    file_keys: tuple[str, ...] = ()         # what the file held at load


class Rule(Model):
    """One filter rule of an http protocol, as relayd's filterrule: the
    verdict (`block`, `match`, `pass`), the direction, `quick`, an address
    family, a method, at most one key of each type, `forward to <table>` (a
    template's name), tag, tagged, label (`no tag`, `no label`: untag,
    unlabel).  relay_rules compiles them; rules run in order on every head
    of their direction."""
    action: Literal["block", "match", "pass"] = "match"
    direction: Literal["request", "response"] = "request"
    quick: bool = False
    af: Literal["inet", "inet6"] | None = None
    method: str | None = None
    keys: tuple[RuleKey, ...] = ()          # in relayd's type order
    forward: str | None = None
    tag: str | None = None
    untag: bool = False
    tagged: str | None = None
    label: str | None = None
    unlabel: bool = False


class Protocol(Model):
    name: str
    type: Literal["tcp", "http", "dns"] = "tcp"
    return_error: bool = False            # `return error`
    style: str | None = None              # `return error style "css"`
    # option blocks as written (printing keeps them)
    tcp: tuple[str, ...] = ()
    tls: tuple[str, ...] = ()
    http: tuple[str, ...] = ()
    # what the relay carries out, typed from the above
    headerlen: int = HEADERLEN            # `http { headerlen N }`
    websockets: bool = False              # `http { websockets }`
    rules: tuple[Rule, ...] = ()          # the filter rules, in order
    where: Location | None = None


class Router(Model):
    id: int
    name: str
    routes: tuple[str, ...] = ()
    forward: Forward | None = None
    rtable: int | None = None
    rtlabel: str | None = None
    disabled: bool = False
    where: Location | None = None


# --- the whole configuration -----------------------------------------------

class RelayTable(Model):
    """A concrete table a relay uses without a check (hosts taken as up)."""
    id: int
    name: str
    template: str
    port: int | None = None
    disabled: bool = False
    hosts: tuple[Host, ...]


class Config(Model):
    global_: Global = Field(default_factory=Global, alias="global")
    templates: tuple[TableTemplate, ...] = ()
    tables: tuple[Table, ...] = ()
    relay_tables: tuple[RelayTable, ...] = ()   # relay tables with no check
    redirects: tuple[Redirect, ...] = ()
    relays: tuple[Relay, ...] = ()
    protocols: tuple[Protocol, ...] = ()
    routers: tuple[Router, ...] = ()
    # the order redirects, relays and routers were written in ("redirect:www"),
    # so that printing keeps table and host ids
    order: tuple[str, ...] = ()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def table(self, name: str) -> Table | None:
        for t in self.tables:
            if t.name == name:
                return t
        return None

    def hosts(self) -> list[Host]:
        return [h for t in self.tables for h in t.hosts]
