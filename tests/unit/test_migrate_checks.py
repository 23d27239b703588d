"""migrate (issue 14): the check options ldirectord and ALOHA users rely on,
from the config to real loopback sockets: address ranges, a port per host,
hosts not checked, `check port`, `check source`, `connect timeout`,
`connect checks N`, ldirectord's external check convention, and the IPVS
scheduler twos."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest

from hoststated.checks import make_check
from hoststated.checks.base import Target
from hoststated.checks.runner import run_check
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.printconf import print_config
from hoststated.hce_sched import CheckEngine
from hoststated.kernel import ipvs
from hoststated.kernel.desired import desired
from hoststated.states import HostError, HostStatus


def conf(body: str, engine: str = "ipvs") -> str:
    return f"engine {engine}\n" + body


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, "m.conf", lookup=False)
    return [str(d) for d in e.value.diagnostics]


def unplaced(x):
    """A model dump without the places things were written."""
    if isinstance(x, dict):
        return {k: unplaced(v) for k, v in x.items() if k != "where"}
    if isinstance(x, list):
        return [unplaced(v) for v in x]
    return x


def roundtrip(text: str):
    c = load_text(text, "m.conf", lookup=False)
    printed = print_config(c)
    c2 = load_text(printed, "p.conf", lookup=False)
    assert print_config(c2) == printed
    assert unplaced(c2.model_dump(mode="json")) == unplaced(c.model_dump(mode="json"))
    return c


RDR = """
redirect "www" {{
	listen on 203.0.113.1 port 80
	forward to <w> port 80 {use}
}}
"""


# --- the configuration ---------------------------------------------------

def test_range_expands_and_round_trips():
    c = roundtrip(conf("table <w> { 192.0.2.11-192.0.2.13 weight 2, 192.0.2.20 }\n"
                       + RDR.format(use="mode weighted-roundrobin check tcp")))
    hosts = [(h.name, h.weight) for h in c.tables[0].hosts]
    assert hosts == [("192.0.2.11", 2), ("192.0.2.12", 2), ("192.0.2.13", 2),
                     ("192.0.2.20", 1)]


@pytest.mark.parametrize("rng, msg", [
    ("192.0.2.15-192.0.2.11", "first address is above its last"),
    ("192.0.2.1-2001:db8::1", "one address family"),
    ("10.0.0.0-10.0.4.0", "at most 256"),
])
def test_bad_ranges_say_where(rng, msg):
    errs = errors(conf(f"table <w> {{ {rng} }}\n" + RDR.format(use="check tcp")))
    assert any(e.startswith("m.conf:2:") and msg in e for e in errs), errs


def test_host_port_goes_to_the_kernel_and_the_check():
    c = roundtrip(conf("table <w> { 192.0.2.11, 192.0.2.12 port 8080 }\n"
                       + RDR.format(use="check tcp")))
    a, b = c.tables[0].hosts
    assert (a.port, b.port) == (80, 8080)
    st = desired(c, {a.id: HostStatus.UP, b.id: HostStatus.UP})["ipvs"]
    (svc,) = st.values()
    assert sorted((d.address, d.port) for d in svc.destinations) == [
        ("192.0.2.11", 80), ("192.0.2.12", 8080)]


def test_host_port_refused_where_the_kernel_cannot():
    text = "table <w> { 192.0.2.11, 192.0.2.12 port 8080 }\n" + RDR.format(use="check tcp")
    (e,) = [x for x in errors(conf(text, "nftables")) if "host port" in x]
    assert e.startswith("m.conf:2:") and "needs engine ipvs" in e
    route = ("table <w> { 192.0.2.12 port 8080 }\nredirect r {\n"
             "\tlisten on 203.0.113.1 port 80\n\troute to <w> port 80 check tcp\n}\n")
    assert any("route to keeps the virtual port" in x for x in errors(conf(route)))


def test_twos_ipvs_only():
    text = "table <w> { 192.0.2.11 }\n" + RDR.format(use="mode weighted-two-choices check tcp")
    c = roundtrip(conf(text))
    (h,) = c.tables[0].hosts
    (svc,) = desired(c, {h.id: HostStatus.UP})["ipvs"].values()
    assert ipvs.IPVS_SCHEDULER[svc.mode] == "twos"
    assert ipvs.canonical_mode(svc.mode) == "weighted-two-choices"
    (e,) = errors(conf(text, "nftables"))
    assert "mode weighted-two-choices needs engine ipvs" in e and e.startswith("m.conf:6:")


def test_options_print_back_and_refusals():
    use = ('check http "/" code 200 check port 8081 check source "192.0.2.1" '
           'connect timeout 100 connect checks 3')
    c = roundtrip(conf("table <w> { 192.0.2.11, 192.0.2.12 no check }\n"
                       + RDR.format(use=use)))
    o = c.tables[0].options
    assert (o.check_port, o.source, o.connect_timeout, o.connect_checks) == (
        8081, "192.0.2.1", 100, 3)
    assert [h.checked for h in c.tables[0].hosts] == [True, False]
    for use, msg in [("check icmp check port 81", "check port with check icmp"),
                     ('check script "/bin/true" check source 192.0.2.1',
                      "check source with check script"),
                     ('check mysql user "u" connect timeout 10',
                      "its client library opens the connection"),
                     ("check tcp connect checks 2", "a connect check already"),
                     ("check none off check port 81", "check none off: the hosts"),
                     ("check tcp timeout 100 connect timeout 150", "above the check's timeout"),
                     ("check tcp check source foo", "not an IP address"),
                     ("check none sideways", "takes off (always down) or nothing")]:
        errs = errors(conf("table <w> { 192.0.2.11 }\n" + RDR.format(use=use)))
        assert any(msg in e for e in errs), (use, errs)


# --- the engine: hosts that are not checked --------------------------------

def test_unchecked_hosts_are_up_or_down_without_a_probe():
    text = conf("table <w> { 192.0.2.11, 192.0.2.12 no check }\ntable <d> { 192.0.2.13 }\n"
                + RDR.format(use="check tcp")
                + 'redirect "off" {\n\tlisten on 203.0.113.2 port 80\n'
                  "\tforward to <d> port 80 check none off\n}\n")
    eng = CheckEngine(load_text(text, lookup=False), lambda r: None)
    status = {h.name: h.status for h in eng.hosts()}
    assert status == {"192.0.2.11": HostStatus.UNKNOWN, "192.0.2.12": HostStatus.UP,
                      "192.0.2.13": HostStatus.DOWN}
    assert [p.target.address for p in eng.probes.values()] == ["192.0.2.11"]
    up = next(h for h in eng.hosts() if h.name == "192.0.2.12")
    assert eng.set_host_enabled(up.id, False)
    assert next(h for h in eng.hosts() if h.id == up.id).status == HostStatus.DISABLED
    assert eng.set_host_enabled(up.id, True)
    assert next(h for h in eng.hosts() if h.id == up.id).status == HostStatus.UP


# --- real sockets ---------------------------------------------------------

class Server:
    """A loopback TCP server that answers PING with PONG and records each
    connection's peer address and whether it sent anything."""

    def __init__(self):
        self.peers: list[tuple[str, bytes]] = []

    async def start(self, host="127.0.0.1"):
        self.srv = await asyncio.start_server(self.handle, host, 0)
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def handle(self, r, w):
        peer = w.get_extra_info("peername")[0]
        try:
            data = await asyncio.wait_for(r.read(4), 2)
        except (TimeoutError, ConnectionError):
            data = b""
        self.peers.append((peer, data))
        if data == b"PING":
            w.write(b"PONG")
            await w.drain()
        w.close()

    async def wait(self, n):
        async with asyncio.timeout(10):
            while len(self.peers) < n:
                await asyncio.sleep(0.01)


def _load(use: str, port: int):
    return load_text(conf(f"table <w> {{ 127.0.0.1 }}\n" + RDR.format(use=use)).replace(
        "port 80 ", f"port {port} ", 1), lookup=False)


@pytest.mark.parametrize("use", ['check send "PING" expect "PONG"',
                                 'check send "PING" expect "PONG" connect timeout 150'])
def test_check_source_binds_the_socket(use):
    # the bare (poller) path, and the transport path a connect timeout takes
    async def main():
        srv = await Server().start()
        c = _load(use + " check source 127.0.0.2", srv.port)
        t = c.tables[0]
        target = Target(address="127.0.0.1", port=srv.port, source=t.options.source,
                        connect_timeout=(t.options.connect_timeout / 1000
                                         if t.options.connect_timeout else None))
        v = await run_check(make_check(t.check, target), target, 1.0)
        await srv.wait(1)
        srv.srv.close()
        return v, srv.peers
    v, peers = asyncio.run(main())
    assert v.ok, v
    assert peers == [("127.0.0.2", b"PING")]


def test_check_source_that_is_not_ours_fails_the_check():
    async def main():
        srv = await Server().start()
        target = Target(address="127.0.0.1", port=srv.port, source="192.0.2.254")
        c = _load("check tcp", srv.port)
        v = await run_check(make_check(c.tables[0].check, target), target, 1.0)
        srv.srv.close()
        return v
    v = asyncio.run(main())
    assert not v.ok and v.error == HostError.TCP_SOCKET_ERROR and "192.0.2.254" in v.detail


def test_check_port_and_connect_checks_in_the_engine():
    """`connect checks 2`: the first turn and every third run the send/expect
    check (data sent); the two between only connect, to the check port (a
    tcp check's half-open connect: the server's application sees only the
    full checks; a connect elsewhere would be refused and take the host
    down)."""
    async def main():
        srv = await Server().start()
        c = _load(f'check send "PING" expect "PONG" check port {srv.port} connect checks 2',
                  1)
        eng = CheckEngine(c, lambda r: None)
        eng.loop = asyncio.get_running_loop()
        from hoststated.checks.poller import poller_for
        eng.poller = poller_for(eng.loop)
        (p,) = eng.probes.values()
        assert p.target.port == srv.port
        seen = []
        for n in range(4):
            eng._launch(p, eng.clock(), eng.clock())
            async with asyncio.timeout(10):
                while p.task is not None:
                    await asyncio.sleep(0.01)
            await srv.wait(1 if n < 3 else 2)
            h = eng.hosts()[0]
            seen.append((h.status, h.error))
        srv.srv.close()
        return srv.peers, seen, eng.hosts()
    peers, seen, (h,) = asyncio.run(main())
    assert [d for _, d in peers] == [b"PING", b"PING"]
    assert [s for s, _ in seen] == [HostStatus.UP] * 4
    assert [e for _, e in seen][1:3] == [HostError.TCP_CONNECT_OK] * 2
    assert h.check_cnt == 4


def test_connect_checks_never_bring_a_host_up():
    """The full check fails (wrong reply): the connects between keep the host
    down; `connect checks 1`: full, connect, full, connect."""
    async def main():
        srv = await Server().start()
        c = _load('check send "PING" expect "NOPE" connect checks 1', srv.port)
        eng = CheckEngine(c, lambda r: None)
        eng.loop = asyncio.get_running_loop()
        from hoststated.checks.poller import poller_for
        eng.poller = poller_for(eng.loop)
        (p,) = eng.probes.values()
        seen = []
        for n in range(4):
            eng._launch(p, eng.clock(), eng.clock())
            async with asyncio.timeout(10):
                while p.task is not None:
                    await asyncio.sleep(0.01)
            await srv.wait(n // 2 + 1)
            h = eng.hosts()[0]
            seen.append((h.status, h.check_cnt))
        srv.srv.close()
        return srv.peers, seen
    peers, seen = asyncio.run(main())
    assert [d for _, d in peers] == [b"PING", b"PING"]     # the connects are half-open
    assert seen == [(HostStatus.DOWN, n) for n in (1, 1, 2, 2)]   # a connect is not applied


def _script(tmp_path, rc: int):
    out = tmp_path / "args"
    path = tmp_path / "check.sh"
    path.write_text(f'#!/bin/sh\necho "$@" > {out}\nexit {rc}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path), out


@pytest.mark.parametrize("rc, up", [(0, True), (1, False), (3, False)])
def test_ldirectord_script_convention(tmp_path, rc, up):
    path, out = _script(tmp_path, rc)
    c = load_text(conf(f'table <w> {{ 192.0.2.11 }}\n' + RDR.format(
        use=f'check script "{path}" ldirectord')), lookup=False)
    eng = CheckEngine(c, lambda r: None)
    (p,) = eng.probes.values()
    assert p.target.virtual == ("203.0.113.1", "80")
    v = asyncio.run(run_check(make_check(p.check, p.target), p.target, 5.0))
    assert v.ok is up, v
    assert out.read_text().split() == ["203.0.113.1", "80", "192.0.2.11", "80"]


def test_relayd_script_convention_unchanged(tmp_path):
    path, out = _script(tmp_path, 0)
    c = load_text(conf('table <w> { 192.0.2.11 }\n' + RDR.format(
        use=f'check script "{path}"')), lookup=False)
    t = c.tables[0]
    target = Target(address="192.0.2.11", port=80, name="192.0.2.11")
    v = asyncio.run(run_check(make_check(t.check, target), target, 5.0))
    assert not v.ok and out.read_text().split() == ["192.0.2.11"]


def test_unchecked_hosts_are_told_at_start():
    """pfe learns host states from changes: an unchecked host's state is one
    change at start, or the kernel would never get it."""
    text = conf("table <w> { 192.0.2.11 no check }\n" + RDR.format(use="check tcp"))
    changes = []

    async def main():
        eng = CheckEngine(load_text(text, lookup=False), changes.append)
        task = asyncio.get_running_loop().create_task(eng.run())
        async with asyncio.timeout(10):
            while not changes:
                await asyncio.sleep(0.01)
        eng.stop()
        await task
    asyncio.run(main())
    assert [(r.name, r.status) for r in changes] == [("192.0.2.11", HostStatus.UP)]
