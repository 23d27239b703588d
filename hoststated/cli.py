"""hoststated's command line: `hoststated [-dnv] [-D macro=value] [-f file]`.

-n checks the configuration and says `configuration OK` on stderr (as
relayd does); -nv also prints it in canonical form on stdout.  --role is
how the parent starts its children (proc.spawn re-executes us; ROLES below
says which module runs each role); anything else runs the daemon
(hoststated.parent).  Errors go to stderr as `file:line:col: message`
and give exit status 1; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_CONFIG = "/etc/hoststated.conf"

# --role NAME -> the module whose main(sock, init) runs that process. The
# module is imported here, as root and before INIT is read, so a child whose
# code cannot be loaded dies at once with the reason instead of running on
# without it after the privilege drop.
ROLES = {"hce": "hoststated.hce", "pfe": "hoststated.pfe", "relay": "hoststated.relay",
         "worker": "hoststated.hce_worker"}      # issue 17: a check worker


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("hoststated")
    except Exception:
        return "unknown"


def _define(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"-D {text}: want macro=value")
    if not all(c.isalnum() or c == "_" for c in name):
        raise argparse.ArgumentTypeError(f"-D {text}: invalid macro name {name!r}")
    return name, value


class _Defines(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        d = dict(getattr(namespace, self.dest) or {})
        name, value = values
        d[name] = value
        setattr(namespace, self.dest, d)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hoststated",
        description="Host status daemon for server load balancing on Linux.")
    p.add_argument("-d", dest="debug", action="store_true",
                   help="do not daemonize; log to stderr")
    p.add_argument("-n", dest="check_only", action="store_true",
                   help="only check the configuration file")
    p.add_argument("-v", dest="verbose", action="count", default=0,
                   help="more verbose output (-nv: print the configuration)")
    p.add_argument("-D", dest="defines", metavar="macro=value", type=_define,
                   action=_Defines, default={},
                   help="define a macro, overriding the configuration file")
    p.add_argument("-f", dest="config_file", metavar="file", default=DEFAULT_CONFIG,
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--no-lookup", dest="no_lookup", action="store_true",
                   help="check without looking up host names, interfaces, "
                        "service names or the files the configuration names")
    p.add_argument("-V", "--version", action="version",
                   version=f"hoststated {_version()}")
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--ipc-fd", dest="ipc_fd", type=int, help=argparse.SUPPRESS)
    return p


def check_config(args) -> int:
    from hoststated.conf.errors import ConfigError
    from hoststated.conf.load import load
    from hoststated.conf.printconf import print_config
    from hoststated.log import stderr_line

    warnings: list = []
    try:
        config = load(args.config_file, defines=args.defines,
                      lookup=not args.no_lookup, warnings=warnings)
    except ConfigError as e:
        for d in e.diagnostics:
            stderr_line(str(d))
        return 1
    if not args.no_lookup:
        from hoststated.conf.load import sysctl_warnings
        warnings += sysctl_warnings(config, args.config_file)     # issue 14
    for d in warnings:
        stderr_line(str(d), logging.WARNING)
    if args.verbose:
        sys.stdout.write(print_config(config))
        sys.stdout.flush()
    stderr_line("configuration OK", logging.INFO)
    return 0


def import_main(argv: list[str]) -> int:
    """`hoststated import ldirectord|keepalived|aloha FILE`: the equivalent
    hoststated.conf on stdout, what had no equivalent as comments in it
    (and counted on stderr); exit 1 with `file:line: message` for input that
    is not the format, or when the result does not load (-n)."""
    from hoststated import importers
    from hoststated.conf.errors import ConfigError
    from hoststated.conf.load import load_text
    from hoststated.log import stderr_line

    p = argparse.ArgumentParser(prog="hoststated import",
                                description="Print the hoststated.conf equivalent to an "
                                            "ldirectord, keepalived or ALOHA configuration.")
    p.add_argument("format", choices=importers.FORMATS)
    p.add_argument("file")
    args = p.parse_args(argv)
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        stderr_line(f"hoststated: {args.file}: {e.strerror or e}")
        return 1
    try:
        result = importers.convert(args.format, data, args.file)
    except importers.ImportFailed as e:
        stderr_line(str(e))
        return 1
    try:
        load_text(result.text, "<imported>", lookup=False)
    except ConfigError as e:
        # an importer's bug: say so rather than print what -n refuses
        for d in e.diagnostics:
            stderr_line(f"hoststated: import: the result does not load: {d}")
        return 1
    sys.stdout.write(result.text)
    sys.stdout.flush()
    stderr_line(f"hoststated: {args.file}: {result.virtuals} virtual services imported, "
                f"{len(result.notes)} lines without an equivalent (see the comments)",
                logging.INFO)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["import"]:
        try:
            return import_main(argv[1:])
        except BrokenPipeError:
            return 1
    args = parser().parse_args(argv)
    logging.basicConfig(format="hoststated: %(message)s", stream=sys.stderr,
                        level=logging.DEBUG if args.verbose > 1 else logging.INFO)
    try:
        if args.role:
            return child_main(args)
        if args.check_only:
            return check_config(args)
        from hoststated import parent
        return parent.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def child_main(args) -> int:
    """Entry of a re-executed child: load the role, read INIT, import what
    the role will need (hoststated.preload), run it.

    Every failure here is the child's death, which stops the daemon (the
    parent reports it as "lost child"); the one line names the role, the
    user it runs as where known, and the cause."""
    import importlib
    import pwd
    import socket

    from hoststated import log, preload, privsep, proc
    from hoststated.ipc import channel
    from hoststated.ipc.messages import MsgType

    from hoststated.log import stderr_line as print_err

    role = args.role
    if role not in ROLES:
        print_err(f"hoststated: unknown role {role!r}")
        return 1
    # every role ends its start-up with proc.settle_heap(), which freezes
    # what the start-up made and turns the collector on again
    proc.pause_gc()
    try:
        module = importlib.import_module(ROLES[role])
    except ImportError as e:
        print_err(f"hoststated: {role}: fatal: cannot load its code: {e}")
        return 1
    try:
        sock = socket.socket(fileno=args.ipc_fd)
    except (OSError, TypeError) as e:
        print_err(f"hoststated: {role}: ipc fd {args.ipc_fd}: {getattr(e, 'strerror', None) or e}")
        return 1
    try:
        msg = channel.recv_blocking(sock)
    except (channel.ChannelClosed, channel.ChannelError, OSError) as e:
        print_err(f"hoststated: {role}: {e}")
        return 1
    if msg.type != MsgType.INIT:
        print_err(f"hoststated: {role}: expected INIT, got {msg.type.name}")
        return 1
    init = msg.payload
    log.setup(role, init.debug, init.verbose)
    # ps/top/systemctl status: `hoststated: hce`, `hoststated: relay 2`
    # (comm, 15 bytes: `hoststated: r2`)
    if role == "relay":
        privsep.set_title(f"hoststated: relay {init.index}", f"hoststated: r{init.index}")
    elif role == "worker":
        privsep.set_title(f"hoststated: worker {init.index}", f"hoststated: w{init.index}")
    else:
        privsep.set_title(f"hoststated: {role}")
    logger = log.get(role)
    try:
        name = pwd.getpwuid(init.uid).pw_name
        user = f"{name} (uid {init.uid})"
    except KeyError:
        name = user = f"uid {init.uid}"
    try:
        # still root: what the role imports later, after the drop, it finds
        # in sys.modules (faults-found 4.1, 4.2)
        preload.preload(role, init.config)
    except ImportError as e:                    # missing, or broken (preload says which)
        logger.error("fatal: cannot import %s before running as %s: %s",
                     e.name or "a module", user, e)
        return 1
    try:
        return module.main(sock, init)
    except log.Fatal as e:
        logger.error("fatal: running as %s: %s", user, e)
        return 1
    except privsep.PrivsepError as e:
        logger.error("fatal: cannot drop privileges to %s: %s", user, e.strerror or e)
        return 1
    except ImportError as e:                    # code that could not be read after the drop
        where = proc.unreadable_path()
        hint = (f": {where} is not readable by {name}: make it readable by {name}, "
                f"or install outside a 0700 directory" if where else "")
        logger.error("fatal: running as %s: cannot load %s: %s%s", user,
                     e.name or "a module", e, hint)
        return 1
    except Exception as e:                      # a bug: say so, with the trace at debug
        logger.error("fatal: running as %s: %s: %s", user, type(e).__name__, e)
        logger.debug("traceback", exc_info=True)
        return 1
