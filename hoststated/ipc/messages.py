"""The whole message vocabulary of hoststated, in one place.

Shared by the daemon's processes and hoststatectl (as relayd.h is by relayd
and relayctl), so it imports only the standard library: hoststatectl starts
fast and the schema cannot drift between the two.

Two families of messages:

- between daemon processes: `Message(type, payload)`, framed by ipc.codec as
  a msgpack array `[type, {fields}]`. The types are grouped by direction; an
  unknown type or a payload that does not match its model is fatal (desync).
- on the control socket: a request `{"cmd": "show hosts", "v": 1}` and a reply
  `{"ok": true, "data": ...}` or `{"ok": false, "error": {"code", "message"}}`,
  as msgpack frames or JSON lines. The command words are hoststatectl's; the
  command table below is the one both sides parse with.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from hoststated.states import HostError, HostStatus

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/hoststated.sock"   # = conf.model.DEFAULT_SOCKET

# Frame limits (bytes of msgpack body). The config travels parent -> child in
# one message, so daemon frames are large; a control request is a few words.
MAX_FRAME = 64 << 20
MAX_CTL_REQUEST = 64 << 10
MAX_CTL_REPLY = 256 << 20


class MsgType(enum.IntEnum):
    # parent -> hce, parent -> pfe
    INIT = 1                 # Init: the config, the uid to run as, inherited fds
    RECONFIGURE = 2          # Reconfigure: a new, validated config
    SHUTDOWN = 3             # Empty: stop (pfe: clean up unless cleanstop no)
    LOG_VERBOSE = 4          # LogVerbose
    PING = 5                 # Seq: the heartbeat; answered with PONG from the event loop
    # parent -> hce
    RELOAD_RESULT = 10       # ReloadResult: answer to CTL_RELOAD
    # hce -> parent, pfe -> parent
    PONG = 6                 # Seq: the answer to PING(seq)
    # pfe -> parent (and hce -> parent: RECONFIGURED)
    PFE_READY = 20           # Empty: kernel state adopted
    RECONFIGURED = 21        # Generation: the child runs the new config
    # hce -> parent
    HCE_READY = 30           # Empty: the first check round is done
    CTL_RELOAD = 31          # CtlReload: reload / load FILE from a control client
    CTL_STOP = 32            # Empty: stop from a control client
    CTL_LOG = 33             # LogVerbose: log verbose|brief from a control client
    HOST_COUNTS = 34         # HostCounts: hosts up of all (systemd STATUS=), at most ~1/s
    # hce -> pfe
    HOST_STATUS = 40         # HostStatusBatch: host states changed (also hce -> relay)
    REDIRECT_STATE = 41      # RedirectState: the set of disabled redirects
    HOST_WEIGHTS = 42        # HostWeights: runtime weights and drains (also hce -> relay)
    # relay -> parent
    RELAY_READY = 50         # Empty: listening
    # relay -> hce
    RELAY_STATS = 51         # RelayStats: the process's figures, about once a second
    SESSIONS_REPLY = 53      # SessionsReply: the answer to SESSIONS_QUERY
    PASSIVE_EVENTS = 54      # PassiveEvents (issue 15): failures the relay saw, batched
    # hce -> relay
    SESSIONS_QUERY = 52      # Seq: `show sessions`
    # pfe -> hce
    KERNEL_COUNTERS = 60     # KernelCounters: the kernel's counters, every COUNTERS_INTERVAL
    # issue 17: check worker -> parent (and PONG, RECONFIGURED)
    WORKER_READY = 70        # Empty: its engine runs
    # check worker -> hce (and RECONFIGURED, after a WORKER_REPORT of every host)
    HOST_CHANGES = 71        # HostChanges: its hosts' state changes, at once
    WORKER_REPORT = 72       # WorkerReport: the rows checked since the last, and its figures
    WORKER_DONE = 74         # Seq: WORKER_COMMAND seq applied (its changes sent before this)
    # hce -> check worker (and RECONFIGURE, forwarded)
    WORKER_COMMAND = 73      # WorkerCommand: a control command (or passive decision) to apply


@dataclass(frozen=True, slots=True)
class Empty:
    pass


@dataclass(frozen=True, slots=True)
class Init:
    config: dict                          # conf.model.Config.model_dump()
    generation: int                       # config generation, from 1
    uid: int
    gid: int
    debug: bool = False
    verbose: int = 0
    peer_fd: int = -1                     # hce <-> pfe socketpair end
    control_fd: int = -1                  # hce: the listening control socket
    restricted_fd: int = -1               # hce: the restricted socket, if any
    icmp_fds: list[int] = field(default_factory=list)   # hce: raw ICMP sockets
    relay_fds: list[int] = field(default_factory=list)  # hce: its channel to each relay process
    index: int = 0                        # relay: which of the prefork processes (from 1)
    listen_fds: dict[str, int] = field(default_factory=dict)  # relay: "address port" -> socket
    fd_socket: int = -1                   # relay: where a reload's new sockets arrive
    tls: dict = field(default_factory=dict)   # relay: TLS material by relay name (conf.keypairs)
    metrics_fd: int = -1                  # hce: the metrics endpoint's listening TCP socket
    # issue 15: hce's NFLOG socket for passive detection (bound by the parent)
    nflog_fd: int = -1
    # issue 14: hce's raw ARP socket for check arp (opened by the parent)
    arp_fd: int = -1
    # issue 14: `log state file`, opened for appending by the parent
    state_fd: int = -1
    # issue 17: hce: its channel to each check worker; a worker: how many
    # there are (its own number is `index`, from 1; hce is its peer_fd)
    worker_fds: list[int] = field(default_factory=list)
    workers: int = 0


def listener_key(address: str, port: int) -> str:
    """A relay listener's name in Init.listen_fds and Reconfigure.listen:
    the parent binds by it, the relay processes serve by it."""
    return f"{address} {port}"


@dataclass(frozen=True, slots=True)
class Reconfigure:
    config: dict
    generation: int
    # relay: the listeners whose sockets were sent on the fd channel just
    # before this message, in the order of the fds; and the TLS material
    listen: list[str] = field(default_factory=list)
    tls: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Generation:
    generation: int


@dataclass(frozen=True, slots=True)
class Seq:
    seq: int


@dataclass(frozen=True, slots=True)
class HostCounts:
    generation: int
    up: int
    total: int


@dataclass(frozen=True, slots=True)
class LogVerbose:
    verbose: bool


@dataclass(frozen=True, slots=True)
class CtlReload:
    request: int                          # hce's id for the waiting client
    path: str | None = None               # load FILE; None: reload the same file


@dataclass(frozen=True, slots=True)
class ReloadResult:
    request: int
    ok: bool
    message: str = ""                     # the diagnostics, file:line:col: ...


@dataclass(frozen=True, slots=True)
class HostStatusBatch:
    generation: int
    statuses: dict[int, HostStatus]       # host id -> status, the changed hosts only
    # CLOCK_MONOTONIC (system-wide) ns of hce's first decision in the batch,
    # so that a relay can tell how long the change took to reach it; 0: a
    # snapshot, no decision to time
    decided_ns: int = 0


@dataclass(frozen=True, slots=True)
class RedirectState:
    generation: int
    disabled: list[str]                   # names of disabled redirects


@dataclass(frozen=True, slots=True)
class HostWeights:
    """`host weight|drain` (issue 13): every host whose weight differs
    from its config's now, the whole map each time (a drained host: 0);
    a host not named has its config weight."""
    generation: int
    weights: dict[int, int]               # host id -> weight (0..MAX_WEIGHT)


@dataclass(frozen=True, slots=True)
class RelayStats:
    generation: int
    index: int                            # the relay process (1..prefork)
    pid: int
    relays: dict[int, list[int]]          # relay id -> [sessions now, total, ended with an error]


# --- passive failure detection (issue 15) ---------------------------------------

PASSIVE_KINDS = ("reset", "unreachable", "error")


@dataclass(frozen=True, slots=True)
class PassiveEvents:
    """relay -> hce: what the relay saw of the hosts of passive tables since
    its last batch: host id -> kinds in order, each one of PASSIVE_KINDS
    (reset: refused or reset by the host; unreachable: no route to it;
    error: a connect timeout or failure, or a 5xx response)."""
    generation: int
    events: dict[int, list[str]]


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One running relay session (`show sessions`)."""
    id: int                               # per relay process
    relay: int
    relay_name: str
    pid: int
    client: str
    client_port: int
    backend: str = ""                     # empty while connecting
    backend_port: int = 0
    age: float = 0.0                      # s since accepted
    idle: float = 0.0                     # s since the last byte either way
    bytes_in: int = 0                     # from the client
    bytes_out: int = 0                    # from the backend
    status: str = "running"               # running | connecting
    # --- issue 12: the filter rules' tag (relayd's se_tag) ---
    tag: str = ""                         # of the request in flight; "" untagged

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> SessionRow:
        return _row_from_wire(cls, d, "session")


@dataclass(frozen=True, slots=True)
class SessionsReply:
    seq: int
    pid: int
    sessions: list[SessionRow]


# --- kernel counters: pfe -> hce, and their rows in show (issue 13 item 2) ----

@dataclass(frozen=True, slots=True)
class DestCounters:
    """A destination's kernel counters: of one service (in KernelCounters),
    or summed over the services of a host's redirects (HostRow.kernel).
    connections, packets and bytes are totals while pfe runs (from the
    kernel's values when it first read them); active and inactive are
    IPVS's connections now. None: the engine does not count it (nftables
    counts connections only)."""
    address: str
    connections: int = 0
    packets_in: int | None = None
    packets_out: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    active: int | None = None
    inactive: int | None = None

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> DestCounters:
        return _row_from_wire(cls, d, "destination counters")


@dataclass(frozen=True, slots=True)
class ServiceCounters:
    """One kernel service (a redirect's listen address and port) and its
    destinations' counters; the fields as DestCounters'."""
    redirect: str
    service: str                          # "tcp 203.0.113.10:80", "fwmark 1 (ipv4)"
    engine: str                           # "nftables" | "ipvs"
    connections: int = 0
    packets_in: int | None = None
    packets_out: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    active: int | None = None
    inactive: int | None = None
    destinations: list[DestCounters] = field(default_factory=list)

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> ServiceCounters:
        return _row_from_wire(cls, d, "service counters")


@dataclass(frozen=True, slots=True)
class KernelCounters:
    generation: int
    interval: float                       # s between two reads
    services: list[ServiceCounters]


@dataclass(frozen=True, slots=True)
class RedirectCounters:
    """A redirect's kernel counters, summed over its services, and
    relayctl's figures over pfe's reads (relayd's pfe_statistics): the
    connections of the last interval, hour and day, their running averages
    (the average of the previous average and the last count, at each
    interval, hour and day's end), and the most in one interval."""
    interval: float
    connections: int = 0                  # total
    last: int = 0                         # in the last interval
    average: int = 0
    max: int = 0
    last_hour: int = 0                    # so far this hour
    average_hour: int = 0
    last_day: int = 0
    average_day: int = 0
    active: int | None = None
    inactive: int | None = None
    packets_in: int | None = None
    packets_out: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> RedirectCounters:
        return _row_from_wire(cls, d, "redirect counters")


# --- check workers (issue 17) ---------------------------------------------------

# The fields of a HostRow that a worker changes, in the order a packed row
# carries them (pack_rows); the others are the config's (hce mirrors them).
ROW_FIELDS = ("id", "status", "error", "detail", "last_check", "latency_ms", "check_cnt",
              "up_cnt", "retry_cnt", "last_change", "transitions", "previous")


def pack_rows(rows: Any) -> str:
    """HostRows -> the text of HostChanges.rows / WorkerReport.rows: a JSON
    array of arrays in ROW_FIELDS order (a worker sends thousands a second:
    a flat array is ~10 times cheaper to make than a map per row)."""
    return json.dumps([[r.id, r.status.value, r.error.value, r.detail, r.last_check,
                        r.latency_ms, r.check_cnt, r.up_cnt, r.retry_cnt, r.last_change,
                        r.transitions, r.previous.value] for r in rows],
                      separators=(",", ":"), allow_nan=False)


def unpack_rows(text: str) -> list[tuple]:
    """The schema check of pack_rows' text: a list of tuples in ROW_FIELDS
    order, status, error and previous as members; MessageError otherwise."""
    try:
        rows = json.loads(text)
    except (ValueError, RecursionError):
        raise MessageError("host rows: not JSON") from None
    if type(rows) is not list:
        raise MessageError("host rows: not a list")
    out = []
    for row in rows:
        try:
            (hid, status, error, detail, last_check, latency, check_cnt, up_cnt, retry_cnt,
             last_change, transitions, previous) = row
            ok = (type(hid) is int and type(detail) is str and type(last_check) in _REAL
                  and type(latency) in _REAL and type(check_cnt) is int
                  and type(up_cnt) is int and type(retry_cnt) is int
                  and type(last_change) in _REAL and type(transitions) is int
                  and type(status) is str and type(error) is str and type(previous) is str)
            if ok:
                out.append((hid, _STATUS_OF[status], _ERROR_OF[error], detail, last_check,
                            latency, check_cnt, up_cnt, retry_cnt, last_change, transitions,
                            _STATUS_OF[previous]))
                continue
        except (TypeError, ValueError, KeyError):
            pass
        raise MessageError(f"host rows: bad row {clip(repr(row))}")
    return out


@dataclass(frozen=True, slots=True)
class HostChanges:
    """A worker's hosts that changed state (on_change), in order."""
    generation: int
    rows: str                             # pack_rows()


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """About once a second: the worker's rows whose checks ran since its
    last report (every row: `full`, at start and after a reconfigure), and
    its figures."""
    generation: int
    index: int                            # the worker (from 1)
    pid: int
    rows: str                             # pack_rows()
    stats: Stats
    results: dict[str, int]               # checks done by result word (HostError values)
    full: bool = False


@dataclass(frozen=True, slots=True)
class WorkerCommand:
    """hce -> every worker: a command for the hosts it owns (a worker
    without the host or table does nothing). action: host (enable/disable),
    table, poll, passive (word: the Decision's action)."""
    action: str
    host: int = 0
    table: str = ""
    enabled: bool = False
    word: str = ""
    detail: str = ""
    seq: int = 0                          # > 0: answer WORKER_DONE(seq) once applied


WORKER_ACTIONS = ("host", "table", "poll", "passive")


PAYLOADS: dict[MsgType, type] = {
    MsgType.INIT: Init,
    MsgType.RECONFIGURE: Reconfigure,
    MsgType.SHUTDOWN: Empty,
    MsgType.LOG_VERBOSE: LogVerbose,
    MsgType.PING: Seq,
    MsgType.PONG: Seq,
    MsgType.RELOAD_RESULT: ReloadResult,
    MsgType.PFE_READY: Empty,
    MsgType.RECONFIGURED: Generation,
    MsgType.HCE_READY: Empty,
    MsgType.CTL_RELOAD: CtlReload,
    MsgType.CTL_STOP: Empty,
    MsgType.CTL_LOG: LogVerbose,
    MsgType.HOST_COUNTS: HostCounts,
    MsgType.HOST_STATUS: HostStatusBatch,
    MsgType.REDIRECT_STATE: RedirectState,
    MsgType.HOST_WEIGHTS: HostWeights,
    MsgType.RELAY_READY: Empty,
    MsgType.RELAY_STATS: RelayStats,
    MsgType.SESSIONS_QUERY: Seq,
    MsgType.SESSIONS_REPLY: SessionsReply,
    MsgType.PASSIVE_EVENTS: PassiveEvents,
    MsgType.KERNEL_COUNTERS: KernelCounters,
    MsgType.WORKER_READY: Empty,
    MsgType.HOST_CHANGES: HostChanges,
    MsgType.WORKER_REPORT: WorkerReport,
    MsgType.WORKER_COMMAND: WorkerCommand,
    MsgType.WORKER_DONE: Seq,
}


class MessageError(ValueError):
    """A message that does not match the schema (the sender's fault)."""


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    payload: Any

    def __post_init__(self) -> None:
        want = PAYLOADS[self.type]
        if not isinstance(self.payload, want):
            raise TypeError(f"{self.type.name} carries {want.__name__}, "
                            f"not {type(self.payload).__name__}")

    def to_wire(self) -> list:
        return [int(self.type), _payload_wire(self.payload)]


# payload class -> (field name, whether its type holds a dataclass) per field.
# to_wire converts only those fields (a reply row inside: as dataclasses.asdict
# would) and sends the rest as they are: asdict deep-copies every value, and
# INIT's config at 10,000 hosts cost the parent 0.2 s of CPU a child for it
_WIRE: dict[type, tuple[tuple[str, bool], ...]] = {}


def _payload_wire(payload: Any) -> dict:
    cls = type(payload)
    fields = _WIRE.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls)
        fields = _WIRE[cls] = tuple((f.name, _holds_dataclass(hints[f.name]))
                                    for f in dataclasses.fields(cls))
    return {name: _rows_wire(getattr(payload, name)) if rows else getattr(payload, name)
            for name, rows in fields}


def _holds_dataclass(hint: Any) -> bool:
    """Whether a value of this type may hold a dataclass (Any: it may)."""
    if hint is Any:
        return True
    if dataclasses.is_dataclass(hint):
        return True
    return any(_holds_dataclass(h) for h in typing.get_args(hint))


def _rows_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_rows_wire(v) for v in value)
    if isinstance(value, dict):
        return {k: _rows_wire(v) for k, v in value.items()}
    return value


def from_wire(obj: Any) -> Message:
    """Check a decoded frame against the schema: shape, then type, then fields."""
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        raise MessageError("message is not a [type, payload] pair")
    raw_type, body = obj
    if type(raw_type) is not int:
        raise MessageError(f"message type {raw_type!r} is not an integer")
    try:
        mtype = MsgType(raw_type)
    except ValueError:
        raise MessageError(f"unknown message type {raw_type}") from None
    return Message(mtype, build(PAYLOADS[mtype], body, mtype.name))


def build(cls: type, body: Any, what: str) -> Any:
    """Make a payload dataclass from a dict, checking every field's type and
    turning enum values (a HostStatus sent as its string) into members."""
    if not isinstance(body, dict):
        raise MessageError(f"{what}: payload is not a map")
    fields = _fields(cls)
    unknown = set(body) - {f[0] for f in fields}
    if unknown:
        raise MessageError(f"{what}: unknown field {sorted(map(str, unknown))[0]!r}")
    kw = {}
    for name, convert, required in fields:
        if name not in body:
            if required:
                raise MessageError(f"{what}: missing field {name!r}")
            continue
        try:
            kw[name] = convert(body[name])
        except _Bad:
            raise MessageError(f"{what}: field {name!r} has a bad value") from None
    return cls(**kw)


class _Bad(Exception):
    """A value that does not match its field's type (raised by converters)."""


Converter = Callable[[Any], Any]
_FIELDS: dict[type, list[tuple[str, Converter, bool]]] = {}


def _fields(cls: type) -> list[tuple[str, Converter, bool]]:
    """(name, converter, required) of each field of cls, made once per class."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = [(f.name, _converter(hints[f.name]),
                         f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
                        for f in dataclasses.fields(cls)]
    return _FIELDS[cls]


def _exact(*kinds: type) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) not in kinds:       # type(): True is not an int here
            raise _Bad
        return value
    return convert


def _converter(hint: Any) -> Converter:
    """A function checking a wire value against a type hint, returning the
    value as the field holds it (an enum member for an enum hint)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_converter(h) for h in typing.get_args(hint)]

        def union(value: Any) -> Any:
            why = _Bad()
            for convert in options:
                try:
                    return convert(value)
                except _Bad as e:
                    why = e if e.args else why      # keep a row's own reason
            raise why
        return union
    if hint is type(None):
        return _exact(type(None))
    if hint in (bool, int, str):
        return _exact(hint)
    if hint is float:
        return _exact(int, float)
    if hint is dict:
        return _exact(dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = hint._value2member_map_

        def member(value: Any) -> Any:
            try:
                m = members.get(value)
            except TypeError:                  # unhashable: a list, a map
                raise _Bad from None
            # the type test: True would find the member of value 1
            if m is None or type(value) is not type(m.value) and not isinstance(value, hint):
                raise _Bad
            return m
        return member
    if isinstance(hint, type) and hasattr(hint, "from_wire"):      # a reply row
        def row(value: Any) -> Any:
            try:
                return hint.from_wire(value)
            except MessageError as e:
                raise _Bad(str(e)) from None
        return row
    if origin is list:
        (item,) = typing.get_args(hint)
        each = _converter(item)

        def items(value: Any) -> list:
            if not isinstance(value, list):
                raise _Bad
            return [each(v) for v in value]
        return items
    if origin is dict:
        k, v = map(_converter, typing.get_args(hint))

        def mapping(value: Any) -> dict:
            if not isinstance(value, dict):
                raise _Bad
            return {k(a): v(b) for a, b in value.items()}
        return mapping
    raise TypeError(f"no check for {hint!r}")      # a schema bug, not input


# --- the control protocol ---------------------------------------------------

class ErrorCode(enum.StrEnum):
    """Why a control request failed. hoststatectl maps them to exit status."""
    BAD_REQUEST = "bad-request"          # not a request at all, or too large
    VERSION = "version"                  # a protocol version we do not speak
    UNKNOWN_COMMAND = "unknown-command"
    AMBIGUOUS = "ambiguous-command"
    BAD_ARGUMENT = "bad-argument"
    NOT_FOUND = "not-found"              # no host/table/redirect by that id or name
    FORBIDDEN = "forbidden"              # not allowed on the restricted socket
    FAILED = "failed"                    # the command ran and failed (reload error)


EXIT_STATUS: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 2, ErrorCode.VERSION: 2, ErrorCode.UNKNOWN_COMMAND: 2,
    ErrorCode.AMBIGUOUS: 2, ErrorCode.BAD_ARGUMENT: 2, ErrorCode.NOT_FOUND: 1,
    ErrorCode.FORBIDDEN: 4, ErrorCode.FAILED: 1,
}


class CommandError(ValueError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# A command: its words, then what its argument is (None: none).
# Order matters only for the error text listing the choices.
COMMANDS: list[tuple[tuple[str, ...], str | None]] = [
    (("show", "summary"), None),
    (("show", "hosts"), None),
    (("show", "redirects"), None),
    (("show", "relays"), None),
    (("show", "tables"), None),
    (("show", "sessions"), None),
    (("show", "routers"), None),            # issue 16
    (("host", "disable"), "id|name"),
    (("host", "enable"), "id|name"),
    (("table", "disable"), "id|name"),
    (("table", "enable"), "id|name"),
    (("redirect", "disable"), "id|name"),
    (("redirect", "enable"), "id|name"),
    # runtime control (issue 13): two arguments where the second is a word
    (("host", "weight"), "id|name weight"),
    (("host", "drain"), "id|name"),
    (("host", "undrain"), "id|name"),
    (("table", "drain"), "id|name"),
    (("table", "undrain"), "id|name"),
    (("poll",), None),
    (("reload",), None),
    (("load",), "file"),
    (("monitor",), None),
    (("log", "verbose"), None),
    (("log", "brief"), None),
    (("stop",), None),
]

# What the restricted socket answers.
READ_ONLY = {("show", "summary"), ("show", "hosts"), ("show", "redirects"),
             ("show", "relays"), ("show", "tables"), ("show", "sessions"), ("monitor",),
             ("show", "routers")}


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple[str, ...]               # canonical: ("show", "hosts")
    arg: str | None = None
    value: str | None = None             # a second argument (`host weight ID N`: N)

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def line(self) -> str:
        """The request as the daemon reads it: words, then the arguments."""
        return " ".join([*self.words, *(a for a in (self.arg, self.value) if a is not None)])


# --- runtime weights (issue 13) ---
# The range of a host's `weight` in the config (conf/build.py); relayd has no
# weights at all. 0 takes no new connections, as a drained host.
MAX_WEIGHT = 65535


def check_weight(text: str) -> int:
    """`host weight ID N`: N as an int in 0..MAX_WEIGHT, or BAD_ARGUMENT."""
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_WEIGHT:
        raise CommandError(ErrorCode.BAD_ARGUMENT,
                           f"host weight: the weight is a number from 0 to {MAX_WEIGHT}, "
                           f"not {clip(text)}")
    return int(text)


def parse_command(text: str | list[str]) -> Command:
    """Words (or a string) -> Command, accepting unambiguous prefixes of each
    word as relayctl does (`show sum`, `ho dis 3`)."""
    words = text.split() if isinstance(text, str) else list(text)
    if not words:
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, "empty command")
    candidates = COMMANDS
    depth = 0
    while True:
        word = words[depth] if depth < len(words) else None
        level = [c for c in candidates if len(c[0]) > depth]
        if not level:
            break                        # the command's words are all matched
        if word is None:
            choices = sorted({c[0][depth] for c in level})
            raise CommandError(ErrorCode.UNKNOWN_COMMAND,
                               f"incomplete command, expected one of: {', '.join(choices)}")
        exact = [c for c in level if c[0][depth] == word]
        matched = exact or [c for c in level if c[0][depth].startswith(word)]
        names = {c[0][depth] for c in matched}
        if not matched:
            raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command: {_word(word)}")
        if len(names) > 1:
            raise CommandError(ErrorCode.AMBIGUOUS,
                               f"ambiguous command: {_word(word)} ({', '.join(sorted(names))})")
        candidates = matched
        depth += 1
    (cmd_words, argname), = candidates
    rest = words[depth:]
    if argname is None:
        if rest:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"{' '.join(cmd_words)}: unexpected argument {_word(rest[0])}")
        return Command(cmd_words)
    names = argname.split()
    if len(rest) != len(names):
        what = "one argument" if len(names) == 1 else f"{len(names)} arguments"
        raise CommandError(ErrorCode.BAD_ARGUMENT,
                           f"{' '.join(cmd_words)}: needs {what} ({argname})")
    if cmd_words == ("host", "weight"):
        check_weight(rest[1])
    return Command(cmd_words, *rest)


def request(cmd: str) -> dict:
    return {"cmd": cmd, "v": PROTOCOL_VERSION}


def check_request(obj: Any) -> Command:
    """A decoded control request -> Command, or CommandError."""
    if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
        raise CommandError(ErrorCode.BAD_REQUEST, 'a request is {"cmd": "...", "v": 1}')
    v = obj.get("v", PROTOCOL_VERSION)
    if type(v) is not int:
        raise CommandError(ErrorCode.VERSION, f'"v" must be the integer {PROTOCOL_VERSION}, '
                                              f"not {clip(repr(v))}")
    if v != PROTOCOL_VERSION:
        raise CommandError(ErrorCode.VERSION, f"protocol version {clip(str(v))} not supported "
                                              f"(this daemon speaks version {PROTOCOL_VERSION})")
    extra = set(obj) - {"cmd", "v"}
    if extra:
        raise CommandError(ErrorCode.BAD_REQUEST,
                           f"unknown request field {clip(repr(sorted(map(str, extra))[0]))}")
    if len(obj["cmd"]) > 1024:
        raise CommandError(ErrorCode.BAD_REQUEST, "command too long")
    return parse_command(obj["cmd"])


CLIP = 60                            # characters of a client's input an error quotes


_PLAIN = re.compile(r"[\w.:/@%+=,-]*[\w/]")


def _word(text: str) -> str:
    """A client's word in an error: as typed when it reads as one, else
    quoted, so that `:` or a blank is seen as what was sent."""
    return clip(text) if _PLAIN.fullmatch(text) else clip(json.dumps(text))


def clip(text: str, n: int = CLIP) -> str:
    """A client's word in an error message: never echoed at any length."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def reply_ok(data: Any = None) -> dict:
    return {"ok": True, "data": data}


def reply_error(code: ErrorCode | str, message: str) -> dict:
    return {"ok": False, "error": {"code": str(code), "message": message}}


# --- reply rows: what `show` answers and `monitor` streams -----------------
#
# hce builds them (hce_show), hoststatectl reads them back (from_wire) and
# prints them by attribute. On the wire each is a map of today's field names,
# so scripts reading the JSON keep working; from_wire ignores fields it does
# not know (derived ones such as a host's "availability") and takes the
# defaults for those a reply leaves out.

def _row_from_wire(cls: type, d: Any, what: str) -> Any:
    if not isinstance(d, dict):
        raise MessageError(f"{what}: row is not a map")
    kw = {}
    for name, convert, required in _fields(cls):
        if name in d:
            try:
                kw[name] = convert(d[name])
            except _Bad as e:
                inner = f" ({e})" if e.args else ""
                raise MessageError(f"{what}: field {name!r} has a bad value{inner}") from None
        elif required:
            raise MessageError(f"{what}: missing field {name!r}")
    return cls(**kw)


@dataclass(slots=True)
class HostRow:
    """One host of one table: a `show hosts` row, a monitor event, and the
    scheduler's own per-host report (updated in place on every check, so
    mutable; copy() hands out snapshots)."""
    id: int
    name: str                      # the address as written in the config
    table: str
    status: HostStatus = HostStatus.UNKNOWN
    error: HostError = HostError.NONE   # the last check's word, up or down (wire: "result")
    detail: str = ""
    last_check: float = 0.0        # wall clock, 0 = never
    latency_ms: float = 0.0
    check_cnt: int = 0
    up_cnt: int = 0
    retry_cnt: int = 0             # consecutive failures absorbed while up
    address: str | None = None
    port: int | None = None
    table_id: int = 0
    parent: int | None = None      # the host whose state this one mirrors
    # --- runtime control and state history (issue 13) ---
    weight: int = 1                # the weight now: the config's or `host weight`'s
    drain: bool = False            # `host drain`: no new connections (weight 0 in effect)
    last_change: float = 0.0       # wall clock of the last state change (or of the start)
    transitions: int = 0           # state changes since the daemon started
    previous: HostStatus = HostStatus.UNKNOWN   # the state before the last change
    # kernel counters (issue 13 item 2): the host as a destination of its
    # redirects' services; None before pfe's first read (hce_show sets it)
    kernel: DestCounters | None = None
    drain_reason: str = ""         # issue 14: why drained besides `host drain` ("maintenance file")

    @property
    def effective_weight(self) -> int:
        """What the kernel and the relays use: 0 while drained."""
        return 0 if self.drain else self.weight

    @property
    def availability(self) -> float | None:
        """Percent of checks that succeeded; None before the first (the one
        place this is computed: logs, replies and hoststatectl read it)."""
        return 100.0 * self.up_cnt / self.check_cnt if self.check_cnt else None

    @property
    def down_error(self) -> str:
        """Why the host is down (wire: "error"); empty unless it is."""
        if self.status != _DOWN or self.error == _NO_ERROR:
            return ""
        return str(self.error)            # str() of a StrEnum: a plain str, fast

    @property
    def reason(self) -> str:
        return f"{self.error}: {self.detail}" if self.detail else str(self.error)

    def copy(self) -> HostRow:
        """A copy (the scheduler's hosts() copies every host: ~7 times faster
        than dataclasses.replace)."""
        return HostRow(self.id, self.name, self.table, self.status, self.error, self.detail,
                       self.last_check, self.latency_ms, self.check_cnt, self.up_cnt,
                       self.retry_cnt, self.address, self.port, self.table_id, self.parent,
                       self.weight, self.drain, self.last_change, self.transitions,
                       self.previous, self.kernel, self.drain_reason)

    def to_wire(self) -> dict:
        av = self.availability
        return {
            "id": self.id, "name": self.name, "table": self.table, "table_id": self.table_id,
            "address": self.address, "port": self.port, "parent": self.parent,
            "status": str(self.status), "error": self.down_error,
            "result": str(self.error), "detail": self.detail,
            "last_check": self.last_check, "latency_ms": round(self.latency_ms, 3),
            "check_cnt": self.check_cnt, "up_cnt": self.up_cnt, "retry_cnt": self.retry_cnt,
            "availability": round(av, 2) if av is not None else None,
            # issue 13: runtime weight/drain, state history (the time in the
            # state is the reader's clock minus last_change: no wall-clock
            # value that ages in a cached listing)
            "weight": self.weight, "drain": self.drain, "last_change": self.last_change,
            "transitions": self.transitions, "previous": str(self.previous),
            "kernel": self.kernel.to_wire() if self.kernel is not None else None,
            "drain_reason": self.drain_reason,
        }

    @classmethod
    def from_wire(cls, d: Any) -> HostRow:
        # the fast path (hoststatectl reads 10,000 of these): a well-formed
        # row is checked in one expression; anything else takes the slow
        # path below, which says what is wrong
        try:
            g = d.get
            row = cls(d["id"], d["name"], d["table"], _STATUS_OF[g("status", "unknown")],
                      _ERROR_OF[g("result") or g("error") or "none"], g("detail", ""),
                      g("last_check", 0.0), g("latency_ms", 0.0), g("check_cnt", 0),
                      g("up_cnt", 0), g("retry_cnt", 0), g("address"), g("port"),
                      g("table_id", 0), g("parent"), g("weight", 1), g("drain", False),
                      g("last_change", 0.0), g("transitions", 0),
                      _STATUS_OF[g("previous", "unknown")])
            if g("kernel") is not None:
                row.kernel = DestCounters.from_wire(g("kernel"))
            row.drain_reason = g("drain_reason", "")
        except (AttributeError, KeyError, TypeError, MessageError):
            pass
        else:
            if (type(row.id) is int and type(row.name) is str and type(row.table) is str
                    and type(row.detail) is str and type(row.last_check) in _REAL
                    and type(row.latency_ms) in _REAL and type(row.check_cnt) is int
                    and type(row.up_cnt) is int and type(row.retry_cnt) is int
                    and type(row.address) in _STR_OR_NONE and type(row.port) in _INT_OR_NONE
                    and type(row.table_id) is int and type(row.parent) in _INT_OR_NONE
                    and type(g("status", "")) is str and type(row.weight) is int
                    and type(row.drain) is bool and type(row.last_change) in _REAL
                    and type(row.transitions) is int and type(g("previous", "")) is str
                    and type(row.drain_reason) is str):
                return row
        if isinstance(d, dict):
            # the last check's word travels as "result"; a reply without it
            # still says, in "error", why a host is down
            d = dict(d, error=d.get("result") or d.get("error") or HostError.NONE.value)
            d.pop("result", None)
            if d.get("latency_ms") is None:
                d.pop("latency_ms", None)
        return _row_from_wire(cls, d, "host")


_STATUS_OF: dict[str, HostStatus] = {s.value: s for s in HostStatus}
_ERROR_OF: dict[str, HostError] = {e.value: e for e in HostError}
_REAL = (int, float)
_STR_OR_NONE = (str, type(None))
_INT_OR_NONE = (int, type(None))
_DOWN, _NO_ERROR = HostStatus.DOWN, HostError.NONE

TABLE_DISABLED = "disabled"


def table_status(up: int, disabled: bool) -> str:
    """The one table-status vocabulary, relayctl's."""
    if disabled:
        return TABLE_DISABLED
    return f"active ({up} hosts)" if up else "empty"


def redirect_status(disabled: bool, forward_up: bool, backup_up: bool) -> str:
    """relayctl's words for a redirect: its table, or else its backup
    table, has a host up."""
    if disabled:
        return "disabled"
    if forward_up:
        return "active"
    if backup_up:
        return "active (using backup table)"
    return "down"


def relay_status(disabled: bool, running: bool) -> str:
    """relayctl says `active` or `disabled`; a relay no relay process has
    reported on yet is `not running` rather than claim to serve."""
    if disabled:
        return "disabled"
    return "active" if running else "not running"


@dataclass(frozen=True, slots=True)
class TableRow:
    id: int
    name: str
    status: str                    # table_status()
    up: int = 0                    # hosts up
    hosts: int = 0                 # hosts in the table
    check: str = ""                # the check's kind
    port: int | None = None
    disabled: bool = False

    def to_wire(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "up": self.up,
                "hosts": self.hosts, "check": self.check, "port": self.port,
                "disabled": self.disabled}

    @classmethod
    def from_wire(cls, d: Any) -> TableRow:
        return _row_from_wire(cls, d, "table")


@dataclass(frozen=True, slots=True)
class RedirectRow:
    id: int
    name: str
    status: str                    # redirect_status()
    table: str = ""                # forward to
    backup: str | None = None      # the backup table, if any
    # kernel counters (issue 13 item 2): None before pfe's first read, or
    # with an engine that counts nothing
    kernel: RedirectCounters | None = None

    def to_wire(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status,
                "table": self.table, "backup": self.backup,
                "kernel": self.kernel.to_wire() if self.kernel is not None else None}

    @classmethod
    def from_wire(cls, d: Any) -> RedirectRow:
        return _row_from_wire(cls, d, "redirect")


@dataclass(frozen=True, slots=True)
class RelayRow:
    """A relay and its figures, summed over the relay processes: sessions
    now, total since start, and relayctl's "last" (sessions begun in the
    last minute, hour, day) and "average" (per minute, hour and day since
    the start, over whole intervals)."""
    id: int
    name: str
    status: str                    # relay_status()
    sessions: int = 0
    total: int = 0
    errors: int = 0                # sessions that ended with an error
    last_min: int = 0
    last_hour: int = 0
    last_day: int = 0
    avg_min: int = 0
    avg_hour: int = 0
    avg_day: int = 0
    processes: int = 0             # relay processes that reported
    listen: list[str] = field(default_factory=list)    # "address:port[ tls]"

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> RelayRow:
        return _row_from_wire(cls, d, "relay")


# --- routers (issue 16) ---

@dataclass(frozen=True, slots=True)
class RouterRow:
    """A router: relayctl's id, name, status (`active`, `disabled`),
    rtable, rtlabel and routes; then its gateways (the hosts of its table)
    and the next hops its routes go through now: the gateways up with a
    weight above 0 of the lowest priority that has any (pfe writes the
    others' routes too, at their higher metrics)."""
    id: int
    name: str
    status: str
    rtable: int | None = None
    rtlabel: str | None = None
    routes: list[str] = field(default_factory=list)
    table: str = ""
    gateways: int = 0              # hosts in the table
    up: int = 0                    # of them up
    nexthops: list[str] = field(default_factory=list)

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> RouterRow:
        return _row_from_wire(cls, d, "router")


@dataclass(frozen=True, slots=True)
class Stats:
    """The check scheduler's figures (`show summary`). A field a reply
    leaves out is None and not printed."""
    lag_p50_ms: float | None = None       # due -> started
    lag_p99_ms: float | None = None
    latency_p50_ms: float | None = None   # started -> verdict
    latency_p99_ms: float | None = None
    lag_max_ms: float | None = None
    checks_in_flight: int | None = None
    checks_waiting: int | None = None     # held back by max checks
    checks_done: int | None = None
    interval_timeouts: int | None = None
    local_errors: int | None = None       # checks not counted: our own limit (no fd, no memory)
    probes: int | None = None             # distinct checks (hosts sharing one count once)
    hosts: int | None = None

    def items(self) -> list[tuple[str, float | int]]:
        """(name, value) of the fields set, in order."""
        return [(name, v) for name in _STATS_FIELDS if (v := getattr(self, name)) is not None]

    def to_wire(self) -> dict:
        return dict(self.items())

    @classmethod
    def from_wire(cls, d: Any) -> Stats:
        return _row_from_wire(cls, d, "stats")


_STATS_FIELDS = [f.name for f in dataclasses.fields(Stats)]


# --- show summary's daemon block (issue 13) ---

@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """The daemon itself: what runs, since when, and how the last reload
    went (a reload by SIGHUP or by hoststatectl; none yet: last_reload 0)."""
    version: str
    pid: int                              # the daemon's (parent process's) pid
    started: float                        # wall clock
    uptime: float                         # s
    last_reload: float = 0.0              # wall clock, 0: none since the start
    reload_ok: bool | None = None         # None: no reload yet
    reload_message: str = ""              # the diagnostics of a failed one
    reloads: int = 0                      # reloads tried
    reload_failures: int = 0
    monitors: int = 0                     # hoststatectl monitor clients connected now

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> DaemonInfo:
        return _row_from_wire(cls, d, "daemon")


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A check worker (issue 17), in show summary: its hosts and probes,
    checks a second over its last two reports, and its lag percentiles."""
    index: int
    pid: int = 0
    hosts: int = 0
    probes: int = 0
    checks_per_s: float = 0.0
    checks_done: int = 0
    lag_p50_ms: float = 0.0
    lag_p99_ms: float = 0.0

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> WorkerRow:
        return _row_from_wire(cls, d, "worker")


@dataclass(frozen=True, slots=True)
class ShowReply:
    """The data of a `show` reply: the parts that command shows."""
    redirects: list[RedirectRow] | None = None
    tables: list[TableRow] | None = None
    hosts: list[HostRow] | None = None
    relays: list[RelayRow] | None = None
    sessions: list[SessionRow] | None = None
    stats: Stats | None = None
    generation: int | None = None         # the config generation (summary)
    daemon: DaemonInfo | None = None      # version, pid, uptime, last reload (summary)
    routers: list[RouterRow] | None = None    # issue 16
    workers: list[WorkerRow] | None = None    # issue 17: the check workers (summary)

    def to_wire(self) -> dict:
        out: dict[str, Any] = {}
        for name in _SHOW_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, list):
                out[name] = [r.to_wire() for r in v]
            elif isinstance(v, (Stats, DaemonInfo)):
                out[name] = v.to_wire()
            else:
                out[name] = v
        return out

    @classmethod
    def from_wire(cls, d: Any) -> ShowReply:
        return _row_from_wire(cls, d, "show reply")


_SHOW_FIELDS = [f.name for f in dataclasses.fields(ShowReply)]


@dataclass(frozen=True, slots=True)
class Event:
    """One monitor notification: a host whose state changed, or a redirect
    enabled or disabled. Wire: {"event": "host", "time": ..., "previous":
    "up", "status": "down", "reason": "...", "data": {...row...}}: when (wall
    clock), from what to what and why (issue 13), then the whole row."""
    kind: str                             # "host" | "redirect"
    row: HostRow | RedirectRow
    time: float = 0.0                     # wall clock of the change; 0: not given
    previous: str = ""                    # the state before ("" not given)
    reason: str = ""                      # why: the check's result, or the command

    def to_wire(self) -> dict:
        return {"event": self.kind, "time": self.time, "previous": self.previous,
                "status": str(self.row.status), "reason": self.reason,
                "data": self.row.to_wire()}

    @classmethod
    def from_wire(cls, d: Any) -> Event:
        if not isinstance(d, dict):
            raise MessageError("event is not a map")
        row = _EVENT_ROWS.get(d.get("event"))
        if row is None:
            raise MessageError(f"unknown event {d.get('event')!r}")
        t, prev, why = d.get("time", 0.0), d.get("previous", ""), d.get("reason", "")
        if type(t) not in _REAL or type(prev) is not str or type(why) is not str:
            raise MessageError("event: time, previous or reason has a bad value")
        return cls(d["event"], row.from_wire(d.get("data")), t, prev, why)


_EVENT_ROWS: dict[str, type] = {"host": HostRow, "redirect": RedirectRow}
