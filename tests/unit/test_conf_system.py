"""-n checks what the start needs of this machine (unless --no-lookup): the
run-as user, the socket's group and directory, the interfaces, the check
scripts, the files named; each at its place, none at line 0."""

from __future__ import annotations

import pytest

from hoststated.conf import model
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load, load_text

RDR = ("table <t> {{ 192.0.2.1 }}\nredirect r {{\n\tlisten on 192.0.2.9 port 80{listen}\n"
       "\tforward to <t> check {check}\n}}\n")
NO_USER = "hoststated-no-such-user"
NO_IF = "hsnosuch0"

def text(head: str = "", listen: str = "", check: str = "tcp") -> str:
    # a user this machine has, unless the test names one (the default
    # _hoststated may be missing here: that warning has its own test)
    tail = "" if "user" in head else 'user "nobody"\n'
    return head + RDR.format(listen=listen, check=check) + tail

def outcome(conf: str, lookup: bool = True) -> tuple[list[str], list[str]]:
    """(errors, warnings) as -n prints them."""
    warnings: list = []
    try:
        load_text(conf, "x.conf", lookup=lookup, warnings=warnings)
    except ConfigError as e:
        return [str(d) for d in e.diagnostics], []
    return [], [str(w) for w in warnings]

def test_user_that_does_not_exist_is_an_error():
    errs, _ = outcome(text(f'user "{NO_USER}"\n'))
    assert errs == [f"x.conf:1:1: user {NO_USER} does not exist (create it, or name an "
                    "existing one in 'user')"]
    assert outcome(text('user "nobody"\n')) == ([], [])
    assert outcome(text(f'user "{NO_USER}"\n'), lookup=False) == ([], [])

def test_the_default_user_missing_is_an_error_that_says_how_to_make_it(monkeypatch):
    # no fallback to nobody (faults-found 7.3): -n refuses, and so does the start
    monkeypatch.setattr(model, "DEFAULT_USER", NO_USER)
    assert model.FALLBACK_USER is None
    errs, warns = outcome(text(f'user "{NO_USER}"\n'))
    assert len(errs) == 1 and not warns, (errs, warns)
    assert errs[0].startswith(f"x.conf:1:1: user {NO_USER} does not exist: hce and pfe run "
                              "as a user of their own; create it with etc/hoststated.sysusers")
    for hint in ("systemd-sysusers", "/etc/sysusers.d/hoststated.conf",
                 f"useradd --system --user-group --no-create-home --home-dir / "
                 f"--shell /usr/sbin/nologin {NO_USER}"):
        assert hint in errs[0], errs


def test_without_a_user_line_the_default_user_is_needed():
    # ./run setup makes _hoststated; a machine without it gets the error at
    # line 0 (no `user` line to point at)
    errs, _ = outcome(RDR.format(listen="", check="tcp"))
    if pwd_has(model.DEFAULT_USER):
        assert errs == []
    else:
        assert len(errs) == 1 and errs[0].startswith(
            "x.conf: user _hoststated does not exist: hce and pfe run as a user of their "
            "own"), errs


def pwd_has(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_the_start_refuses_without_the_user(monkeypatch, tmp_path, capsys):
    import os
    from hoststated import cli, parent
    if os.geteuid() != 0:
        pytest.skip("the start needs root")
    monkeypatch.setattr(model, "DEFAULT_USER", NO_USER)
    conf = tmp_path / "h.conf"
    conf.write_text(text(f'user "{NO_USER}"\nsocket "{tmp_path}/h.sock"\n'))
    args = cli.parser().parse_args(["-d", "-f", str(conf)])
    assert parent.run(args) == 1
    err = capsys.readouterr().err
    assert f"user {NO_USER} does not exist" in err and "systemd-sysusers" in err, err
    assert not (tmp_path / "h.sock").exists()

def test_socket_group_and_directory():
    errs, _ = outcome(text('socket "/run/h.sock" group "hoststated-no-such-group"\n'))
    assert errs == ["x.conf:1:1: socket group hoststated-no-such-group does not exist "
                    "(groupadd --system it, or leave the group out)"]
    assert outcome(text('socket "/run/h.sock" group "root"\n')) == ([], [])
    errs, _ = outcome(text('socket "/nonexistent/dir/h.sock"\n'))
    assert errs == ["x.conf:1:1: socket /nonexistent/dir/h.sock: its directory "
                    "/nonexistent/dir does not exist"]
    errs, _ = outcome(text('socket restricted "/nonexistent/ro.sock"\n'))
    assert errs == ["x.conf:1:1: socket /nonexistent/ro.sock: its directory /nonexistent "
                    "does not exist"]

def test_interfaces():
    # an iifname match on a missing device is legal, and matches nothing yet
    errs, warns = outcome(text(listen=f' interface "{NO_IF}"'))
    assert not errs
    assert f"x.conf:3:2: warning: interface {NO_IF} does not exist (yet)" in warns[0]
    assert outcome(text(listen=' interface "lo"')) == ([], [])
    # nftables direct routing is a netdev chain on the device: it must exist
    conf = ("table <t> { 192.0.2.1 }\nredirect r {\n"
            f'\tlisten on 192.0.2.9 port 80 interface "lo"\n'
            f'\troute to <t> port 80 mode source-hash check tcp interface "{NO_IF}"\n}}\nuser "nobody"\n')
    errs, _ = outcome(conf)
    assert errs == [f"x.conf:4:2: interface {NO_IF} does not exist (the kernel rule "
                    "needs the device)"]
    assert outcome(conf.replace(NO_IF, "lo")) == ([], [])

def test_scripts(tmp_path):
    script = tmp_path / "check"
    errs, _ = outcome(text(check=f'script "{script}"'))
    assert errs == [f"x.conf:4:17: script {script}: No such file or directory"]
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    errs, _ = outcome(text(check=f'script "{script}"'))
    assert errs == [f"x.conf:4:17: script {script} is not executable (chmod +x it)"]
    script.chmod(0o755)
    assert outcome(text(check=f'script "{script}"')) == ([], [])
    errs, _ = outcome(text(check=f'script "{tmp_path}"'))
    assert errs == [f"x.conf:4:17: script {tmp_path}: not a regular file"]

def test_tls_files(tmp_path):
    ca = tmp_path / "ca.pem"
    conf = text(check=f'tls verify ca "{ca}"')
    errs, _ = outcome(conf)
    assert errs == [f"x.conf:4:34: ca file {ca}: cannot read: No such file or directory"]
    ca.write_text("x")
    assert outcome(conf) == ([], [])
    errs, _ = outcome(text(check=f'tls verify ca "{tmp_path}"'))
    assert errs == [f"x.conf:4:34: ca file {tmp_path}: cannot read: not a regular file"]

def test_no_diagnostic_at_line_zero():
    with pytest.raises(ConfigError) as e:
        load("/nonexistent/h.conf")
    assert str(e.value) == "/nonexistent/h.conf: cannot read: No such file or directory"

def test_none_of_it_under_no_lookup(tmp_path):
    conf = text(f'user "{NO_USER}"\nsocket "/nonexistent/h.sock" group "no-such-grp"\n',
                listen=f' interface "{NO_IF}"', check=f'script "{tmp_path}/none"')
    assert outcome(conf, lookup=False) == ([], [])
