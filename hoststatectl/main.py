"""hoststatectl [-s socket] [--json] command [argument]: control hoststated."""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if not args.command:
        print("hoststatectl: no command; one of:\n  " + "\n  ".join(parser.usage_lines()),
              file=sys.stderr)
        return 2
    if "--reconnect" in args.command[1:]:      # `monitor --reconnect` reads as well
        args.command = [w for w in args.command if w != "--reconnect"]
        args.reconnect = True
    try:
        cmd = parser.parse(args.command)
    except CommandError as e:
        print(f"hoststatectl: {e.message}", file=sys.stderr)
        return EXIT_STATUS.get(e.code, 2)
    client = Client(args.socket, timeout=None if cmd.words == ("monitor",) else 120.0)
    request = cmd.line
    try:
        if cmd.words == ("monitor",):
            return monitor(client, args)
        data = client.request(request)
    except CtlError as e:
        if e.code == "connect":
            print(f"hoststatectl: {e.message}", file=sys.stderr)
        else:
            print(f"command failed: {e.message}", file=sys.stderr)
        return e.exit_status
    except MessageError as e:          # an event that is not one
        print(f"hoststatectl: {args.socket}: bad reply: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    if args.json:
        print(output.as_json(data))
        return 0
    try:
        print(output.text(cmd.words, data))
    except MessageError as e:          # a reply that does not fit the rows
        print(f"hoststatectl: {args.socket}: bad reply: {e}", file=sys.stderr)
        return 1
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
