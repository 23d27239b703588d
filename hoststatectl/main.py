"""hoststatectl [-s socket] [--json] command [argument]: control hoststated.

Errors go to stderr as one line, or, under --json, to stdout as one JSON
object, {"error": {"code": ..., "message": ..., "status": N}}, so that a
script reading stdout sees them (the exit status is N either way). Output to
a pipe closed early (`| head -1`) ends quietly, as the Python documentation
recommends for SIGPIPE."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from hoststatectl import output, parser
from hoststatectl.client import Client, CtlError
from hoststated.ipc.messages import DEFAULT_SOCKET, EXIT_STATUS, CommandError, MessageError


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hoststatectl", description="control the hoststated daemon",
        epilog="commands: " + "; ".join(parser.usage_lines()))
    ap.add_argument("-s", dest="socket", default=DEFAULT_SOCKET, metavar="socket",
                    help=f"control socket (default {DEFAULT_SOCKET})")
    ap.add_argument("--json", action="store_true", help="print the reply as JSON")
    ap.add_argument("--reconnect", action="store_true",
                    help="monitor: follow the daemon across restarts")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    return ap


def _args(argv: list[str] | None) -> argparse.Namespace:
    return arg_parser().parse_args(argv)


def _fail(args: argparse.Namespace, code: str, line: str, message: str, status: int) -> int:
    """Report an error: `line` on stderr, or under --json the code, the
    daemon's (or our) message and the exit status on stdout."""
    if args.json:
        print(json.dumps({"error": {"code": code, "message": message, "status": status}}))
    else:
        print(line, file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # the reader went away: say nothing more; stdout points at /dev/null
        # so that the interpreter's own flush at exit fails no louder
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    if not args.command:
        usage = "no command; one of:\n  " + "\n  ".join(parser.usage_lines())
        return _fail(args, "bad-argument", f"hoststatectl: {usage}", "no command", 2)
    if "--reconnect" in args.command[1:]:      # `monitor --reconnect` reads as well
        args.command = [w for w in args.command if w != "--reconnect"]
        args.reconnect = True
    try:
        cmd = parser.parse(args.command)
    except CommandError as e:
        return _fail(args, e.code, f"hoststatectl: {e.message}", e.message,
                     EXIT_STATUS.get(e.code, 2))
    client = Client(args.socket, timeout=None if cmd.words == ("monitor",) else 120.0)
    request = cmd.line
    try:
        if cmd.words == ("monitor",):
            return monitor(client, args)
        data = client.request(request)
    except CtlError as e:
        line = (f"hoststatectl: {e.message}" if e.code == "connect"
                else f"command failed: {e.message}")
        return _fail(args, e.code, line, e.message, e.exit_status)
    except MessageError as e:          # an event that is not one
        return _fail(args, "protocol", f"hoststatectl: {args.socket}: bad reply: {e}",
                     f"{args.socket}: bad reply: {e}", 1)
    finally:
        client.close()
    if args.json:
        print(output.as_json(data))
        return 0
    try:
        print(output.text(cmd.words, data))
    except MessageError as e:          # a reply that does not fit the rows
        return _fail(args, "protocol", f"hoststatectl: {args.socket}: bad reply: {e}",
                     f"{args.socket}: bad reply: {e}", 1)
    return 0


# --- monitor (issue 13): non-zero when the daemon goes away, --reconnect ---

RECONNECT_FIRST = 0.1     # s before the first retry; doubles up to
RECONNECT_MAX = 5.0


def monitor(client: Client, args: argparse.Namespace) -> int:
    """Print every event; when the daemon goes away say so in one line and
    exit 1, or with --reconnect retry (backing off) and go on."""
    events = client.monitor()          # the first connection: its error is the user's
    while True:
        try:
            for ev in events:
                print(json.dumps(ev) if args.json else output.event_text(ev), flush=True)
            lost = f"{args.socket}: the daemon closed the connection"
        except CtlError as e:
            if e.code != "connect" or not args.reconnect:
                raise
            lost = e.message
        client.close()
        if not args.reconnect:
            print(f"hoststatectl: monitor: {lost}", file=sys.stderr, flush=True)
            return 1
        print(f"hoststatectl: monitor: {lost}; reconnecting", file=sys.stderr, flush=True)
        events = _resubscribe(client, args.socket)
        print(f"hoststatectl: monitor: reconnected to {args.socket}", file=sys.stderr,
              flush=True)


def _resubscribe(client: Client, path: str):
    """Connect and subscribe again, waiting longer after each failure
    (until interrupted)."""
    delay = RECONNECT_FIRST
    while True:
        try:
            return client.monitor()
        except CtlError as e:
            if e.code not in ("connect", "timeout"):
                raise
            client.close()
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)


if __name__ == "__main__":
    sys.exit(main())
