"""Every relayd.conf of the corpus is accepted, or refused at the right place.

Which files relayd itself accepts, and why the others fail, is in
corpus/SOURCES.md.  Lookups are off: the corpus names hosts of other people.

They are relayd's, written for pf: each is read as `engine pf` (a wrapper
that sets it and includes the file, so every place is still the file's);
under the default nftables, their `pftag` would be refused, rightly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load
from hoststated.conf.printconf import print_config, print_rule

CORPUS = Path(__file__).parent / "corpus"

ACCEPTED = ["01", "06", "07", "09", "10", "11", "13", "15", "16", "19", "21", "22", "23",
            "24", "27", "29", "31", "32", "34"]

# placeholders a file leaves for its reader to fill in, given as -D would
DEFINES = {"16": {"myapp1_port": "3001", "myapp2_port": "3002"}}

# file -> (line of the first error, words the message must hold)
REFUSED = {
    "02": (30, "pftag"),                 # tag RELAYD in a redirect
    "03": (17, "angle brackets"),        # hoststated tables
    "04": (18, "angle brackets"),
    "05": (30, "pftag"),
    "08": (15, "log state changes"),     # log updates
    "12": (10, "failed to include file"),
    "14": (23, "failed to include file"),
    "17": (27, "must be a string"),      # relay_http_port = 80
    "18": (7, "log state changes"),
    "20": (14, "failed to include file"),
    "25": (25, "failed to include file"),
    "26": (17, "failed to include file"),
    "28": (25, "session cache"),
    "30": (6, "macro 'wg_tcenter' not defined"),
    "33": (36, "unexpected '<'"),        # ext_inet="<ipaddr>" lexed again
}


def corpus_file(num: str) -> Path:
    (path,) = CORPUS.glob(f"{num}-*.conf")
    return path


def as_pf(path: Path, tmp: Path) -> str:
    """A config that is `engine pf` plus the file, included."""
    wrapper = tmp / f"pf-{path.name}"
    wrapper.write_text(f'engine pf\ninclude "{path}"\n')
    return str(wrapper)


def test_every_corpus_file_is_classified():
    nums = {p.name[:2] for p in CORPUS.glob("[0-9][0-9]-*.conf")}
    assert nums == set(ACCEPTED) | set(REFUSED)


@pytest.mark.parametrize("num", ACCEPTED)
def test_accepted(num, tmp_path):
    # the language: the relay features not run yet are not refused here
    config = load(as_pf(corpus_file(num), tmp_path), lookup=False,
                  defines=DEFINES.get(num), runnable=False)
    # and the canonical form reads back the same
    text = print_config(config)
    from hoststated.conf.load import load_text
    again = load_text(text, "printed", lookup=False, runnable=False)
    assert print_config(again) == text


@pytest.mark.parametrize("num", ACCEPTED)
def test_what_does_not_run_yet_is_refused_at_its_place(num, tmp_path):
    """As -n reads them: a file whose relays use what the relays do not do
    yet is refused, each error at a relay or protocol of the file and
    saying so; the others load."""
    path = corpus_file(num)
    try:
        load(as_pf(path, tmp_path), lookup=False, defines=DEFINES.get(num))
    except ConfigError as e:
        for d in e.diagnostics:
            assert "not supported" in d.message, str(d)
            assert d.file == str(path) and d.line > 0, str(d)
            line = path.read_text().splitlines()[d.line - 1]
            assert re.match(r"\s*(relay|(tcp |http |dns )?protocol)\b", line), (str(d), line)


@pytest.mark.parametrize("num", sorted(REFUSED))
def test_refused_with_place(num, tmp_path):
    path = corpus_file(num)
    with pytest.raises(ConfigError) as e:
        load(as_pf(path, tmp_path), lookup=False)
    first = e.value.diagnostics[0]
    line, words = REFUSED[num]
    assert first.file == str(path)
    assert first.line == line, str(e.value)
    assert words in first.message, str(e.value)
    assert re.match(rf"{re.escape(str(path))}:{line}:\d+: ", str(first))


def test_placeholder_port_is_refused(tmp_path):
    """16's `port $myapp1_port` is "XXXXX" as shipped: no port (relayd too
    refuses it); -nv would have printed it as `port 0`."""
    path = corpus_file("16")
    with pytest.raises(ConfigError) as e:
        load(as_pf(path, tmp_path), lookup=False)
    assert [(d.line, d.col) for d in e.value.diagnostics] == [(61, 23), (62, 23)]
    assert all("service name 'XXXXX' for port is not one hoststated knows" in d.message
               for d in e.value.diagnostics)


def test_include_with_fragments(tmp_path):
    """14 includes 14a, which includes 14c, 14d and a tls fragment."""
    frag = CORPUS / "include-fragments"
    main = corpus_file("14").read_text()
    main = main.replace('"/etc/relayd.conf.relay.https"', '"relay.https"')
    (tmp_path / "main.conf").write_text("engine pf\n" + main)
    https = (frag / "14a-s-schmidbauer-jupiter-relay.https.conf").read_text()
    https = (https.replace('"/etc/relayd.conf.caching"', '"caching"')
             .replace('"/etc/relayd.conf.secureheaders"', '"secureheaders"')
             .replace('"/etc/relayd.conf.tls.HIGHER"', '"tls.HIGHER"'))
    (tmp_path / "relay.https").write_text(https)
    (tmp_path / "caching").write_text(
        (frag / "14c-s-schmidbauer-jupiter-caching.conf").read_text())
    (tmp_path / "secureheaders").write_text(
        (frag / "14d-s-schmidbauer-jupiter-secureheaders.conf").read_text())
    # 14e is not in the corpus: a stand-in of the same shape
    (tmp_path / "tls.HIGHER").write_text(
        'tls ciphers "ECDHE-ECDSA-AES256-GCM-SHA384"  # strong\n'
        'tls ecdhe "P-384,P-256,X25519" # curves\n')
    # its tag, block and url rules are carried out: it loads, with a piece of
    # every fragment (their rules at their places)
    config = load(str(tmp_path / "main.conf"), lookup=False)
    (proto,) = [p for p in config.protocols if p.name == "web"]
    assert proto.type == "http"
    assert any("ETag" in print_rule(r) for r in proto.rules)        # from caching
    assert any("nosniff" in print_rule(r) for r in proto.rules)     # from secureheaders
    assert any("ECDHE" in t for t in proto.tls)         # from tls.HIGHER
    # the rules once refused there: relay.https:5, caching:7, secureheaders:7
    assert proto.rules[0].action == "block"
    assert any(r.tag == "1y" and r.direction == "response" for r in proto.rules)
    assert any(r.tagged == "0n" for r in proto.rules)


def test_error_inside_include_points_into_it(tmp_path):
    (tmp_path / "main.conf").write_text(
        'table <t> { 192.0.2.1 }\ninclude "part.conf"\n')
    (tmp_path / "part.conf").write_text(
        "\n# comment\nredirect r {\n\tlisten on 192.0.2.2 port 80\n"
        "\tforward to <t> check bogus\n}\n")
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "main.conf"), lookup=False)
    (d,) = e.value.diagnostics
    assert (d.file, d.line, d.col) == (str(tmp_path / "part.conf"), 5, 17)
    assert "unknown check method 'bogus'" in d.message
