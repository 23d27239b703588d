"""pfe in memory, over real socketpairs and with engine none: it hands the
Reconciler the changes it received (the Reconciler keeps the statuses and
the disabled redirects), and only the parent's SHUTDOWN cleans the kernel."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from hoststated import pfe as pfe_mod
from hoststated.conf.load import load_text
from hoststated.ipc import messages
from hoststated.ipc.channel import Channel, ChannelError
from hoststated.ipc.messages import HostStatusBatch, MsgType, RedirectState
from hoststated.parent import wire_config
from hoststated.pfe import LEFT, Pfe
from hoststated.states import HostStatus

CONF = """
engine none
table <web> { 198.51.100.11, 198.51.100.12 }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> check tcp
}
redirect "other" {
	listen on 203.0.113.11 port 80
	forward to <web> check tcp
}
"""


def make(cleanstop: bool = True):
    text = CONF if cleanstop else "cleanstop no\n" + CONF
    init = messages.Init(wire_config(load_text(text, lookup=False)), 1, 65534, 65534)
    parent_a, parent_b = socket.socketpair()
    hce_a, hce_b = socket.socketpair()
    p = Pfe(Channel(parent_b, "parent"), Channel(hce_b, "hce"), init)
    return p, Channel(parent_a, "pfe"), Channel(hce_a, "pfe")


def test_statuses_may_be_enum_members_or_their_values():
    p, _, _ = make()
    assert p._check_statuses(HostStatusBatch(1, {1: HostStatus.UP, 2: "down"})) == {
        1: HostStatus.UP, 2: HostStatus.DOWN}
    with pytest.raises(ChannelError, match="invalid status"):
        p._check_statuses(HostStatusBatch(1, {1: 3}))


def test_changes_reach_the_reconciler_which_keeps_statuses_and_disabled():
    async def go():
        p, parent, hce = make()
        p.reconciler.start()
        task = asyncio.ensure_future(p._dispatch_hce())
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {1: "up", 2: "up"}))
        await hce.send(MsgType.REDIRECT_STATE, RedirectState(1, ["other"]))
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {2: "down"}))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if p.reconciler.statuses().get(2) == HostStatus.DOWN:
                break
        task.cancel()
        # host 1 was not in the last batch: the Reconciler kept its status
        assert p.reconciler.statuses() == {1: HostStatus.UP, 2: HostStatus.DOWN}
        # a status batch does not clear the disabled set: one keeper
        assert p.reconciler.disabled() == {"other"}
        assert not hasattr(p, "disabled_redirects") and not hasattr(p, "statuses")
    asyncio.run(go())


def test_batches_read_together_are_one_write_in_their_order():
    """What hce sent while the kernel thread was busy: one update_batches,
    the batches in order; a message of another kind between them is not
    merged across (the disabled set applies where it came)."""
    async def go():
        p, parent, hce = make()
        p.reconciler.start()
        calls = []
        real = p.reconciler.update_batches

        def spy(batches, disabled=None):
            calls.append(([dict(b) for b in batches], disabled))
            return real(batches, disabled)
        p.reconciler.update_batches = spy           # update() writes through it too
        # all in the socket before pfe reads: one read takes them all
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {1: "up"}))
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {2: "up"}))
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {1: "down"}))
        await hce.send(MsgType.REDIRECT_STATE, RedirectState(1, ["other"]))
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {2: "down"}))
        task = asyncio.ensure_future(p._dispatch_hce())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(calls) >= 3:
                break
        task.cancel()
        assert calls == [
            ([{1: HostStatus.UP}, {2: HostStatus.UP}, {1: HostStatus.DOWN}], None),
            ([{}], frozenset({"other"})),
            ([{2: HostStatus.DOWN}], None)]
        assert p.reconciler.statuses() == {1: HostStatus.DOWN, 2: HostStatus.DOWN}
    asyncio.run(go())


async def _run(p, parent, hce, act):
    """Run pfe until it ends; `act` plays the parent and hce."""
    run = asyncio.ensure_future(p.run())
    msg = await parent.recv()
    assert msg.type == MsgType.PFE_READY
    await act(parent, hce)
    await asyncio.wait_for(run, 10)


@pytest.mark.parametrize("cleanstop, want", [(True, "kernel objects removed"),
                                             (False, f"{LEFT} (cleanstop no)")])
def test_the_parents_shutdown_is_the_only_clean_stop(caplog, cleanstop, want):
    async def act(parent, hce):
        await parent.send(MsgType.SHUTDOWN)
    caplog.set_level(logging.INFO, logger="hoststated")
    p, parent, hce = make(cleanstop)
    asyncio.run(_run(p, parent, hce, act))
    assert p.clean is cleanstop
    assert want in caplog.text


def test_a_lost_parent_leaves_the_kernel(caplog):
    async def act(parent, hce):
        parent.close()
    caplog.set_level(logging.INFO, logger="hoststated")
    p, parent, hce = make()
    asyncio.run(_run(p, parent, hce, act))
    assert f"{LEFT} (parent closed the channel)" in caplog.text
    assert "kernel objects removed" not in caplog.text


def test_a_lost_hce_waits_for_the_parents_word(caplog, monkeypatch):
    monkeypatch.setattr(pfe_mod, "PARENT_WORD_TIMEOUT", 0.2)
    caplog.set_level(logging.INFO, logger="hoststated")

    async def silent(parent, hce):          # hce dies, the parent says nothing
        hce.close()
    p, parent, hce = make()
    asyncio.run(_run(p, parent, hce, silent))
    assert f"{LEFT} (hce closed the channel, no stop from the parent)" in caplog.text

    async def stopping(parent, hce):        # systemd stops the unit: hce first
        hce.close()
        await asyncio.sleep(0.05)
        await parent.send(MsgType.SHUTDOWN)
    caplog.clear()
    p, parent, hce = make()
    asyncio.run(_run(p, parent, hce, stopping))
    assert "kernel objects removed" in caplog.text


def test_sigterm_alone_is_not_a_stop_order(caplog, monkeypatch):
    import os
    import signal
    monkeypatch.setattr(pfe_mod, "PARENT_WORD_TIMEOUT", 0.2)
    caplog.set_level(logging.INFO, logger="hoststated")

    async def term(parent, hce):
        os.kill(os.getpid(), signal.SIGTERM)
    p, parent, hce = make()
    asyncio.run(_run(p, parent, hce, term))
    assert f"{LEFT} (SIGTERM, no stop from the parent)" in caplog.text


def test_a_desync_leaves_the_kernel_and_is_fatal(caplog):
    from hoststated import log

    async def act(parent, hce):
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {99: "up"}))
    caplog.set_level(logging.INFO, logger="hoststated")
    p, parent, hce = make()
    with pytest.raises(log.Fatal, match="unknown host id 99"):
        asyncio.run(_run(p, parent, hce, act))
    assert f"{LEFT} (desynchronized:" in caplog.text


class _Recorder:
    """Wraps a NoneBackend: for every call, its name, its thread and whether
    an asyncio loop runs there (pyroute2's sync API cannot run under one)."""

    def __init__(self):
        import threading
        from hoststated.kernel import NoneBackend
        self._be, self._threading = NoneBackend(), threading
        self.engine = self._be.engine
        self.calls: list[tuple[str, int, bool]] = []

    def _note(self, name):
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        self.calls.append((name, self._threading.get_ident(), in_loop))

    def project(self, state):
        return self._be.project(state)

    def dump(self, owned=()):
        self._note("dump")
        return self._be.dump(owned)

    def apply(self, ops, after=None):
        self._note("apply")
        return self._be.apply(ops, after)

    def remove(self, current):
        self._note("remove")
        return self._be.remove(current)

    def close(self):
        self._note("close")


def test_kernel_work_runs_in_one_thread_off_the_loop_in_order():
    import threading
    from hoststated.kernel import Reconciler
    rec = _Recorder()

    async def act(parent, hce):
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {1: "up", 2: "up"}))
        await hce.send(MsgType.HOST_STATUS, HostStatusBatch(1, {2: "down"}))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if p.reconciler.statuses().get(2) == HostStatus.DOWN:
                break
        await parent.send(MsgType.SHUTDOWN)
    p, parent, hce = make()
    p.reconciler = Reconciler(p.config, backend=rec)
    asyncio.run(_run(p, parent, hce, act))
    names = [c[0] for c in rec.calls]
    # start (dump, apply), the two batches (one write if read together), the clean stop
    assert names[:2] == ["dump", "apply"] and names[-2:] == ["remove", "close"]
    assert names.count("apply") >= 2
    threads = {c[1] for c in rec.calls}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert not any(c[2] for c in rec.calls)
    assert p.reconciler.statuses() == {1: HostStatus.UP, 2: HostStatus.DOWN}


def test_engine_ipvs_in_pfe_says_what_the_kernel_lacks(caplog):
    """The bug this guards: pyroute2's IPVS() under pfe's loop raised
    "This event loop is already running" on every machine."""
    import os
    pytest.importorskip("pyroute2")
    if os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has IPVS: the VM suite runs the daemon on it")
    from hoststated import log
    init = messages.Init(wire_config(load_text(CONF.replace("engine none", "engine ipvs"),
                                               lookup=False)), 1, 65534, 65534)
    parent_a, parent_b = socket.socketpair()
    hce_a, hce_b = socket.socketpair()
    p = Pfe(Channel(parent_b, "parent"), Channel(hce_b, "hce"), init)
    with pytest.raises(log.Fatal, match="cannot start the kernel engine: ipvs: this kernel "
                                        "has no IPVS"):
        asyncio.run(p.run())
