"""Reading a configuration: the only module of conf that does I/O.

load(path) reads the file and what it includes, runs the lexer (macros,
-D defines), the parser and the builder, and returns the Config or raises
ConfigError with every problem found.  It also owns what the others must
not do: name lookups (Resolver, handed to the Builder), the files the
configuration names, and the Python packages its checks need.  With
lookup off (--no-lookup) nothing is looked up and a missing package is a
warning.  Warnings (unused tables, passwords in a file others can read)
are appended to the caller's list, else logged to `hoststated.conf`.
"""

from __future__ import annotations

import errno
import gc
import logging
import grp
import os
import pwd
import socket
import stat

from hoststated.conf import grammar, keypairs, model, packages, sysctl
from hoststated.conf.build import Builder, Names
from hoststated.conf.errors import ConfigError, Diagnostic, Reporter
from hoststated.conf.lexer import Lexer
from hoststated.conf.parse import Parser

log = logging.getLogger("hoststated.conf")

MAX_FILE = 64 * 1024 * 1024       # the top file and its includes, together

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def _decode(data: bytes) -> str:
    # invalid UTF-8 becomes lone surrogates, which the lexer reports as binary
    return data.decode("utf-8", errors="surrogateescape")


class Resolver(Names):
    """Names asked of the system: host names (getaddrinfo), service names
    (getservbyname, after conf.ports' table), interfaces; cached."""

    lookup = True

    def __init__(self) -> None:
        self.cache: dict[str, tuple[str | None, str | None]] = {}

    def address(self, name: str) -> tuple[str | None, str | None]:
        literal = super().address(name)
        if literal[0] is not None:
            return literal
        if name in self.cache:
            return self.cache[name]
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            res = (infos[0][4][0], None) if infos else (None, "no address")
        except (OSError, UnicodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            res = (None, f"cannot resolve host name {name}: {reason}")
        self.cache[name] = res
        return res

    def service(self, name: str, proto: str = "tcp") -> int | None:
        port = super().service(name, proto)
        if port is not None:
            return port
        try:
            return socket.getservbyname(name, proto)
        except (OSError, UnicodeError):
            return None

    def interface(self, name: str) -> bool:
        try:
            socket.if_nametoindex(name)
            return True
        except (OSError, ValueError, UnicodeError):
            return False


def check_system(builder: Builder, config: model.Config, report, name: str) -> None:
    """What the start needs of this machine, for -n as for the daemon: the
    files the config names, the run-as user, the socket's group and
    directory, the interfaces of the redirects."""
    g = config.global_
    for path, where, what in builder.files_named:
        if what == "program":             # issue 14: notify command, autoreload callback
            if not os.path.isfile(path):
                report.error(where, f"program {path}: "
                                    + (_strerror(path) or "not a regular file"))
            elif not os.access(path, os.X_OK):
                report.error(where, f"program {path} is not executable (chmod +x it)")
        elif what == "log state file":    # migrate (issue 14): opened at start, appended
            if (why := state_file_problem(path)) is not None:
                report.error(where, f"log state file {path}: {why}")
        elif what == "maintenance directory":
            if (why := _unlistable(path, g.user)) is not None:
                report.error(where, f"maintenance directory {path}: {why}")
        elif what == "script":
            if not os.path.isfile(path):
                report.error(where, f"script {path}: "
                                    + (_strerror(path) or "not a regular file"))
            elif not os.access(path, os.X_OK):
                report.error(where, f"script {path} is not executable (chmod +x it)")
        elif (why := _unreadable(path)) is not None:
            report.error(where, f"{what} {path}: cannot read: {why}")
    gw = builder.glob_where
    user_where = gw.get("user", (name, 0, 0))
    try:
        pwd.getpwnam(g.user)
    except KeyError:
        if g.user == model.DEFAULT_USER:
            # no fallback (model.FALLBACK_USER): the install steps make it
            report.error(user_where, f"user {g.user} does not exist: hce and pfe run as a "
                                     "user of their own; create it with etc/hoststated.sysusers "
                                     "(install it as /etc/sysusers.d/hoststated.conf, run "
                                     "systemd-sysusers) or with useradd --system "
                                     "--user-group --no-create-home --home-dir / "
                                     f"--shell /usr/sbin/nologin {g.user}")
        else:
            report.error(user_where, f"user {g.user} does not exist (create it, or name "
                                     "an existing one in 'user')")
    sock_where = gw.get("socket", (name, 0, 0))
    if g.socket_group is not None:
        try:
            grp.getgrnam(g.socket_group)
        except KeyError:
            report.error(sock_where, f"socket group {g.socket_group} does not exist "
                                     "(groupadd --system it, or leave the group out)")
    for path, where in ((g.socket, sock_where),
                        (g.restricted_socket, gw.get("restricted_socket", sock_where))):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            report.error(where, f"socket {path}: its directory "
                                f"{os.path.dirname(os.path.abspath(path))} does not exist")
    if config.routers and builder.runnable and config.global_.engine != "none":
        check_routers(config, report)
    if config.global_.engine == "ipvs" and builder.runnable:
        check_ipvs_schedulers(config, report, name)
    seen: set[str] = set()
    for iface, where, needed in builder.interfaces:
        if builder.resolver.interface(iface):
            continue
        if needed:
            report.error(where, f"interface {iface} does not exist (the kernel rule "
                                "needs the device)")
        elif iface not in seen:
            report.warn(where, f"interface {iface} does not exist (yet): this listener "
                               "matches nothing until it does")
        seen.add(iface)


def ipvs_scheduler_missing(sched: str, release: str | None = None,
                           modules: str = "/lib/modules") -> bool:
    """True when this kernel certainly has no IPVS scheduler `sched` (its
    ip_vs_<sched> module is neither loaded, built in nor installed: twos,
    for one, came with Linux 6.2 and Debian 12's 6.1 lacks it). False when
    it has it, or when the machine cannot tell (no module tree)."""
    if os.path.isdir(f"/sys/module/ip_vs_{sched}"):
        return False
    base = os.path.join(modules, release or os.uname().release)
    lists = [os.path.join(base, f) for f in ("modules.builtin", "modules.dep")]
    if not all(os.path.isfile(f) for f in lists):
        return False
    want = f"ip_vs_{sched}"
    for f in lists:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                # kernel/net/netfilter/ipvs/ip_vs_rr.ko[.xz|.zst][: deps]
                path = line.split(":", 1)[0].strip()
                if os.path.basename(path).split(".ko")[0] == want:
                    return False
    return True


def check_ipvs_schedulers(config: model.Config, report, name: str) -> None:
    """engine ipvs: every redirect's scheduler must be one this kernel has,
    or the start would fail at its first write (-n must not say OK)."""
    told: set[str] = set()
    for r in config.redirects:
        for fwd in (r.forward, r.backup):
            if fwd is None:
                continue
            sched = model.IPVS_SCHEDULER.get(fwd.mode)
            if sched is None or sched in told or not ipvs_scheduler_missing(sched):
                continue
            told.add(sched)
            w = r.where
            report.error((w.file, w.line, w.col) if w else (name, 0, 0),
                         f"redirect {r.name}: mode {fwd.mode} needs IPVS's {sched} scheduler, "
                         f"which this kernel ({os.uname().release}) does not have "
                         f"(no ip_vs_{sched} module)")


def check_routers(config: model.Config, report) -> None:
    """Routers (issue 16) against this machine's routing: connected
    networks, the rules that look up each rtable, the realms' names
    (kernel.routes.director_errors; pfe checks again at its start)."""
    # imported here: only a config with routers pays for pyroute2
    from hoststated.kernel import routes
    writer = routes.NetlinkRoutes()
    try:
        errs = routes.director_errors(config, writer.director())
    except routes.BackendError as e:
        errs = [(config.routers[0].where, f"routers: cannot read this machine's routes: {e}")]
    finally:
        writer.close()
    for where, msg in errs:
        report.error((where.file, where.line, where.col) if where else ("", 0, 0), msg)


def state_file_problem(path: str) -> str | None:
    """Why the parent could not append to `path` (`log state file`), or None:
    its directory must exist, and the file, if there, be a regular one."""
    d = os.path.dirname(path) or "/"
    if not os.path.isdir(d):
        return f"its directory {d} does not exist"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None if os.access(d, os.W_OK) else f"cannot create it in {d}"
    except OSError as e:
        return e.strerror
    if not stat.S_ISREG(st.st_mode):
        return f"is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}" \
            if stat.S_IFMT(st.st_mode) in _KINDS else "not a regular file"
    return None if os.access(path, os.W_OK) else "cannot write to it"


# --- migrate (issue 14): check arp's interfaces --------------------------------

RTN_UNICAST, RTN_LOCAL = 1, 2          # <linux/rtnetlink.h>
ARPHRD_ETHER = 1                       # <linux/if_arp.h>
IFF_NOARP = 0x80                       # <linux/if.h>


def arp_link(ipr, address: str) -> model.ArpLink | str:
    """Where an ARP request for `address` goes out: the interface the
    kernel's route to it names, that interface's MAC and the source address
    the route prefers; a message saying why not when the route is not a
    directly connected one (ARP reaches only the director's own segment)."""
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        route = ipr.route("get", dst=address)[0]
    except NetlinkError as e:
        return f"the kernel has no route to it ({os.strerror(e.code)})"
    if route["type"] == RTN_LOCAL:
        return "it is an address of this machine"
    if route["type"] != RTN_UNICAST:
        return f"the kernel's route to it is not a unicast one (route type {route['type']})"
    gateway = route.get_attr("RTA_GATEWAY")
    if gateway is not None:
        return (f"the kernel routes it through the gateway {gateway}: it is not on a directly "
                "connected segment, and ARP reaches no further (check icmp pings it)")
    try:
        link = ipr.link("get", index=route.get_attr("RTA_OIF"))[0]
    except NetlinkError as e:
        return f"its route's interface: {os.strerror(e.code)}"
    ifname = link.get_attr("IFLA_IFNAME")
    mac = link.get_attr("IFLA_ADDRESS")
    if link["ifi_type"] != ARPHRD_ETHER or not mac:
        return f"its interface {ifname} is not an Ethernet one, and check arp speaks Ethernet"
    if link["flags"] & IFF_NOARP:
        return f"its interface {ifname} does not do ARP (NOARP)"
    source = route.get_attr("RTA_PREFSRC")
    if source is None:
        return f"its interface {ifname} has no IPv4 address to ask from"
    return model.ArpLink(ifname=ifname, mac=mac.lower(), source=source)


def arp_links(config: model.Config, builder: Builder, report) -> model.Config:
    """The config with each `check arp` host's link (model.ArpLink), found
    in this machine's routes; a host no ARP request can reach is an error at
    the host (for -n as for the start)."""
    from pyroute2 import IPRoute
    found: dict[str, model.ArpLink | str] = {}
    tables = []
    with IPRoute() as ipr:
        for t in config.tables:
            if t.check.kind != "arp":
                tables.append(t)
                continue
            hosts = []
            for h in t.hosts:
                if not h.checked or h.address is None or ":" in h.address:
                    hosts.append(h)         # not checked; or build refused it (IPv6)
                    continue
                if h.address not in found:
                    found[h.address] = arp_link(ipr, h.address)
                link = found[h.address]
                if isinstance(link, str):
                    report.error(builder.host_where.get(h.id, ("", 0, 0)),
                                 f"check arp: host {h.name}: {link}")
                    link = None
                hosts.append(h.model_copy(update={"link": link}))
            tables.append(t.model_copy(update={"hosts": tuple(hosts)}))
    return config.model_copy(update={"tables": tuple(tables)})


def sysctl_warnings(config: model.Config, name: str) -> list[Diagnostic]:
    """issue 14: the director's sysctls not set yet on this machine, which
    pfe sets at start (it logs each): what -n warns about. Not part of
    load(): they are the machine's state, not the file's."""
    out = []
    for need, cur in sysctl.unmet(config):
        w = need.where
        file, line, col = (w.file, w.line, w.col) if w is not None else (name, 0, 0)
        now = "not present (its module is not loaded yet)" if cur is None else f"{cur}"
        out.append(Diagnostic(file, line, col, f"sysctl {need.key} is {now}; {need.why}: "
                                               f"pfe sets it to {need.value} at start",
                              warning=True))
    return out


def _unlistable(path: str, user: str) -> str | None:
    """Why hce, running as `user` after the privilege drop, could not list
    and watch `path` (issue 14: maintenance directory), or None. From the
    mode bits: the user must read and search it."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror or str(e)
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None                       # told at 'user'
    groups = {pw.pw_gid} | {gr.gr_gid for gr in grp.getgrall() if user in gr.gr_mem}
    need = stat.S_IRUSR | stat.S_IXUSR
    if pw.pw_uid == 0:
        return None
    if st.st_uid == pw.pw_uid:
        bits = st.st_mode & 0o700
    elif st.st_gid in groups:
        bits = (st.st_mode & 0o070) << 3
    else:
        bits = (st.st_mode & 0o007) << 6
    if bits & need != need:
        return (f"user {user} cannot read it (mode {stat.S_IMODE(st.st_mode):04o}, owner "
                f"{st.st_uid}:{st.st_gid}): hce reads it after the privilege drop")
    return None


def _strerror(path: str) -> str | None:
    try:
        os.stat(path)
        return None
    except OSError as e:
        return e.strerror or str(e)


def _unreadable(path: str) -> str | None:
    """Why a file the config names cannot be read, or None."""
    why = _strerror(path)
    if why is not None:
        return why
    if not os.path.isfile(path):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "Permission denied"
    return None


class _Files:
    """Reads the top file and its includes, noting who can read them."""

    def __init__(self) -> None:
        self.open_to_others: dict[str, bool] = {}
        self.left = MAX_FILE          # bytes the includes may still add
        self.sources: list[str] = []  # every file asked for, read or not (autoreload)

    def read(self, path: str) -> str:
        self.sources.append(os.path.abspath(path))
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer;
        # what is not a regular file is refused before any read
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb", closefd=True) as f:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            if not stat.S_ISREG(st.st_mode):
                kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
                raise OSError(errno.EINVAL, f"not a regular file ({kind})"
                              if kind.startswith("a ") else kind, path)
            data = f.read(self.left + 1)
        if len(data) > self.left:
            raise OSError(errno.EFBIG, "File too large" if self.left == MAX_FILE else
                          f"File too large: with the files before it, over "
                          f"{_size(MAX_FILE)}", path)
        self.left -= len(data)
        self.open_to_others[path] = bool(st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))
        return _decode(data)

    def include(self, path: str, parent: str) -> tuple[str, str, str]:
        if not os.path.isabs(path):
            base = os.path.dirname(parent) if os.path.isfile(parent) else os.getcwd()
            path = os.path.join(base, path)
        text = self.read(path)
        return text, path, os.path.realpath(path)


MAX_PRIVATE = 10      # diagnostics told for a file loaded through the control socket


def load(path: str, defines: dict[str, str] | None = None,
         lookup: bool = True, warnings: list | None = None,
         private: bool = False, runnable: bool = True,
         tls: dict | None = None, sources: list | None = None) -> model.Config:
    """runnable=False reads the language only: what the daemon does not run
    yet (conf.build.check_runnable) is not refused. For tests of the
    language on configs written for relayd; -n and the daemon never do.

    tls: the daemon's dict, filled with the relays' TLS material
    (conf.keypairs module doc) as the files are checked, --no-lookup or
    not: the parent's one read of each keypair and CA file.

    private: the file came from a control client (`hoststatectl load`),
    not from the operator's command line or the daemon's own config, and is
    read as root: its errors and warnings tell the place and the kind of
    each problem only, never the file's text (errors.redact), and at most
    MAX_PRIVATE of them (a binary file makes thousands).

    sources: filled with every file read (the top one and its includes),
    also when the load fails: what `autoreload` watches (issue 14)."""
    if private:
        return _load_private(path, defines, lookup, warnings, tls, sources)
    files = _Files()
    if sources is not None:
        files.sources = sources
    try:
        text = files.read(path)
    except OSError as e:
        raise ConfigError([Diagnostic(path, 0, 0, f"cannot read: {e.strerror or e}")]) \
            from None
    return _load(text, path, os.path.realpath(path), files, defines, lookup, warnings,
                 runnable, tls)


def _load_private(path, defines, lookup, warnings, tls, sources=None) -> model.Config:
    told: list = []
    try:
        config = load(path, defines, lookup, told, tls=tls, sources=sources)
    except ConfigError as e:
        diags = [d.redacted(path) for d in e.diagnostics]
        if len(diags) > MAX_PRIVATE:
            diags = diags[:MAX_PRIVATE] + [Diagnostic(
                path, 0, 0, f"and {len(diags) - MAX_PRIVATE} more errors")]
        if any(d.message != o.message for d, o in zip(diags, e.diagnostics)):
            diags.append(Diagnostic(path, 0, 0, "loaded through the control socket, so the "
                                                "file's text is not shown: "
                                                f"`hoststated -n -f {path}` shows it"))
        raise ConfigError(diags, ordered=True) from None
    except Exception as e:               # a bug: its text may quote the file
        raise ConfigError([Diagnostic(path, 0, 0, f"internal error ({type(e).__name__}) "
                                                  "while reading it")]) from None
    for w in told[:MAX_PRIVATE]:
        w = w.redacted(path)
        if warnings is not None:
            warnings.append(w)
        else:
            log.warning("%s", w)
    return config


def load_text(text: str, filename: str = "<string>",
              defines: dict[str, str] | None = None, lookup: bool = True,
              warnings: list | None = None, runnable: bool = True) -> model.Config:
    files = _Files()
    return _load(text, filename, filename, files, defines, lookup, warnings, runnable)


def _load(text, name, ident, files, defines, lookup, warnings, runnable=True,
          tls=None) -> model.Config:
    # a big config makes hundreds of thousands of small objects, few of them
    # in cycles: the cyclic collector's passes were a quarter of the time
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_nogc(text, name, ident, files, defines, lookup, warnings, runnable, tls)
    finally:
        if enabled:
            gc.enable()


def _load_nogc(text, name, ident, files, defines, lookup, warnings,
               runnable=True, tls=None) -> model.Config:
    report = Reporter()
    lexer = Lexer(grammar.keywords(), report, read=files.include, defines=defines)
    toks = lexer.lex(text, name, ident)
    stmts = Parser(toks, report).statements()
    builder = Builder(report, Resolver() if lookup else Names(), runnable=runnable)
    config = builder.build(stmts)
    # a check whose client library is not installed here: an error on the
    # machine that will run it, a warning when only the text is checked
    missing: dict[str, str | None] = {}
    for kind, where in builder.service_checks:
        if kind not in missing:
            missing[kind] = packages.missing_package(kind)
        if missing[kind]:
            (report.warn if not lookup else report.error)(
                where, model.missing_package_message(kind, missing[kind]))
    # the relays' TLS options always; their keypairs and CA files when files
    # may be read, or when the daemon asks for what they hold
    keypairs.check_options(config, report, builder.tls_where)
    if lookup:
        check_system(builder, config, report, name)
    if lookup and builder.runnable and builder.arp_checks:
        config = arp_links(config, builder, report)     # migrate (issue 14)
    material = keypairs.collect(config, report, builder.tls_where) \
        if lookup or tls is not None else {}
    # relayd refuses secrets in a file others can read; we warn
    for where in builder.secrets:
        if files.open_to_others.get(where[0]):
            report.warn(where, f"{where[0]} holds a password and can be read by other "
                               "users: chmod 600 it")
    report.raise_if_errors()
    if tls is not None:
        tls.update(material)
    for w in sorted(report.warnings, key=lambda d: (d.file, d.line, d.col)):
        if warnings is not None:
            warnings.append(w)
        else:
            log.warning("%s", w)
    return config
