"""engine ipvs: -n refuses a mode whose IPVS scheduler module this kernel
lacks (conf.load.ipvs_scheduler_missing over a module tree), and says
nothing where the machine cannot tell. The real kernel's answer is the VM
suite's (tests/vm: Debian 12's 6.1 has no twos)."""
from __future__ import annotations

import pytest

from hoststated.conf import load
from hoststated.conf.errors import ConfigError

CONF = """engine ipvs
table <web> { 198.51.100.11 }
redirect www {
\tlisten on 192.0.2.10 port 80
\tforward to <web> mode MODE check tcp
}
"""


def tree(tmp_path, builtin: str, dep: str):
    d = tmp_path / "6.1.0-test"
    d.mkdir()
    (d / "modules.builtin").write_text(builtin)
    (d / "modules.dep").write_text(dep)
    return str(tmp_path)


def test_a_module_installed_built_in_or_absent(tmp_path):
    mods = tree(tmp_path, "kernel/net/netfilter/ipvs/ip_vs_rr.ko\n",
                "kernel/net/netfilter/ipvs/ip_vs_wrr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n"
                "kernel/net/netfilter/ipvs/ip_vs_twos_extra.ko:\n")
    missing = lambda s: load.ipvs_scheduler_missing(s, "6.1.0-test", mods)  # noqa: E731
    assert not missing("rr")            # built in
    assert not missing("wrr")           # a compressed module
    assert missing("twos")              # a longer name is not it
    assert missing("mh")


def test_no_module_tree_is_no_answer(tmp_path):
    assert not load.ipvs_scheduler_missing("twos", "no-such-release", str(tmp_path))


def test_the_config_test_refuses_a_missing_scheduler(monkeypatch):
    monkeypatch.setattr(load, "ipvs_scheduler_missing", lambda s, *a, **k: s == "twos")
    with pytest.raises(ConfigError) as e:
        load.load_text(CONF.replace("MODE", "weighted-two-choices"), "t.conf")
    assert "t.conf:3:1: redirect www: mode weighted-two-choices needs IPVS's twos scheduler" \
        in str(e.value), str(e.value)
    load.load_text(CONF.replace("MODE", "weighted-roundrobin"), "t.conf")
    # only the text checked (no lookups): the machine is not asked
    load.load_text(CONF.replace("MODE", "weighted-two-choices"), "t.conf", lookup=False)
