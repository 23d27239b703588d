"""Running an operator's command with bounds (issue 14): notify commands
(hce), the autoreload callback (the parent, as the unprivileged user)."""

from __future__ import annotations

import asyncio
import os
import signal

OUTPUT_CAP = 4096           # bytes of a command's output kept (its first line is logged)


async def run_command(argv: list[str], env: dict[str, str], timeout: float, **popen
                      ) -> tuple[int | None, bytes, bool]:
    """Run argv in its own process group, no stdin; kill the group at the
    timeout. Returns (exit status, None if it could not start or was killed;
    its output, capped; whether it timed out). `popen`: user, group,
    extra_groups for a root caller."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, cwd="/", start_new_session=True,
            **popen)
    except (OSError, ValueError) as e:
        return None, f"{argv[0]}: {getattr(e, 'strerror', None) or e}".encode(), False
    out = bytearray()

    async def collect() -> int:
        while chunk := await proc.stdout.read(65536):
            if len(out) < OUTPUT_CAP:
                out.extend(chunk[:OUTPUT_CAP - len(out)])
        return await proc.wait()
    try:
        try:
            async with asyncio.timeout(timeout):
                return await collect(), bytes(out), False
        except TimeoutError:
            return None, bytes(out), True
    finally:
        try:                      # the command's group: leftovers in the background too
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.returncode is None:
            try:
                await proc.wait()
            except BaseException:
                pass


def status(rc: int | None) -> str:
    if rc is None:
        return "could not be started"
    return f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}"


def first_line(out: bytes) -> str:
    lines = out.decode(errors="replace").strip().splitlines()
    return f": {lines[0]}" if lines else ""
