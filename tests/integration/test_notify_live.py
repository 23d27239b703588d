"""Issue 14 item 1 end to end: the real daemon (engine none) in a namespace
with real backends on its own addresses, a real notify script writing
what it was given, a notify command that hangs, and a real MTA (exim4, as
tests/integration/test_protocols_smtp.py runs it) receiving the alert mail.

- a host going down, its table going down and the redirect falling back
  to its backup table, then coming back: each runs the command, as the
  unprivileged user, with the arguments and HOSTSTATED_* environment;
- the hanging command is killed at its timeout and logged, and the checks
  go on (the states after it are still told);
- the mail reaches exim: recipients, From, the events, and the repeat
  while a host stays down (`every`);
- an SMTP relay that refuses connections: logged, nothing else happens.
"""

from __future__ import annotations

import json
import mailbox
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import Lab, in_netns, usable, wait_for  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable(), reason="needs root and ip")]

MAIN = ("198.51.100.61", "198.51.100.62")
SORRY = "198.51.100.63"
EXIM_PORT = 2525
DEAD_PORT = 2526

EXIM = """\
primary_hostname = mx.example.test
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
spool_directory = {dir}/spool
log_file_path = {dir}/%slog
exim_user = root
exim_group = root
never_users =
keep_environment =
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
  accept
begin routers
everyone:
  driver = accept
  transport = mbox
begin transports
mbox:
  driver = appendfile
  file = {dir}/mbox
  user = nobody
"""

HOOK = """#!/bin/sh
python3 -c 'import json, os, sys; print(json.dumps({"uid": os.getuid(), "argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("HOSTSTATED_")}}))' "$@" >> %s
"""

CONFIG = """\
socket "{socket}"
engine none
interval 1
timeout 500
notify command "{tmp}/hook.sh"
notify command "{tmp}/hang.sh" on down timeout 300
alert mail to "ops@example.test, oncall@example.test" from "lb@example.test" via 127.0.0.1 port {mailport} every 2 on all
table <web> {{ 198.51.100.61, 198.51.100.62 }}
table <sorry> {{ 198.51.100.63 }}
redirect "www" {{
	listen on 203.0.113.61 port 80
	forward to <web> port 80 check tcp
	forward to <sorry> port 80 check tcp
}}
"""


@pytest.fixture(scope="module")
def world():
    if shutil.which("exim4") is None:
        pytest.skip("not installed: exim4 (tools/apt/protocols.txt)")
    with Lab(prefix="nt-ntf") as lab:
        ns = lab.netns("d")
        lab.addr(ns, "lo", *(f"{a}/32" for a in (*MAIN, SORRY)))
        lab.tmp.chmod(0o755)             # hce, unprivileged, runs the hooks from here
        out = lab.tmp / "out"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        for name, text in (("hook.sh", HOOK % (out / "events")),
                           ("hang.sh", "#!/bin/sh\nsleep 600\n")):
            p = lab.tmp / name
            p.write_text(text)
            p.chmod(0o755)
        mail = lab.tmp / "mail"
        (mail / "spool").mkdir(parents=True)
        mail.chmod(0o777)                # exim delivers as nobody (never as root)
        conf = mail / "exim.conf"
        conf.write_text(EXIM.format(port=EXIM_PORT, dir=mail))
        lab.spawn("exim4", "-C", str(conf), "-bdf", ns=ns)
        wait_for(lambda: "daemon started" in (mail / "mainlog").read_text(), 20,
                 what="exim listening")
        servers = {a: lab.http(ns, a, 80) for a in (*MAIN, SORRY)}
        yield lab, ns, out / "events", mail / "mbox", servers


def events(path: Path) -> list[dict]:
    """What the hook was given, in the daemon's order (HOSTSTATED_SEQ):
    commands for different objects run at once and may end in any order."""
    try:
        return sorted((json.loads(line) for line in path.read_text().splitlines()),
                      key=lambda e: int(e["env"]["HOSTSTATED_SEQ"]))
    except FileNotFoundError:
        return []


def said(evs: list[dict]) -> list[tuple]:
    return [tuple(e["argv"][:4]) for e in evs]


def wait_events(d, evfile: Path, want: list[tuple]) -> None:
    try:
        wait_for(lambda: said(events(evfile)) == want, 30)
    except AssertionError:
        raise AssertionError(f"events: want {want}, got {said(events(evfile))}; log:\n"
                             + "\n".join(ln for ln in d.read_log().splitlines()
                                         if "alert mail" not in ln)[-3000:]) from None


def test_commands_and_mail(world):
    lab, ns, evfile, mbox, servers = world
    d = lab.daemon(ns, CONFIG.replace("{mailport}", str(EXIM_PORT)), name="notify.conf")
    try:
        d.wait_statuses({a: "up" for a in (*MAIN, SORRY)})
        # found up at the start: no news
        assert events(evfile) == []
        lab.stop(servers.pop(MAIN[0]))
        d.wait_statuses({MAIN[0]: "down"})
        lab.stop(servers.pop(MAIN[1]))
        want = [("host", MAIN[0], "up", "down"), ("host", MAIN[1], "up", "down"),
                ("table", "web:80", "up", "down"), ("redirect", "www", "up", "backup")]
        wait_events(d, evfile, want)
        servers[MAIN[1]] = lab.http(ns, MAIN[1], 80)
        want += [("host", MAIN[1], "down", "up"), ("table", "web:80", "down", "up"),
                 ("redirect", "www", "backup", "up")]
        wait_events(d, evfile, want)

        evs = events(evfile)
        assert all(e["uid"] != 0 for e in evs), evs          # unprivileged
        host = evs[1]
        assert host["argv"][4].startswith("tcp connect"), host
        env = host["env"]
        assert (env["HOSTSTATED_EVENT"], env["HOSTSTATED_NAME"], env["HOSTSTATED_HOST"],
                env["HOSTSTATED_ADDRESS"], env["HOSTSTATED_PORT"], env["HOSTSTATED_TABLE"],
                env["HOSTSTATED_REDIRECT"], env["HOSTSTATED_OLD"], env["HOSTSTATED_NEW"]) == (
            "host", MAIN[1], MAIN[1], MAIN[1], "80", "web:80", "www", "up", "down")
        assert env["HOSTSTATED_REASON"] == host["argv"][4]
        fallback = evs[3]["env"]
        assert (fallback["HOSTSTATED_EVENT"], fallback["HOSTSTATED_TABLE"],
                fallback["HOSTSTATED_NEW"]) == ("redirect", "sorry:80", "backup")
        assert "backup table sorry:80 up" in fallback["HOSTSTATED_REASON"]

        # the hanging command: killed at its timeout, logged; checks went on
        d.wait_for(lambda: d.read_log().count("hang.sh") >= 4, 30, what="hang.sh killed")
        assert "killed after 300 ms" in d.read_log()

        # the mail: the events, to both recipients, from lb@, and again while down
        def mail() -> str:
            """Each message exim delivered: its headers and decoded body."""
            if not mbox.exists():
                return ""
            out = []
            for m in mailbox.mbox(str(mbox)):
                out.append("".join(f"{k}: {v}\n" for k, v in m.items()))
                out.append(m.get_payload(decode=True).decode())
            return "\n".join(out)
        d.wait_for(lambda: "redirect www (backup table sorry:80) backup (was up)" in mail()
                   and "redirect www up (was backup)" in mail(), 60, what="alert mail")
        d.wait_for(lambda: f"host {MAIN[0]} (table web:80, redirect www) still down since"
                   in mail(), 60, what="a repeated alert")
        text = mail()
        assert "From: lb@example.test" in text
        assert "To: ops@example.test, oncall@example.test" in text
        assert f"host {MAIN[1]} (table web:80, redirect www) down (was up): tcp connect" \
            in text
        mainlog = (mbox.parent / "mainlog").read_text()
        assert "ops@example.test" in mainlog and "oncall@example.test" in mainlog
        assert "alert mail sent to ops@example.test, oncall@example.test" in d.read_log()
        assert d.proc.poll() is None
    finally:
        d.stop()
        lab.daemons.remove(d)
        # every backend serving again for the next test, whatever this one
        # stopped before it failed (setdefault's argument started a second
        # server on a taken port even when the first still ran)
        for a in (*MAIN, SORRY):
            if a not in servers:
                servers[a] = lab.http(ns, a, 80)


def test_dead_relay_is_logged(world):
    lab, ns, evfile, mbox, servers = world
    d = lab.daemon(ns, CONFIG.replace("{mailport}", str(DEAD_PORT)), name="dead.conf")
    try:
        d.wait_statuses({a: "up" for a in (*MAIN, SORRY)})
        lab.stop(servers.pop(SORRY))
        d.wait_for(lambda: f"via 127.0.0.1 port {DEAD_PORT}: not sent" in d.read_log(), 30,
                   what="the failed mail logged")
        servers[SORRY] = lab.http(ns, SORRY, 80)
        d.wait_statuses({SORRY: "up"})
        assert d.proc.poll() is None
    finally:
        d.stop()
        lab.daemons.remove(d)
