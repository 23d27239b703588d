"""Start the real servers the protocol checks are tested against.

Each server is the Debian package's daemon, run in the foreground as a
child of the test process on 127.0.0.1 and a free high port, with a
configuration written into a temp dir; it is stopped by its PID (never by
name) when the fixture ends, even on failure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hoststated.checks import registry
from hoststated.checks.base import Target, Verdict
from hoststated.conf.model import CheckService

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0        # s for a server to accept connections


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on loopback (servers like dnsmasq
    and sipp listen on both)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port


def missing_programs(*names: str) -> str | None:
    gone = [n for n in names if shutil.which(n) is None and not os.path.exists(n)]
    return f"not installed: {', '.join(gone)} (tools/apt/protocols.txt)" if gone else None


@dataclass
class Server:
    """One running server process."""
    name: str
    argv: list[str]
    dir: Path
    port: int
    env: dict | None = None
    user: str | None = None             # run as this user (runuser)
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / f"{self.name}.out"

    def start(self, ready=None) -> "Server":
        argv = self.argv
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     env=self.env, start_new_session=True)
        out.close()
        (ready or self.wait_tcp)()
        return self

    def wait_tcp(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            with socket.socket() as s:
                if s.connect_ex((LOOPBACK, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not listening on {self.port}:\n{self.output()}")

    def wait_udp(self) -> None:
        """A UDP server is ready when its socket is bound: poll /proc/net/udp
        for the port (works for a server that drops privileges too)."""
        deadline = time.monotonic() + START_TIMEOUT
        hexport = f":{self.port:04X}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            with open("/proc/net/udp") as f:
                if any(line.split()[1].endswith(hexport) for line in list(f)[1:]):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not bound to udp {self.port}:\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop by PID: the process group we started, TERM then KILL."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run(cmd: list[str], *, user: str | None = None, cwd: Path | None = None,
        input: bytes | None = None) -> None:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    r = subprocess.run(cmd, cwd=cwd, input=input, capture_output=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n"
                           f"{(r.stdout + r.stderr).decode(errors='replace')[-3000:]}")


def self_signed(dir: Path, name: str = "localhost") -> tuple[Path, Path]:
    cert, key = dir / "cert.pem", dir / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)])
    return cert, key


def check_once(model: CheckService, port: int | None, *, timeout: float = 5.0,
               address: str = LOOPBACK) -> Verdict:
    """Run one check through the real runner, as the engine would."""
    from hoststated.checks import make_check
    from hoststated.checks.runner import run_check
    target = Target(address=address, port=port, name=address)
    check = make_check(model, target)
    return asyncio.run(run_check(check, target, timeout))


@contextlib.contextmanager
def world_dir(name: str):
    """A temp dir other users can traverse (pytest's are 0700 under root),
    for servers that run as their own user; removed at the end."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix=f"hs-proto-{name}-{os.getpid()}-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
