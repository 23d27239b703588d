"""A local user must not be able to take the service down through the control
socket (faults-found 1.3), and the control protocol's manners (1.4).

- On a real Unix socket, a ControlServer without the daemon (no root): a
  client cap, a per-uid cap, accept() out of descriptors, JSON after
  whitespace or a BOM, error messages that say what was wrong, no traceback.
- With the whole daemon (root, namespaces, `engine nftables`, a real HTTP
  backend) under the systemd default soft limit of 1024 descriptors: 1,100
  idle connections by uid 65534 to the restricted socket. Before, every host
  went down within a second and the nftables map emptied.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import WEB_CONFIG, nft_table, wait_for  # noqa: E402
import lab as lab_module  # noqa: E402
from conftest import root_ok  # noqa: E402

from hoststated import control  # noqa: E402
from hoststated.control import ControlServer  # noqa: E402


async def answer(cmd):
    return {"cmd": cmd.name}


class Served:
    """A ControlServer on a real socket in tmp_path, its log records kept."""

    def __init__(self, tmp_path, caplog, **kw):
        self.path = str(tmp_path / "ctl.sock")
        self.kw = kw
        self.caplog = caplog

    async def __aenter__(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(64)
        self.server = ControlServer(sock, answer, **self.kw)
        await self.server.start()
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    def lines(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if text in r.getMessage()]


async def connect(path):
    return await asyncio.open_unix_connection(path)


async def ask(path, data: bytes) -> bytes:
    """Send raw bytes, return what comes back until the server closes or
    has answered (one line / one frame)."""
    r, w = await connect(path)
    try:
        w.write(data)
        await w.drain()
        first = await asyncio.wait_for(r.read(1), 5)
        if first == b"{":
            return first + await asyncio.wait_for(r.readline(), 5)
        header = first + await asyncio.wait_for(r.readexactly(3), 5)
        (n,) = struct.unpack(">I", header)
        return header + await asyncio.wait_for(r.readexactly(n), 5)
    finally:
        w.close()


def decoded(reply: bytes) -> dict:
    if reply[:1] == b"{":
        return json.loads(reply)
    return msgpack.unpackb(reply[4:], raw=False)


async def served(path) -> bool:
    """Is a new client answered?"""
    try:
        reply = await ask(path, b'{"cmd": "show summary"}\n')
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    return json.loads(reply)["ok"] is True


async def is_closed(reader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionError:
        return True


@pytest.fixture
def quick(monkeypatch):
    # 1 s: a stall of this process longer than QUIET amid a burst of
    # refusals splits it into two logged episodes (0.2 s was within reach
    # of a loaded box)
    monkeypatch.setattr(control, "QUIET", 1.0)
    monkeypatch.setattr(control, "ACCEPT_RETRY", 0.05)


def no_traceback(caplog):
    for r in caplog.records:
        assert r.exc_info is None and "Traceback" not in r.getMessage(), r.getMessage()


# --- the caps -----------------------------------------------------------------

def test_client_cap_refuses_the_rest_and_recovers(tmp_path, caplog, quick):
    async def go():
        async with Served(tmp_path, caplog, max_clients=5) as s:
            held = [await connect(s.path) for _ in range(5)]
            assert await until(lambda: len(s.server.clients) == 5)
            extra = [await connect(s.path) for _ in range(10)]
            for r, _ in extra:                      # over the cap: closed at once
                assert await is_closed(r)
            for r, w in held:                       # the held ones are still served
                w.write(b'{"cmd": "show hosts"}\n')
                assert json.loads(await asyncio.wait_for(r.readline(), 5))["ok"]
            assert s.server.refused == 10
            for _, w in held + extra:
                w.close()
            assert await until(lambda: not s.server.clients)
            assert await served(s.path)
            assert await until(lambda: s.lines("accepting clients again"))
            return s.lines("refusing clients"), s.lines("accepting clients again")
    with caplog.at_level(logging.INFO, logger="hoststated.control"):
        refusing, again = asyncio.run(go())
    assert len(refusing) == 1 and "5 clients, the most this socket takes" in refusing[0]
    assert again == [f"control socket {tmp_path}/ctl.sock: accepting clients again (10 refused)"]
    no_traceback(caplog)


def test_per_uid_cap_on_the_restricted_socket(tmp_path, caplog, quick):
    async def go():
        async with Served(tmp_path, caplog, restricted=True, max_clients=100) as s:
            cap = s.server.per_uid
            conns = [await connect(s.path) for _ in range(cap + 20)]
            closed = [await is_closed(r) for r, _ in conns[cap:]]
            # the first `cap` are ours and answered
            for r, w in conns[:cap]:
                w.write(b'{"cmd": "show tables"}\n')
                assert json.loads(await asyncio.wait_for(r.readline(), 5))["ok"]
            assert s.server.by_uid[os.getuid()] == cap
            assert not await served(s.path)          # this uid is full
            for _, w in conns:
                w.close()
            assert await until(lambda: not s.server.by_uid)
            assert await served(s.path)
            return cap, closed, s.lines("refusing clients")
    with caplog.at_level(logging.INFO, logger="hoststated.control"):
        cap, closed, refusing = asyncio.run(go())
    assert cap == control.PER_UID and all(closed)
    assert refusing == [f"control socket {tmp_path}/ctl.sock: refusing clients: uid {os.getuid()} "
                        f"has {cap} clients, the most one uid may have"]
    no_traceback(caplog)


HOLDER = textwrap.dedent("""
    import socket, sys
    path, n = sys.argv[1], int(sys.argv[2])
    sys.stdin.readline()                      # go
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        socks.append(s)
    print("connected", flush=True)
    sys.stdin.read()                          # hold until stdin closes
""")


def room_for(n: int) -> int:
    """A descriptor limit that leaves this process n free descriptors."""
    used = set()
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            os.fstat(fd)                  # (not the one listdir itself had open)
            used.add(fd)
        except OSError:
            pass
    free = (fd for fd in range(1 << 20) if fd not in used)
    for _ in range(n):
        next(free)
    return next(free)


def fill(held: list[int]) -> None:
    """Open /dev/null until no descriptor is left."""
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return


def test_accept_out_of_descriptors_pauses_instead_of_spinning(tmp_path, caplog, quick):
    """accept() failing with EMFILE (the budget set high on purpose, the
    limit lowered under the running server): the server stops accepting,
    logs one line, not one per attempt, and takes the waiting clients once
    descriptors are free again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def go():
        async with Served(tmp_path, caplog, max_clients=1000) as s:
            holder = await asyncio.create_subprocess_exec(
                sys.executable, "-c", HOLDER, s.path, "40",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (room_for(2), hard))
                try:
                    holder.stdin.write(b"go\n")
                    await holder.stdin.drain()
                    assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"connected\n"
                    # several retries run into the limit again
                    assert await until(lambda: s.server.refused >= 5)
                    accepted_while_short = len(s.server.clients)
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                # descriptors back: all 40 are taken in
                assert await until(lambda: len(s.server.clients) == 40)
                assert await until(lambda: s.lines("accepting clients again"))
            finally:
                holder.stdin.close()
                await holder.wait()
            assert await until(lambda: not s.server.clients)
            assert await served(s.path)
            return accepted_while_short, s.server.refused, s.lines("refusing clients")
    with caplog.at_level(logging.INFO, logger="hoststated.control"):
        short, refused, refusing = asyncio.run(go())
    assert short < 40 and refused >= 5
    assert len(refusing) == 1 and "out of descriptors (Too many open files)" in refusing[0]
    no_traceback(caplog)


# --- checks short of descriptors ---------------------------------------------

@pytest.mark.parametrize("kind", ["http", "https"])
def test_checks_short_of_descriptors_keep_their_hosts(tmp_path, caplog, kind):
    """Real checks (http: the poller's fast path; https: a task, through
    asyncio's create_connection) against a real loopback server, with this
    process's descriptors used up: a local error, not a failure of the host."""
    import ssl

    from test_checks_servers import Server, http, make_ca_and_cert

    from hoststated.conf.model import CheckHttp, CheckOptions, Config, Global, Host, Table
    from hoststated.hce_sched import CheckEngine
    from hoststated.states import HostError

    certs = make_ca_and_cert(str(tmp_path)) if kind == "https" else None
    ctx = None
    if certs:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs[1], certs[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def go():
        async with Server(http(200), ssl=ctx) as srv:
            t = Table(id=1, name="web:p", template="web", port=srv.port,
                      check=CheckHttp(kind=kind, code=200), options=CheckOptions(),
                      hosts=(Host(id=1, name="127.0.0.1", address="127.0.0.1", port=srv.port,
                                  table="web:p"),))
            cfg = Config(**{"global": Global(interval=60, timeout=2000)}, tables=(t,))
            changes = []
            eng = CheckEngine(cfg, changes.append)
            task = asyncio.create_task(eng.run())
            eng.poll()                               # now, not somewhere in the interval
            try:
                assert await until(lambda: eng.hosts()[0].status == "up")
                checks = eng.hosts()[0].check_cnt
                resource.setrlimit(resource.RLIMIT_NOFILE, (room_for(0), hard))
                held: list[int] = []
                try:
                    for n in range(1, 6):            # five checks with no descriptor
                        # a transport of an earlier check closed late frees a
                        # slot: take every free one again before each check
                        fill(held)
                        eng.poll()
                        assert await until(lambda: eng.stats().local_errors == n)
                    short = eng.hosts()[0]
                finally:
                    for fd in held:
                        os.close(fd)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                eng.poll()
                assert await until(lambda: eng.hosts()[0].check_cnt == checks + 1)
                return checks, short, eng.hosts()[0], changes, eng.stats()
            finally:
                eng.stop()
                await task
    with caplog.at_level(logging.INFO, logger="hoststated"):
        checks, short, after, changes, st = asyncio.run(go())
    assert short.status == "up" and short.check_cnt == checks and short.retry_cnt == 0
    assert after.status == "up" and after.up_cnt == after.check_cnt
    assert [c.status for c in changes] == ["up"]
    assert st.local_errors == 5
    lines = [r.getMessage() for r in caplog.records if "not counted" in r.getMessage()]
    assert len(lines) == 1 and f"{HostError.TCP_SOCKET_LIMIT}: Too many open files" in lines[0]
    no_traceback(caplog)


# --- the protocol's manners ---------------------------------------------------

@pytest.mark.parametrize("prefix", [b" ", b"\t\r\n ", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
def test_json_after_whitespace_or_a_bom(tmp_path, caplog, prefix):
    async def go():
        async with Served(tmp_path, caplog) as s:
            one = decoded(await ask(s.path, prefix + b'{"cmd": "show tables"}\n'))
            # the prefix in pieces, apart from the request
            r, w = await connect(s.path)
            for i in range(len(prefix)):
                w.write(prefix[i:i + 1])
                await w.drain()
                await asyncio.sleep(0.01)
            w.write(b'{"cmd": "show hosts"}\n{"cmd": "poll"}\n')
            two = [json.loads(await asyncio.wait_for(r.readline(), 5)) for _ in range(2)]
            w.close()
            return one, two
    one, two = asyncio.run(go())
    assert one == {"ok": True, "data": {"cmd": "show tables"}}
    assert two == [{"ok": True, "data": {"cmd": "show hosts"}},
                   {"ok": True, "data": {"cmd": "poll"}}]


def frame(obj_or_body) -> bytes:
    body = obj_or_body if isinstance(obj_or_body, bytes) else msgpack.packb(obj_or_body)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("data, code, message", [
    (struct.pack(">I", 60001) + b"\x91" * 60000 + b"\xc0", "bad-request",
     "malformed frame: nested too deeply"),
    (frame(b"\xc1"), "bad-request", "malformed frame: not msgpack (a reserved type byte)"),
    (b'{"cmd": "show tables", "v": "1"}\n', "version", "\"v\" must be the integer 1, not '1'"),
    (frame({"cmd": "show tables", "v": "1"}), "version", "\"v\" must be the integer 1, not '1'"),
    (b'{"cmd": "show tables", "v": 2}\n', "version",
     "protocol version 2 not supported (this daemon speaks version 1)"),
    (b'{"cmd": "' + b"a" * 1000 + b'"}\n', "unknown-command",
     "unknown command: " + "a" * 60 + "... (1000 characters)"),
    (b'{"cmd": "show", "' + b"k" * 60000 + b'": 1}\n', "bad-request",
     "unknown request field '" + "k" * 59 + "... (60002 characters)"),
    (b" show tables\n", "bad-request", "not JSON: Expecting value: line 1 column 2 (char 1)"),
])
def test_errors_say_what_was_wrong(tmp_path, caplog, data, code, message):
    async def go():
        async with Served(tmp_path, caplog) as s:
            reply = decoded(await ask(s.path, data))
            assert await served(s.path)              # and the server carries on
            return reply
    with caplog.at_level(logging.DEBUG, logger="hoststated"):
        reply = asyncio.run(go())
    assert reply == {"ok": False, "error": {"code": code, "message": message}}
    no_traceback(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_hostile_input_leaves_no_traceback(tmp_path, caplog):
    inputs = [b"\x00\xff\xff\xff\xff", b"\xff" * 64,
              b"[" * 60000 + b"\n", b'{"cmd": "show tables"} trailing\n',
              frame({"cmd": ["list"]}), frame(b"\x81\x91\x01\x01"),
              frame(b"\xd4\x05\x00"), frame(b"\xa1\xff"), b'{"cmd": "\\ud800"}\n',
              b'{"cmd": "host disable 1' + b"9" * 5000 + b'"}\n', b" " * (70 << 10)]

    async def go():
        async with Served(tmp_path, caplog, restricted=True) as s:
            replies = []
            for data in inputs:
                try:
                    replies.append(await ask(s.path, data))
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                    replies.append(b"")
            assert await served(s.path)
            return replies
    with caplog.at_level(logging.DEBUG, logger="hoststated"):
        replies = asyncio.run(go())
    for data, reply in zip(inputs, replies):
        assert reply, data[:40]                      # an error, not silence
        assert decoded(reply)["ok"] is False
    no_traceback(caplog)


@pytest.mark.parametrize("data, message", [
    (struct.pack(">I", 5) + b"\x92\x01", "request not finished after 0.3s without input "
                                         "(6 bytes received)"),
    (b'{"cmd": "show', "request not finished after 0.3s without input (13 bytes received)"),
    (b"  \n", "request not finished after 0.3s without input (3 bytes received)"),
])
def test_half_sent_request_is_answered_at_the_idle_timeout(tmp_path, caplog, data, message):
    async def go():
        async with Served(tmp_path, caplog, idle_timeout=0.3) as s:
            r, w = await connect(s.path)
            w.write(data)
            reply = await asyncio.wait_for(r.read(), 5)     # the error, then EOF
            w.close()
            return reply
    reply = decoded(asyncio.run(go()))
    assert reply == {"ok": False, "error": {"code": "bad-request", "message": message}}
    no_traceback(caplog)


async def until(pred, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return bool(pred())


# --- the whole daemon under attack (root) -------------------------------------

ATTACKER = textwrap.dedent("""
    import socket, sys
    path, n = sys.argv[1], int(sys.argv[2])
    socks, failed = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(path)
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    print(len(socks), failed, flush=True)
    sys.stdin.read()                          # hold until stdin closes
""")

ONE_REQUEST = textwrap.dedent("""
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.sendall(b'{"cmd": "show summary"}\\n')
    print(json.loads(s.makefile("rb").readline())["ok"])
""")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"]

# the lab's web config, with a restricted socket for the attacker
DAEMON_CONFIG = WEB_CONFIG.replace('socket "{socket}"\n',
                                   'socket "{socket}"\nsocket restricted "{tmp}/ro.sock"\n')

BACKENDS = ("198.51.100.11", "198.51.100.12")


def soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open files limit")


@pytest.mark.root
@pytest.mark.skipif(not root_ok() or not shutil.which("setpriv") or not shutil.which("nft")
                    or not os.path.exists("/usr/bin/python3"),
                    reason="needs root, setpriv, nft and /usr/bin/python3")
def test_idle_connections_of_a_local_user_take_nothing_down(lab, monkeypatch):
    lb, be = lab.netns("lb"), lab.netns("be")
    lab.veth(lb, "198.51.100.1/24", be, [f"{a}/24" for a in BACKENDS])
    for a in BACKENDS:
        lab.http(be, a, 80)
    os.chmod(lab.tmp, 0o711)             # uid 65534 must reach the restricted socket
    # the daemon under systemd's default soft limit (faults-found 1.3)
    # (the hard limit too: the daemon raises its soft limit up to the hard
    # one; prlimit execs the daemon, so the PID stays the parent's)
    real = lab_module.in_netns
    monkeypatch.setattr(lab_module, "in_netns", lambda ns, *argv: real(
        ns, "prlimit", "--nofile=1024:1024", *argv))
    try:
        d = lab.daemon(lb, DAEMON_CONFIG, wait=False)
    finally:
        monkeypatch.setattr(lab_module, "in_netns", real)
    d.wait_ready()
    ro = str(lab.tmp / "ro.sock")

    def all_up() -> bool:
        return all(h["status"] == "up" for h in d.json("show", "hosts")["hosts"])
    wait_for(all_up, what="both backends up")
    wait_for(lambda: all(a in nft_table(lb) for a in BACKENDS), what="both in the nftables map")
    hce = d.roles()["hce"]
    limit = soft_nofile(hce)
    before = {h["name"]: h for h in d.json("show", "hosts")["hosts"]}

    # the attack: more idle connections than hce has descriptors
    n = min(limit + 76, 4096)                # 1,100 at the 1024 limit
    attacker = subprocess.Popen([*NOBODY, "-c", ATTACKER, ro, str(n)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    lab.procs.append(attacker)
    try:
        connected, failed = map(int, attacker.stdout.readline().split())
        assert connected + failed == n and connected > limit
        fds = []
        for _ in range(300):                 # while the connections are held: 5 checks each
            hosts = d.json("show", "hosts")["hosts"]
            assert [h["status"] for h in hosts] == ["up", "up"], hosts
            table = nft_table(lb)
            assert all(a in table for a in BACKENDS), table
            fds.append(len(os.listdir(f"/proc/{hce}/fd")))
            if all(h["check_cnt"] >= before[h["name"]]["check_cnt"] + 5 for h in hosts):
                break
        summary = d.json("show", "summary")
        during = {h["name"]: h for h in d.json("show", "hosts")["hosts"]}
    finally:
        attacker.stdin.close()
        attacker.wait(10)
    assert max(fds) < limit - 2 * d.json("show", "summary")["stats"]["probes"] - 100
    # checks went on and counted: nothing failed, nothing was a local error
    for name, h in during.items():
        assert h["check_cnt"] >= before[name]["check_cnt"] + 5 and h["up_cnt"] == h["check_cnt"], h
    assert summary["stats"]["local_errors"] == 0

    # after the attack, a new client of the same uid is served
    def nobody_served() -> bool:
        r = subprocess.run([*NOBODY, "-c", ONE_REQUEST, ro], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() == "True"
    wait_for(nobody_served, what="a client of uid 65534 served after the attack")
    wait_for(lambda: "accepting clients again" in d.read_log(), what="the recovery line")

    text = d.read_log()
    assert "Traceback" not in text and "out of system resource" not in text
    refusing = [line for line in text.splitlines() if "refusing clients" in line]
    assert 1 <= len(refusing) <= 3, refusing
    assert "uid 65534 has" in refusing[0]
    print(f"\nattack: {n} connections ({connected} connected) by uid 65534, hce limit {limit}, "
          f"hce fds max {max(fds)}; hosts {[h['status'] for h in during.values()]}, "
          f"checks {[h['check_cnt'] - before[k]['check_cnt'] for k, h in during.items()]} "
          f"during, all up; local errors {summary['stats']['local_errors']}")


def test_stop_with_a_request_in_progress_logs_nothing(tmp_path, caplog):
    """faults-found reproducer 17: a `reload` waiting for its answer when the
    daemon stops (asyncio's client_connected_cb logged a CancelledError
    traceback)."""
    started = []

    async def forever(cmd):
        started.append(cmd.name)
        await asyncio.Event().wait()

    async def go():
        path = str(tmp_path / "ctl.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        server = ControlServer(sock, forever)
        await server.start()
        r, w = await connect(path)
        w.write(b'{"cmd": "reload"}\n')
        assert await until(lambda: started)
        server.close()
        assert await asyncio.wait_for(r.read(), 5) == b""     # hung up on
        w.close()
    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    assert started == ["reload"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    no_traceback(caplog)
