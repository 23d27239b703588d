"""A file loaded through the control socket (`hoststatectl load FILE`, read by
the root parent) is told by place and kind of error only: nothing of its text
reaches the client or the log (faults-found 3.6)."""

from __future__ import annotations

import logging
import random
import re

import pytest

from hoststated.conf import errors, load as conf_load
from hoststated.conf.errors import HIDDEN, VOCAB, ConfigError, Diagnostic, redact
from hoststated.conf.load import MAX_PRIVATE, load

SHADOW = ("root:$6$SECRETHASHabc$xyzzyplugh:19000:0:99999:7:::\n"
          "daemon:*:19000:0:99999:7:::\n"
          "mysecretpassword\n")

# what redact() may return: VOCAB's words, the placeholder, spaces and :;,()-
_ALLOWED = re.compile(r"(?:[A-Za-z]+|\.\.\.|[\s:;,()\-])*")


def shape_only(text: str) -> bool:
    return bool(_ALLOWED.fullmatch(text)) and all(
        w in VOCAB for w in re.findall(r"[A-Za-z]+", text))


def pieces(text: str, n: int = 6) -> set[str]:
    """Every piece of `text` of n characters: none may be told."""
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def test_redact_keeps_the_kind_and_drops_the_words():
    assert redact("unknown keyword 'root:*:20228:0:99999:7:::'; expected one of 'agentx', "
                  "'cleanstop', 'engine'") == "unknown keyword ...; expected one of ..."
    assert redact("user xyzzy does not exist (create it, or name an existing one in 'user')") \
        == "user ... does not exist (create it, or name an existing one in ..."
    assert redact("invalid interval: 0 (must be at least 1 s)") == \
        "invalid interval: ... (must be at least ..."
    assert redact("table <web> has no hosts") == "table ... has no hosts"
    assert redact("failed to include file /etc/x y: No such file or directory") == \
        "failed to include file ...: No such file or directory"
    assert redact("") == redact("$6$abc") == "error"


def test_redact_never_returns_anything_but_its_vocabulary():
    rng = random.Random(19)
    alphabet = "abcxyz ABC'\"<>{}:;,.()-_/$*0123456789\t\n\udcff\x00é"
    words = sorted(VOCAB) + ["root", "secret", "$6$", "99999"]
    for _ in range(3000):
        parts = [rng.choice(words) if rng.random() < 0.5 else
                 "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
                 for _ in range(rng.randint(0, 12))]
        msg = " ".join(parts)
        out = redact(msg)
        assert shape_only(out), (msg, out)
        assert HIDDEN + " " + HIDDEN not in out and HIDDEN + HIDDEN not in out, out


def test_a_loaded_secret_file_is_told_by_place_only(tmp_path, caplog):
    f = tmp_path / "fake-shadow"
    f.write_text(SHADOW)
    f.chmod(0o600)
    with pytest.raises(ConfigError) as e:
        load(str(f), lookup=False, private=True)
    text = str(e.value)
    lines = text.splitlines()
    assert lines[0] == f"{f}:1:1: unknown keyword ...; expected one of ..."
    assert lines[1] == f"{f}:2:1: unknown keyword ...; expected one of ..."
    assert lines[2] == f"{f}:3:1: unknown keyword ...; expected one of ..."
    assert lines[-1] == (f"{f}: loaded through the control socket, so the file's text is "
                         f"not shown: `hoststated -n -f {f}` shows it")
    told = text.replace(str(f), "")
    for secret in pieces(SHADOW.replace("\n", " ")):
        assert secret not in told, secret
    assert not caplog.records
    # the same file from the command line (-n, the daemon's own config): in full
    with pytest.raises(ConfigError) as e:
        load(str(f), lookup=False)
    assert "SECRETHASHabc" in str(e.value) and "mysecretpassword" in str(e.value)


def test_a_long_file_makes_at_most_max_private_lines(tmp_path):
    f = tmp_path / "words"
    f.write_text("".join(f"word{i}\n" for i in range(500)))
    with pytest.raises(ConfigError) as e:
        load(str(f), lookup=False, private=True)
    lines = str(e.value).splitlines()
    assert len(lines) == MAX_PRIVATE + 2, lines
    assert re.fullmatch(rf"{re.escape(str(f))}: and \d+ more errors", lines[-2]), lines
    for ln in lines[:MAX_PRIVATE]:
        where, _, what = ln.partition(": ")
        assert re.fullmatch(rf"{re.escape(str(f))}:\d+:\d+", where), ln
        assert shape_only(what), ln


def test_an_include_is_not_named_nor_quoted(tmp_path):
    inner = tmp_path / "secret-name-7f3a.conf"
    inner.write_text("hunter2isthepassword\n")
    top = tmp_path / "top.conf"
    top.write_text(f'include "{inner}"\nnosuchword-abc\n')
    with pytest.raises(ConfigError) as e:
        load(str(top), lookup=False, private=True)
    text = str(e.value)
    assert f"{top} (an include):1:1: unknown keyword ...; expected one of ..." in text, text
    assert f"{top}:2:1: unknown keyword ...; expected one of ..." in text, text
    for secret in ("secret-name", "7f3a", "hunter2", "nosuchword"):
        assert secret not in text, text


def test_warnings_of_a_loaded_file_are_redacted_too(tmp_path, caplog):
    # an unused table is a warning that names it
    f = tmp_path / "w.conf"
    f.write_text("table <secretname> { 192.0.2.1 }\ntable <t> { 192.0.2.2 }\nredirect r {\n"
                 "\tlisten on 192.0.2.9 port 80\n\tforward to <t> check tcp\n}\n")
    told: list = []
    load(str(f), lookup=False, warnings=told)
    assert any("secretname" in str(w) for w in told), told      # from the command line
    told = []
    load(str(f), lookup=False, warnings=told, private=True)
    assert told and all("secretname" not in str(w) and w.warning for w in told), told
    with caplog.at_level(logging.WARNING, logger="hoststated.conf"):
        load(str(f), lookup=False, private=True)
    assert caplog.records and all("secretname" not in r.getMessage() for r in caplog.records)


def test_a_bug_while_loading_does_not_leak_its_message(tmp_path, monkeypatch):
    f = tmp_path / "x.conf"
    f.write_text("interval 1\n")

    def boom(*a, **kw):
        raise ValueError("the text of the file: s3cr3t")
    monkeypatch.setattr(conf_load, "_load", boom)
    with pytest.raises(ConfigError) as e:
        load(str(f), lookup=False, private=True)
    assert str(e.value) == f"{f}: internal error (ValueError) while reading it"
    with pytest.raises(ValueError):
        load(str(f), lookup=False)             # the command line still sees the bug


def test_a_file_that_cannot_be_read_says_why(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "none"), lookup=False, private=True)
    assert str(e.value) == f"{tmp_path / 'none'}: cannot read: No such file or directory"


def test_redacted_diagnostic_keeps_its_place():
    d = Diagnostic("/x/a.conf", 3, 7, "unknown keyword 'pw'")
    assert str(d.redacted("/x/a.conf")) == "/x/a.conf:3:7: unknown keyword ..."
    assert str(d.redacted("/x/top.conf")) == "/x/top.conf (an include):3:7: unknown keyword ..."
    assert errors.redact is redact
