"""`metrics listen on ADDRESS [port PORT]`: off by default, printed back by
-nv to the same config, refused at its file:line:col when it cannot be."""

from __future__ import annotations

import pytest

from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.model import METRICS_PORT
from hoststated.conf.printconf import print_config

BODY = ("table <t> { 192.0.2.1 }\nredirect r {\n\tlisten on 192.0.2.9 port 80\n"
        "\tforward to <t> check tcp\n}\n")


def loads(text: str):
    return load_text(text, "m.conf", lookup=False, runnable=False)


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text)
    return [str(d) for d in e.value.diagnostics]


def test_off_by_default():
    c = loads(BODY)
    assert c.global_.metrics is None
    assert "metrics" not in print_config(c)


@pytest.mark.parametrize("line, address, port", [
    ("metrics listen on 127.0.0.1 port 9469", "127.0.0.1", 9469),
    ("metrics listen on 192.0.2.1 port 80", "192.0.2.1", 80),
    ('metrics listen on "::1" port 19469', "::1", 19469),
    ("metrics listen on 0.0.0.0", "0.0.0.0", METRICS_PORT),
    ("metrics listen on 127.0.0.1 port http", "127.0.0.1", 80),
])
def test_loads_and_prints_back(line, address, port):
    c = loads(line + "\n" + BODY)
    assert (c.global_.metrics.address, c.global_.metrics.port) == (address, port)
    printed = print_config(c)
    assert f'metrics listen on "{address}" port {port}\n' in printed
    again = loads(printed)
    assert again.global_.metrics == c.global_.metrics
    assert print_config(again) == printed


def test_the_last_one_wins():
    c = loads("metrics listen on 127.0.0.1 port 1\nmetrics listen on 127.0.0.2 port 2\n" + BODY)
    assert (c.global_.metrics.address, c.global_.metrics.port) == ("127.0.0.2", 2)


@pytest.mark.parametrize("line, want", [
    ("metrics listen on 127.0.0.1 port 70000", "m.conf:1:1: metrics port 70000 out of range (1-65535)"),
    ("metrics listen on 127.0.0.1 port 0", "m.conf:1:1: metrics port 0 out of range (1-65535)"),
    ("metrics listen on localhost port 9469", "m.conf:1:1: metrics listen on localhost: not an IP address"),
    ("metrics listen on 127.0.0.1 port nosuchservice", "m.conf:1:1: service name 'nosuchservice' for metrics port"),
    ("metrics listen 127.0.0.1", "m.conf:1:16: unknown keyword '127.0.0.1'; expected 'on'"),
    ("metrics on 127.0.0.1", "m.conf:1:9: unexpected keyword 'on'; expected 'listen'"),
])
def test_errors_at_their_place(line, want):
    errs = refused(line + "\n" + BODY)
    assert len(errs) == 1 and errs[0].startswith(want), errs
