"""conf.model's tables and the facts it shares with other rooms."""

from __future__ import annotations

from hoststated.checks import registry
from hoststated.conf import model
from hoststated.ipc import messages


def test_default_socket_is_one_fact():
    # ipc.messages (stdlib only, read by hoststatectl) and conf.model (pydantic
    # only) may not import each other: this test keeps the two equal
    assert model.DEFAULT_SOCKET == messages.DEFAULT_SOCKET
    assert model.Global().socket == messages.DEFAULT_SOCKET


def test_checks_use_the_models_tables():
    # the parent reads these through conf; the registry must not keep copies
    assert registry.DEFAULT_PORTS is model.DEFAULT_PORTS
    assert registry.PACKAGES is model.PACKAGES
    assert set(model.DEFAULT_PORTS) == set(model.ServiceKind.__args__)
    assert set(model.PACKAGES) <= set(model.DEFAULT_PORTS)


def test_only_load_does_io():
    """conf.build gets its names resolved by conf.load's Resolver; lexer,
    parse, build, ports and printconf import no socket, os or importlib."""
    import ast
    from pathlib import Path
    conf = Path(model.__file__).parent
    for name in ("lexer", "parse", "build", "ports", "printconf", "model", "errors"):
        tree = ast.parse((conf / f"{name}.py").read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
        mods |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
        assert not mods & {"socket", "os", "importlib", "subprocess", "asyncio"}, (name, mods)
    load_src = (conf / "load.py").read_text()
    assert "getaddrinfo" in load_src and "getservbyname" in load_src


def test_resolver_and_names():
    from hoststated.conf.build import Names
    from hoststated.conf.load import Resolver
    n, r = Names(), Resolver()
    assert n.address("192.0.2.1") == ("192.0.2.1", None)
    assert n.address("localhost") == (None, None)            # not looked up
    assert n.service("http") == 80 and n.service("no-such-service") is None
    assert n.interface("lo") is None
    assert r.address("localhost")[0] in ("127.0.0.1", "::1")
    assert r.interface("lo") is True and r.interface("hoststated-no-such0") is False
    assert r.service("no-such-service") is None
