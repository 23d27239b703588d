"""etc/hoststated.service: what the unit promises (readiness from the main
process only, a reload that fails on a refused config, the capabilities the
privilege drop needs, descriptors enough), and systemd's own verifier finds
nothing wrong with it; etc/hoststated.sysusers creates the daemon's user and
the socket's group. (tests/integration/test_systemd_unit_live.py runs the daemon
under the unit's own settings.)"""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hoststated.conf import model

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "hoststated.service"
SYSUSERS = ROOT / "etc" / "hoststated.sysusers"

# what hoststated/privsep.drop_privileges and the parent call, and the
# capability each needs (capset lowering, PR_SET_KEEPCAPS, the ambient
# clear, PR_SET_NO_NEW_PRIVS and PR_SET_PDEATHSIG need none)
NEEDED = {
    "prctl(PR_CAPBSET_DROP)": "CAP_SETPCAP",
    "setgroups, setresgid": "CAP_SETGID",
    "setresuid": "CAP_SETUID",
    "pfe: netlink to nftables/IPVS": "CAP_NET_ADMIN",
    "raw ICMP sockets": "CAP_NET_RAW",
    "chown of the control socket to its group": "CAP_CHOWN",
    "signals to the children (another uid)": "CAP_KILL",
}


def service() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def test_promises():
    s = service()
    assert s["Type"] == "notify"
    # only the parent may notify: hce reads network and control input
    assert s["NotifyAccess"] == "main"
    # a refused config fails `systemctl reload` (hoststatectl exits non-zero);
    # a bare kill -HUP reported success
    assert s["ExecReload"].split() == ["/usr/local/bin/hoststatectl", "reload"]
    assert "kill" not in s["ExecReload"]
    assert " -d " in s["ExecStart"] and " -n " in s["ExecStartPre"]
    caps = set(s["CapabilityBoundingSet"].split())
    # pfe's CAP_NET_ADMIN, ICMP's raw sockets, the drop itself; nothing broader
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert "AF_NETLINK" in s["RestrictAddressFamilies"]
    assert "AF_PACKET" in s["RestrictAddressFamilies"]     # check arp (issue 14)


def test_watchdog_outlasts_the_heartbeat():
    from hoststated import parent
    s = service()
    # the parent's own heartbeat (a child silent HEARTBEAT_LIMIT) fails
    # stop first, with its line; systemd's watchdog is for a stuck parent,
    # which sends WATCHDOG=1 each HEARTBEAT_INTERVAL while all is well
    sec = int(s["WatchdogSec"].removesuffix("s"))
    assert sec > parent.HEARTBEAT_LIMIT + parent.HEARTBEAT_INTERVAL
    assert sec >= 3 * parent.HEARTBEAT_INTERVAL
    assert s["Restart"] == "on-failure"         # a watchdog kill is a failure


def test_bounding_set_is_what_the_drop_needs():
    caps = set(service()["CapabilityBoundingSet"].split())
    missing = {why: cap for why, cap in NEEDED.items() if cap not in caps}
    assert not missing, f"the unit's bounding set lacks {missing}"
    assert caps == set(NEEDED.values()), f"more than needed: {caps - set(NEEDED.values())}"
    src = (ROOT / "hoststated" / "privsep.py").read_text()
    # the calls the table speaks for are the ones privsep makes
    for call in ("prctl(PR_CAPBSET_DROP", "os.setgroups", "os.setresgid", "os.setresuid"):
        assert call in src


def test_descriptors_and_hardening_kept():
    s = service()
    # the control server allows 2048 clients; systemd's default soft limit is 1024
    assert int(s["LimitNOFILE"]) >= 65536
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID",
                "ProtectKernelModules", "RestrictNamespaces", "LockPersonality"):
        assert s[key] == "yes", key
    assert "User" not in s               # the parent is root; it drops in the children


def test_sysusers_file_names_the_default_user():
    entries = [line.split() for line in SYSUSERS.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ["u", model.DEFAULT_USER] == entries[0][:2]
    assert ["g", "hoststated", "-"] == entries[1]


def test_systemd_sysusers_creates_user_and_group(tmp_path):
    if not shutil.which("systemd-sysusers"):
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"],
                       input=SYSUSERS.read_text(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    passwd = {f[0]: f for f in (line.split(":") for line in
                                (tmp_path / "etc" / "passwd").read_text().splitlines())}
    group = {f[0]: f for f in (line.split(":") for line in
                               (tmp_path / "etc" / "group").read_text().splitlines())}
    _, _, uid, gid, _, _, shell = passwd[model.DEFAULT_USER]
    assert 0 < int(uid) < 1000 and shell.endswith("/nologin")      # a system user
    # its own group, not nobody's (65534) nor the socket's
    assert group[model.DEFAULT_USER][2] == gid and int(gid) != 65534
    assert "hoststated" in group and group["hoststated"][2] != gid
    assert group["hoststated"][3] == ""            # members are added by the admin
    shadow = (tmp_path / "etc" / "shadow").read_text()
    assert re.search(rf"^{model.DEFAULT_USER}:!\*?:", shadow, re.M)       # no login


def install_steps() -> str:
    readme = (ROOT / "README.md").read_text()
    steps = readme[readme.index("## Installing for real use"):]
    return steps[:steps.index("\n## ", 3)]


def test_readme_install_steps_create_the_user():
    steps = install_steps()
    assert "install -D -m 0644 etc/hoststated.sysusers /etc/sysusers.d/hoststated.conf" in steps
    assert "\nsystemd-sysusers\n" in steps
    assert "etc/hoststated.service" in steps


def test_readme_useradd_lines_create_the_same(tmp_path):
    """The README's commands for a machine without systemd, run as written
    (with --prefix into an empty tree)."""
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd are not installed")
    cmds = re.findall(r"`((?:useradd|groupadd) --system[^`]*)`", install_steps())
    assert [c.split()[0] for c in cmds] == ["useradd", "groupadd"]
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in ("passwd", "group", "shadow", "gshadow"):
        (etc / f).write_text("")
    for c in cmds:
        argv = c.split()
        r = subprocess.run([argv[0], "--prefix", str(tmp_path), *argv[1:]],
                           capture_output=True, text=True)
        assert r.returncode == 0, (c, r.stderr)
    passwd = dict(line.split(":", 1) for line in (etc / "passwd").read_text().splitlines())
    group = dict(line.split(":", 1) for line in (etc / "group").read_text().splitlines())
    uid, gid = passwd[model.DEFAULT_USER].split(":")[1:3]
    assert 0 < int(uid) < 1000 and passwd[model.DEFAULT_USER].endswith(":/usr/sbin/nologin")
    assert group[model.DEFAULT_USER].split(":")[1] == gid and "hoststated" in group


def test_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # the paths of this checkout, so that verify finds the programs
    bindir = Path(sys.executable).parent
    unit = tmp_path / "hoststated.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/", f"{bindir}/"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True)
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if "hoststated" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
