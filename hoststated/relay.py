"""relay, the layer-7 relay process: unprivileged, no capabilities, and
`prefork N` of them (relayd's default 3), each serving every relay.

The parent binds the listening sockets (so ports below 1024 need no
privilege here): per relay listener, one SO_REUSEPORT socket for each relay
process, so the kernel spreads new connections over the processes with no
thundering herd. They arrive as inherited fds (INIT) and, for listeners a
reload adds, over a second socketpair as SCM_RIGHTS (RECONFIGURE says which).

Host states come from hce (relayd: hce -> pfe -> relays; here hce tells the
relays itself, so a state change does not queue behind pfe's kernel
writes), in the same batches pfe gets. A host that is down receives no new
session; the sessions it has go on until they end. Every second each
process sends its figures to hce (`show relays`); `show sessions` asks
every process for its table.

Dying is the daemon's stop (fail-stop): every error the role cannot carry
on from is fatal; a session's errors end that session only.

A process accepts only once it knows the state of every host its relays
check (or after one interval plus timeout): a connection that waits in the
accept queue meanwhile (the start of a restart that kept the sockets) is
served, not refused for "no host up". A relay a reload removes stops
listening at once; its sessions run on for up to its session timeout, then
are closed (logged). At a stop the process stops accepting, lets the
sessions in flight finish for up to STOP_DRAIN seconds (an HTTP session
between requests is closed at once), closes the rest and exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

from hoststated import log, privsep, relay_dns, relay_http, relay_splice, relay_tls
from hoststated.conf.model import Config, Relay, install_hint
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError, until_one_ends
from hoststated.ipc.messages import MsgType, SessionRow
from hoststated.proc import from_parent, settle_heap
from hoststated.relay_select import Pool, Target, hash_key
from hoststated.relay_tcp import Session, Side, original_destination
from hoststated.states import HostStatus

logger = log.get("relay")

STATS_INTERVAL = 1.0        # s between figures to hce (only when they changed)
SWEEP_INTERVAL = 1.0        # s between idle-session sweeps
SESSION_RESERVE = 64        # descriptors kept for everything but sessions
FD_TIMEOUT = 5.0            # s to wait for a reload's listening sockets
HANDSHAKE_TIMEOUT = 10.0    # s for a client's TLS handshake
# s for the sessions in flight at a stop. Short: during a restart that keeps
# the listening sockets (systemd's fd store), every new client waits in the
# accept queue until the next daemon runs, and that starts only once this
# one has exited; and well within the parent's CHILD_STOP_TIMEOUT (10 s),
# after which it kills. A request or a response in flight takes far less.
STOP_DRAIN = 5.0
DRAIN_POLL = 0.05           # s between looks at the sessions while draining
_STATUSES = {s.value: s for s in HostStatus}
PASSIVE_BATCH_MAX = 64      # passive events per host in one batch to hce (issue 15)


class Figures:
    __slots__ = ("active", "total", "errors")

    def __init__(self) -> None:
        self.active = self.total = self.errors = 0


class RelayRuntime:
    """One relay of the running config, in this process."""

    def __init__(self, relay: Relay, config: Config, proc: RelayProcess,
                 figures: Figures | None = None):
        self.conf = relay
        self.proc = proc
        self.id = relay.id
        self.name = relay.name
        self.session_timeout = float(relay.session_timeout)
        # monotonic time its sessions end by once a reload removed the relay
        self.removed_by: float | None = None
        self.listen_port = relay.listen[0].port
        self.pools: list[Pool] = []
        self.special: str | None = None         # "destination" for nat lookup / destination
        # shared with the runtime a reload replaces: the sessions it still
        # runs count here, and the relay's figures go on
        self.figures = figures or Figures()
        self.by_host: dict[int, list[tuple[Pool, int]]] = {}
        # issue 15: hosts of passive tables, whose failures go to hce
        self.passive_hosts: set[int] = {
            h.id for f in relay.forward if f.table
            for t in (config.table(f.table),) if t is not None and t.options.passive
            for h in t.hosts}
        protocol = next((p for p in config.protocols if p.name == relay.protocol), None)
        self.tls_opts = protocol.tls if protocol is not None else ()
        self.sockopts = socket_options(protocol.tcp if protocol is not None else ())
        self.splice = splice_option(protocol.tcp if protocol is not None else ())
        self.http = (relay_http.HttpOptions.from_protocol(protocol)
                     if protocol is not None and protocol.type == "http" else None)
        self.dns = protocol is not None and protocol.type == "dns"
        self.material = proc.tls.get(relay.name) or {}
        for f in relay.forward:
            backend_tls = (relay_tls.client_context(self.tls_opts, self.material.get("ca"))
                           if f.tls else None)
            if f.destination or f.nat_lookup:
                self.special = "destination"
                continue
            pool = Pool(mode=f.mode or "roundrobin", max_tries=1 + (f.retry or 0))
            if f.address is not None:
                pool.targets.append(Target(None, f.address, f.port or self.listen_port,
                                           tls=backend_tls, sni=relay_tls.sni_name(f.address),
                                           proxy=f.proxy_protocol))
                pool.up.add(0)
                pool.key = hash_key(f.address, f.mode_key)
            else:
                table = config.table(f.table)
                checked = table is not None
                if table is None:
                    table = next(t for t in config.relay_tables if t.name == f.table)
                pool.key = hash_key(table.name, f.mode_key)
                pool.template = table.template
                port = f.port or table.port or self.listen_port
                for i, h in enumerate(table.hosts):
                    pool.targets.append(Target(h.id, h.address or h.name, port,
                                               proc.weights.get(h.id, h.weight),
                                               tls=backend_tls, sni=relay_tls.sni_name(h.name),
                                               proxy=f.proxy_protocol))
                    if checked:
                        self.by_host.setdefault(h.id, []).append((pool, i))
                        if proc.status.get(h.id) is HostStatus.UP:
                            pool.up.add(i)
                    else:
                        pool.up.add(i)          # no check: taken as up (relayd)
                if f.retry is None:
                    # relayd's `retry N` of a table is also its connect retries;
                    # without one, a failed connect still tries the others
                    pool.max_tries = len(pool.targets)
            self.pools.append(pool)

    # --- what a session asks -------------------------------------------------

    def targets_for(self, session: Session, route: str | None = None
                    ) -> tuple[list[Target], str | None]:
        """The hosts to try for a session; `route`: the table an HTTP rule
        chose (its template's name; "" or None: the relay's own)."""
        if self.conf.disabled:
            return [], "relay disabled"
        client = session.client_addr[0] if session.client_addr else ""
        here = f"{session.local_addr[0]}:{session.local_addr[1]}"
        if self.special == "destination":
            sock = session.client_socket()
            dst = original_destination(sock) if sock is not None else None
            if dst is None or (dst[0], dst[1]) == tuple(session.local_addr[:2]):
                return [], "no original destination (the connection was not redirected)"
            f = next(f for f in self.conf.forward if f.destination or f.nat_lookup)
            return [Target(None, dst[0], dst[1], proxy=f.proxy_protocol)], None
        pools = self.pools
        if route:
            pools = [p for p in self.pools if p.template == route]
        fed = getattr(getattr(session, "filter", None), "route_hash", b"")  # (splice: none)
        if fed:
            # what the protocol's `hash` rules fed (relayd's se_siphashctx)
            here += "|" + fed.decode("latin-1")
        for pool in pools:                      # the first table with a host up; then its backup
            targets = pool.pick(client, here)
            if targets:
                return targets, None
        return [], f"no host up in <{route}>" if route else "no host up"

    def http_filter(self, session: Session) -> relay_http.HttpRelay:
        """The HTTP session of an `http protocol` relay (relay_http), with
        the values of relayd's macros for its header rules."""
        c, here = session.client_addr, session.local_addr
        return relay_http.HttpRelay(self.http, {
            "REMOTE_ADDR": str(c[0]), "REMOTE_PORT": str(c[1]) if len(c) > 1 else "0",
            "SERVER_ADDR": str(here[0]), "SERVER_PORT": str(here[1]) if len(here) > 1 else "0",
            "TIMEOUT": str(int(self.session_timeout))})

    def pick_datagram(self, client, here: str = "") -> tuple[str, int] | None:
        """The backend of one DNS query (relay_dns): the mode's first host up;
        `here`, the listener's address:port, is what hash and loadbalance hash."""
        for pool in self.pools:
            targets = pool.pick(str(client[0]) if client else "", here)
            if targets:
                return targets[0].address, targets[0].port
        return None

    def backend_tls(self, target: Target):
        return target.tls

    def backend_sni(self, target: Target) -> str | None:
        return target.sni if target.tls is not None else None

    def server_tls(self, address: str, port: int):
        """The server context of this relay's TLS listener address:port."""
        for i, ln in enumerate(self.material.get("listeners", ())):
            if ln["address"] == address and ln["port"] == port:
                return relay_tls.server_context(self.material, self.tls_opts, i)
        raise log.Fatal(f"relay {self.name}: no TLS material for {address} port {port}")

    # --- the session table -----------------------------------------------------

    def session_started(self, session: Session) -> None:
        self.figures.active += 1
        self.figures.total += 1
        self.proc.sessions[session.id] = session
        self.proc.changed = True

    def session_connected(self, session: Session) -> None:
        if self.proc.log_connections == "all":
            self.log_session(session, "connected")

    def session_ended(self, session: Session) -> None:
        self.figures.active -= 1
        self.proc.sessions.pop(session.id, None)
        self.proc.changed = True
        if session.error:
            self.figures.errors += 1
        mode = self.proc.log_connections
        if mode == "all" or (mode == "errors" and session.error):
            self.log_session(session, session.error or "done")

    def log_session(self, session: Session, what: str) -> None:
        # relayd's relay_log line: relay, session, client, target, duration, bytes
        c = session.client_addr
        t = session.target
        dst = f"{t.address}:{t.port}" if t is not None else "-"
        logger.info("relay %s, session %d (%d active), %s:%s -> %s, %s, %.3fs, %d in / %d out",
                    self.name, session.id, self.figures.active, c[0], c[1] if len(c) > 1 else 0, dst,
                    what, time.time() - session.started, session.bytes_in, session.bytes_out)

    def passive_event(self, target: Target | None, kind: str) -> None:
        """A failure seen on a host of a passive table (issue 15): to hce."""
        if target is not None and target.host_id in self.passive_hosts:
            self.proc.passive_event(target.host_id, kind)

    def set_status(self, host_id: int, status: HostStatus) -> None:
        for pool, i in self.by_host.get(host_id, ()):
            pool.mark(i, status is HostStatus.UP)

    def set_weight(self, host_id: int, weight: int) -> None:
        """hoststatectl host weight|drain (issue 13): 0 takes no new session;
        the sessions running on the host run on."""
        for pool, i in self.by_host.get(host_id, ()):
            pool.set_weight(i, weight)


class RelayProcess:
    def __init__(self, parent: Channel, hce: Channel, init: messages.Init):
        self.parent = parent
        self.hce = hce
        self.index = init.index
        self.pid = os.getpid()
        self.config = Config.model_validate(init.config)
        # the wire form is done with (cli.child_main holds INIT for the life of
        # the process): its maps and lists, ~5 MB at 10,000 hosts, go now
        init.config.clear()
        self.generation = init.generation
        self._passive: dict[int, list[str]] = {}        # issue 15: the batch for hce
        self._passive_due = False
        self.tls: dict = init.tls
        # per TLS listener, the context of the running config (a reload
        # replaces it); its server's own context only hands each handshake
        # over to this one (_front)
        self.tls_current: dict[str, Any] = {}
        self.status: dict[int, HostStatus] = {}
        self.weights: dict[int, int] = {}       # runtime weights from hce (issue 13)
        self.sessions: dict[int, Session] = {}
        self._next_sid = 0
        self.changed = True
        self.fd_sock = socket.socket(fileno=init.fd_socket) if init.fd_socket >= 0 else None
        self.listen_socks: dict[str, socket.socket] = {
            key: socket.socket(fileno=fd) for key, fd in init.listen_fds.items()}
        self.servers: dict[str, Any] = {}     # asyncio servers; relay_dns.DnsRelay
        self._dns_seen: dict[str, int] = {}     # a DNS relay's queries counted so far
        self.by_listener: dict[str, RelayRuntime] = {}
        self.relays: dict[int, RelayRuntime] = {}
        self.max_sessions = _max_sessions()
        self.pipes = relay_splice.Pipes()
        self.refused = 0
        self._stopping = asyncio.Event()
        self._serving = False                   # accepting, once host states are known
        self._states_known = asyncio.Event()
        self._apply(self.config)

    # --- passive failure detection (issue 15) ------------------------------

    def passive_event(self, host_id: int, kind: str) -> None:
        """Batched: the events of one loop iteration go to hce in one
        message; a batch holds at most PASSIVE_BATCH_MAX kinds per host (hce
        needs no more to decide; the rest are dropped here)."""
        batch = self._passive
        kinds = batch.get(host_id)
        if kinds is None:
            kinds = batch[host_id] = []
        if len(kinds) < PASSIVE_BATCH_MAX:
            kinds.append(kind)
        if not self._passive_due:
            self._passive_due = True
            asyncio.get_running_loop().call_soon(self._passive_flush)

    def _passive_flush(self) -> None:
        self._passive_due = False
        batch, self._passive = self._passive, {}
        if batch:
            asyncio.ensure_future(self.hce.send(
                MsgType.PASSIVE_EVENTS, messages.PassiveEvents(self.generation, batch)))

    @property
    def log_connections(self) -> str | None:
        return self.config.global_.log_connection

    def _apply(self, config: Config) -> None:
        """Runtimes for config's relays and the listener -> relay map; the
        sessions that run keep the runtimes they started with."""
        old = {rt.name: rt.figures for rt in self.relays.values()}
        self.relays = {r.id: RelayRuntime(r, config, self, old.get(r.name)) for r in config.relays}
        kept = {r.name for r in config.relays}
        now = time.monotonic()
        draining: dict[str, list[Session]] = {}
        for s in self.sessions.values():
            rt = s.relay
            if rt.name not in kept and rt.removed_by is None:
                # removed: its sessions run on, for its session timeout at most
                rt.removed_by = now + rt.session_timeout
            if rt.removed_by is not None:
                draining.setdefault(rt.name, []).append(s)
        for name, ss in draining.items():
            logger.info("relay %s removed: its %d sessions run on for up to its session "
                        "timeout (%.0f s)", name, len(ss), ss[0].relay.session_timeout)
        self.by_listener = {}
        self.tls_current = {}
        for rt in self.relays.values():
            for ln in rt.conf.listen:
                key = messages.listener_key(ln.address, ln.port)
                self.by_listener[key] = rt
                if ln.tls:
                    self.tls_current[key] = rt.server_tls(ln.address, ln.port)

    # --- listening -------------------------------------------------------------

    async def _serve(self) -> None:
        """Serve the listeners of the config that have no server yet; close
        those the config no longer has (their sessions go on to their end)."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self.servers if k not in self.by_listener]:
            self.servers.pop(key).close()
            logger.info("stopped listening on %s", key.replace(" ", " port "))
        for key in [k for k in self.listen_socks if k not in self.by_listener]:
            self.listen_socks.pop(key).close()
        for key, rt in self.by_listener.items():
            splice = not rt.dns and relay_splice.wanted(rt, key in self.tls_current)
            server = self.servers.get(key)
            if server is not None:
                if rt.dns or isinstance(server, relay_splice.Acceptor) == splice:
                    if splice:
                        server.set_options(rt.sockopts)
                    continue
                # a reload turned splice on or off: the same socket, served the other way
                sock = _detach(self.servers.pop(key))
            else:
                sock = self.listen_socks.pop(key, None)
            if sock is None:
                raise log.Fatal(f"no listening socket for {key.replace(' ', ' port ')}")
            if splice:
                self.servers[key] = relay_splice.Acceptor(loop, sock, self, key)
                self.servers[key].set_options(rt.sockopts)
                continue
            if rt.dns:
                # the relay of the moment picks each query's backend
                address, _, port = key.rpartition(" ")
                server = relay_dns.DnsRelay(
                    sock, lambda client, key=key, here=f"{address}:{port}":
                        self.by_listener[key].pick_datagram(client, here),
                    rt.session_timeout, on_end=lambda e, key=key: self._log_query(key, e))
                await server.start()
                self.servers[key] = server
                continue
            self.servers[key] = await loop.create_server(
                lambda key=key: self._accept(key), sock=sock, ssl=self._front(key),
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if key in self.tls_current else None)

    def _log_query(self, key: str, e: relay_dns.Ended) -> None:
        """`log connection [errors]` for a DNS relay: a line per query."""
        mode = self.log_connections
        if mode == "all" or (mode == "errors" and e.error):
            rt, server = self.by_listener.get(key), self.servers.get(key)
            logger.info("%s", relay_dns.format_line(
                rt.name if rt is not None else key, e, len(server.core) if server else 0))

    def splice_session(self, acceptor: relay_splice.Acceptor, csock: socket.socket,
                       addr) -> None:
        """A connection accepted on a splice listener (relay_splice)."""
        rt = self.by_listener.get(acceptor.key)
        if rt is None or len(self.sessions) >= self.max_sessions:
            self.refused += 1
            csock.close()
            return
        self._next_sid += 1
        relay_splice.SpliceSession(self._next_sid, rt, self, acceptor.loop, acceptor,
                                   csock, addr).start()

    def _front(self, key: str):
        """The server context a TLS listener's server is made with: every
        handshake moves to the running config's context for the listener
        (Python calls the SNI callback with or without a name), whose own
        callback then picks the keypair by SNI."""
        current = self.tls_current.get(key)
        if current is None:
            return None

        def hand_over(sslobj, server_name, ctx):
            ctx = self.tls_current.get(key)
            if ctx is None:
                return None
            sslobj.context = ctx
            if ctx.sni_callback is not None:
                return ctx.sni_callback(sslobj, server_name, ctx)
            return None
        address, _, port = key.rpartition(" ")
        # a context of its own (its callback must not be the current one's)
        front = self.by_listener[key].server_tls(address, int(port))
        front.sni_callback = hand_over
        return front

    def _accept(self, key: str) -> asyncio.Protocol:
        rt = self.by_listener.get(key)
        if rt is None or len(self.sessions) >= self.max_sessions:
            self.refused += 1
            return _Refuse()
        self._next_sid += 1
        return Side(Session(self._next_sid, rt, rt.http_filter if rt.http else None), True)

    def _checked_hosts(self) -> set[int]:
        return {h for rt in self.relays.values() for h in rt.by_host}

    def _note_states(self) -> None:
        if not self._states_known.is_set() and self._checked_hosts() <= {
                h for h, st in self.status.items() if st is not HostStatus.UNKNOWN}:
            self._states_known.set()

    async def _start_serving(self) -> None:
        """Accept once the state of every checked host is known, or after
        one interval plus timeout (a host hce never reports, one disabled
        from the start): before that a session would find no host up."""
        g = self.config.global_
        self._note_states()
        try:
            await asyncio.wait_for(self._states_known.wait(), g.interval + g.timeout / 1000.0)
        except asyncio.TimeoutError:
            unknown = len({h for h in self._checked_hosts()
                           if self.status.get(h, HostStatus.UNKNOWN) is HostStatus.UNKNOWN})
            logger.info("relay %d: serving with %d hosts of unknown state", self.index, unknown)
        self._serving = True
        await self._serve()

    # --- host states from hce --------------------------------------------------

    def _host_status(self, batch: messages.HostStatusBatch) -> None:
        if batch.generation < self.generation:
            return                          # sent before hce switched config
        if batch.generation > self.generation:
            raise ChannelError(f"host status for config generation {batch.generation}, "
                               f"running {self.generation}")
        for host_id, value in batch.statuses.items():
            status = _STATUSES.get(value) if isinstance(value, str) else None
            if status is None:
                raise ChannelError(f"host {host_id}: invalid status {value!r}")
            self.status[host_id] = status
            for rt in self.relays.values():
                rt.set_status(host_id, status)
        self._note_states()
        if batch.decided_ns:
            # how long hce's decision took to reach this process (the issue
            # asks under 5 ms; bench/relay_propagation.py reads this line)
            logger.debug("relay %d: host states applied %d us after hce's decision (%d hosts)",
                         self.index, (time.monotonic_ns() - batch.decided_ns) // 1000,
                         len(batch.statuses))

    def _host_weights(self, w: messages.HostWeights) -> None:
        """The whole map of runtime weights (hosts not named: the config's)."""
        if w.generation < self.generation:
            return
        if w.generation > self.generation:
            raise ChannelError(f"host weights for config generation {w.generation}, "
                               f"running {self.generation}")
        if any(not 0 <= v <= messages.MAX_WEIGHT for v in w.weights.values()):
            raise ChannelError("host weight out of range")
        self.weights = dict(w.weights)
        config_weight = {h.id: h.weight for t in self.config.tables for h in t.hosts}
        for host_id, weight in config_weight.items():
            for rt in self.relays.values():
                rt.set_weight(host_id, self.weights.get(host_id, weight))

    async def _dispatch_hce(self) -> None:
        while True:
            msg = await self.hce.recv()
            match msg.type:
                case MsgType.HOST_STATUS:
                    self._host_status(msg.payload)
                case MsgType.HOST_WEIGHTS:
                    self._host_weights(msg.payload)
                case MsgType.SESSIONS_QUERY:
                    await self.hce.send(MsgType.SESSIONS_REPLY, messages.SessionsReply(
                        msg.payload.seq, self.pid, self.session_rows()))
                case _:
                    raise ChannelError(f"unexpected {msg.type.name} from hce")

    def session_rows(self) -> list[SessionRow]:
        now = time.monotonic()
        wall = time.time()
        rows = []
        for s in self.sessions.values():
            c, t = s.client_addr, s.target
            f = getattr(s, "filter", None)              # (a splice session has none)
            tag = f.tag if f is not None else getattr(s, "tag", None)
            rows.append(SessionRow(
                id=s.id, relay=s.relay.id, relay_name=s.relay.name, pid=self.pid,
                client=str(c[0]), client_port=int(c[1]) if len(c) > 1 else 0,
                backend=t.address if t else "", backend_port=t.port if t else 0,
                age=round(wall - s.started, 3), idle=round(now - s.last, 3),
                bytes_in=s.bytes_in, bytes_out=s.bytes_out,
                status="running" if s.server is not None else "connecting",
                tag=tag or ""))
        return rows

    def _count_datagrams(self) -> None:
        """A DNS relay's figures: queries in flight now, forwarded in all."""
        for key, server in self.servers.items():
            if isinstance(server, relay_dns.DnsRelay):
                f = self.by_listener[key].figures
                active, total = len(server.core), server.core.stats.queries
                seen = self._dns_seen.get(key, 0)
                if active != f.active or total != seen:
                    f.total += total - seen
                    f.active = active
                    self._dns_seen[key] = total
                    self.changed = True

    async def _stats(self) -> None:
        while True:
            self._count_datagrams()
            if self.changed:
                self.changed = False
                await self.hce.send(MsgType.RELAY_STATS, messages.RelayStats(
                    self.generation, self.index, self.pid,
                    {rt.id: [rt.figures.active, rt.figures.total, rt.figures.errors]
                     for rt in self.relays.values()}))
            await asyncio.sleep(STATS_INTERVAL)

    async def _sweep(self) -> None:
        """End the sessions idle past their relay's session timeout, and
        those of a removed relay whose session timeout since the reload is
        over."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            drained: dict[str, int] = {}
            for s in list(self.sessions.values()):
                rt = s.relay
                if rt.removed_by is not None and now >= rt.removed_by:
                    s.error = s.error or "relay removed by a reload: drained"
                    s.abort()
                    drained[rt.name] = drained.get(rt.name, 0) + 1
                elif now - s.last > rt.session_timeout:
                    s.abort()
            for name, n in drained.items():
                logger.info("relay %s removed: closed its %d sessions still running at the "
                            "end of its session timeout", name, n)

    # --- the parent --------------------------------------------------------------

    async def _dispatch_parent(self) -> None:
        while True:
            msg = await self.parent.recv()
            match msg.type:
                case MsgType.RECONFIGURE:
                    await self._reconfigure(msg.payload)
                    await self.parent.send(MsgType.RECONFIGURED,
                                           messages.Generation(self.generation))
                case _:
                    if await from_parent(self.parent, msg):
                        return

    async def _reconfigure(self, payload: messages.Reconfigure) -> None:
        if payload.generation <= self.generation:
            raise ChannelError(f"config generation {payload.generation} after {self.generation}")
        new = Config.model_validate(payload.config)
        if payload.listen:
            self.listen_socks.update(await self._receive_fds(payload.listen))
        self.tls = payload.tls
        self.config = new
        self.generation = payload.generation
        # statuses carry over by host id until hce's snapshot for the new
        # generation arrives (it follows this reload)
        self._apply(new)
        if self._serving:
            await self._serve()
        else:
            # not accepting yet: only what the new config no longer has goes
            for key in [k for k in self.listen_socks if k not in self.by_listener]:
                self.listen_socks.pop(key).close()
        self.changed = True
        settle_heap()
        logger.info("configuration reloaded (generation %d): %d relays",
                    self.generation, len(self.relays))

    async def _receive_fds(self, keys: list[str]) -> dict[str, socket.socket]:
        if self.fd_sock is None:
            raise ChannelError("listening sockets announced, but no fd channel")
        loop = asyncio.get_running_loop()
        self.fd_sock.setblocking(False)
        fut = loop.create_future()

        def readable() -> None:
            try:
                data, fds, _, _ = socket.recv_fds(self.fd_sock, 1024, len(keys) + 4)
            except BlockingIOError:
                return
            except OSError as e:
                fut.set_exception(ChannelError(f"fd channel: {e}"))
            else:
                fut.set_result((data, fds))
            loop.remove_reader(self.fd_sock.fileno())
        loop.add_reader(self.fd_sock.fileno(), readable)
        try:
            data, fds = await asyncio.wait_for(fut, FD_TIMEOUT)
        except asyncio.TimeoutError:
            loop.remove_reader(self.fd_sock.fileno())
            raise ChannelError(f"the listening sockets of generation "
                               f"{self.generation + 1} did not arrive") from None
        if data.decode(errors="replace") != "\n".join(keys) or len(fds) != len(keys):
            for fd in fds:
                os.close(fd)
            raise ChannelError("fd channel: the sockets do not match RECONFIGURE")
        return {k: socket.socket(fileno=fd) for k, fd in zip(keys, fds)}

    # --- run -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        tasks = {
            asyncio.ensure_future(self._dispatch_parent()): "parent",
            asyncio.ensure_future(self._dispatch_hce()): "hce",
            asyncio.ensure_future(self._stopping.wait()): "signal",
        }
        start = asyncio.ensure_future(self._start_serving())
        fatal: str | None = None
        clean = False                       # a stop, not an error: the sessions drain
        try:
            await asyncio.wait({start, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            if start.done():
                start.result()              # a listener without a socket: fatal
                settle_heap()
                await self.parent.send(MsgType.RELAY_READY)
                tasks[asyncio.ensure_future(self._stats())] = "stats"
                tasks[asyncio.ensure_future(self._sweep())] = "sweep"
            fatal = await until_one_ends(tasks, logger)
            clean = fatal is None
        finally:
            start.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(start, *tasks, return_exceptions=True)
            if clean:
                await self._drain()
            for server in self.servers.values():
                server.close()
            for s in list(self.sessions.values()):
                s.error = s.error or "stopping"
                s.abort()
            self.pipes.close()
        if fatal:
            raise log.Fatal(fatal)

    async def _drain(self) -> None:
        """A stop: accept no more (what waits in a queue systemd keeps goes
        to the next daemon), let the sessions in flight finish for up to
        STOP_DRAIN s, close HTTP sessions between requests at once."""
        for server in self.servers.values():
            server.close()
        for sock in self.listen_socks.values():
            sock.close()
        self.listen_socks.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_DRAIN
        n = len(self.sessions)
        while self.sessions and loop.time() < deadline:
            for s in list(self.sessions.values()):
                if _between_requests(s):
                    s.close()
            if self.sessions:
                await asyncio.sleep(DRAIN_POLL)
        if self.sessions:
            logger.info("stopping: %d of the %d sessions in flight did not end within %.0f s, "
                        "closing them", len(self.sessions), n, STOP_DRAIN)


def _between_requests(s: Session) -> bool:
    """An HTTP session with no request in flight and its answers written:
    an idle keep-alive connection, which a stop closes at once."""
    f = getattr(s, "filter", None)          # (a splice session has none)
    if not isinstance(f, relay_http.HttpRelay) or f.upgraded or f.pending:
        return False
    if f.cr.state != relay_http.HEAD or f.cr.buf.strip(b"\r\n"):
        return False
    t = s.client.transport if s.client is not None else None
    return t is None or t.get_write_buffer_size() == 0


def _detach(server) -> socket.socket:
    """The listening socket of a server, which stops serving it."""
    if isinstance(server, relay_splice.Acceptor):
        return server.detach()
    # an asyncio server closes its socket: a duplicate of it lives on
    sock = socket.socket(fileno=os.dup(server.sockets[0].fileno()))
    server.close()
    return sock


class _Refuse(asyncio.Protocol):
    """A connection accepted over the session cap (or on a listener whose
    relay is gone): closed at once."""

    def connection_made(self, transport) -> None:
        transport.abort()


def socket_options(tcp: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """relayd's `tcp { ... }` options as setsockopt() calls, for both
    sockets of a session (backlog is the parent's; conf refuses `no sack`,
    which Linux cannot set per socket; splice is splice_option's)."""
    out = []
    for opt in tcp:
        w = opt.split()
        if w == ["nodelay"]:
            out.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
        elif w == ["no", "nodelay"]:
            out.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 0))
        elif w[:2] == ["socket", "buffer"]:
            out += [(socket.SOL_SOCKET, socket.SO_SNDBUF, int(w[2])),
                    (socket.SOL_SOCKET, socket.SO_RCVBUF, int(w[2]))]
        elif w[:2] == ["ip", "ttl"]:
            out.append((socket.IPPROTO_IP, socket.IP_TTL, int(w[2])))
        elif w[:2] == ["ip", "minttl"]:
            out.append((socket.IPPROTO_IP, IP_MINTTL, int(w[2])))
    return out


IP_MINTTL = getattr(socket, "IP_MINTTL", 21)     # <linux/in.h>


def splice_option(tcp: tuple[str, ...]) -> bool:
    """`tcp { [no] splice }`, the last one written; on by default, as in
    relayd (relay_splice: for plain TCP relays only)."""
    on = True
    for opt in tcp:
        w = opt.split()
        if w == ["splice"]:
            on = True
        elif w == ["no", "splice"]:
            on = False
    return on


def _max_sessions() -> int:
    """Sessions this process takes: each holds two descriptors."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, (soft - SESSION_RESERVE) // 2)


def main(parent_sock: socket.socket, init: messages.Init) -> int:
    privsep.drop_privileges(init.uid, init.gid, keep=set())
    logger.debug("relay %d running as uid %d, no capabilities", init.index, init.uid)

    async def go() -> None:
        parent = Channel(parent_sock, "parent")
        hce = Channel(socket.socket(fileno=init.peer_fd), "hce")
        await RelayProcess(parent, hce, init).run()
    loop = event_loop()
    # once for the daemon (the first relay process: index 1), at info: a
    # fallback is slower, and the line says how to avoid it
    (logger.info if init.index == 1 else logger.debug)("relay %d: %s", init.index,
                                                       runs_on(loop))
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(go())
    return 0


def runs_on(loop: asyncio.AbstractEventLoop) -> str:
    """The event loop this relay runs, for people. (HTTP heads are read by
    relay_http's own scan whatever is installed: httptools is only the
    reference its tests and bench/http_parse.py hold it to.)"""
    if type(loop).__module__.split(".")[0] == "uvloop":
        return "event loop uvloop"
    return f"event loop asyncio's own (slower: uvloop is missing; {install_hint('relay')})"


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (the `relay` extra): the same Protocol
    code costs less CPU per connection and per byte there (relay-bench.md);
    asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
