"""hoststated -n / -nv / -D / --no-lookup, the etc/ examples and golden printouts."""

from __future__ import annotations

import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from hoststated.cli import main, parser
from hoststated.conf import model
from hoststated.conf.load import load, load_text
from hoststated.conf.printconf import print_config

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ETC = sorted((ROOT / "etc").glob("*.conf"))
GOLDEN = HERE / "golden"
GOLDEN_SOURCES = {p.stem: p for p in ETC}
GOLDEN_SOURCES.update({
    # (01 has rules the relay does not carry out yet: test_conf_corpus)
    "corpus-24": HERE / "corpus" / "24-adyxax-www.conf",
    "corpus-10": HERE / "corpus" / "10-josegpt-alphabet.conf",
    "corpus-34": HERE / "corpus" / "34-evyatar9-Writeups-CrossFitTwo.conf",
})


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoststated", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("path", ETC, ids=[p.name for p in ETC])
def test_etc_example_checks(path):
    r = run("-n", "--no-lookup", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "configuration OK"
    assert r.stdout == ""


@pytest.mark.parametrize("path", ETC, ids=[p.name for p in ETC])
def test_etc_example_checks_with_lookups(path, tmp_path):
    """What a fresh machine has after `./run setup` (which makes the user
    _hoststated, as the install steps do): the examples name no group,
    script, interface or file that it lacks (a copy readable only by root,
    as it would be installed). Without the user, that is the one error."""
    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    copy.chmod(0o600)
    r = run("-n", "-f", str(copy))
    lines = r.stderr.strip().splitlines()
    if not user_exists(model.DEFAULT_USER):
        errors = [x for x in lines if "warning:" not in x]
        assert r.returncode == 1 and len(errors) == 1, lines
        assert "user _hoststated does not exist" in errors[0], lines
        assert "systemd-sysusers" in errors[0] and "useradd --system" in errors[0], lines
        return
    assert r.returncode == 0, r.stderr
    assert lines[-1] == "configuration OK"
    # (issue 14: the director's sysctls are this machine's too; pfe sets them)
    assert all("warning: interface eth0 does not exist (yet)" in x
               or ": pfe sets it to 1 at start" in x for x in lines[:-1]), lines


@pytest.mark.parametrize("name", sorted(GOLDEN_SOURCES))
def test_golden_printout(name, tmp_path):
    path = GOLDEN_SOURCES[name]
    if name.startswith("corpus-"):
        # relayd's configs are pf's (see test_conf_corpus.as_pf)
        wrapper = tmp_path / "pf.conf"
        wrapper.write_text(f'engine pf\ninclude "{path}"\n')
        path = wrapper
    # the language (corpus files use relay features not run yet)
    config = load(str(path), lookup=False, runnable=False)
    text = print_config(config)
    assert text == (GOLDEN / f"{name}.conf").read_text()
    # the printout parses to the same model (but for places) and prints the same
    again = load_text(text, "golden", lookup=False, runnable=False)
    assert print_config(again) == text
    strip = {"templates": {"__all__": {"where": True, "hosts": {"__all__": {"where"}}}},
             "redirects": {"__all__": {"where"}}, "relays": {"__all__": {"where"}},
             "protocols": {"__all__": {"where"}}, "routers": {"__all__": {"where"}}}
    assert again.model_dump(exclude=strip) == config.model_dump(exclude=strip)


def test_nv_prints_config_and_ok():
    r = run("-nv", "--no-lookup", "-f", str(ROOT / "etc" / "ipvs-dr.conf"))
    assert r.returncode == 0
    assert r.stdout == (GOLDEN / "ipvs-dr.conf").read_text()
    assert "configuration OK" in r.stderr


def test_errors_exit_1_no_traceback(tmp_path):
    p = tmp_path / "bad.conf"
    # a user this machine has: the default may be missing here (its own test)
    p.write_text('interval x\nfoo\nuser "nobody"\n')
    r = run("-n", "-f", str(p))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{p}:1:10: ")
    assert lines[1].startswith(f"{p}:2:1: unknown keyword 'foo'")


def test_define_overrides_file(tmp_path):
    p = tmp_path / "d.conf"
    p.write_text('addr = "192.0.2.1"\ntable <t> { $addr }\n'
                 "redirect r {\n\tlisten on 192.0.2.9 port 80\n\tforward to <t> check icmp\n}\n")
    r = run("-nv", "--no-lookup", "-D", "addr=192.0.2.77", "-f", str(p))
    assert r.returncode == 0, r.stderr
    assert '"192.0.2.77"' in r.stdout and '"192.0.2.1"' not in r.stdout


def test_default_file_and_argument_names():
    a = parser().parse_args([])
    assert a.config_file == "/etc/hoststated.conf"
    a = parser().parse_args(["-dvv", "-D", "a=b", "-D", "c=d=e", "-f", "x", "--no-lookup",
                             "--role", "hce", "--ipc-fd", "5"])
    assert (a.debug, a.verbose, a.defines, a.config_file, a.no_lookup, a.role, a.ipc_fd) == \
        (True, 2, {"a": "b", "c": "d=e"}, "x", True, "hce", 5)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["-V"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("hoststated ")


def test_missing_config_file():
    r = run("-n", "-f", "/nonexistent/hoststated.conf")
    assert r.returncode == 1
    # no place inside the file: no line 0 either
    assert r.stderr.startswith("/nonexistent/hoststated.conf: cannot read: "
                               "No such file or directory\n")


def test_no_lookup_skips_names_but_reads_includes(tmp_path):
    (tmp_path / "part.conf").write_text("table <t> { www.example.invalid }\n")
    p = tmp_path / "main.conf"
    p.write_text('include "part.conf"\nredirect r {\n\tlisten on 192.0.2.9 port 80\n'
                 '\tforward to <t> check script "/nonexistent/check"\n}\n')
    assert run("-n", "--no-lookup", "-f", str(p)).returncode == 0
    r = run("-n", "-f", str(p))
    assert r.returncode == 1 and "cannot resolve" in r.stderr


def test_missing_protocol_package(tmp_path, monkeypatch, capsys):
    """A check whose client library is not installed: an error where the
    daemon is to run, a warning under --no-lookup. (The test venv has every
    library, so the check names one that no machine has.)"""
    from hoststated import cli
    from hoststated.conf import model
    monkeypatch.setitem(model.PACKAGES, "dns", ("hoststated_no_such_module", "dnspython"))
    p = tmp_path / "dns.conf"
    p.write_text('table <ns> { 127.0.0.1 }\nredirect "dns" {\n\tlisten on 127.0.0.1 port 53\n'
                 '\tforward to <ns> check dns "www.example.test"\n}\nuser "nobody"\n')
    assert cli.main(["-n", "-f", str(p)]) == 1
    err = capsys.readouterr().err
    # at the check that needs it (the package table is conf.model's, so the
    # parent learns of it through load() and never imports hoststated.checks)
    assert f"{p}:4:18: check dns needs the Python package dnspython" in err
    assert "hoststated[protocols]" in err and "configuration OK" not in err
    assert cli.main(["-n", "--no-lookup", "-f", str(p)]) == 0
    err = capsys.readouterr().err
    assert f"{p}:4:18: warning: check dns needs the Python package dnspython" in err
    monkeypatch.setitem(model.PACKAGES, "dns", ("dns.message", "dnspython"))
    assert cli.main(["-n", "-f", str(p)]) == 0
    assert "needs the Python package" not in capsys.readouterr().err
