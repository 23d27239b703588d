"""etc/hoststated.service: what the unit promises (readiness, reload by
SIGHUP, the capabilities the privilege split needs), and systemd's own
verifier finds nothing wrong with it."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "etc" / "hoststated.service"


def service() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def test_promises():
    s = service()
    assert s["Type"] == "notify" and s["NotifyAccess"] == "all"
    assert s["ExecReload"].endswith("kill -HUP $MAINPID")
    assert " -d " in s["ExecStart"] and " -n " in s["ExecStartPre"]
    caps = set(s["CapabilityBoundingSet"].split())
    # pfe's CAP_NET_ADMIN, ICMP's raw sockets, the drop itself; nothing broader
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert "AF_NETLINK" in s["RestrictAddressFamilies"]


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
