"""The pf backend against golden files: the anchors' rules and the exact
pfctl command lines (with their stdin) a sequence of host changes produces.

Regenerate after a deliberate change: HOSTSTATED_REGOLD=1 pytest this file,
then read the diff of tests/unit/golden_pf/.
"""

from __future__ import annotations

import os

import pytest

from hoststated.conf.model import (CheckTcp, Config, Forward, Global, Host, Listen,
                                   Redirect, Sticky, Table)
from hoststated.kernel import Reconciler
from hoststated.kernel.backend import BackendError
from hoststated.kernel.pf import Command, PfBackend, render_rule
from hoststated.kernel.service import Service, ServiceKey
from hoststated.states import HostStatus as S

GOLDEN = os.path.join(os.path.dirname(__file__), "golden_pf")
B = ["198.51.100.11", "198.51.100.12", "198.51.100.13"]


class Recorder:
    """Stands in for pfctl: records each command; `show` answers the table."""

    def __init__(self):
        self.log: list[str] = []
        self.tables: dict[str, list[str]] = {}

    def __call__(self, cmd: Command):
        argv = cmd.argv
        if "-T" in argv and argv[argv.index("-T") + 1] == "show":
            return 0, "".join(f"   {a}\n" for a in self.tables.get(argv[argv.index("-t") + 1], [])), ""
        self.log.append(str(cmd))
        if "-T" in argv:
            t, op = argv[argv.index("-t") + 1], argv[argv.index("-T") + 1]
            self.tables[t] = cmd.stdin.split() if op == "replace" else []
        return 0, "", ""


def table(tid, name, addrs, first_id, port=80):
    hosts = tuple(Host(id=first_id + i, name=a, address=a, port=port, table=name)
                  for i, a in enumerate(addrs))
    return Table(id=tid, name=name, template=name.split(":")[0], port=port,
                 check=CheckTcp(), hosts=hosts)


def scenario_config():
    tables = (table(1, "web:8080", B, 1, port=8080), table(2, "sorry:80", ["198.51.100.21"], 100),
              table(3, "dns:53", ["198.51.100.31", "2001:db8:2::31"], 200, port=53),
              table(4, "dsr:80", ["198.51.100.41", "198.51.100.42"], 300))
    redirects = (
        Redirect(id=1, name="www", listen=(Listen(address="203.0.113.10", port=80),
                                           Listen(address="2001:db8::10", port=80)),
                 forward=Forward(table="web:8080", port=8080, mode="roundrobin"),
                 backup=Forward(table="sorry:80", mode="roundrobin"),
                 sticky=Sticky(timeout=300), session_timeout=120),
        Redirect(id=2, name="dns", listen=(Listen(address="203.0.113.53", protocol="udp", port=53),
                                           Listen(address="2001:db8::53", protocol="udp", port=53)),
                 forward=Forward(table="dns:53", mode="source-hash", mode_key="0x1234"),
                 pftag="DNS", match_pftag=True),
        Redirect(id=3, name="dsr", listen=(Listen(address="203.0.113.80", port=8000, port_end=8010,
                                                  interface="em0"),),
                 forward=Forward(table="dsr:80", mode="least-states", method="route",
                                 interface="em1")),
    )
    return Config(**{"global": Global(engine="pf")}, tables=tables, redirects=redirects)


def run_scenario() -> str:
    rec_pf = Recorder()
    be = PfBackend(run=rec_pf)
    rec = Reconciler(scenario_config(), be)
    steps = [
        ("start (nothing known)", lambda: rec.start()),
        ("all up", lambda: rec.update({1: S.UP, 2: S.UP, 3: S.UP, 100: S.UP, 200: S.UP,
                                       201: S.UP, 300: S.UP, 301: S.UP})),
        ("www: 198.51.100.12 down", lambda: rec.update({2: S.DOWN})),
        ("www: 198.51.100.11 disabled", lambda: rec.update({1: S.DISABLED})),
        ("www: main table down, backup takes over", lambda: rec.update({3: S.DOWN})),
        ("www: backup down too (rules flushed)", lambda: rec.update({100: S.DOWN})),
        ("www: recovery", lambda: rec.update({1: S.UP, 2: S.UP, 3: S.UP})),
        ("resync: nothing drifted", lambda: rec.resync()),
        ("dns disabled at run time", lambda: rec.update({}, {"dns"})),
    ]
    out = []
    for title, step in steps:
        rec_pf.log.clear()
        step()
        out.append(f"# {title}\n" + "".join(rec_pf.log))
    # a restart: a new backend finds the tables filled, keeps them, reloads
    # the rules once (atomic), flushes nothing
    rec.stop(clean=False)
    rec = Reconciler(scenario_config(), PfBackend(run=rec_pf))
    for title, step in [("restart: adopt", lambda: rec.start()),
                        ("clean stop", lambda: rec.stop(clean=True))]:
        rec_pf.log.clear()
        step()
        out.append(f"# {title}\n" + "".join(rec_pf.log))
    return "\n".join(out)


def check_golden(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("HOSTSTATED_REGOLD"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()


def test_pfctl_commands_golden():
    check_golden("scenario.txt", run_scenario())


def test_rules_golden():
    k = ServiceKey(4, "tcp", "203.0.113.10", 80)
    from hoststated.kernel.service import Destination
    d = (Destination("198.51.100.11", 8080),)
    lines = [
        render_rule(Service(k, destinations=d), "www"),
        render_rule(Service(k, mode="random", persistence=60, destinations=d), "www", 30),
        render_rule(Service(k, mode="source-hash", interface="em0", destinations=d), "www",
                    hash_key="0x0123456789abcdef0123456789abcdef"),
        render_rule(Service(k, method="route", interface="em0", destinations=d), "www",
                    pftag="WWW"),
        render_rule(Service(ServiceKey(6, "udp", "2001:db8::10", 53),
                            destinations=(Destination("2001:db8:2::11", 53),)), "dns",
                    pftag="DNS", match=True),
        render_rule(Service(ServiceKey(4, "tcp", "203.0.113.10", 8000, 8010),
                            mode="weighted-least-connections", destinations=d), "www"),
    ]
    check_golden("rules.txt", "\n".join(lines) + "\n")


def test_bad_names_and_fwmark_are_errors_for_people():
    with pytest.raises(BackendError, match="pf needs a name"):
        render_rule  # noqa: B018
        from hoststated.kernel.pf import render_anchor
        render_anchor("bad name", [])
    with pytest.raises(BackendError, match="no firewall marks"):
        render_rule(Service(ServiceKey(4, "fwmark", fwmark=3)), "x")
