"""The capability table (conf/engines.py): every cell, refused or loaded,
and hoststated.conf(5) prints the same table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hoststated.conf import engines
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text

MAN = Path(__file__).resolve().parents[2] / "man" / "hoststated.conf.5"


def config(engine: str, feature: str) -> str:
    """A redirect that uses `feature` (and nothing else the engine refuses);
    a router for the router rows."""
    if feature.startswith("router"):
        label = '\trtlabel "5"\n' if feature == "router rtlabel" else ""
        return (f"engine {engine}\ntable <gw> {{ 192.0.2.1, 192.0.2.2 }}\n"
                f'router "r" {{\n\troute 0.0.0.0/0\n\tforward to <gw> check icmp\n{label}}}\n')
    p = dict(host="", proto="", listen="", method="forward", mode="", fwd="", extra="")
    route_ifaces = engine == "nftables"        # nft's direct routing needs both devices
    if feature.endswith(" route to"):             # a feature of direct routing
        p["method"] = "route"
        if route_ifaces:
            p["listen"] = p["fwd"] = ' interface "lo"'
        feature = feature[:-len(" route to")]
    if feature.startswith("mode ") and feature != "mode source-hash key":
        p["mode"] = f" {feature}"
    elif feature == "mode source-hash key":
        p["mode"] = ' mode source-hash "k3y"'
    elif feature == "route to":
        p["method"] = "route"
        if route_ifaces:
            # nftables direct routing hashes an address (roundrobin is refused)
            p["listen"] = p["fwd"] = ' interface "lo"'
            p["mode"] = " mode source-hash"
    elif feature == "route to interface":
        p["method"] = "route"
        p["fwd"] = ' interface "lo"'
        if route_ifaces:
            p["listen"] = ' interface "lo"'
            p["mode"] = " mode source-hash"
    elif feature == "tunnel to":
        p["method"] = "tunnel"
    elif feature == "listen interface":
        p["listen"] = ' interface "lo"'
    elif feature == "backup table":
        p["extra"] = "forward to <b> port 80 check tcp"
    elif feature == "weight":
        p["host"], p["mode"] = " weight 2", " mode weighted-roundrobin"
    elif feature == "weight hashed":
        p["host"], p["mode"] = " weight 2", " mode source-hash"
    elif feature == "weight unweighted scheduler":
        p["host"] = " weight 2"
    elif feature == "sticky-address":
        p["extra"] = "sticky-address"
    elif feature == "sticky-address options":
        p["extra"] = "sticky-address timeout 60"
    elif feature == "max-connections":
        p["host"] = " max-connections 10"
    elif feature == "one-packet":
        p["proto"], p["extra"] = " udp", "one-packet"
    elif feature == "session timeout":
        p["extra"] = "session timeout 60"
    elif feature == "pftag":
        p["extra"] = 'pftag "T"'
    elif feature == "passive":                  # issue 15
        p["fwd"] = " passive"
    elif feature == "host port":                 # migrate (issue 14)
        p["host"] = " port 8080"
    listen = ("listen on fwmark 7" if feature == "listen fwmark"
              else f"listen on 192.0.2.9{p['proto']} port 80{p['listen']}")
    return (f"engine {engine}\n"
            f"table <t> {{ 192.0.2.1{p['host']}, 192.0.2.2 }}\n"
            "table <b> { 192.0.2.3 }\n"
            "redirect r {\n"
            f"\t{listen}\n"
            f"\t{p['method']} to <t> port 80{p['mode']} check tcp{p['fwd']}\n"
            f"\t{p['extra']}\n"
            "}\n")


CELLS = [(f, e) for f in engines.TABLE for e in (*engines.ENGINES, "none")]


@pytest.mark.parametrize("feature,engine", CELLS, ids=[f"{f}/{e}" for f, e in CELLS])
def test_every_cell(feature, engine):
    text = config(engine, feature)
    reason = engines.TABLE[feature][1].get(engine)
    if (feature, engine) == ("passive", "none"):
        # passive means a kernel rule: refused where none is written (build.py)
        with pytest.raises(ConfigError, match="engine none writes none"):
            load_text(text, "c.conf", lookup=False)
        return
    if reason is None:              # the engine does it (or engine none writes nothing)
        load_text(text, "c.conf", lookup=False)
        return
    with pytest.raises(ConfigError) as e:
        load_text(text, "c.conf", lookup=False)
    msgs = [str(d) for d in e.value.diagnostics]
    assert any(reason in m and "needs engine" in m and re.match(r"c\.conf:\d+:\d+: ", m)
               for m in msgs), msgs


def test_refusal_names_the_engine_that_can():
    assert engines.refusal("nftables", "mode least-connections") == (
        "mode least-connections needs engine ipvs: nftables keeps no connection counts")
    assert engines.refusal("nftables", "sticky-address route to").startswith(
        "sticky-address with route to needs engine ipvs or pf: ")
    assert engines.refusal("nftables", "sticky-address") is None
    assert engines.refusal("ipvs", "mode least-connections") is None
    assert engines.refusal("none", "tunnel to") is None


def test_the_place_is_the_feature():
    text = ("table <t> { 192.0.2.1 }\nredirect r {\n\tlisten on 192.0.2.9 port 80\n"
            "\tforward to <t> mode least-connections check tcp\n\tsession timeout 60\n}\n")
    with pytest.raises(ConfigError) as e:
        load_text(text, "c.conf", lookup=False)
    assert [str(d) for d in e.value.diagnostics] == [
        "c.conf:4:17: redirect r: mode least-connections needs engine ipvs: "
        "nftables keeps no connection counts",
        "c.conf:5:2: redirect r: session timeout needs engine pf: "
        "nftables leaves connection timeouts to the kernel's conntrack settings"]


def test_a_redirects_own_engine_and_a_later_global_one():
    body = ("table <t> { 192.0.2.1 }\nredirect r {\n\tlisten on 192.0.2.9 port 80\n"
            "\tforward to <t> mode least-connections check tcp\nHERE}\n")
    load_text(body.replace("HERE", "\tengine ipvs\n"), "c.conf", lookup=False)
    # the global engine may come after the redirect
    load_text(body.replace("HERE", "") + "engine ipvs\n", "c.conf", lookup=False)
    with pytest.raises(ConfigError):
        load_text("engine ipvs\n" + body.replace("HERE", "\tengine nftables\n"), "c.conf",
                  lookup=False)


def test_nftables_direct_routing_needs_both_devices():
    text = ("table <t> { 192.0.2.1 }\nredirect r {\n\tlisten on 192.0.2.9 port 80\n"
            "\troute to <t> port 80 check tcp\n}\n")
    with pytest.raises(ConfigError) as e:
        load_text(text, "c.conf", lookup=False)
    msgs = [str(d) for d in e.value.diagnostics]
    assert any(m.startswith("c.conf:3:2: ") and "listen on ... interface" in m for m in msgs)
    assert any(m.startswith("c.conf:4:2: ") and "needs 'interface IF'" in m for m in msgs)


def test_man_page_prints_the_table():
    text = MAN.read_text()
    m = re.search(r'keeps it equal to conf/engines.py\)\n(.*?)\.\\" end of the capability',
                  text, re.S)
    assert m, "hoststated.conf.5 lost its capability table markers"
    assert m.group(1) == engines.mdoc()
    for label, _ in engines.TABLE.values():
        assert f".It {label} Ta" in text
