"""tests/lab.py itself: the farm's backends answer, and a lab removes what
it made (processes by PID, namespaces by name) also when a setup step fails
half-way, and refuses addresses outside the documentation ranges."""

from __future__ import annotations

import os
import subprocess

import pytest

from lab import Farm, Lab, LabError, check_address, in_netns, run, usable, wait_for

pytestmark = [pytest.mark.root, pytest.mark.skipif(not usable(), reason="needs root and ip")]


def namespaces() -> set[str]:
    return set(run("ip", "netns", "list").stdout.split())


@pytest.fixture(scope="module")
def farm():
    with Lab("nftlab") as lab:
        yield Farm(lab)


def test_lab_backends_answer_directly(farm):
    lab = farm
    for b in lab.backends:
        r = lab.requests(lab.addr[b], 2)
        assert r == {"counts": {lab.names[b]: 2}, "failed": 0, "errors": [],
                     "seq": [lab.names[b]] * 2}
        r = lab.requests(lab.addr6[b], 1)
        assert r["counts"] == {lab.names[b]: 1}
    r = lab.requests("203.0.113.10", 1)     # no redirect yet: nothing answers
    assert r["failed"] == 1


def test_the_docstring_example():
    """The module docstring's example, as written, for whoever starts from it."""
    config = """
socket "{socket}"
engine none
interval 1
timeout 500
table <web> {{ 198.51.100.11 }}
redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
}}
"""
    with Lab("dm") as lab:
        lb = lab.netns("lb")
        be = lab.netns("b1")
        lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24"])
        lab.http(be, "198.51.100.11", 80)
        d = lab.daemon(lb, config)
        d.wait_for(lambda: d.json("show hosts")["hosts"][0]["status"] == "up")
        assert d.statuses() == {"198.51.100.11": "up"}
        pids = [d.pid, *d.roles().values()]
        assert len(pids) == 3
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert not {lb, be} & namespaces()


def test_failed_setup_leaves_nothing():
    with pytest.raises(RuntimeError, match="failed: .*Cannot assign requested address"):
        with Lab("labfail") as lab:
            ns = lab.netns("a")
            made = set(lab.namespaces)
            tmp = lab.tmp
            first = lab.http(ns, "::", 8080)
            # 198.51.100.5 is on no interface here: the server cannot bind
            lab.http(ns, "198.51.100.5", 80)
    assert made and not made & namespaces()
    assert first.poll() is not None and not tmp.exists()


def test_a_failed_command_says_why():
    with Lab("labcmd") as lab:
        with pytest.raises(LabError, match="exit status 1: .*nosuchdev"):
            run("ip", "link", "set", "nosuchdev", "up", ns=lab.netns("a"))


def test_close_stops_what_runs_in_its_namespaces():
    with Lab("labstray") as lab:
        ns = lab.netns("a")
        # started behind the lab's back, but in the lab's namespace
        stray = subprocess.Popen(in_netns(ns, "sleep", "600"))
        wait_for(lambda: str(stray.pid) in run("ip", "netns", "pids", ns).stdout.split(),
                 10, what="the stray in the namespace")
    assert stray.wait(10) == -9
    assert ns not in namespaces()


def test_addresses_outside_the_documentation_ranges_are_refused():
    for ok in ("192.0.2.1/24", "198.51.100.11", "203.0.113.10/32", "2001:db8:2::11/64", "::",
               "127.0.0.1"):
        assert check_address(ok) == ok
    for bad in ("10.0.0.1/8", "8.8.8.8", "2001:4860::8888/64", "fd00::1"):
        with pytest.raises(ValueError, match="outside the documentation ranges"):
            check_address(bad)
    with Lab("labaddr") as lab:
        a, b = lab.netns("a"), lab.netns("b")
        with pytest.raises(ValueError):
            lab.veth(a, "10.1.2.3/24", b, "198.51.100.2/24")
        assert run("ip", "-n", a, "-o", "link", "show", "type", "veth").stdout == ""
