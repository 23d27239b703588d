"""hoststated's command line: `hoststated [-dnv] [-D macro=value] [-f file]`.

-n checks the configuration and says `configuration OK` on stderr (as
relayd does); -nv also prints it in canonical form on stdout.  --role is
how the parent starts its children (hoststated.proc); anything else runs the
daemon (hoststated.parent).  Errors go to stderr as `file:line:col: message`
and give exit status 1; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_CONFIG = "/etc/hoststated.conf"


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

    from hoststated.checks.services import missing_diagnostics

    warnings: list = []
    try:
        config = load(args.config_file, defines=args.defines,
                      lookup=not args.no_lookup, warnings=warnings)
    except ConfigError as e:
        for d in e.diagnostics:
            print(d, file=sys.stderr)
        return 1
    # a check whose client library is not installed here: an error on the
    # machine that will run it, a warning when only the text is checked
    missing = missing_diagnostics(config, args.config_file, warning=args.no_lookup)
    for d in missing:               # (load() has logged its own warnings)
        print(d, file=sys.stderr)
    if missing and not args.no_lookup:
        return 1
    if args.verbose:
        sys.stdout.write(print_config(config))
        sys.stdout.flush()
    print("configuration OK", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(format="hoststated: %(message)s", stream=sys.stderr,
                        level=logging.DEBUG if args.verbose > 1 else logging.INFO)
    try:
        if args.role:
            from hoststated import proc
            return proc.child_main(args)
        if args.check_only:
            return check_config(args)
        from hoststated import parent
        return parent.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
