"""Config input is bytes from a stranger (issue 19 item 7): what is not
UTF-8, not a regular file, or more than a config can be, is an error at its
place, at once, without a traceback or gigabytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoststated.conf import lexer, load as load_mod
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load, load_text

ROOT = Path(__file__).resolve().parents[2]
RDR = ("table <t> {{ 198.51.100.11 }}\nredirect \"r\" {{\n listen on 203.0.113.10 port 80\n"
       " forward to <t> check {check}\n}}\n")


def errors_of(path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(str(path), lookup=False, **kw)
    return [str(d) for d in e.value.diagnostics]


def test_a_byte_that_is_not_utf8_in_a_string(tmp_path):
    # faults-found reproducer 9: it passed -n, then a reload died in msgpack
    p = tmp_path / "min_surrogate.conf"
    p.write_bytes(RDR.format(check='send "\xff" expect "*"').encode("latin-1"))
    assert errors_of(p) == [f"{p}:4:29: byte 0xff in a string is not UTF-8 "
                            "(hoststated.conf is read as UTF-8)"]


@pytest.mark.parametrize("where", ["name", "check", "table"])
def test_not_utf8_anywhere_is_a_config_error(tmp_path, where):
    """The fuzz crash class (PydanticSerializationError in table_use)."""
    text = {"name": RDR.format(check="tcp").replace('"r"', '"w\xe9\xff"'),
            "check": RDR.format(check='http "/\xc3" code 200'),
            "table": RDR.format(check="tcp").replace("<t>", '<"t\xfe">')}[where]
    p = tmp_path / "bad.conf"
    p.write_bytes(text.encode("latin-1"))
    msgs = errors_of(p)
    assert any("is not UTF-8" in m and m.startswith(f"{p}:") for m in msgs), msgs


def test_a_define_that_is_not_utf8():
    text = 'x = "a"\ntable <t> { $x }\n'
    bad = b"\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.conf", lookup=False, defines={"x": bad})
    assert "x.conf:2:13: macro 'x': byte 0xff in a value is not UTF-8" in str(e.value)


def run(*args: str) -> subprocess.CompletedProcess:
    # the timeout only keeps a regression from hanging the suite
    return subprocess.run([sys.executable, "-m", "hoststated", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run("-n", "--no-lookup", "-f", str(fifo))
    assert (r.returncode, r.stderr) == (1, f"{fifo}: cannot read: not a regular file "
                                           "(a FIFO)\n")
    main = tmp_path / "main.conf"
    main.write_text(f'include "{fifo}"\ninclude "/dev/zero"\ninclude "{tmp_path}"\n')
    r = run("-n", "--no-lookup", "-f", str(main))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{main}:1:9: failed to include file {fifo}: not a regular file (a FIFO)",
        f"{main}:2:9: failed to include file /dev/zero: not a regular file "
        "(a character device)",
        f"{main}:3:9: failed to include file {tmp_path}: Is a directory"]


def test_includes_share_one_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(load_mod, "MAX_FILE", 1000)
    part = tmp_path / "part.conf"
    part.write_text("# " + "x" * 400 + "\n")
    main = tmp_path / "main.conf"
    main.write_text("".join(f'include "{part}"\n' for _ in range(4)))
    msgs = errors_of(main)
    # the top file and one part fit in 1000 bytes, the next ones do not
    assert msgs == [f"{main}:{n}:9: failed to include file {part}: File too large: with the "
                    "files before it, over 1,000 bytes" for n in (2, 3, 4)]


def test_macro_amplification_names_the_macro(monkeypatch):
    # faults-found §5 amp5k: 25 KB became 2.4 GB; here the same shape, smaller
    monkeypatch.setattr(lexer, "MAX_TOKENS", 10_000)
    text = 'x = "' + " ".join(["a"] * 500) + '"\n' + "table <t> { " + " ".join(["$x"] * 500) + " }\n"
    with pytest.raises(ConfigError) as e:
        load_text(text, "amp.conf", lookup=False)
    (d,) = e.value.diagnostics
    assert (d.line, d.message) == (2, "macro 'x': its expansions make more than 10,000 "
                                      "tokens; stopped reading here")
    # a statement at a time: the same (amp5k_stmt), with the budget the daemon has
    monkeypatch.setattr(lexer, "MAX_TOKENS", 1_000_000)
    text = 'x = "' + " ".join(["interval"] * 5000) + '"\n' + "$x\n" * 5000
    with pytest.raises(ConfigError) as e:
        load_text(text, "amp.conf", lookup=False)
    assert "macro 'x': its expansions make more than 1,000,000 tokens" in str(e.value)


def test_a_long_file_without_macros_is_cut_too(monkeypatch):
    monkeypatch.setattr(lexer, "MAX_TOKENS", 1000)
    with pytest.raises(ConfigError) as e:
        load_text("interval 10\n" * 600, "long.conf", lookup=False)
    assert str(e.value).endswith("the configuration has more than 1,000 tokens; "
                                 "stopped reading here")


def test_nv_prints_only_what_parses():
    """An unknown service name under --no-lookup was printed as `port 0`
    (relay) or `port None` (redirect), which -nv's reader refused."""
    text = ("table <t> { 192.0.2.1 }\nredirect r {\n\tlisten on 192.0.2.9 port nosuchsvc\n"
            "\tforward to <t> check tcp\n}\n"
            "relay l {\n\tlisten on 192.0.2.9 port nosuchsvc2\n\tforward to <t> port 80\n}\n")
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.conf", lookup=False)
    places = [(d.line, d.col) for d in e.value.diagnostics]
    assert (3, 2) in places and (7, 2) in places      # (and: relay l has no listener)
    assert "service name 'nosuchsvc' for port is not one hoststated knows" in str(e.value)
    # the names hoststated knows without /etc/services still do
    load_text(text.replace("nosuchsvc2", "http").replace("nosuchsvc", "https"), "x.conf",
              lookup=False)
