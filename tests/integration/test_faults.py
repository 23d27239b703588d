"""Issue 19's fault campaign: each attack of faults-found, where it is tested.

Bounded in time (each test stops what it starts within seconds to a minute),
in network namespaces (tests/lab.py), on the real daemon unless said. The
attack, then the test that reproduces it and asserts the outcome:

- kill -9 of hce, pfe, the parent under traffic: 0 failed requests, the
  kernel table kept and adopted by the restart:
  test_failstop.py::test_kill_9_leaves_the_kernel_and_the_restart_adopts_it;
  only a deliberate stop cleans: test_failstop.py::test_sigterm_to_the_whole_unit_is_a_deliberate_stop,
  test_daemon_nft.py::test_pfe_writes_the_kernel_and_cleans_up; planned restart:
  test_failstop.py::test_planned_restart_with_cleanstop_no_drops_nothing.
- SIGSTOP of a child (liveness, heartbeat): the daemon stops within ~4 s,
  the kernel kept, the restart adopts it: tests/integration/test_liveness.py;
  the watchdog stops with it: test_systemd_unit_live.py (WATCHDOG=1 absent once pfe is stopped).
- Descriptor exhaustion through the restricted socket (1,100 idle clients
  of uid 65534, soft NOFILE 1024): test_control_socket_live.py::test_idle_connections_of_a_local_user_take_nothing_down;
  the caps: test_control_socket_live.py::test_client_cap_refuses_the_rest_and_recovers,
  ::test_per_uid_cap_on_the_restricted_socket,
  ::test_accept_out_of_descriptors_pauses_instead_of_spinning; checks short
  of descriptors keep their hosts: ::test_checks_short_of_descriptors_keep_their_hosts.
- Reload storm (SIGHUP during a reload, the last edit runs):
  test_failstop.py::test_sighup_storm_ends_with_the_last_edit.
- `load` / include of a FIFO: test_failstop.py::test_load_of_a_fifo_is_refused_and_reloads_go_on,
  ::test_a_reload_stuck_in_a_read_does_not_hold_the_stop; `-n` on a FIFO:
  tests/unit/test_conf_load.py::test_a_fifo_is_refused_at_once, and here
  test_check_only_refuses_what_is_not_a_regular_file.
- `load /etc/shadow` (file disclosure): here, test_load_is_refused_to_a_member_of_the_socket_group
  and test_load_as_root_tells_places_not_the_file.
- The shared `nobody` user: here, test_children_run_as_their_own_user;
  -n and start without it: tests/unit/test_conf_system.py::test_the_default_user_missing_is_an_error_that_says_how_to_make_it,
  ::test_the_start_refuses_without_the_user.
- Config loader fuzz (seeded; 2,500 cases in CI, 100,000 in the benchmark
  bench/fuzz_conf.py): tests/unit/test_conf_fuzz.py::test_seeded_fuzz_campaign;
  hypothesis on top: the rest of tests/unit/test_conf_fuzz.py.
- Control decoder and IPC schema fuzz (seeded; 4,000 in CI, 100,000 in
  bench/fuzz_control.py): tests/unit/test_control_fuzz.py::test_seeded_control_fuzz_campaign;
  hostile input on a real socket: test_control_socket_live.py::test_hostile_input_leaves_no_traceback,
  ::test_json_after_whitespace_or_a_bom, ::test_errors_say_what_was_wrong;
  test_daemon.py::test_bad_input_on_the_socket.
- Imports after the privilege drop (0700 checkout, unreadable interpreter):
  test_failstop.py::test_daemon_from_a_0700_directory_checks_and_writes_the_kernel.
"""

from __future__ import annotations

import os
import pwd
import grp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, ROOT, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not root_ok() or not shutil.which("setpriv")
                                 or not shutil.which("groupadd"),
                                 reason="needs root, iproute2, setpriv and groupadd")]

CONFIG = """
interval 1
timeout 500
socket "{socket}"{group}
engine none
table <web> {{ 127.0.0.1 }}
redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 9 check tcp
}}
"""
SHADOW = "/etc/shadow"
NOBODY = 65534


def secrets() -> list[str]:
    """Pieces of /etc/shadow's first line that no reply or log may hold: its
    fields of 3 characters or more but the user's name (public, and "root"
    is in the refusal's text), and every 8 characters of the line."""
    first = Path(SHADOW).read_text().splitlines()[0]
    fields = [f for f in first.split(":")[1:] if len(f) >= 3]
    return fields + [first[i:i + 8] for i in range(len(first) - 7)]


@pytest.fixture
def group():
    """A throwaway group for the control socket, removed afterwards."""
    name = f"hsflt{os.getpid() % 100000}"
    subprocess.run(["groupadd", "--system", name], check=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False)


def ctl_as(uid: int, gid: int, groups: list[int], sock: str, *words: str):
    """hoststatectl as another user: `setpriv` with the given groups."""
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *extra,
                           PYTHON, "-m", "hoststatectl", "-s", sock, *words],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_load_is_refused_to_a_member_of_the_socket_group(lab, group):
    name, gid = group
    lb = lab.netns("lb")
    os.chmod(lab.tmp, 0o711)              # the group's member must reach the socket
    d = lab.daemon(lb, CONFIG.replace("{group}", f' group "{name}"'))
    st = os.stat(d.socket)
    assert (st.st_mode & 0o777, st.st_gid) == (0o660, gid)
    # the member may use the socket (so the refusal is about load, not access)
    r = ctl_as(NOBODY, NOBODY, [gid], d.socket, "show", "summary")
    assert r.returncode == 0, r.stderr
    r = ctl_as(NOBODY, NOBODY, [gid], d.socket, "load", SHADOW)
    assert r.returncode == 4, (r.stdout, r.stderr)
    told = r.stdout + r.stderr
    assert (f"load: only root may load a file, which the daemon reads as root (this "
            f"client runs as uid {NOBODY})") in told, told
    # the member's reload of the daemon's own file is still allowed
    r = ctl_as(NOBODY, NOBODY, [gid], d.socket, "reload")
    assert r.returncode == 0, (r.stdout, r.stderr)
    log = d.read_log()
    assert f"reloading {SHADOW}" not in log, log
    for s in secrets():
        assert s not in told and s not in log, s
    # someone outside the group cannot connect at all
    r = ctl_as(NOBODY, NOBODY, [], d.socket, "load", SHADOW)
    assert r.returncode != 0 and "Permission denied" in r.stderr, (r.stdout, r.stderr)


def test_load_as_root_tells_places_not_the_file(lab):
    lb = lab.netns("lb")
    d = lab.daemon(lb, CONFIG.replace("{group}", ""))
    r = d.ctl("load", SHADOW, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    told = r.stdout + r.stderr
    assert f"{SHADOW}:1:1: unknown keyword ...; expected one of ..." in told, told
    assert f"`hoststated -n -f {SHADOW}` shows it" in told, told
    wait_for(lambda: "reload failed" in d.read_log(), 10, what="the failed load in the log")
    log = d.read_log()
    assert f"{SHADOW}:1:1: unknown keyword ...;" in log, log
    for s in secrets():
        assert s not in told, (s, told)
        assert s not in log, (s, log)
    # the daemon's own file, written by the operator: its errors in full
    d.conf.write_text(d.conf.read_text() + "operatorsword\n")
    r = d.ctl("reload", timeout=60)
    assert r.returncode == 1
    assert f"{d.conf}:11:1: unknown keyword 'operatorsword'" in r.stdout + r.stderr, \
        (r.stdout, r.stderr)
    # and the daemon still runs its first config
    assert d.json("show", "summary")["generation"] == 1


def test_children_run_as_their_own_user(lab):
    user = pwd.getpwnam("_hoststated")            # ./run setup makes it
    assert user.pw_uid != NOBODY
    lb = lab.netns("lb")
    d = lab.daemon(lb, CONFIG.replace("{group}", ""))
    roles = d.roles()
    assert set(roles) == {"hce", "pfe"}

    def ids(pid: int) -> tuple[set[str], set[str]]:
        st = dict(ln.split(":\t", 1) for ln in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":\t" in ln)
        return set(st["Uid"].split()), set(st["Gid"].split())
    want = ({str(user.pw_uid)}, {str(user.pw_gid)})
    for pid in roles.values():
        # hce answers the control socket while pfe may still be importing
        # as root before its drop: wait for the drop, then it must be this
        d.wait_for(lambda: ids(pid) == want or ids(pid)[0] != {"0"}, 10,
                   what=f"the drop of pid {pid}")
        assert ids(pid) == want, ids(pid)
    assert f"running children as _hoststated (uid {user.pw_uid})" in d.read_log()
    # a process of nobody's cannot signal them
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        "kill", "-0", str(roles["pfe"])], capture_output=True, text=True)
    assert r.returncode != 0, r.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_check_only_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = {"fifo": tmp_path / "f", "directory": tmp_path, "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    # -n must not block on it (a FIFO's open() would wait for a writer)
    r = subprocess.run([PYTHON, "-m", "hoststated", "-n", "-f", str(path)], capture_output=True,
                       text=True, timeout=30, cwd=str(ROOT),
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1
    want = {"fifo": "not a regular file (a FIFO)", "directory": "Is a directory",
            "device": "not a regular file (a character device)"}[kind]
    assert r.stderr == f"{path}: cannot read: {want}\n", r.stderr
