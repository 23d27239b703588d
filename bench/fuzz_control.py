"""Fuzz of the control decoder and the IPC schema (issue 19 item 10), seeded.

    .venv/bin/python bench/fuzz_control.py [--cases 100000] [--seed 1] [--json]

Control cases: a client's byte stream (random bytes; JSON lines and msgpack
frames of valid, mutated and random requests; leading whitespace or a BOM;
wrong, huge and truncated lengths; deep nesting), cut into random chunks and
served by the real control.ControlServer conversation (encoding detection,
codec.Decoder / LineDecoder, messages.check_request, the restricted socket's
rule, reply encoding) on the main or the restricted socket, with a handler
that echoes the command. Only the socket is replaced: the stream is read from
memory and the replies are written to memory. Every reply must decode in the
client's encoding as {"ok": ...} with a known error code and a reason that is
not empty; the conversation may end, never raise (but for the peer going
away) nor log an error.

IPC cases: random objects and mutated valid messages of every type, framed,
fed to codec.Decoder with the IPC limit, checked by messages.from_wire; a
message that passes re-encodes to the same message. Only FrameError and
MessageError may come out.

Prints cases/s, crashes and bad replies; --json: one JSON object
(tests/unit/test_control_fuzz.py runs a few thousand cases this way in CI).
Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import resource
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from hoststated import control  # noqa: E402
from hoststated.ipc import codec, messages  # noqa: E402
from hoststated.ipc.messages import ErrorCode, Message, MsgType  # noqa: E402
from hoststated.states import HostStatus  # noqa: E402

CODES = {str(c) for c in ErrorCode}
SAMPLES = [
    Message(MsgType.INIT, messages.Init(config={"global": {}}, generation=1, uid=999, gid=999,
                                        peer_fd=5, control_fd=6, icmp_fds=[7, 8])),
    Message(MsgType.RECONFIGURE, messages.Reconfigure(config={"tables": []}, generation=2)),
    Message(MsgType.SHUTDOWN, messages.Empty()),
    Message(MsgType.LOG_VERBOSE, messages.LogVerbose(True)),
    Message(MsgType.RELOAD_RESULT, messages.ReloadResult(3, False, "x.conf:3:1: syntax error")),
    Message(MsgType.PFE_READY, messages.Empty()),
    Message(MsgType.RECONFIGURED, messages.Generation(2)),
    Message(MsgType.HCE_READY, messages.Empty()),
    Message(MsgType.CTL_RELOAD, messages.CtlReload(4, "/etc/other.conf")),
    Message(MsgType.CTL_STOP, messages.Empty()),
    Message(MsgType.CTL_LOG, messages.LogVerbose(False)),
    Message(MsgType.HOST_STATUS, messages.HostStatusBatch(1, {1: HostStatus.UP, 2: HostStatus.DOWN})),
    Message(MsgType.REDIRECT_STATE, messages.RedirectState(1, ["www"])),
]
WORDS = sorted({w for words, _ in messages.COMMANDS for w in words}) + \
    ["", "x", "sh", "ho", "h", "re", "l", "10", "-1", "www", "/etc/shadow", "\u00e9",
     "\ud800", "a" * 2000]


class _Reader:
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    async def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


async def _echo(cmd: messages.Command) -> dict:
    return {"cmd": cmd.name, "arg": cmd.arg, "uid": control.PEER_UID.get()}


class Gen:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def obj(self, depth: int = 0):
        r = self.rng
        k = r.randrange(12 if depth < 4 else 7)
        if k == 0:
            return r.randrange(-2 ** 70, 2 ** 70)
        if k == 1:
            return r.choice([0, 1, -1, 2 ** 63, 1.5, float("inf"), float("nan"), True, None])
        if k == 2:
            return "".join(chr(r.randrange(0, 0x3000)) for _ in range(r.randrange(8)))
        if k == 3:
            return r.randbytes(r.randrange(8))
        if k in (4, 5, 6):
            return self.words()
        if k in (7, 8):
            return [self.obj(depth + 1) for _ in range(r.randrange(4))]
        return {self.key(): self.obj(depth + 1) for _ in range(r.randrange(4))}

    def key(self):
        return self.rng.choice(["cmd", "v", "x", "data", "cmd ", 1, "generation", "request",
                                "path", "ok"])

    def words(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randrange(5)))

    def command(self) -> str:
        """A command the daemon knows, its words perhaps cut to a prefix."""
        r = self.rng
        words, arg = r.choice(messages.COMMANDS)
        out = [w[:r.randint(1, len(w))] if r.random() < 0.3 else w for w in words]
        if arg is not None:
            out.append(r.choice(["1", "www", "/etc/hoststated.conf", "\u00e9", "x" * 70]))
        return " ".join(out)

    def request(self):
        r = self.rng
        req = {"cmd": self.command() if r.random() < 0.5 else self.words()}
        if r.random() < 0.5:
            req["v"] = r.choice([1, 1, 1, 0, 2, "1", 1.0, None, True, -1, 2 ** 64])
        if r.random() < 0.1:
            req[self.key()] = self.obj(1)
        return req if r.random() < 0.9 else self.obj()

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        b = bytearray(data)
        for _ in range(r.randrange(1, 4)):
            op = r.randrange(4)
            at = r.randrange(len(b) + 1)
            if op == 0 and b:
                b[min(at, len(b) - 1)] = r.randrange(256)
            elif op == 1:
                b[at:at] = r.randbytes(r.randint(1, 4))
            elif op == 2:
                del b[at:at + r.randint(1, 8)]
            else:
                b[at:at] = b[:r.randrange(len(b) + 1)]          # a repeat
        return bytes(b)

    def control_stream(self) -> bytes:
        r = self.rng
        kind = r.randrange(10)
        if kind == 0:
            return r.randbytes(r.randrange(300))
        prefix = r.choice([b"", b"", b"", b" ", b"\n\t ", codec.BOM, codec.BOM + b" ",
                           codec.BOM[:2]])
        parts = []
        for _ in range(r.randint(1, 4)):
            obj = self.request()
            if kind <= 5:                       # JSON lines
                try:
                    line = json.dumps(obj, default=repr).encode("utf-8", "surrogatepass")
                except (ValueError, TypeError):
                    line = b"{"
                parts.append(line + b"\n")
            else:                               # msgpack frames
                try:
                    body = msgpack.packb(obj, use_bin_type=True)
                except (ValueError, TypeError, OverflowError, UnicodeEncodeError):
                    body = b"\xc1"
                n = len(body) if r.random() < 0.9 else r.choice(
                    [0, len(body) + 1, len(body) - 1, 1 << 31, 65537, r.randrange(1 << 32)])
                parts.append(codec.HEADER.pack(n % (1 << 32)) + body)
        data = b"".join(parts)
        if kind in (4, 5, 8, 9):
            data = self.mutate(data)
        if r.random() < 0.03:
            data = (b"[" * 60000 if kind <= 5 else b"\x91" * 60000)
            data = (data + b"\n") if kind <= 5 else codec.HEADER.pack(len(data)) + data
        return prefix + data

    def chunks(self, data: bytes) -> list[bytes]:
        out, i = [], 0
        while i < len(data):
            n = self.rng.choice([1, 2, 7, 64, 4096, 1 << 20])
            out.append(data[i:i + n])
            i += n
        return out

    def ipc_stream(self) -> tuple[bytes, list[Message] | None]:
        r = self.rng
        wire, sent = bytearray(), []
        pure = True                  # only valid messages: they must come out as sent
        for _ in range(r.randint(1, 3)):
            if r.random() < 0.3:
                obj, pure = self.obj(), False
            else:
                msg = r.choice(SAMPLES)
                obj = msg.to_wire()
                if r.random() < 0.5:
                    sent.append(msg)
                else:
                    obj, pure = self.damage(obj), False
            try:
                wire += codec.encode(obj)
            except (ValueError, TypeError, OverflowError, UnicodeEncodeError):
                wire += b"\x00\x00\x00\x01\xc1"
        if r.random() < 0.3:
            wire, pure = bytearray(self.mutate(bytes(wire))), False
        return bytes(wire), sent if pure else None

    def damage(self, wire: list):
        r = self.rng
        mtype, body = wire
        op = r.randrange(4)
        if op == 0:
            return [r.choice([mtype, -1, 99, "1", 1.0, None]), body]
        if op == 1 and isinstance(body, dict) and body:
            body = dict(body)
            body[r.choice(sorted(body))] = self.obj(1)
            return [mtype, body]
        if op == 2 and isinstance(body, dict) and body:
            body = dict(body)
            del body[r.choice(sorted(body))]
            return [mtype, body]
        return [mtype, body, self.obj(1)] if r.random() < 0.5 else [mtype]


REPLIES = {"ok": 0, "error": 0}     # replies seen, for the report


def _check_text_replies(out: bytes) -> str | None:
    """Command lines' replies: hoststatectl's text, each ended by an empty
    line; an error is `command failed: REASON`."""
    text = out.decode("utf-8")
    if text and not text.endswith("\n\n"):
        return "a text reply without its empty line"
    for block in text.split("\n\n")[:-1]:
        if block.startswith("command failed:"):
            REPLIES["error"] += 1
            # (a line's own words are quoted in it, `:` at the end included)
            reason = block[len("command failed:"):].strip()
            if not reason:
                return f"an error without a reason: {block[:100]}"
        else:
            REPLIES["ok"] += 1
    return None


def _check_replies(out: bytes, json_stream: bool, text: bool = False) -> str | None:
    """None, or why the replies are wrong."""
    if text:
        return _check_text_replies(out)
    if json_stream:
        lines = out.split(b"\n")
        if lines[-1]:
            return "a reply line without its newline"
        replies = [json.loads(ln) for ln in lines[:-1]]
    else:
        replies = codec.Decoder(messages.MAX_CTL_REPLY).feed(out)
    for rep in replies:
        if not isinstance(rep, dict) or not isinstance(rep.get("ok"), bool):
            return f"not a reply: {str(rep)[:100]}"
        REPLIES["ok" if rep["ok"] else "error"] += 1
        if not rep["ok"]:
            err = rep.get("error") or {}
            if err.get("code") not in CODES:
                return f"unknown error code: {str(err)[:100]}"
            msg = err.get("message")
            if not isinstance(msg, str) or not msg.strip() or msg.rstrip().endswith(":"):
                return f"an error without a reason: {str(err)[:100]}"
    return None


async def _control_case(gen: Gen, errors: _Errors) -> str:
    data = gen.control_stream()
    restricted = gen.rng.random() < 0.3
    server = _Server(restricted)
    client = control._Client(None, gen.rng.choice([0, 999, 65534]))
    client.reader, client.writer = _Reader(gen.chunks(data)), _Writer()
    token = control.PEER_UID.set(client.uid)
    before = len(errors.records)
    try:
        await server._converse(client)
    except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        control.PEER_UID.reset(token)
    if len(errors.records) > before:
        return "crash: logged " + errors.records[-1][:200]
    try:
        bad = _check_replies(bytes(client.writer.out), bool(client.json), client.text)
    except Exception as e:                        # noqa: BLE001 - a reply we cannot read
        bad = f"reply does not decode: {type(e).__name__}: {str(e)[:100]}"
    return f"bad reply: {bad}" if bad else "ok"


class _Server(control.ControlServer):
    """The real conversation without a listening socket."""

    def __init__(self, restricted: bool):
        self.handler = _echo
        self.restricted = restricted
        self.idle_timeout = control.IDLE_TIMEOUT


def _ipc_case(gen: Gen) -> str:
    data, sent = gen.ipc_stream()
    dec = codec.Decoder(messages.MAX_FRAME)
    got: list[Message] = []
    try:
        for chunk in gen.chunks(data):
            for frame in dec.feed(chunk):
                try:
                    msg = messages.from_wire(frame)
                except messages.MessageError:
                    continue
                # what passes the schema goes back on the wire as it came
                # (compared as bytes: a NaN in a config is not equal to itself)
                wire = codec.encode(msg.to_wire())
                (again,) = codec.Decoder().feed(wire)
                if codec.encode(messages.from_wire(again).to_wire()) != wire:
                    return "bad reply: a message does not re-encode to itself"
                got.append(msg)
    except codec.FrameError:
        return "ok"
    if sent is not None and got != sent:
        return "bad reply: valid messages were not decoded as sent"
    return "ok"


def campaign(cases: int, seed: int) -> dict:
    gen = Gen(random.Random(seed))
    REPLIES.update(ok=0, error=0)
    errors = _Errors()
    logger = logging.getLogger("hoststated")
    logger.addHandler(errors)
    logger.propagate = False
    stats = {"cases": cases, "seed": seed, "control_cases": 0, "ipc_cases": 0, "crashes": 0,
             "bad_replies": 0, "examples": []}

    async def run() -> None:
        for i in range(cases):
            ipc = gen.rng.random() < 0.4
            try:
                outcome = _ipc_case(gen) if ipc else await _control_case(gen, errors)
            except Exception as e:                # noqa: BLE001 - every exception counts
                outcome = "crash: " + "".join(traceback.format_exception_only(e)).strip()[:300]
            stats["ipc_cases" if ipc else "control_cases"] += 1
            if outcome != "ok":
                stats["crashes" if outcome.startswith("crash") else "bad_replies"] += 1
                if len(stats["examples"]) < 10:
                    stats["examples"].append({"case": i, "ipc": ipc, "outcome": outcome})
    start = time.perf_counter()
    try:
        asyncio.run(run())
    finally:
        logger.removeHandler(errors)
        logger.propagate = True
    elapsed = time.perf_counter() - start
    stats["seconds"] = round(elapsed, 2)
    stats["cases_per_s"] = round(cases / elapsed, 1) if elapsed else None
    stats["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats["replies_ok"], stats["replies_error"] = REPLIES["ok"], REPLIES["error"]
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    s = campaign(a.cases, a.seed)
    if a.json:
        print(json.dumps(s))
    else:
        print(f"{s['cases']} cases (seed {s['seed']}: {s['control_cases']} control streams, "
              f"{s['ipc_cases']} IPC streams) in {s['seconds']} s: {s['cases_per_s']} cases/s; "
              f"replies {s['replies_ok']} ok, {s['replies_error']} errors; "
              f"crashes {s['crashes']}, bad replies {s['bad_replies']}; "
              f"max RSS {s['max_rss_mb']} MB")
        for ex in s["examples"]:
            print(f"  case {ex['case']}: {ex['outcome']}")
    return 1 if s["crashes"] or s["bad_replies"] else 0


if __name__ == "__main__":
    sys.exit(main())
