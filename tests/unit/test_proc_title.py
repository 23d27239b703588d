"""privsep.set_title: the kernel's comm and the command line ps shows, read
back from /proc of a real process that named itself."""

import subprocess
import sys
from pathlib import Path

import pytest

from hoststated import privsep

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from hoststated import privsep
privsep.set_title(sys.argv[1], sys.argv[2] or None)
print("named", flush=True)
sys.stdin.read()
"""


def named(title: str, comm: str, *args: str) -> tuple[str, list[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, title, comm, *args], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"named\n"
        comm_now = Path(f"/proc/{p.pid}/comm").read_text().rstrip("\n")
        argv = Path(f"/proc/{p.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    return comm_now, argv


def test_comm_and_cmdline():
    comm, argv = named("hoststated: relay 3", "hoststated: r3", "--role", "relay")
    assert comm == "hoststated: r3"
    # python -c SCRIPT TITLE COMM: the interpreter and its first word give
    # way to the title, what follows stays
    assert argv[0] == b"hoststated: relay 3"
    assert argv[-2:] == [b"--role", b"relay"]


def test_comm_is_cut_to_15_bytes():
    comm, argv = named("hoststated: parent", "")
    assert comm == "hoststated: par"
    assert argv[0] == b"hoststated: parent"


@pytest.mark.parametrize("argv,rest", [
    (["/usr/bin/python3", "-m", "hoststated", "--role", "hce"], ["--role", "hce"]),
    (["/usr/bin/python3", "-I", "/usr/sbin/hoststated", "-d", "-f", "x"], ["-d", "-f", "x"]),
    (["python3", "-c", "code", "a"], ["a"]),
    (["python3"], []),
])
def test_script_args(argv, rest):
    assert privsep._script_args(argv) == rest
