"""The Debian package built from the tree, installed on this machine, then
purged (root; under the root-tests lock; apt's lock for dpkg):

- `dpkg-buildpackage -us -uc -b` in a copy of the tree;
- dpkg -i: the user and group exist, the files are where Debian keeps
  them, `hoststated -n` passes on the shipped examples, hoststatectl runs on
  Debian's interpreter;
- the packaged daemon runs in a namespace (nftables through Debian's
  python3-nftables, pydantic from the package's private copy), its children
  named in /proc, and answers a command line on its socket;
- dpkg -P, and whatever the test made (the user and group, when it made
  them) is removed again, even when a step fails. A machine that has the
  package installed already is left alone (skip).
"""

from __future__ import annotations

import json
import os
import re
import pwd
import grp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import WEB_BACKENDS, WEB_CONFIG, Daemon, in_netns, wait_for, web_director  # noqa: E402
from conftest import root_ok  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = Path("/usr/share/doc/hoststated/examples")
APT_LOCK = "/tmp/apt.lock"

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not root_ok(), reason="needs root and iproute2")]


def installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def dpkg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["flock", APT_LOCK, "dpkg", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def exists(getter, name: str) -> bool:
    try:
        getter(name)
        return True
    except KeyError:
        return False


class PackagedDaemon(Daemon):
    """The package's /usr/sbin/hoststated on Debian's python3, from / (so
    nothing of this checkout is on its path)."""

    def command(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        return in_netns(self.ns, "/usr/sbin/hoststated", "-d", "-f", str(self.conf)), env, \
            {"cwd": "/"}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """Build the .deb, install it; purge it and restore the machine after."""
    if not (shutil.which("dpkg-buildpackage") and shutil.which("dh")):
        pytest.fail("dpkg-buildpackage or debhelper missing: ./run setup installs "
                    "tools/apt/deb.txt")
    if installed("hoststated"):
        pytest.skip("a hoststated package is installed on this machine already: left alone")
    tmp = tmp_path_factory.mktemp("deb")
    src = tmp / "hoststated"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        p = ROOT / os.fsdecode(f)
        if p.is_file():
            (src / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, src / os.fsdecode(f))
    r = subprocess.run(["dpkg-checkbuilddeps"], cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (deb,) = tmp.glob("hoststated_*.deb")
    had_user = exists(pwd.getpwnam, "_hoststated")
    had_group = exists(grp.getgrnam, "hoststated")
    try:
        r = dpkg("-i", str(deb))
        assert r.returncode == 0, r.stdout + r.stderr
        yield deb
    finally:
        r = dpkg("-P", "hoststated")
        # the machine as it was: a user or group the package made goes too
        if not had_user and exists(pwd.getpwnam, "_hoststated"):
            subprocess.run(["userdel", "_hoststated"], check=False)
        if not had_group and exists(grp.getgrnam, "hoststated"):
            subprocess.run(["groupdel", "hoststated"], check=False)
        if exists(grp.getgrnam, "_hoststated") and not had_user:
            subprocess.run(["groupdel", "_hoststated"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not installed("hoststated")
        assert not Path("/usr/lib/python3/dist-packages/hoststated").exists()
        assert not Path("/usr/sbin/hoststated").exists()


def test_installs_where_debian_keeps_things(package):
    assert pwd.getpwnam("_hoststated").pw_shell == "/usr/sbin/nologin"
    assert grp.getgrnam("hoststated")
    for f in ("/usr/sbin/hoststated", "/usr/bin/hoststatectl",
              "/lib/systemd/system/hoststated.service", "/usr/lib/sysusers.d/hoststated.conf",
              "/usr/share/bash-completion/completions/hoststatectl",
              "/usr/share/zsh/vendor-completions/_hoststatectl",
              "/usr/share/doc/hoststated/README.Debian", EXAMPLES / "hoststated.conf"):
        assert Path(f).is_file(), f
    unit = Path("/lib/systemd/system/hoststated.service").read_text()
    assert "ExecStart=/usr/sbin/hoststated -d -f /etc/hoststated.conf" in unit
    assert "ExecReload=/usr/bin/hoststatectl reload" in unit and "/usr/local" not in unit
    r = subprocess.run(["man", "-w", "hoststatectl"], capture_output=True, text=True)
    assert r.stdout.strip() == "/usr/share/man/man8/hoststatectl.8.gz", r.stderr
    # installed, neither enabled nor started (no symlink in the wants)
    assert not Path("/etc/systemd/system/multi-user.target.wants/hoststated.service").exists()


@pytest.mark.parametrize("example", ["hoststated.conf", "relays.conf", "monitor-only.conf",
                                     "nftables-nat.conf", "ipvs-dr.conf", "protocols.conf"])
def test_shipped_examples_pass_check(package, example):
    r = subprocess.run(["/usr/sbin/hoststated", "-n", "-f", str(EXAMPLES / example)],
                       capture_output=True, text=True, cwd="/", timeout=120)
    assert r.returncode == 0 and "configuration OK" in r.stderr, r.stderr


def test_hoststatectl_on_debians_python(package, tmp_path):
    r = subprocess.run(["/usr/bin/hoststatectl", "--json", "-s", str(tmp_path / "none.sock"),
                        "poll"], capture_output=True, text=True, cwd="/", timeout=60)
    assert r.returncode == 1 and r.stderr == ""
    assert json.loads(r.stdout)["error"]["code"] == "connect"
    with open("/usr/bin/hoststatectl") as f:
        assert f.readline() == "#!/usr/bin/python3\n"


def _counts_out(text: str) -> str:
    # the check counts move on between two looks
    return re.sub(r"total: \d+/\d+ checks", "total: N/N checks", text)


def test_packaged_daemon_runs(package, lab):
    c, lb, b, _servers = web_director(lab)
    sock = str(lab.tmp / "deb.sock")
    conf = lab.write("deb.conf", WEB_CONFIG.format(socket=sock))
    d = PackagedDaemon(lab, lb, conf, sock)

    def shown() -> str:
        r = subprocess.run(["/usr/bin/hoststatectl", "-s", sock, "show", "hosts"],
                           capture_output=True, text=True, cwd="/", timeout=60)
        return r.stdout if r.returncode == 0 else ""
    wait_for(lambda: shown().count("\tup\n") == 2, 60,
             what=f"both backends up (log: {d.read_log()})")
    # Debian's interpreter, and the children are named
    assert os.path.realpath(f"/proc/{d.pid}/exe").startswith("/usr/bin/python3")
    roles = d.roles()
    assert set(roles) == {"hce", "pfe"}
    assert {Path(f"/proc/{pid}/comm").read_text().strip() for pid in roles.values()} == \
        {"hoststated: hce", "hoststated: pfe"}
    assert Path(f"/proc/{d.pid}/comm").read_text().strip() == "hoststated"
    # a command line on the socket: the text hoststatectl prints
    r = subprocess.run(["socat", "-t", "10", "-", f"UNIX-CONNECT:{sock}"], input="show hosts\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert _counts_out(r.stdout) == _counts_out(shown()) + "\n", r.stdout
    assert d.stop() == 0


# The package's postinst user step, run in a mount namespace of its own over
# a copy of /etc without the user and group: what it makes is seen there
# and nowhere else (this machine's _hoststated is the other tests').
PRIVATE_ETC = r"""
set -eu
step=$1 branch=$2 tmp=$3
mount --make-rprivate /
cp -a /etc "$tmp/etc"
sed -i '/^_hoststated:/d' "$tmp/etc/passwd" "$tmp/etc/shadow"
sed -i '/^_hoststated:/d;/^hoststated:/d' "$tmp/etc/group" "$tmp/etc/gshadow"
mount --bind "$tmp/etc" /etc
if /usr/bin/getent passwd _hoststated; then echo "the copy still has the user"; exit 3; fi
if [ "$branch" = adduser ]; then
    # a machine without systemd-sysusers
    mkdir "$tmp/bin"
    for t in getent adduser addgroup; do ln -s "$(command -v $t)" "$tmp/bin/$t"; done
    PATH="$tmp/bin:/usr/sbin:/sbin"
fi
/bin/sh "$step" configure
/usr/bin/getent passwd _hoststated
/usr/bin/getent group hoststated
"""


@pytest.mark.parametrize("branch", ["sysusers", "adduser"])
def test_postinst_makes_the_user(package, tmp_path, branch):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    ctl = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(package), str(ctl)], check=True)
    postinst = (ctl / "postinst").read_text()
    # the user step alone (what debhelper adds after it acts on the real /usr)
    step = postinst[postinst.index("set -e\n"):postinst.index("\nfi\n") + 4]
    assert "systemd-sysusers /usr/lib/sysusers.d/hoststated.conf" in step and "adduser" in step
    (tmp_path / "step.sh").write_text(step)
    before = Path("/etc/passwd").read_text()
    r = subprocess.run(["unshare", "-m", "sh", "-c", PRIVATE_ETC, "sh", str(tmp_path / "step.sh"),
                        branch, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    user, group = r.stdout.splitlines()[-2:]
    fields = user.split(":")
    assert fields[0] == "_hoststated" and fields[5:] == ["/", "/usr/sbin/nologin"]
    assert 0 < int(fields[2]) < 1000                        # a system user
    assert group.startswith("hoststated:") and group.split(":")[2] != fields[3]
    assert Path("/etc/passwd").read_text() == before          # the machine's own untouched
